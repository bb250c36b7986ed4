//! Request extractors that fail with the API's JSON errors: [`Json`] and [`Body`] (the body, naming the field
//! at fault), [`Caller`] (a verified access token), and path/query helpers.

use actix_web::HttpMessage;
use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use medhub_actors::{Caller, Principal, Role};

use super::error::ApiError;
use crate::server::AppState;

/// Largest accepted JSON body.
const MAX_BODY_BYTES: usize = 256 * 1024;

/// A JSON body; a malformed one is a 400 that names the offending field where serde can tell.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned + 'static> FromRequest for Json<T> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = Body::from_request(req, payload);
        Box::pin(async move { body.await?.parse().map(Json) })
    }
}

/// A JSON body read but not yet parsed: handlers parse it once the caller's role allowed the
/// request, so a role that may not act learns 403, not how its body would have been judged.
pub struct Body(web::Bytes);

impl Body {
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        if self.0.len() > MAX_BODY_BYTES {
            return Err(ApiError::BadRequest {
                code: "invalid_body",
                field: None,
                detail: format!("the body is larger than {MAX_BODY_BYTES} bytes"),
            });
        }
        parse_json(&self.0)
    }
}

impl Body {
    /// Like [`Body::parse`], with an empty (or `null`) body meaning the defaults.
    pub fn parse_or_default<T: DeserializeOwned + Default>(&self) -> Result<T, ApiError> {
        let text = std::str::from_utf8(&self.0).unwrap_or_default().trim();
        if text.is_empty() || text == "null" {
            Ok(T::default())
        } else {
            self.parse()
        }
    }
}

impl FromRequest for Body {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = web::Bytes::from_request(req, payload);
        Box::pin(async move {
            body.await.map(Body).map_err(|e| ApiError::BadRequest {
                code: "invalid_body",
                field: None,
                detail: format!("cannot read the request body: {e}"),
            })
        })
    }
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(&mut deserializer);
    let value = parsed.map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        // serde names a missing or unknown field only in its message: `missing field `email``.
        let named = message.split('`').nth(1).filter(|_| message.contains(" field `")).map(str::to_owned);
        let field = match (path.as_str(), named) {
            (".", Some(name)) => Some(name),
            (".", None) => None,
            (path, Some(name)) if message.starts_with("missing field") => Some(format!("{path}.{name}")),
            (path, _) => Some(path.to_owned()),
        };
        let detail = if inner.is_syntax() || inner.is_eof() {
            format!("the body is not valid JSON: {message}")
        } else {
            message
        };
        ApiError::BadRequest { code: "invalid_body", field, detail }
    })?;
    deserializer.end().map_err(|e| ApiError::BadRequest {
        code: "invalid_body",
        field: None,
        detail: format!("the body is not valid JSON: {e}"),
    })?;
    Ok(value)
}

/// The authenticated caller of this request and the address it came from.
pub struct Authenticated(pub Caller);

impl Authenticated {
    pub fn principal(&self) -> &Principal {
        &self.0.principal
    }

    /// 403 unless the caller has one of `roles`.
    pub fn require(&self, roles: &[Role], doing: &str) -> Result<(), ApiError> {
        if self.0.principal.has_role(roles) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!("role {} may not {doing}", self.0.principal.role)))
        }
    }
}

pub fn source_addr(req: &HttpRequest) -> Option<String> {
    // The TCP peer, not X-Forwarded-For: a client could write anything there. A request another
    // hub node forwarded (its signature checked) carries the client's address that node saw.
    if let Some(forwarded) = req.extensions().get::<crate::cluster::ForwardedFor>() {
        return Some(forwarded.0.clone());
    }
    req.peer_addr().map(|addr| addr.ip().to_string())
}

impl FromRequest for Authenticated {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let header = req.headers().get("authorization").map(|value| value.to_str().map(str::to_owned));
        let source = source_addr(req);
        Box::pin(async move {
            let state = state.ok_or_else(|| ApiError::Internal("application state missing".into()))?;
            let token = match header {
                Some(Ok(value)) => value
                    .strip_prefix("Bearer ")
                    .map(str::trim)
                    .map(str::to_owned)
                    .ok_or_else(|| ApiError::Unauthorized("use the Authorization: Bearer <access token> header".into()))?,
                Some(Err(_)) => return Err(ApiError::Unauthorized("the Authorization header is not readable".into())),
                None => return Err(ApiError::Unauthorized("log in and send Authorization: Bearer <access token>".into())),
            };
            let (principal, _, _) = state.auth.authenticate(&token).await?;
            tracing::Span::current().record("tenant", principal.tenant_slug.as_str());
            Ok(Authenticated(Caller { principal, source_addr: source }))
        })
    }
}

/// A UUID path segment; anything else is a 404 naming what was looked for.
pub fn path_id(value: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(value).map_err(|_| ApiError::not_found(what))
}
