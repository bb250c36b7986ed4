//! Authentication: argon2id passwords, login sessions with rotating refresh tokens, and short-lived
//! signed access tokens (JWT, HS256) that name the user, tenant, role and session.
//!
//! An access token is accepted only while its signature and expiry hold *and* its session is
//! neither revoked nor expired and its user is active, so logging out takes effect at once on every
//! hub node. Refresh tokens are random 256-bit values stored only as their SHA-256.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row};
use thiserror::Error;
use uuid::Uuid;

use medhub_actors::audit::{self, AuditRecord, Outcome};
use medhub_actors::{Principal, Role, TenantSlug};
use medhub_realtime::{Authenticated, Authenticator};

#[derive(Debug, Error)]
pub enum AuthError {
    #[error("wrong tenant, email or password")]
    InvalidCredentials,
    #[error("{0}")]
    InvalidToken(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 hashes any password with default parameters")
        .to_string()
}

pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
        .unwrap_or(false)
}

/// Checked against when the user does not exist, so an unknown email costs as much time as a
/// wrong password and does not reveal which emails exist.
fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| hash_password("decoy password that matches nothing"))
}

/// Passwords: at least 10 characters, at most 256.
pub fn check_password_policy(password: &str) -> Result<(), String> {
    let length = password.chars().count();
    if length < 10 {
        return Err("a password needs at least 10 characters".to_owned());
    }
    if length > 256 {
        return Err("a password may have at most 256 characters".to_owned());
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: Uuid,
    tid: Uuid,
    ten: String,
    role: Role,
    sid: Uuid,
    iat: i64,
    exp: i64,
}

type HmacSha256 = Hmac<Sha256>;

/// Signs and checks access tokens (compact JWS, HS256).
pub struct TokenSigner {
    key: Vec<u8>,
}

const JWT_HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;
const ISSUER: &str = "medhub";

impl TokenSigner {
    pub fn new(key: &[u8]) -> TokenSigner {
        TokenSigner { key: key.to_vec() }
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length")
    }

    fn sign(&self, claims: &Claims) -> String {
        let header = URL_SAFE_NO_PAD.encode(JWT_HEADER);
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialise"));
        let signing_input = format!("{header}.{payload}");
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signing_input}.{signature}")
    }

    fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<Claims, AuthError> {
        let bad = |why: &str| AuthError::InvalidToken(why.to_owned());
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("malformed access token"));
        };
        let header: Value = URL_SAFE_NO_PAD
            .decode(header)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| bad("malformed access token"))?;
        if header.get("alg").and_then(Value::as_str) != Some("HS256") {
            return Err(bad("unsupported token algorithm"));
        }
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| bad("malformed access token"))?;
        let mut mac = self.mac();
        mac.update(token[..token.len() - parts_len_of_signature(token)].as_bytes());
        mac.verify_slice(&signature).map_err(|_| bad("access token signature is invalid"))?;
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| bad("malformed access token"))?;
        if claims.iss != ISSUER {
            return Err(bad("access token was not issued by medhub"));
        }
        if claims.exp <= now.timestamp() {
            return Err(bad("access token expired; refresh it"));
        }
        Ok(claims)
    }
}

/// Length of ".<signature>" at the end of a token.
fn parts_len_of_signature(token: &str) -> usize {
    token.rfind('.').map_or(0, |dot| token.len() - dot)
}

/// What a successful login or refresh returns (the body of `POST /api/auth/login`).
#[derive(Debug, Clone, Serialize)]
pub struct TokenPair {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    pub refresh_token: String,
    pub user: Value,
}

pub struct AuthService {
    pool: PgPool,
    signer: TokenSigner,
    access_ttl: Duration,
    session_ttl: Duration,
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}

fn new_refresh_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The signing key: configured, or generated once and shared through the database.
pub async fn signing_key(pool: &PgPool, configured: Option<&str>) -> Result<Vec<u8>, sqlx::Error> {
    if let Some(secret) = configured {
        return Ok(secret.as_bytes().to_vec());
    }
    let mut generated = [0u8; 32];
    OsRng.fill_bytes(&mut generated);
    sqlx::query("INSERT INTO hub_settings (key, value) VALUES ('token_signing_key', $1) ON CONFLICT DO NOTHING")
        .bind(hex::encode(generated))
        .execute(pool)
        .await?;
    let stored: String = sqlx::query_scalar("SELECT value FROM hub_settings WHERE key = 'token_signing_key'")
        .fetch_one(pool)
        .await?;
    Ok(hex::decode(stored).unwrap_or_else(|_| generated.to_vec()))
}

struct UserRow {
    id: Uuid,
    tenant_id: Uuid,
    tenant_slug: String,
    tenant_name: String,
    email: String,
    display_name: String,
    role: String,
}

const USER_COLUMNS: &str = "u.id, u.tenant_id, t.slug, t.name AS tenant_name, u.email, u.display_name, u.role";

fn user_row(row: &sqlx::postgres::PgRow) -> UserRow {
    UserRow {
        id: row.get("id"),
        tenant_id: row.get("tenant_id"),
        tenant_slug: row.get("slug"),
        tenant_name: row.get("tenant_name"),
        email: row.get("email"),
        display_name: row.get("display_name"),
        role: row.get("role"),
    }
}

impl UserRow {
    fn json(&self) -> Value {
        json!({
            "id": self.id, "email": self.email, "display_name": self.display_name, "role": self.role,
            "tenant": {"id": self.tenant_id, "slug": self.tenant_slug, "name": self.tenant_name},
        })
    }

    fn principal(&self, session_id: Uuid) -> Result<Principal, AuthError> {
        Ok(Principal {
            user_id: self.id,
            tenant_id: self.tenant_id,
            tenant_slug: TenantSlug::parse(&self.tenant_slug).map_err(AuthError::InvalidToken)?,
            role: Role::parse(&self.role).ok_or_else(|| AuthError::InvalidToken("unknown role".into()))?,
            session_id,
        })
    }
}

impl AuthService {
    pub fn new(pool: PgPool, signing_key: &[u8], access_ttl: Duration, session_ttl: Duration) -> AuthService {
        AuthService { pool, signer: TokenSigner::new(signing_key), access_ttl, session_ttl }
    }

    fn access_token(&self, user: &UserRow, session_id: Uuid) -> String {
        let now = Utc::now().timestamp();
        let role = Role::parse(&user.role).unwrap_or(Role::Patient);
        self.signer.sign(&Claims {
            iss: ISSUER.to_owned(),
            sub: user.id,
            tid: user.tenant_id,
            ten: user.tenant_slug.clone(),
            role,
            sid: session_id,
            iat: now,
            exp: now + self.access_ttl.as_secs() as i64,
        })
    }

    fn pair(&self, user: &UserRow, session_id: Uuid, refresh_token: String) -> TokenPair {
        TokenPair {
            access_token: self.access_token(user, session_id),
            token_type: "Bearer",
            expires_in: self.access_ttl.as_secs(),
            refresh_token,
            user: user.json(),
        }
    }

    /// The tenant an access token was issued for, if the token is genuine and unexpired; no
    /// database read (the session is checked where the request is served). For routing.
    pub fn token_tenant(&self, token: &str) -> Option<Uuid> {
        self.signer.verify(token, Utc::now()).ok().map(|claims| claims.tid)
    }

    /// Checks the password and opens a session. Every attempt on a known tenant is audited.
    pub async fn login(&self, tenant: &str, email: &str, password: &str, source: Option<String>) -> Result<TokenPair, AuthError> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS}, u.password_hash, u.active FROM users u JOIN tenants t ON t.id = u.tenant_id
             WHERE t.slug = $1 AND lower(u.email) = lower($2)"
        ))
        .bind(tenant)
        .bind(email)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            verify_password(decoy_hash(), password);
            // Guessing at accounts leaves a trace too, in the tenant named (if it exists).
            let tenant_id: Option<Uuid> = sqlx::query_scalar("SELECT id FROM tenants WHERE slug = $1").bind(tenant).fetch_optional(&self.pool).await?;
            if let Some(tenant_id) = tenant_id {
                let record = AuditRecord {
                    actor_kind: "user",
                    actor_id: format!("unknown:{}", email.to_lowercase()),
                    actor_role: None,
                    action: "auth.login".to_owned(),
                    resource_type: "session".to_owned(),
                    resource_id: None,
                    patient_id: None,
                    source_addr: source,
                    outcome: Outcome::Denied,
                    detail: json!({"reason": "unknown account"}),
                };
                audit::record(&self.pool, tenant_id, &record).await?;
            }
            return Err(AuthError::InvalidCredentials);
        };
        let user = user_row(&row);
        let active: bool = row.get("active");
        let password_ok = verify_password(row.get("password_hash"), password);
        let attempt = |outcome: Outcome, reason: &str| AuditRecord {
                actor_kind: "user",
                actor_id: user.id.to_string(),
                actor_role: Some(user.role.clone()),
                action: "auth.login".to_owned(),
                resource_type: "session".to_owned(),
                resource_id: None,
                patient_id: None,
                source_addr: source.clone(),
                outcome,
                detail: json!({"reason": reason}),
        };
        if !password_ok || !active {
            let reason = if active { "wrong password" } else { "account disabled" };
            audit::record(&self.pool, user.tenant_id, &attempt(Outcome::Denied, reason)).await?;
            return Err(AuthError::InvalidCredentials);
        }
        let session_id = Uuid::new_v4();
        let refresh_token = new_refresh_token();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO sessions (id, tenant_id, user_id, refresh_token_hash, expires_at, source_addr)
             VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5), $6)",
        )
        .bind(session_id)
        .bind(user.tenant_id)
        .bind(user.id)
        .bind(sha256(refresh_token.as_bytes()))
        .bind(self.session_ttl.as_secs() as f64)
        .bind(&source)
        .execute(&mut *tx)
        .await?;
        let mut record = attempt(Outcome::Success, "password");
        record.resource_id = Some(session_id.to_string());
        audit::append(&mut tx, user.tenant_id, &record).await?;
        tx.commit().await?;
        Ok(self.pair(&user, session_id, refresh_token))
    }

    /// Spends a refresh token for a new pair (same session, new refresh token).
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenPair, AuthError> {
        let next = new_refresh_token();
        let row = sqlx::query(&format!(
            "WITH spent AS (
                 UPDATE sessions SET refresh_token_hash = $2, refreshed_at = now()
                 WHERE refresh_token_hash = $1 AND revoked_at IS NULL AND expires_at > now()
                 RETURNING id, user_id)
             SELECT spent.id AS session_id, {USER_COLUMNS} FROM spent
             JOIN users u ON u.id = spent.user_id AND u.active JOIN tenants t ON t.id = u.tenant_id"
        ))
        .bind(sha256(refresh_token.as_bytes()))
        .bind(sha256(next.as_bytes()))
        .fetch_optional(&self.pool)
        .await?;
        let row = row.ok_or_else(|| AuthError::InvalidToken("refresh token is unknown, spent, expired or revoked; log in again".into()))?;
        Ok(self.pair(&user_row(&row), row.get("session_id"), next))
    }

    /// Revokes a session, found by its refresh token or by an access token's session.
    pub async fn logout(&self, refresh_token: Option<&str>, principal: Option<&Principal>, source: Option<String>) -> Result<bool, AuthError> {
        let revoked: Option<(Uuid, Uuid, Uuid, String)> = sqlx::query_as(
            "UPDATE sessions s SET revoked_at = now() FROM users u
             WHERE u.id = s.user_id AND s.revoked_at IS NULL AND (s.refresh_token_hash = $1 OR s.id = $2)
             RETURNING s.id, s.tenant_id, s.user_id, u.role",
        )
        .bind(refresh_token.map(|token| sha256(token.as_bytes())))
        .bind(principal.map(|p| p.session_id))
        .fetch_optional(&self.pool)
        .await?;
        if let Some((session_id, tenant_id, user_id, role)) = &revoked {
            let (session_id, tenant_id) = (*session_id, *tenant_id);
            let mut record = AuditRecord::by_system("auth.logout", "session", session_id);
            record.actor_kind = "user";
            record.actor_id = user_id.to_string();
            record.actor_role = Some(role.clone());
            record.source_addr = source;
            audit::record(&self.pool, tenant_id, &record).await?;
        }
        Ok(revoked.is_some())
    }

    /// Verifies an access token against its signature, expiry and live session.
    pub async fn authenticate(&self, token: &str) -> Result<(Principal, DateTime<Utc>, Value), AuthError> {
        let claims = self.signer.verify(token, Utc::now())?;
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM sessions s JOIN users u ON u.id = s.user_id JOIN tenants t ON t.id = u.tenant_id
             WHERE s.id = $1 AND s.user_id = $2 AND s.revoked_at IS NULL AND s.expires_at > now() AND u.active"
        ))
        .bind(claims.sid)
        .bind(claims.sub)
        .fetch_optional(&self.pool)
        .await?;
        let row = row.ok_or_else(|| AuthError::InvalidToken("session ended (logged out, expired or disabled); log in again".into()))?;
        let user = user_row(&row);
        let expires_at = DateTime::from_timestamp(claims.exp, 0).unwrap_or_else(Utc::now);
        Ok((user.principal(claims.sid)?, expires_at, user.json()))
    }

    /// Whether a login session is live: not revoked, not expired, its user active.
    pub async fn session_alive(&self, session_id: Uuid) -> Result<bool, AuthError> {
        let alive: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sessions s JOIN users u ON u.id = s.user_id
                            WHERE s.id = $1 AND s.revoked_at IS NULL AND s.expires_at > now() AND u.active)",
        )
        .bind(session_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(alive)
    }

    pub async fn user_json(&self, principal: &Principal) -> Result<Value, AuthError> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users u JOIN tenants t ON t.id = u.tenant_id WHERE u.id = $1"
        ))
        .bind(principal.user_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(user_row(&row).json())
    }
}

/// The WebSocket endpoint authenticates through the same service.
pub struct WsAuthenticator(pub Arc<AuthService>);

impl Authenticator for WsAuthenticator {
    fn authenticate(&self, token: String) -> Pin<Box<dyn Future<Output = Result<Authenticated, String>> + Send>> {
        let service = self.0.clone();
        Box::pin(async move {
            match service.authenticate(&token).await {
                Ok((principal, expires_at, user)) => Ok(Authenticated { principal, expires_at, user }),
                Err(AuthError::Database(e)) => {
                    tracing::error!(error = %e, "cannot check a WebSocket token");
                    Err("the hub cannot check tokens right now; retry".to_owned())
                }
                Err(e) => Err(e.to_string()),
            }
        })
    }

    fn session_alive(&self, session_id: Uuid) -> Pin<Box<dyn Future<Output = Result<bool, String>> + Send>> {
        let service = self.0.clone();
        Box::pin(async move { service.session_alive(session_id).await.map_err(|e| e.to_string()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp_in: i64) -> Claims {
        let now = Utc::now().timestamp();
        Claims {
            iss: ISSUER.into(),
            sub: Uuid::new_v4(),
            tid: Uuid::new_v4(),
            ten: "demo".into(),
            role: Role::Nurse,
            sid: Uuid::new_v4(),
            iat: now,
            exp: now + exp_in,
        }
    }

    #[test]
    fn tokens_verify_only_with_the_same_key_and_before_expiry() {
        let signer = TokenSigner::new(b"0123456789abcdef0123456789abcdef");
        let token = signer.sign(&claims(60));
        assert_eq!(signer.verify(&token, Utc::now()).unwrap().ten, "demo");
        let other = TokenSigner::new(b"another key entirely, 32 bytes..");
        assert!(other.verify(&token, Utc::now()).is_err());
        assert!(signer.verify(&signer.sign(&claims(-1)), Utc::now()).is_err());
    }

    #[test]
    fn tampered_or_malformed_tokens_are_refused() {
        let signer = TokenSigner::new(b"0123456789abcdef0123456789abcdef");
        let token = signer.sign(&claims(60));
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut forged = claims(60);
        forged.role = Role::Admin;
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        assert!(signer.verify(&parts.join("."), Utc::now()).is_err());
        for junk in ["", "a.b", "a.b.c.d", "not a token"] {
            assert!(signer.verify(junk, Utc::now()).is_err(), "{junk}");
        }
        let none_alg = format!("{}.{}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#), parts[1]);
        assert!(signer.verify(&none_alg, Utc::now()).is_err());
    }

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let hash = hash_password("correct horse battery");
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password(&hash, "correct horse battery"));
        assert!(!verify_password(&hash, "wrong"));
        assert!(!verify_password("not a hash", "wrong"));
    }
}
