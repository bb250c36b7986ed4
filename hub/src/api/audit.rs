//! `GET /api/audit` (search the tenant's trail) and `GET /api/audit/verify` (walk its hash chain).
//! Admins only; reading the trail is itself recorded in it.

use std::collections::HashMap;

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde_json::json;
use uuid::Uuid;

use medhub_actors::audit::{self, AuditFilter, AuditRecord};
use medhub_actors::Role;

use super::error::ApiError;
use super::extract::Authenticated;
use crate::server::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/audit", web::get().to(search)).route("/api/audit/verify", web::get().to(verify));
}

const FILTERS: &[&str] = &["user_id", "patient_id", "action", "resource_type", "resource_id", "from", "to", "before_seq", "limit"];

fn parse_filter(query: &HashMap<String, String>) -> Result<AuditFilter, ApiError> {
    if let Some(unknown) = query.keys().find(|key| !FILTERS.contains(&key.as_str())) {
        return Err(ApiError::invalid(unknown.clone(), format!("unknown filter; use {}", FILTERS.join(", "))));
    }
    let text = |key: &str| query.get(key).filter(|v| !v.is_empty()).cloned();
    let uuid = |key: &'static str| -> Result<Option<Uuid>, ApiError> {
        text(key).map(|v| Uuid::parse_str(&v).map_err(|_| ApiError::invalid(key, format!("{key} must be a UUID")))).transpose()
    };
    let time = |key: &'static str| -> Result<Option<DateTime<Utc>>, ApiError> {
        text(key)
            .map(|v| {
                DateTime::parse_from_rfc3339(&v)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| ApiError::invalid(key, format!("{key} must be an ISO 8601 time such as 2026-11-25T08:00:00Z")))
            })
            .transpose()
    };
    let number = |key: &'static str| -> Result<Option<i64>, ApiError> {
        text(key).map(|v| v.parse::<i64>().map_err(|_| ApiError::invalid(key, format!("{key} must be a whole number")))).transpose()
    };
    let limit = number("limit")?.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit", "limit must be between 1 and 1000"));
    }
    Ok(AuditFilter {
        actor_id: uuid("user_id")?.map(|id| id.to_string()),
        patient_id: uuid("patient_id")?,
        action: text("action"),
        resource_type: text("resource_type"),
        resource_id: text("resource_id"),
        from: time("from")?,
        to: time("to")?,
        before_seq: number("before_seq")?,
        limit,
    })
}

async fn search(
    state: web::Data<AppState>,
    caller: Authenticated,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin], "read the audit trail")?;
    let filter = parse_filter(&query)?;
    let tenant_id = caller.principal().tenant_id;
    let (entries, next_before_seq) = audit::search(&state.pool, tenant_id, &filter).await?;
    let record = AuditRecord::by_caller(&caller.0, "audit.search", "audit_log", "search")
        .patient(filter.patient_id)
        .detail(json!({"filters": query.into_inner(), "returned": entries.len()}));
    audit::record(&state.pool, tenant_id, &record).await?;
    Ok(HttpResponse::Ok().json(json!({"entries": entries, "next_before_seq": next_before_seq})))
}

async fn verify(state: web::Data<AppState>, caller: Authenticated) -> Result<HttpResponse, ApiError> {
    caller.require(&[Role::Admin], "verify the audit trail")?;
    let tenant_id = caller.principal().tenant_id;
    let report = audit::verify_chain(&state.pool, tenant_id).await?;
    if let Some(broken) = &report.first_broken {
        tracing::error!(tenant = %caller.principal().tenant_slug, seq = broken.seq, reason = %broken.reason, "audit chain broken");
    }
    let record = AuditRecord::by_caller(&caller.0, "audit.verify", "audit_log", "chain")
        .detail(json!({"ok": report.ok, "entries_checked": report.entries_checked}));
    audit::record(&state.pool, tenant_id, &record).await?;
    Ok(HttpResponse::Ok().json(report))
}
