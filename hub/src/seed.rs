//! Creating tenants and users (for `hub admin`), and the demo tenant `hub demo` seeds: a user for
//! every role, three facilities with wards and beds in a demo city (Nairobi), three doctors with
//! weekly hours, ten patients and a few appointments.

use anyhow::{bail, Context};
use chrono::{Duration, TimeZone, Utc};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use medhub_actors::audit::{self, AuditRecord};
use medhub_actors::facility::{FacilityKind, NewFacility, NewWard, WardKind};
use medhub_actors::runtime::ActorRuntime;
use medhub_actors::inventory::{self, NewBatch};
use medhub_actors::pharmacy::{self, NewPrescription};
use medhub_actors::formulary;
use medhub_actors::patients::{self, Address, BirthDate, NewPatient, PatientDetails, PatientName, Phone, Sex};
use medhub_actors::schedule::{AppointmentKind, Book, DayOfWeek, NewDoctor, WorkingHours};
use medhub_actors::tenant::{CreateFacility, RegisterAmbulance, RegisterDoctor};
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

/// The demo's users: one per role, and two more doctors.
fn demo_users() -> Vec<(DemoUser, &'static str)> {
    let names = ["Amina Okello", "Daniel Mwangi", "Dr. Grace Wanjiru", "Nurse Peter Otieno", "Fatuma Hassan", "Joseph Kamau"];
    let mut users: Vec<(DemoUser, &'static str)> = Role::ALL
        .into_iter()
        .zip(names)
        .map(|(role, name)| (DemoUser { email: format!("{}@demo.medhub", role.as_str()), role }, name))
        .collect();
    users.push((DemoUser { email: "doctor2@demo.medhub".into(), role: Role::Doctor }, "Dr. Samuel Njoroge"));
    users.push((DemoUser { email: "doctor3@demo.medhub".into(), role: Role::Doctor }, "Dr. Aisha Mohamed"));
    users
}

/// Seeds the demo tenant once (a no-op when it exists) and returns its users.
pub async fn seed_demo(pool: &PgPool, runtime: &ActorRuntime) -> anyhow::Result<Vec<DemoUser>> {
    let users = demo_users();
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tenants WHERE slug = $1)")
        .bind(DEMO_TENANT)
        .fetch_one(pool)
        .await?;
    if exists {
        return Ok(users.into_iter().map(|(user, _)| user).collect());
    }
    let tenant_id = create_tenant(pool, DEMO_TENANT, "Demo Hospital Group").await?;
    let mut ids = Vec::new();
    for (user, name) in &users {
        ids.push(create_user(pool, DEMO_TENANT, &user.email, name, user.role, DEMO_PASSWORD).await?);
    }
    let slug = TenantSlug::parse(DEMO_TENANT).map_err(anyhow::Error::msg)?;
    let caller = Caller {
        principal: Principal { user_id: ids[0], tenant_id, tenant_slug: slug.clone(), role: Role::Admin, session_id: Uuid::nil() },
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
    let mut facility_ids = Vec::new();
    for (name, kind, lat, lon, wards) in facilities {
        let wards = wards
            .into_iter()
            .map(|(ward, kind, beds)| NewWard::new(ward, kind, beds))
            .collect::<Result<Vec<_>, _>>()?;
        let location = GeoPoint::new(lat, lon).map_err(anyhow::Error::msg)?;
        let facility = NewFacility::new(name, kind, location, "Africa/Nairobi", wards)?;
        facility_ids.push(supervisor.send(CreateFacility { caller: caller.clone(), facility }).await??.id);
    }
    // Ambulance units for the dispatcher's map (they appear once their devices report positions).
    for call_sign in ["AMB-01", "AMB-02", "AMB-03", "AMB-04"] {
        supervisor.send(RegisterAmbulance { caller: caller.clone(), call_sign: call_sign.to_owned() }).await??;
    }
    let patient_ids = seed_clinic(pool, runtime, &caller, &ids, &facility_ids).await?;
    seed_pharmacy(pool, runtime, &caller, &ids, &facility_ids, &patient_ids).await?;
    Ok(users.into_iter().map(|(user, _)| user).collect())
}

/// Doctors with weekly hours, patients (the demo patient user is one of them) and a few
/// appointments today and tomorrow, so that the schedule pages have something to show.
async fn seed_clinic(pool: &PgPool, runtime: &ActorRuntime, admin: &Caller, user_ids: &[Uuid], facility_ids: &[Uuid]) -> anyhow::Result<Vec<Uuid>> {
    let every_day = |start: &str, end: &str| -> anyhow::Result<Vec<WorkingHours>> {
        let days = [DayOfWeek::Monday, DayOfWeek::Tuesday, DayOfWeek::Wednesday, DayOfWeek::Thursday, DayOfWeek::Friday, DayOfWeek::Saturday, DayOfWeek::Sunday];
        days.into_iter()
            .map(|weekday| Ok(WorkingHours { weekday, start: start.parse().map_err(anyhow::Error::msg)?, end: end.parse().map_err(anyhow::Error::msg)? }))
            .collect()
    };
    // user_ids follow demo_users(): doctor is index 2, the extra doctors 6 and 7, the patient 5.
    let doctors = [
        (user_ids[2], vec!["general practice".to_owned(), "internal medicine".to_owned()], facility_ids[0], 30, every_day("08:00", "17:00")?),
        (user_ids[6], vec!["paediatrics".to_owned()], facility_ids[1], 20, every_day("09:00", "15:00")?),
        (user_ids[7], vec!["cardiology".to_owned()], facility_ids[2], 45, every_day("10:00", "16:00")?),
    ];
    let supervisor = runtime.tenant(admin.principal.tenant_id, &admin.principal.tenant_slug)?;
    let mut doctor_ids = Vec::new();
    for (user_id, specialties, facility_id, minutes, hours) in doctors {
        let doctor = NewDoctor::new(user_id, specialties, facility_id, minutes, hours)?;
        doctor_ids.push(supervisor.send(RegisterDoctor { caller: admin.clone(), doctor }).await??.profile.id);
    }

    let today = Utc::now().date_naive();
    let people = [
        ("Wanjiku", "Kariuki", "1984-03-12", "female", "+254712000001"),
        ("Otieno", "Odhiambo", "1979-11-02", "male", "+254712000002"),
        ("Achieng", "Atieno", "1992-06-23", "female", "+254712000003"),
        ("Kiprono", "Koech", "1968-01-30", "male", "+254712000004"),
        ("Mercy", "Mutua", "2001-09-14", "female", "+254712000005"),
        ("Hassan", "Abdi", "1955-05-05", "male", "+254712000006"),
        ("Njeri", "Muthoni", "2015-12-01", "female", "+254712000007"),
        ("Baraka", "Wekesa", "1999-07-19", "male", "+254712000008"),
        ("Zawadi", "Chebet", "1988-02-28", "female", "+254712000009"),
        ("Juma", "Omondi", "1973-10-10", "male", "+254712000010"),
    ];
    let mut patient_ids = Vec::new();
    for (n, (given, family, born, sex, phone)) in people.into_iter().enumerate() {
        let details = PatientDetails::new(
            PatientName::new(given, family)?,
            BirthDate::parse(born, today)?,
            Sex::parse(sex)?,
            Some(Phone::parse(phone)?),
            Some(Address::new(&format!("{} Moi Avenue", 10 + n), "Nairobi", None, "KE", None)?),
            Vec::new(),
        )?;
        // The first patient is the demo patient user.
        let user_id = (n == 0).then_some(user_ids[5]);
        patient_ids.push(patients::create(pool, admin, NewPatient { mrn: None, details, user_id }).await?.id);
    }

    // A few appointments at the next whole hours within the doctors' day (08:00-17:00 Nairobi = 05:00-14:00 UTC).
    let nairobi_day_start = |days: i64, hour_utc: u32| Utc.from_utc_datetime(&(today + Duration::days(days)).and_hms_opt(hour_utc, 0, 0).expect("valid hour"));
    let planned = [(0, 1, 0), (1, 1, 1), (2, 1, 2), (0, 2, 3), (1, 2, 4)];
    let actor = runtime.schedule(admin.principal.tenant_id, &admin.principal.tenant_slug, doctor_ids[0]).await?;
    for (patient, days, hour) in planned {
        let start = nairobi_day_start(days, 6 + hour);
        let booked = actor
            .send(Book { caller: admin.clone(), patient_id: patient_ids[patient], start, end: None, kind: AppointmentKind::InPerson, reason: Some("follow-up".into()) })
            .await?;
        booked?;
    }
    Ok(patient_ids)
}

/// The starter formulary, stock at two pharmacies (a few batches close to expiry, a few
/// medications at their reorder point) and two prescriptions waiting at the pharmacy counter.
async fn seed_pharmacy(pool: &PgPool, runtime: &ActorRuntime, admin: &Caller, user_ids: &[Uuid], facility_ids: &[Uuid], patient_ids: &[Uuid]) -> anyhow::Result<()> {
    let tenant_id = admin.principal.tenant_id;
    formulary::load(pool, tenant_id).await?;
    let medication = |name: &'static str| async move {
        sqlx::query_scalar::<_, Uuid>("SELECT id FROM medications WHERE tenant_id = $1 AND name = $2")
            .bind(tenant_id)
            .bind(name)
            .fetch_optional(pool)
            .await?
            .with_context(|| format!("{name} is not in the starter formulary"))
    };
    let today = Utc::now().date_naive();
    let stock = [
        ("Amoxicillin 500 mg capsule", "AMX-2401", 20, 60),
        ("Amoxicillin 500 mg capsule", "AMX-2409", 400, 300),
        ("Paracetamol 500 mg tablet", "PCM-2407", 250, 1000),
        ("Ibuprofen 400 mg tablet", "IBU-2406", 180, 300),
        ("Metformin 500 mg tablet", "MET-2405", 320, 500),
        ("Amlodipine 5 mg tablet", "AML-2411", 500, 240),
        ("Omeprazole 20 mg capsule", "OME-2402", 25, 90),
        ("Salbutamol 100 micrograms/dose inhaler (200 doses)", "SAL-2403", 200, 12),
        ("Artemether + lumefantrine 20 mg/120 mg tablet", "ALU-2404", 150, 96),
        ("Enalapril 10 mg tablet", "ENA-2408", 365, 8),
    ];
    let mut batches = Vec::new();
    for (name, batch_number, days, quantity) in stock {
        let medication_id = match medication(name).await {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(error = %e, "demo stock skipped");
                continue;
            }
        };
        for pharmacy in [facility_ids[0], facility_ids[1]] {
            let quantity = if pharmacy == facility_ids[0] { quantity } else { quantity / 2 + 1 };
            batches.push(NewBatch::new(pharmacy, medication_id, batch_number, today + Duration::days(days), quantity, Some("Main store".into()))?);
        }
    }
    inventory::receive_many(pool, tenant_id, &admin.principal.tenant_slug, admin, &batches).await?;
    for (name, point) in [("Salbutamol 100 micrograms/dose inhaler (200 doses)", 20), ("Enalapril 10 mg tablet", 10), ("Amoxicillin 500 mg capsule", 50)] {
        if let Ok(medication_id) = medication(name).await {
            pharmacy::set_reorder_point(pool, admin, facility_ids[0], medication_id, point).await?;
        }
    }
    // The demo doctor prescribes for two patients at Central General's pharmacy.
    let doctor = Caller { principal: Principal { user_id: user_ids[2], role: Role::Doctor, ..admin.principal.clone() }, source_addr: admin.source_addr.clone() };
    for (patient, name, quantity) in [(0, "Amoxicillin 500 mg capsule", 21), (1, "Metformin 500 mg tablet", 60)] {
        if let Ok(medication_id) = medication(name).await {
            let new = NewPrescription::new(patient_ids[patient], medication_id, facility_ids[0], "1 tablet", "as directed", 7, quantity, 1, None)?;
            pharmacy::prescribe(runtime, pool, &doctor, new).await?;
        }
    }
    Ok(())
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
