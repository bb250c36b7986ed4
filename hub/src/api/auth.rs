//! `POST /api/auth/login|refresh|logout` and `GET /api/me`.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::error::ApiError;
use super::extract::{parse_json, source_addr, Authenticated, Json};
use crate::server::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/auth/login", web::post().to(login))
        .route("/api/auth/refresh", web::post().to(refresh))
        .route("/api/auth/logout", web::post().to(logout))
        .route("/api/me", web::get().to(me));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    tenant: String,
    email: String,
    password: String,
}

async fn login(req: HttpRequest, state: web::Data<AppState>, Json(body): Json<LoginBody>) -> Result<HttpResponse, ApiError> {
    for (field, value) in [("tenant", &body.tenant), ("email", &body.email), ("password", &body.password)] {
        if value.trim().is_empty() {
            return Err(ApiError::invalid(field, format!("{field} must not be empty")));
        }
        if value.len() > 512 {
            return Err(ApiError::invalid(field, format!("{field} is too long")));
        }
    }
    let pair = state.auth.login(body.tenant.trim(), body.email.trim(), &body.password, source_addr(&req)).await?;
    Ok(HttpResponse::Ok().insert_header(("Cache-Control", "no-store")).json(pair))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshBody {
    refresh_token: String,
}

async fn refresh(state: web::Data<AppState>, Json(body): Json<RefreshBody>) -> Result<HttpResponse, ApiError> {
    let pair = state.auth.refresh(&body.refresh_token).await?;
    Ok(HttpResponse::Ok().insert_header(("Cache-Control", "no-store")).json(pair))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LogoutBody {
    refresh_token: Option<String>,
}

/// Revokes the session named by the refresh token in the body, or by the bearer token.
async fn logout(
    req: HttpRequest,
    state: web::Data<AppState>,
    caller: Option<Authenticated>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body: LogoutBody = if body.iter().all(u8::is_ascii_whitespace) { LogoutBody::default() } else { parse_json(&body)? };
    if body.refresh_token.is_none() && caller.is_none() {
        return Err(ApiError::invalid("refresh_token", "send the refresh_token, or an Authorization bearer token"));
    }
    state
        .auth
        .logout(body.refresh_token.as_deref(), caller.as_ref().map(|c| c.principal()), source_addr(&req))
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

async fn me(state: web::Data<AppState>, caller: Authenticated) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.auth.user_json(caller.principal()).await?))
}
