//! Billing over HTTP: `/api/invoices` (create from what a patient has not been billed for yet,
//! list), `/api/invoices/{id}` (read) and its changes: `/issue`, `/payments`, `/refunds`, `/void`.
//!
//! The rules, the exact money and the audit entry every read and change leaves live in
//! [`medhub_actors::billing`]; this file checks the caller's role first (recording a refusal,
//! before a body is even parsed), parses bodies straight into the domain's types (a bad amount is
//! a 400 naming `amount`) and shapes the answers. Invoices are patient data: no answer is cached.

use std::collections::HashMap;

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use uuid::Uuid;

use medhub_actors::billing::{self, InvoiceFilter, InvoiceStatus, Money, PaymentMethod, Receipt, Reference, VoidReason, BILLING_STAFF, INVOICE_READERS};
use medhub_actors::Role;

use super::error::ApiError;
use super::extract::{path_id, Authenticated, Body};
use crate::server::AppState;

/// How many invoices a list returns unless `limit` says otherwise.
const DEFAULT_LIST_LIMIT: i64 = 100;
const LIST_FILTERS: &[&str] = &["patient_id", "status", "limit"];

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/invoices", web::post().to(create))
        .route("/api/invoices", web::get().to(list))
        .route("/api/invoices/{id}", web::get().to(get))
        .route("/api/invoices/{id}/issue", web::post().to(issue))
        .route("/api/invoices/{id}/payments", web::post().to(pay))
        .route("/api/invoices/{id}/refunds", web::post().to(refund))
        .route("/api/invoices/{id}/void", web::post().to(void));
}

/// 403 unless the caller has one of `roles`; the refusal is recorded, naming the invoice (and so
/// its patient) asked for.
async fn require(state: &AppState, caller: &Authenticated, roles: &[Role], doing: &str, action: &str, invoice_id: Option<Uuid>) -> Result<(), ApiError> {
    if let Err(refused) = caller.require(roles, doing) {
        billing::record_refusal(&state.pool, &caller.0, action, invoice_id, None, &refused.to_string()).await?;
        return Err(refused);
    }
    Ok(())
}

fn no_store(mut response: actix_web::HttpResponseBuilder) -> actix_web::HttpResponseBuilder {
    response.insert_header(("Cache-Control", "no-store"));
    response
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewInvoiceBody {
    patient_id: Uuid,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MoneyBody {
    amount: Money,
    method: PaymentMethod,
    reference: Reference,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VoidBody {
    reason: VoidReason,
}

async fn create(state: web::Data<AppState>, caller: Authenticated, body: Body) -> Result<HttpResponse, ApiError> {
    require(&state, &caller, BILLING_STAFF, "create invoices", "invoice.create", None).await?;
    let body: NewInvoiceBody = body.parse()?;
    let invoice = billing::create_invoice(&state.pool, &caller.0, body.patient_id).await?;
    Ok(no_store(HttpResponse::Created())
        .insert_header(("Location", format!("/api/invoices/{}", invoice.summary.id)))
        .json(invoice))
}

async fn list(state: web::Data<AppState>, caller: Authenticated, query: web::Query<HashMap<String, String>>) -> Result<HttpResponse, ApiError> {
    require(&state, &caller, INVOICE_READERS, "read invoices", "invoice.list", None).await?;
    if let Some(unknown) = query.keys().find(|key| !LIST_FILTERS.contains(&key.as_str())) {
        return Err(ApiError::invalid(unknown.clone(), format!("unknown filter; use {}", LIST_FILTERS.join(", "))));
    }
    let present = |key: &str| query.get(key).map(|value| value.trim()).filter(|value| !value.is_empty());
    let patient_id = present("patient_id")
        .map(|value| Uuid::parse_str(value).map_err(|_| ApiError::invalid("patient_id", format!("patient_id {value:?} is not a UUID"))))
        .transpose()?;
    let status = present("status").map(InvoiceStatus::parse).transpose()?;
    let limit = present("limit")
        .map(|value| value.parse::<i64>().map_err(|_| ApiError::invalid("limit", format!("limit must be a whole number from 1 to {}", billing::MAX_LIST))))
        .transpose()?
        .unwrap_or(DEFAULT_LIST_LIMIT);
    let found = billing::list(&state.pool, &caller.0, &InvoiceFilter { patient_id, status, limit }).await?;
    Ok(no_store(HttpResponse::Ok()).json(found))
}

async fn get(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = path_id(&path, "invoice")?;
    require(&state, &caller, INVOICE_READERS, "read invoices", "invoice.read", Some(id)).await?;
    let invoice = billing::get(&state.pool, &caller.0, id).await?;
    Ok(no_store(HttpResponse::Ok()).json(invoice))
}

async fn issue(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = path_id(&path, "invoice")?;
    require(&state, &caller, BILLING_STAFF, "issue invoices", "invoice.issue", Some(id)).await?;
    let invoice = billing::issue(&state.pool, &caller.0, id).await?;
    Ok(no_store(HttpResponse::Ok()).json(invoice))
}

/// 201 for money recorded now, 200 for a retry of a reference already recorded (the same payment).
fn receipt(receipt: Receipt) -> HttpResponse {
    let builder = if receipt.created { HttpResponse::Created() } else { HttpResponse::Ok() };
    no_store(builder).json(receipt)
}

async fn pay(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>, body: Body) -> Result<HttpResponse, ApiError> {
    let id = path_id(&path, "invoice")?;
    require(&state, &caller, BILLING_STAFF, "record payments", "invoice.payment", Some(id)).await?;
    let body: MoneyBody = body.parse()?;
    let recorded = billing::record_payment(&state.pool, &caller.0, id, body.amount, body.method, body.reference).await?;
    Ok(receipt(recorded))
}

async fn refund(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>, body: Body) -> Result<HttpResponse, ApiError> {
    let id = path_id(&path, "invoice")?;
    require(&state, &caller, BILLING_STAFF, "refund payments", "invoice.refund", Some(id)).await?;
    let body: MoneyBody = body.parse()?;
    let recorded = billing::refund(&state.pool, &caller.0, id, body.amount, body.method, body.reference).await?;
    Ok(receipt(recorded))
}

async fn void(state: web::Data<AppState>, caller: Authenticated, path: web::Path<String>, body: Body) -> Result<HttpResponse, ApiError> {
    let id = path_id(&path, "invoice")?;
    require(&state, &caller, BILLING_STAFF, "void invoices", "invoice.void", Some(id)).await?;
    let body: VoidBody = body.parse()?;
    let invoice = billing::void(&state.pool, &caller.0, id, body.reason).await?;
    Ok(no_store(HttpResponse::Ok()).json(invoice))
}
