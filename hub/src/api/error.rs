//! The one mapping from every failure to an HTTP status and a JSON body
//! `{"error": code, "field"?: name, "detail": sentence}`. Internal details are logged, not shown.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;
use tracing::error;

use medhub_actors::ActorError;

use crate::auth::AuthError;

#[derive(Debug)]
pub enum ApiError {
    BadRequest { code: &'static str, field: Option<String>, detail: String },
    Unauthorized(String),
    Forbidden(String),
    NotFound(String),
    Conflict(String),
    /// A conflict with something identifiable: the body names it under `conflicting_appointment`.
    ConflictWith { detail: String, conflicting: serde_json::Value },
    Unavailable(String),
    /// Another hub node serves the tenant: nothing was done here (the cluster layer forwards).
    NotOwner(String),
    Internal(String),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> ApiError {
        ApiError::BadRequest { code: "invalid_field", field: Some(field.into()), detail: detail.into() }
    }

    pub fn not_found(what: &str) -> ApiError {
        ApiError::NotFound(format!("{what} not found"))
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::BadRequest { detail, .. }
            | ApiError::Unauthorized(detail)
            | ApiError::Forbidden(detail)
            | ApiError::NotFound(detail)
            | ApiError::Conflict(detail)
            | ApiError::ConflictWith { detail, .. }
            | ApiError::Unavailable(detail)
            | ApiError::NotOwner(detail)
            | ApiError::Internal(detail) => f.write_str(detail),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) | ApiError::ConflictWith { .. } => StatusCode::CONFLICT,
            ApiError::Unavailable(_) | ApiError::NotOwner(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let (code, field) = match self {
            ApiError::BadRequest { code, field, .. } => (*code, field.clone()),
            ApiError::Unauthorized(_) => ("unauthorized", None),
            ApiError::Forbidden(_) => ("forbidden", None),
            ApiError::NotFound(_) => ("not_found", None),
            ApiError::Conflict(_) | ApiError::ConflictWith { .. } => ("conflict", None),
            ApiError::Unavailable(_) => ("unavailable", None),
            ApiError::NotOwner(_) => ("not_owner", None),
            ApiError::Internal(_) => ("internal", None),
        };
        let detail = match self {
            ApiError::Internal(_) => "the hub failed unexpectedly; the error is logged".to_owned(),
            other => other.to_string(),
        };
        let mut body = json!({"error": code, "detail": detail});
        if let Some(field) = field {
            body["field"] = json!(field);
        }
        if let ApiError::ConflictWith { conflicting, .. } = self {
            body["conflicting_appointment"] = conflicting.clone();
        }
        let mut response = HttpResponse::build(self.status_code());
        if matches!(self, ApiError::Unavailable(_) | ApiError::NotOwner(_)) {
            response.insert_header(("Retry-After", "1"));
        }
        if matches!(self, ApiError::NotOwner(_)) {
            // Tells the cluster layer (see `cluster`) that it may send the request to the owner.
            response.insert_header((crate::cluster::NOT_OWNER_HEADER, "1"));
        }
        response.json(body)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> ApiError {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                error!(error = %e, "database unavailable");
                ApiError::Unavailable("the database is unavailable; nothing was changed, retry".to_owned())
            }
            other => {
                error!(error = %other, "database error");
                ApiError::Internal(other.to_string())
            }
        }
    }
}

impl From<ActorError> for ApiError {
    fn from(e: ActorError) -> ApiError {
        match e {
            ActorError::NotFound(what) => ApiError::not_found(what),
            ActorError::Invalid { field, detail } => ApiError::invalid(field, detail),
            ActorError::Conflict(detail) => ApiError::Conflict(detail),
            ActorError::Taken { detail, conflicting } => ApiError::ConflictWith { detail, conflicting },
            ActorError::Forbidden(detail) => ApiError::Forbidden(detail),
            ActorError::Crashed(_) | ActorError::Unavailable(_) => ApiError::Unavailable(e.to_string()),
            ActorError::NotOwner(detail) => ApiError::NotOwner(detail),
            ActorError::Database(db) => db.into(),
        }
    }
}

/// An actor that cannot take a message (stopped, restarting, shutting down): 503, retry.
impl From<actix::MailboxError> for ApiError {
    fn from(e: actix::MailboxError) -> ApiError {
        ActorError::from(e).into()
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        match e {
            AuthError::InvalidCredentials => ApiError::Unauthorized(e.to_string()),
            AuthError::InvalidToken(detail) => ApiError::Unauthorized(detail),
            AuthError::Database(db) => db.into(),
        }
    }
}
