//! Creating tenants and users (for `hub admin`), and the demo tenant `hub demo` seeds: a user for
//! every role and three facilities with wards and beds in a demo city (Nairobi).

use anyhow::{bail, Context};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use medhub_actors::audit::{self, AuditRecord};
use medhub_actors::facility::{FacilityKind, NewFacility, NewWard, WardKind};
use medhub_actors::runtime::ActorRuntime;
use medhub_actors::tenant::CreateFacility;
use medhub_actors::{Caller, GeoPoint, Principal, Role, TenantSlug};

use crate::auth::{check_password_policy, hash_password};

pub const DEMO_TENANT: &str = "demo";
pub const DEMO_PASSWORD: &str = "medhub-demo-2026";

/// Creates a tenant and starts its audit chain. Fails if the slug is taken.
pub async fn create_tenant(pool: &PgPool, slug: &str, name: &str) -> anyhow::Result<Uuid> {
    let slug = TenantSlug::parse(slug).map_err(anyhow::Error::msg)?;
    let name = name.trim();
    if name.is_empty() || name.len() > 200 {
        bail!("tenant name must be 1 to 200 characters");
    }
    let id = Uuid::new_v4();
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query("INSERT INTO tenants (id, slug, name) VALUES ($1, $2, $3) ON CONFLICT (slug) DO NOTHING")
        .bind(id)
        .bind(slug.as_str())
        .bind(name)
        .execute(&mut *tx)
        .await?;
    if inserted.rows_affected() == 0 {
        bail!("a tenant with slug {slug} already exists");
    }
    audit::start_chain(&mut tx, id).await?;
    let record = AuditRecord::by_system("tenant.create", "tenant", id).detail(json!({"slug": slug.as_str(), "name": name}));
    audit::append(&mut tx, id, &record).await?;
    tx.commit().await?;
    Ok(id)
}

/// A plausible email address: one `@`, something on each side, a dot in the domain, no spaces.
pub fn check_email(email: &str) -> Result<String, String> {
    let email = email.trim();
    let ok = email.len() <= 254
        && !email.contains(char::is_whitespace)
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && !domain.contains('@') && domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.')
        });
    if ok {
        Ok(email.to_owned())
    } else {
        Err(format!("{email:?} is not an email address"))
    }
}

/// Creates a user in a tenant. Fails if the email is taken in that tenant.
pub async fn create_user(pool: &PgPool, tenant: &str, email: &str, display_name: &str, role: Role, password: &str) -> anyhow::Result<Uuid> {
    let email = check_email(email).map_err(anyhow::Error::msg)?;
    check_password_policy(password).map_err(anyhow::Error::msg)?;
    let display_name = display_name.trim();
    if display_name.is_empty() || display_name.len() > 200 {
        bail!("display name must be 1 to 200 characters");
    }
    let tenant_id: Uuid = sqlx::query_scalar("SELECT id FROM tenants WHERE slug = $1")
        .bind(tenant)
        .fetch_optional(pool)
        .await?
        .with_context(|| format!("no tenant {tenant:?}; create it first with `hub admin create-tenant`"))?;
    let id = Uuid::new_v4();
    let hash = hash_password(password);
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO users (id, tenant_id, email, display_name, role, password_hash) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(tenant_id)
    .bind(&email)
    .bind(display_name)
    .bind(role.as_str())
    .bind(hash)
    .execute(&mut *tx)
    .await;
    match inserted {
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => bail!("{email} already has an account in {tenant}"),
        other => {
            other?;
        }
    }
    let record = AuditRecord::by_system("user.create", "user", id).detail(json!({"email": email, "role": role.as_str()}));
    audit::append(&mut tx, tenant_id, &record).await?;
    tx.commit().await?;
    Ok(id)
}

pub struct DemoUser {
    pub email: String,
    pub role: Role,
}

/// Seeds the demo tenant once (a no-op when it exists) and returns its users.
pub async fn seed_demo(pool: &PgPool, runtime: &ActorRuntime) -> anyhow::Result<Vec<DemoUser>> {
    let users: Vec<DemoUser> = Role::ALL
        .into_iter()
        .map(|role| DemoUser { email: format!("{}@demo.medhub", role.as_str()), role })
        .collect();
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tenants WHERE slug = $1)")
        .bind(DEMO_TENANT)
        .fetch_one(pool)
        .await?;
    if exists {
        return Ok(users);
    }
    let tenant_id = create_tenant(pool, DEMO_TENANT, "Demo Hospital Group").await?;
    let names = ["Amina Okello", "Daniel Mwangi", "Dr. Grace Wanjiru", "Nurse Peter Otieno", "Fatuma Hassan", "Joseph Kamau"];
    let mut admin_id = Uuid::nil();
    for (user, name) in users.iter().zip(names) {
        let id = create_user(pool, DEMO_TENANT, &user.email, name, user.role, DEMO_PASSWORD).await?;
        if user.role == Role::Admin {
            admin_id = id;
        }
    }
    let slug = TenantSlug::parse(DEMO_TENANT).map_err(anyhow::Error::msg)?;
    let caller = Caller {
        principal: Principal { user_id: admin_id, tenant_id, tenant_slug: slug.clone(), role: Role::Admin, session_id: Uuid::nil() },
        source_addr: Some("hub demo seed".to_owned()),
    };
    let labels = |prefix: &str, count: usize| (1..=count).map(|n| format!("{prefix}{n}")).collect::<Vec<_>>();
    let facilities = [
        ("Central General Hospital", FacilityKind::Hospital, -1.3006, 36.8070, vec![
            ("Emergency", WardKind::Emergency, labels("E", 8)),
            ("Intensive Care", WardKind::Icu, labels("ICU", 4)),
            ("General Medicine", WardKind::General, labels("G", 10)),
        ]),
        ("Northside Community Hospital", FacilityKind::Hospital, -1.2330, 36.8790, vec![
            ("Emergency", WardKind::Emergency, labels("E", 6)),
            ("Maternity", WardKind::Maternity, labels("M", 6)),
        ]),
        ("Westlands Clinic", FacilityKind::Clinic, -1.2650, 36.8030, vec![
            ("Observation", WardKind::General, labels("OBS", 4)),
        ]),
    ];
    let supervisor = runtime.tenant(tenant_id, &slug)?;
    for (name, kind, lat, lon, wards) in facilities {
        let wards = wards
            .into_iter()
            .map(|(ward, kind, beds)| NewWard::new(ward, kind, beds))
            .collect::<Result<Vec<_>, _>>()?;
        let location = GeoPoint::new(lat, lon).map_err(anyhow::Error::msg)?;
        let facility = NewFacility::new(name, kind, location, "Africa/Nairobi", wards)?;
        supervisor.send(CreateFacility { caller: caller.clone(), facility }).await??;
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_need_a_local_part_and_a_dotted_domain() {
        assert!(check_email("nurse@demo.medhub").is_ok());
        for bad in ["", "nurse", "@demo.medhub", "nurse@", "nurse@localhost", "a b@c.d", "a@b@c.d", "a@.c"] {
            assert!(check_email(bad).is_err(), "{bad}");
        }
    }
}
