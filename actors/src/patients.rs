//! Patient records: who a patient is (name, date of birth, sex, phone, address, emergency
//! contacts, medical record number), who may see them, and the audit trail every look at them leaves.
//!
//! Every value of a record is a type built by a fallible constructor ([`Mrn`], [`Phone`],
//! [`BirthDate`], [`Address`], …) that also drives its `Deserialize`, so a request body parses
//! straight into trusted values and a bad one is refused naming the exact field
//! (`emergency_contacts[1].phone`). Records are plain rows owned by no actor: a change is one
//! transaction with optimistic concurrency on `version`, and nobody else writes them.
//!
//! Patient data is never shown without a trace. [`create`] and [`update`] append their audit entry
//! in the transaction that changes the row; [`get`] and [`search`] append one entry per record they
//! return and commit it before they hand the data back. Refusals are recorded too
//! ([`record_refusal`]). Who may read: the tenant's clinical staff ([`CLINICAL_STAFF`]) any record of
//! their tenant, a patient-role user only the record linked to them; everyone else nothing.
//! Audit entries name the patient but hold no patient data (the trail is immutable).

use std::fmt;

use chrono::{DateTime, Datelike, Days, NaiveDate, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::json;
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder, Row};
use tracing::info;
use uuid::Uuid;

use crate::audit::{self, AuditRecord, Outcome};
use crate::domain::{Caller, GeoPoint, Role};
use crate::error::ActorError;

/// Who may register, change, search and read any patient of their tenant.
pub const CLINICAL_STAFF: &[Role] = &[Role::Doctor, Role::Nurse, Role::Admin];
/// Who may read a record at all (a patient only their own, see [`read_access`]).
pub const RECORD_READERS: &[Role] = &[Role::Doctor, Role::Nurse, Role::Admin, Role::Patient];
/// The most records one search returns.
pub const MAX_SEARCH_RESULTS: usize = 50;
pub const MAX_EMERGENCY_CONTACTS: usize = 10;
/// Generated MRNs draw from 10^8 numbers; a few collisions in a row mean something else is wrong.
const MRN_ATTEMPTS: usize = 8;

fn invalid(field: &'static str, detail: impl Into<String>) -> ActorError {
    ActorError::Invalid { field, detail: detail.into() }
}

/// Trimmed, 1 to `max` characters, one line (no control characters).
fn clean_text(field: &'static str, value: &str, max: usize) -> Result<String, ActorError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(invalid(field, format!("{field} must not be empty")));
    }
    if value.chars().count() > max {
        return Err(invalid(field, format!("{field} must be at most {max} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(field, format!("{field} must be one line of text, without control characters")));
    }
    Ok(value.to_owned())
}

/// A one-line text value of bounded length: the newtype, its constructor, and a `Deserialize`
/// that goes through the constructor.
macro_rules! bounded_text {
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(value: &str) -> Result<$name, ActorError> {
                clean_text($field, value, $max).map($name)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = ActorError;
            fn try_from(value: String) -> Result<Self, ActorError> {
                $name::parse(&value)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

bounded_text!(
    /// A person's name or one part of it (a given name, a family name, a contact's full name).
    PersonName, "name", 100
);
bounded_text!(
    /// How an emergency contact relates to the patient ("mother", "spouse", "neighbour").
    Relationship, "relationship", 60
);
bounded_text!(
    /// The street part of an address, on one line.
    AddressLine, "line", 200
);
bounded_text!(City, "city", 100);
bounded_text!(PostalCode, "postal_code", 20);

/// A patient's official name: given name(s) and family name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PatientName {
    #[serde(rename = "given_name")]
    pub given: PersonName,
    #[serde(rename = "family_name")]
    pub family: PersonName,
}

impl PatientName {
    pub fn new(given: &str, family: &str) -> Result<PatientName, ActorError> {
        Ok(PatientName {
            given: PersonName(clean_text("given_name", given, 100)?),
            family: PersonName(clean_text("family_name", family, 100)?),
        })
    }
}

/// A medical record number, unique within a tenant: 1 to 32 letters, digits and `-`, starting
/// with a letter or digit, kept in upper case so that `mh-7` and `MH-7` are the same record.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct Mrn(String);

impl Mrn {
    pub fn parse(value: &str) -> Result<Mrn, ActorError> {
        let value = value.trim().to_ascii_uppercase();
        let well_formed = (1..=32).contains(&value.len())
            && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && value.starts_with(|c: char| c.is_ascii_alphanumeric());
        if well_formed {
            Ok(Mrn(value))
        } else {
            Err(invalid("mrn", "mrn must be 1 to 32 letters, digits and '-', starting with a letter or digit"))
        }
    }

    /// A fresh candidate, `MH` and 8 digits; the caller retries on collision.
    pub fn generate() -> Mrn {
        Mrn(format!("MH{:08}", Uuid::new_v4().as_u128() % 100_000_000))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Mrn {
    type Error = ActorError;
    fn try_from(value: String) -> Result<Self, ActorError> {
        Mrn::parse(&value)
    }
}

impl fmt::Display for Mrn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A phone number, E.164-ish: 7 to 15 digits, optionally led by `+`. Spaces, dashes, dots and
/// brackets people type are dropped, so `+254 (712) 345-678` is stored and found as `+254712345678`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct Phone(String);

impl Phone {
    pub fn parse(value: &str) -> Result<Phone, ActorError> {
        let compact: String = value.chars().filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')')).collect();
        let digits = compact.strip_prefix('+').unwrap_or(&compact);
        if (7..=15).contains(&digits.len()) && digits.chars().all(|c| c.is_ascii_digit()) {
            Ok(Phone(compact))
        } else {
            Err(invalid(
                "phone",
                format!("phone {value:?} must be 7 to 15 digits, optionally starting with + (such as +254712345678)"),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Phone {
    type Error = ActorError;
    fn try_from(value: String) -> Result<Self, ActorError> {
        Phone::parse(&value)
    }
}

impl fmt::Display for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Administrative sex, as FHIR's `gender` codes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sex {
    Female,
    Male,
    Other,
    Unknown,
}

impl Sex {
    pub const ALL: [Sex; 4] = [Sex::Female, Sex::Male, Sex::Other, Sex::Unknown];

    pub fn as_str(self) -> &'static str {
        match self {
            Sex::Female => "female",
            Sex::Male => "male",
            Sex::Other => "other",
            Sex::Unknown => "unknown",
        }
    }

    pub fn parse(value: &str) -> Result<Sex, ActorError> {
        Sex::ALL
            .into_iter()
            .find(|sex| sex.as_str() == value)
            .ok_or_else(|| invalid("sex", format!("sex {value:?} must be one of female, male, other, unknown")))
    }
}

/// A date of birth, written `YYYY-MM-DD`: not in the future, at most 150 years ago.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct BirthDate(NaiveDate);

impl BirthDate {
    /// `today` is the caller's idea of the current date (UTC); a day of slack lets a clinic east of
    /// UTC register a baby born after its local midnight.
    pub fn parse(value: &str, today: NaiveDate) -> Result<BirthDate, ActorError> {
        let value = value.trim();
        let shaped = value.len() == 10
            && value.char_indices().all(|(i, c)| if i == 4 || i == 7 { c == '-' } else { c.is_ascii_digit() });
        let date = NaiveDate::parse_from_str(value, "%Y-%m-%d")
            .ok()
            .filter(|_| shaped)
            .ok_or_else(|| invalid("birth_date", format!("birth_date {value:?} must be a calendar date written YYYY-MM-DD")))?;
        let latest = today.checked_add_days(Days::new(1)).unwrap_or(today);
        if date > latest {
            return Err(invalid("birth_date", format!("birth_date {value} is in the future")));
        }
        let earliest = NaiveDate::from_ymd_opt(today.year() - 150, 1, 1).unwrap_or(NaiveDate::MIN);
        if date < earliest {
            return Err(invalid("birth_date", format!("birth_date {value} is more than 150 years ago")));
        }
        Ok(BirthDate(date))
    }

    pub fn date(&self) -> NaiveDate {
        self.0
    }
}

impl TryFrom<String> for BirthDate {
    type Error = ActorError;
    fn try_from(value: String) -> Result<Self, ActorError> {
        BirthDate::parse(&value, Utc::now().date_naive())
    }
}

impl fmt::Display for BirthDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.format("%Y-%m-%d"))
    }
}

/// The officially assigned ISO 3166-1 alpha-2 codes.
const ISO_3166_ALPHA2: &str = "\
AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT \
BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH \
ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT \
HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS \
LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI \
NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG \
SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG \
UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW";

/// A country as its ISO 3166-1 alpha-2 code (`KE`, `GB`), kept in upper case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct CountryCode(String);

impl CountryCode {
    pub fn parse(value: &str) -> Result<CountryCode, ActorError> {
        let code = value.trim().to_ascii_uppercase();
        if code.len() == 2 && ISO_3166_ALPHA2.split(' ').any(|known| known == code) {
            Ok(CountryCode(code))
        } else {
            Err(invalid("country", format!("country {value:?} must be an ISO 3166-1 alpha-2 code such as \"KE\" or \"GB\"")))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for CountryCode {
    type Error = ActorError;
    fn try_from(value: String) -> Result<Self, ActorError> {
        CountryCode::parse(&value)
    }
}

/// Where a patient lives. `location` (WGS84) is what a dispatcher's map shows, when known.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Address {
    pub line: AddressLine,
    pub city: City,
    #[serde(default)]
    pub postal_code: Option<PostalCode>,
    pub country: CountryCode,
    #[serde(default, deserialize_with = "optional_location")]
    pub location: Option<GeoPoint>,
}

impl Address {
    pub fn new(line: &str, city: &str, postal_code: Option<&str>, country: &str, location: Option<GeoPoint>) -> Result<Address, ActorError> {
        Ok(Address {
            line: AddressLine::parse(line)?,
            city: City::parse(city)?,
            postal_code: postal_code.map(PostalCode::parse).transpose()?,
            country: CountryCode::parse(country)?,
            location,
        })
    }
}

/// A latitude on its own, so that a bad one is named `….location.lat`, not just `….location`.
#[derive(Deserialize)]
#[serde(try_from = "f64")]
struct Latitude(f64);

impl TryFrom<f64> for Latitude {
    type Error = String;
    fn try_from(value: f64) -> Result<Self, String> {
        GeoPoint::new(value, 0.0).map(|_| Latitude(value))
    }
}

#[derive(Deserialize)]
#[serde(try_from = "f64")]
struct Longitude(f64);

impl TryFrom<f64> for Longitude {
    type Error = String;
    fn try_from(value: f64) -> Result<Self, String> {
        GeoPoint::new(0.0, value).map(|_| Longitude(value))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireLocation {
    lat: Latitude,
    lon: Longitude,
}

fn optional_location<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<GeoPoint>, D::Error> {
    Option::<WireLocation>::deserialize(deserializer)?
        .map(|wire| GeoPoint::new(wire.lat.0, wire.lon.0).map_err(serde::de::Error::custom))
        .transpose()
}

/// Someone to call when the patient cannot speak for themself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmergencyContact {
    pub name: PersonName,
    pub relationship: Relationship,
    pub phone: Phone,
}

impl EmergencyContact {
    pub fn new(name: &str, relationship: &str, phone: &str) -> Result<EmergencyContact, ActorError> {
        Ok(EmergencyContact {
            name: PersonName::parse(name)?,
            relationship: Relationship::parse(relationship)?,
            phone: Phone::parse(phone)?,
        })
    }
}

/// What a registration or an update says about the patient (everything but the identifiers).
#[derive(Debug, Clone, PartialEq)]
pub struct PatientDetails {
    name: PatientName,
    birth_date: BirthDate,
    sex: Sex,
    phone: Option<Phone>,
    address: Option<Address>,
    emergency_contacts: Vec<EmergencyContact>,
}

impl PatientDetails {
    pub fn new(
        name: PatientName,
        birth_date: BirthDate,
        sex: Sex,
        phone: Option<Phone>,
        address: Option<Address>,
        emergency_contacts: Vec<EmergencyContact>,
    ) -> Result<PatientDetails, ActorError> {
        if emergency_contacts.len() > MAX_EMERGENCY_CONTACTS {
            return Err(invalid("emergency_contacts", format!("a patient has at most {MAX_EMERGENCY_CONTACTS} emergency contacts")));
        }
        Ok(PatientDetails { name, birth_date, sex, phone, address, emergency_contacts })
    }
}

/// A patient to register. Without an MRN one is generated; `user_id` links the patient-role user
/// who is this patient.
#[derive(Debug, Clone)]
pub struct NewPatient {
    pub mrn: Option<Mrn>,
    pub details: PatientDetails,
    pub user_id: Option<Uuid>,
}

/// A change to a record the caller read at `expected_version`: the details are replaced;
/// `mrn` and `user_id` change only when given (`Some(None)` unlinks the user).
#[derive(Debug, Clone)]
pub struct PatientUpdate {
    pub expected_version: i64,
    pub mrn: Option<Mrn>,
    pub details: PatientDetails,
    pub user_id: Option<Option<Uuid>>,
}

/// A patient record as stored and as `GET /api/patients/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Patient {
    pub id: Uuid,
    pub mrn: Mrn,
    #[serde(flatten)]
    pub name: PatientName,
    pub birth_date: BirthDate,
    pub sex: Sex,
    pub phone: Option<Phone>,
    pub address: Option<Address>,
    pub emergency_contacts: Vec<EmergencyContact>,
    /// The patient-role user who is this patient, if linked.
    pub user_id: Option<Uuid>,
    /// Starts at 1; every change adds one. Updates must name the version they were made against.
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The names of the fields an update would change (for the audit entry: which, never what).
pub fn changed_fields(current: &Patient, mrn: &Mrn, details: &PatientDetails, user_id: Option<Uuid>) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |field: &'static str, differs: bool| {
        if differs {
            changed.push(field);
        }
    };
    check("mrn", current.mrn != *mrn);
    check("given_name", current.name.given != details.name.given);
    check("family_name", current.name.family != details.name.family);
    check("birth_date", current.birth_date != details.birth_date);
    check("sex", current.sex != details.sex);
    check("phone", current.phone != details.phone);
    check("address", current.address != details.address);
    check("emergency_contacts", current.emergency_contacts != details.emergency_contacts);
    check("user_id", current.user_id != user_id);
    changed
}

/// How much of the tenant's patient data a role may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadAccess {
    /// Every patient of the tenant.
    AnyPatient,
    /// Only the record linked to the caller's own user.
    OwnRecord,
    Nothing,
}

pub fn read_access(role: Role) -> ReadAccess {
    match role {
        Role::Doctor | Role::Nurse | Role::Admin => ReadAccess::AnyPatient,
        Role::Patient => ReadAccess::OwnRecord,
        Role::Dispatcher | Role::Pharmacist => ReadAccess::Nothing,
    }
}

/// What a read is for; it names the audit entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadPurpose {
    /// `GET /api/patients/{id}`: `patient.read`.
    Record,
    /// The FHIR Patient resource: `patient.read_fhir`.
    Fhir,
}

impl ReadPurpose {
    pub fn action(self) -> &'static str {
        match self {
            ReadPurpose::Record => "patient.read",
            ReadPurpose::Fhir => "patient.read_fhir",
        }
    }
}

/// A search: name prefix (each word must start the given or the family name, any case), exact
/// MRN, exact phone; the filters given combine with AND, and at least one is required.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatientQuery {
    name_words: Vec<String>,
    mrn: Option<Mrn>,
    phone: Option<Phone>,
}

impl PatientQuery {
    /// Empty values count as absent.
    pub fn parse(q: Option<&str>, mrn: Option<&str>, phone: Option<&str>) -> Result<PatientQuery, ActorError> {
        let present = |value: Option<&str>| value.map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned);
        let (q, mrn, phone) = (present(q), present(mrn), present(phone));
        if q.is_none() && mrn.is_none() && phone.is_none() {
            return Err(invalid("q", "give at least one of q (the start of a given or family name), mrn or phone"));
        }
        let name_words = match q {
            Some(q) => {
                let q = clean_text("q", &q, 100)?;
                let words: Vec<String> = q.split_whitespace().map(str::to_owned).collect();
                if words.len() > 4 {
                    return Err(invalid("q", "q holds at most 4 words"));
                }
                words
            }
            None => Vec::new(),
        };
        Ok(PatientQuery {
            name_words,
            mrn: mrn.as_deref().map(Mrn::parse).transpose()?,
            phone: phone.as_deref().map(Phone::parse).transpose()?,
        })
    }

    /// Which filters were used (the audit entry names them, not their values).
    fn filter_names(&self) -> Vec<&'static str> {
        [("q", !self.name_words.is_empty()), ("mrn", self.mrn.is_some()), ("phone", self.phone.is_some())]
            .into_iter()
            .filter_map(|(name, used)| used.then_some(name))
            .collect()
    }
}

/// A page of search hits, ordered by family then given name. `more`: further records matched;
/// the caller should narrow the search.
#[derive(Debug, Clone, Serialize)]
pub struct SearchResult {
    pub patients: Vec<Patient>,
    pub more: bool,
}

// ---------------------------------------------------------------------------------------------
// Persistence

const COLUMNS: &str = "id, mrn, given_name, family_name, birth_date, sex, phone, address, emergency_contacts, \
                       user_id, version, created_at, updated_at";

fn decode_error(what: String) -> sqlx::Error {
    sqlx::Error::Decode(what.into())
}

/// Rows were written through the constructors, so they are taken as they are.
fn patient_from_row(row: &PgRow) -> Result<Patient, sqlx::Error> {
    let sex: String = row.try_get("sex")?;
    let sex = Sex::parse(&sex).map_err(|e| decode_error(e.to_string()))?;
    let address: Option<Json<Address>> = row.try_get("address")?;
    let contacts: Json<Vec<EmergencyContact>> = row.try_get("emergency_contacts")?;
    Ok(Patient {
        id: row.try_get("id")?,
        mrn: Mrn(row.try_get("mrn")?),
        name: PatientName { given: PersonName(row.try_get("given_name")?), family: PersonName(row.try_get("family_name")?) },
        birth_date: BirthDate(row.try_get("birth_date")?),
        sex,
        phone: row.try_get::<Option<String>, _>("phone")?.map(Phone),
        address: address.map(|json| json.0),
        emergency_contacts: contacts.0,
        user_id: row.try_get("user_id")?,
        version: row.try_get("version")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// A unique violation is a conflict with another record; anything else is a database failure.
fn unique_conflict(error: sqlx::Error, mrn: &Mrn, user_id: Option<Uuid>) -> ActorError {
    if let sqlx::Error::Database(db) = &error {
        if db.is_unique_violation() {
            return match db.constraint() {
                Some("patients_user_id_key") => ActorError::Conflict(format!(
                    "user {} is already linked to another patient record; unlink it there first",
                    user_id.map(|id| id.to_string()).unwrap_or_default()
                )),
                _ => ActorError::Conflict(format!("MRN {mrn} is already used by another patient of this tenant")),
            };
        }
    }
    ActorError::Database(error)
}

/// A patient record may be linked only to a patient-role user of the same tenant.
async fn check_patient_user(conn: &mut PgConnection, tenant_id: Uuid, user_id: Uuid) -> Result<(), ActorError> {
    let role: Option<String> = sqlx::query_scalar("SELECT role FROM users WHERE id = $1 AND tenant_id = $2")
        .bind(user_id)
        .bind(tenant_id)
        .fetch_optional(conn)
        .await?;
    match role.as_deref() {
        Some("patient") => Ok(()),
        Some(_) => Err(invalid("user_id", format!("user {user_id} does not have the patient role; only a patient-role user can be linked"))),
        None => Err(invalid("user_id", format!("user {user_id} is not a user of this tenant"))),
    }
}

/// Records, in its own transaction, that the caller was refused `action` (naming the patient
/// they asked for, if any).
pub async fn record_refusal(pool: &PgPool, caller: &Caller, action: &str, patient_id: Option<Uuid>, reason: &str) -> Result<(), ActorError> {
    let mut record = AuditRecord::by_caller(caller, action, "patient", patient_id.map(|id| id.to_string()).unwrap_or_default())
        .patient(patient_id)
        .outcome(Outcome::Denied)
        .detail(json!({"reason": reason}));
    if patient_id.is_none() {
        record.resource_id = None;
    }
    audit::record(pool, caller.principal.tenant_id, &record).await?;
    Ok(())
}

/// Refuses (and records the refusal) unless the caller is clinical staff.
async fn require_clinical_staff(pool: &PgPool, caller: &Caller, action: &str, patient_id: Option<Uuid>, doing: &str) -> Result<(), ActorError> {
    if caller.principal.has_role(CLINICAL_STAFF) {
        return Ok(());
    }
    let reason = format!("role {} may not {doing}", caller.principal.role);
    record_refusal(pool, caller, action, patient_id, &reason).await?;
    Err(ActorError::Forbidden(reason))
}

fn read_record(caller: &Caller, action: &str, patient_id: Uuid) -> AuditRecord {
    AuditRecord::by_caller(caller, action, "patient", patient_id).patient(Some(patient_id))
}

/// Registers a patient (clinical staff only). An MRN is generated when none is given.
#[tracing::instrument(name = "patient.create", skip_all, fields(tenant = %caller.principal.tenant_slug, patient = tracing::field::Empty))]
pub async fn create(pool: &PgPool, caller: &Caller, new: NewPatient) -> Result<Patient, ActorError> {
    require_clinical_staff(pool, caller, "patient.create", None, "register patients").await?;
    let tenant_id = caller.principal.tenant_id;
    let details = &new.details;
    let id = Uuid::new_v4();
    tracing::Span::current().record("patient", tracing::field::display(id));
    let mut tx = pool.begin().await?;
    if let Some(user_id) = new.user_id {
        check_patient_user(&mut tx, tenant_id, user_id).await?;
    }
    let mut attempts = 0;
    let row = loop {
        let mrn = new.mrn.clone().unwrap_or_else(Mrn::generate);
        // ON CONFLICT on the MRN only: taking a linked user twice still fails, as it should.
        let inserted = sqlx::query(&format!(
            "INSERT INTO patients (id, tenant_id, mrn, given_name, family_name, birth_date, sex, phone, address,
                                   emergency_contacts, user_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (tenant_id, mrn) DO NOTHING
             RETURNING {COLUMNS}"
        ))
        .bind(id)
        .bind(tenant_id)
        .bind(mrn.as_str())
        .bind(details.name.given.as_str())
        .bind(details.name.family.as_str())
        .bind(details.birth_date.date())
        .bind(details.sex.as_str())
        .bind(details.phone.as_ref().map(Phone::as_str))
        .bind(details.address.as_ref().map(Json))
        .bind(Json(&details.emergency_contacts))
        .bind(new.user_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| unique_conflict(e, &mrn, new.user_id))?;
        match inserted {
            Some(row) => break row,
            None if new.mrn.is_some() => {
                return Err(ActorError::Conflict(format!("MRN {mrn} is already used by another patient of this tenant")))
            }
            None => {
                attempts += 1;
                if attempts >= MRN_ATTEMPTS {
                    return Err(ActorError::Unavailable("no free medical record number was found; retry".to_owned()));
                }
            }
        }
    };
    let patient = patient_from_row(&row)?;
    let record = AuditRecord::by_caller(caller, "patient.create", "patient", id)
        .patient(Some(id))
        .detail(json!({"mrn_generated": new.mrn.is_none(), "linked_user_id": new.user_id}));
    audit::append(&mut tx, tenant_id, &record).await?;
    tx.commit().await?;
    info!(patient = %id, "patient registered");
    Ok(patient)
}

/// Reads one record of the caller's tenant, if the caller may see it, and records the read
/// before returning it. A patient asking for someone else's record is told it does not exist
/// (and the attempt is recorded as denied); a role that may not read patients gets `Forbidden`.
#[tracing::instrument(name = "patient.read", skip_all, fields(tenant = %caller.principal.tenant_slug, patient = %id))]
pub async fn get(pool: &PgPool, caller: &Caller, id: Uuid, purpose: ReadPurpose) -> Result<Patient, ActorError> {
    let action = purpose.action();
    let access = read_access(caller.principal.role);
    if access == ReadAccess::Nothing {
        let reason = format!("role {} may not read patient records", caller.principal.role);
        record_refusal(pool, caller, action, Some(id), &reason).await?;
        return Err(ActorError::Forbidden(reason));
    }
    let tenant_id = caller.principal.tenant_id;
    let mut tx = pool.begin().await?;
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM patients WHERE id = $1 AND tenant_id = $2"))
        .bind(id)
        .bind(tenant_id)
        .fetch_optional(&mut *tx)
        .await?;
    let patient = match row {
        Some(row) => patient_from_row(&row)?,
        None => return Err(ActorError::NotFound("patient")),
    };
    if access == ReadAccess::OwnRecord && patient.user_id != Some(caller.principal.user_id) {
        let record = read_record(caller, action, id)
            .outcome(Outcome::Denied)
            .detail(json!({"reason": "a patient may read only their own record"}));
        audit::append(&mut tx, tenant_id, &record).await?;
        tx.commit().await?;
        return Err(ActorError::NotFound("patient"));
    }
    audit::append(&mut tx, tenant_id, &read_record(caller, action, id)).await?;
    tx.commit().await?;
    Ok(patient)
}

/// Changes a record (clinical staff only), provided nobody changed it since `expected_version`.
/// An update that changes nothing keeps the version (and is still recorded).
#[tracing::instrument(name = "patient.update", skip_all, fields(tenant = %caller.principal.tenant_slug, patient = %id))]
pub async fn update(pool: &PgPool, caller: &Caller, id: Uuid, update: PatientUpdate) -> Result<Patient, ActorError> {
    require_clinical_staff(pool, caller, "patient.update", Some(id), "change patient records").await?;
    let tenant_id = caller.principal.tenant_id;
    let mut tx = pool.begin().await?;
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM patients WHERE id = $1 AND tenant_id = $2 FOR UPDATE"))
        .bind(id)
        .bind(tenant_id)
        .fetch_optional(&mut *tx)
        .await?;
    let current = match row {
        Some(row) => patient_from_row(&row)?,
        None => return Err(ActorError::NotFound("patient")),
    };
    if current.version != update.expected_version {
        return Err(ActorError::Conflict(format!(
            "the patient record was changed since version {} (it is at version {} now); reload it and apply your change again",
            update.expected_version, current.version
        )));
    }
    let mrn = update.mrn.clone().unwrap_or_else(|| current.mrn.clone());
    let user_id = update.user_id.unwrap_or(current.user_id);
    if let Some(user_id) = user_id.filter(|linked| Some(*linked) != current.user_id) {
        check_patient_user(&mut tx, tenant_id, user_id).await?;
    }
    let details = &update.details;
    let changed = changed_fields(&current, &mrn, details, user_id);
    let patient = if changed.is_empty() {
        current
    } else {
        let row = sqlx::query(&format!(
            "UPDATE patients SET mrn = $3, given_name = $4, family_name = $5, birth_date = $6, sex = $7, phone = $8,
                                 address = $9, emergency_contacts = $10, user_id = $11,
                                 version = version + 1, updated_at = now()
             WHERE id = $1 AND tenant_id = $2
             RETURNING {COLUMNS}"
        ))
        .bind(id)
        .bind(tenant_id)
        .bind(mrn.as_str())
        .bind(details.name.given.as_str())
        .bind(details.name.family.as_str())
        .bind(details.birth_date.date())
        .bind(details.sex.as_str())
        .bind(details.phone.as_ref().map(Phone::as_str))
        .bind(details.address.as_ref().map(Json))
        .bind(Json(&details.emergency_contacts))
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| unique_conflict(e, &mrn, user_id))?;
        patient_from_row(&row)?
    };
    let record = AuditRecord::by_caller(caller, "patient.update", "patient", id)
        .patient(Some(id))
        .detail(json!({"changed": changed, "version": patient.version}));
    audit::append(&mut tx, tenant_id, &record).await?;
    tx.commit().await?;
    info!(patient = %id, version = patient.version, "patient record updated");
    Ok(patient)
}

/// Escapes `LIKE` wildcards so a name is matched as typed.
fn like_prefix(word: &str) -> String {
    let mut pattern = String::with_capacity(word.len() + 1);
    for c in word.chars() {
        if matches!(c, '\\' | '%' | '_') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// Finds the tenant's patients matching `query` (clinical staff only), at most
/// [`MAX_SEARCH_RESULTS`]; one `patient.search` audit entry per record returned, committed first.
#[tracing::instrument(name = "patient.search", skip_all, fields(tenant = %caller.principal.tenant_slug))]
pub async fn search(pool: &PgPool, caller: &Caller, query: &PatientQuery) -> Result<SearchResult, ActorError> {
    require_clinical_staff(pool, caller, "patient.search", None, "search patient records").await?;
    let tenant_id = caller.principal.tenant_id;
    let mut tx = pool.begin().await?;
    let mut sql: QueryBuilder<Postgres> = QueryBuilder::new(format!("SELECT {COLUMNS} FROM patients WHERE tenant_id = "));
    sql.push_bind(tenant_id);
    for word in &query.name_words {
        // lower() on both sides: the database's idea of case is the one its indexes use.
        let pattern = like_prefix(word);
        sql.push(" AND (lower(given_name) LIKE lower(")
            .push_bind(pattern.clone())
            .push(") OR lower(family_name) LIKE lower(")
            .push_bind(pattern)
            .push("))");
    }
    if let Some(mrn) = &query.mrn {
        sql.push(" AND mrn = ").push_bind(mrn.as_str().to_owned());
    }
    if let Some(phone) = &query.phone {
        sql.push(" AND phone = ").push_bind(phone.as_str().to_owned());
    }
    // One more than returned tells whether more matched.
    sql.push(" ORDER BY lower(family_name), lower(given_name), id LIMIT ").push_bind(MAX_SEARCH_RESULTS as i64 + 1);
    let rows = sql.build().fetch_all(&mut *tx).await?;
    let more = rows.len() > MAX_SEARCH_RESULTS;
    let patients = rows.iter().take(MAX_SEARCH_RESULTS).map(patient_from_row).collect::<Result<Vec<_>, _>>()?;
    let detail = json!({"filters": query.filter_names(), "hits": patients.len()});
    for patient in &patients {
        audit::append(&mut tx, tenant_id, &read_record(caller, "patient.search", patient.id).detail(detail.clone())).await?;
    }
    tx.commit().await?;
    Ok(SearchResult { patients, more })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(result: Result<impl fmt::Debug, ActorError>) -> &'static str {
        match result {
            Err(ActorError::Invalid { field, .. }) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        }
    }

    fn day(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn a_receptionist_writes_phone_numbers_the_way_people_say_them() {
        assert_eq!(Phone::parse("+254 (712) 345-678").unwrap().as_str(), "+254712345678");
        assert_eq!(Phone::parse("0712.345.678").unwrap().as_str(), "0712345678");
        assert!(Phone::parse("1234567").is_ok(), "seven digits is the shortest number");
        assert!(Phone::parse("+123456789012345").is_ok(), "fifteen digits is the longest");
        for bad in ["", "+", "123456", "+1234567890123456", "07123x5678", "++254712345678", "254+712345678"] {
            assert_eq!(field_of(Phone::parse(bad)), "phone", "{bad:?} is not a phone number");
        }
    }

    #[test]
    fn record_numbers_are_short_codes_in_upper_case() {
        assert_eq!(Mrn::parse(" mh-0042 ").unwrap().as_str(), "MH-0042");
        for bad in ["", "-12", "MH 12", "MH/12", "Ä1", &"9".repeat(33)] {
            assert_eq!(field_of(Mrn::parse(bad)), "mrn", "{bad:?}");
        }
        let generated = Mrn::generate();
        assert_eq!(generated.as_str().len(), 10);
        assert!(generated.as_str().starts_with("MH") && generated.as_str()[2..].chars().all(|c| c.is_ascii_digit()));
        assert_eq!(Mrn::parse(generated.as_str()).unwrap(), generated, "a generated MRN is a valid one");
    }

    #[test]
    fn a_birth_date_is_a_real_past_date() {
        let today = day("2026-03-15");
        assert_eq!(BirthDate::parse("1984-02-29", today).unwrap().to_string(), "1984-02-29");
        assert!(BirthDate::parse("2026-03-16", today).is_ok(), "a newborn east of UTC may be a day ahead");
        for bad in ["1985-02-29", "1984-13-01", "84-01-01", "1984-1-1", "01/02/1984", "yesterday", "", "2026-03-17", "1875-06-01"] {
            assert_eq!(field_of(BirthDate::parse(bad, today)), "birth_date", "{bad:?}");
        }
    }

    #[test]
    fn sex_uses_the_four_fhir_codes() {
        for sex in Sex::ALL {
            assert_eq!(Sex::parse(sex.as_str()).unwrap(), sex);
        }
        assert_eq!(field_of(Sex::parse("f")), "sex");
        assert_eq!(field_of(Sex::parse("Female")), "sex");
        assert!(serde_json::from_str::<Sex>("\"yes\"").is_err());
    }

    #[test]
    fn names_are_one_trimmed_line_of_bounded_length() {
        let name = PatientName::new("  Ada Mary ", "Lovelace").unwrap();
        assert_eq!((name.given.as_str(), name.family.as_str()), ("Ada Mary", "Lovelace"));
        assert_eq!(field_of(PatientName::new(" ", "Lovelace")), "given_name");
        assert_eq!(field_of(PatientName::new("Ada", &"x".repeat(101))), "family_name");
        assert_eq!(field_of(PatientName::new("Ada\nDrop", "Lovelace")), "given_name");
        assert!(PatientName::new("Zoë", "Ng'ang'a").is_ok());
    }

    #[test]
    fn countries_are_iso_alpha_2_codes() {
        assert_eq!(ISO_3166_ALPHA2.split(' ').count(), 249);
        assert_eq!(CountryCode::parse("ke").unwrap().as_str(), "KE");
        for bad in ["", "K", "KEN", "XX", "UK", "Kenya"] {
            assert_eq!(field_of(CountryCode::parse(bad)), "country", "{bad:?}");
        }
    }

    #[test]
    fn an_address_is_checked_part_by_part_and_its_location_by_coordinate() {
        let home = Address::new("12 Ngong Road", "Nairobi", Some("00100"), "ke", Some(GeoPoint::new(-1.3, 36.8).unwrap())).unwrap();
        assert_eq!(home.country.as_str(), "KE");
        assert_eq!(field_of(Address::new("", "Nairobi", None, "KE", None)), "line");
        assert_eq!(field_of(Address::new("12 Ngong Road", "Nairobi", Some(""), "KE", None)), "postal_code");

        let body = r#"{"line": "12 Ngong Road", "city": "Nairobi", "country": "KE", "location": {"lat": -1.3, "lon": 36.8}}"#;
        let parsed: Address = serde_json::from_str(body).unwrap();
        assert_eq!(parsed.location, Some(GeoPoint::new(-1.3, 36.8).unwrap()));
        assert_eq!(serde_json::from_value::<Address>(serde_json::to_value(&parsed).unwrap()).unwrap(), parsed, "stored form reads back");
        let too_north = r#"{"line": "x", "city": "y", "country": "KE", "location": {"lat": 91, "lon": 0}}"#;
        let error = serde_json::from_str::<Address>(too_north).unwrap_err().to_string();
        assert!(error.contains("latitude 91"), "{error}");
        let extra = r#"{"line": "x", "city": "y", "country": "KE", "floor": 3}"#;
        assert!(serde_json::from_str::<Address>(extra).is_err(), "unknown fields are refused");
    }

    #[test]
    fn a_patient_has_at_most_ten_emergency_contacts() {
        let contact = EmergencyContact::new("Grace Hopper", "aunt", "+1 202 555 0100").unwrap();
        assert_eq!(contact.phone.as_str(), "+12025550100");
        assert_eq!(field_of(EmergencyContact::new("Grace", "", "+12025550100")), "relationship");
        assert_eq!(field_of(EmergencyContact::new("Grace", "aunt", "call me")), "phone");
        let details = |count: usize| {
            PatientDetails::new(
                PatientName::new("Ada", "Lovelace").unwrap(),
                BirthDate::parse("1984-02-29", day("2026-01-01")).unwrap(),
                Sex::Female,
                None,
                None,
                vec![contact.clone(); count],
            )
        };
        assert!(details(10).is_ok());
        assert_eq!(field_of(details(11)), "emergency_contacts");
    }

    #[test]
    fn only_clinical_staff_read_any_record_and_a_patient_only_their_own() {
        assert_eq!(read_access(Role::Doctor), ReadAccess::AnyPatient);
        assert_eq!(read_access(Role::Nurse), ReadAccess::AnyPatient);
        assert_eq!(read_access(Role::Admin), ReadAccess::AnyPatient);
        assert_eq!(read_access(Role::Patient), ReadAccess::OwnRecord);
        assert_eq!(read_access(Role::Dispatcher), ReadAccess::Nothing);
        assert_eq!(read_access(Role::Pharmacist), ReadAccess::Nothing);
        for role in Role::ALL {
            assert_eq!(RECORD_READERS.contains(&role), read_access(role) != ReadAccess::Nothing, "{role}");
            assert_eq!(CLINICAL_STAFF.contains(&role), read_access(role) == ReadAccess::AnyPatient, "{role}");
        }
    }

    #[test]
    fn a_search_needs_a_filter_and_matches_names_as_typed() {
        assert_eq!(field_of(PatientQuery::parse(None, None, None)), "q");
        assert_eq!(field_of(PatientQuery::parse(Some("  "), Some(""), None)), "q");
        assert_eq!(field_of(PatientQuery::parse(None, Some("MH 1"), None)), "mrn");
        assert_eq!(field_of(PatientQuery::parse(None, None, Some("12"))), "phone");
        assert_eq!(field_of(PatientQuery::parse(Some("a b c d e"), None, None)), "q");
        let query = PatientQuery::parse(Some(" ada  love "), Some("mh-1"), None).unwrap();
        assert_eq!(query.name_words, vec!["ada", "love"]);
        assert_eq!(query.mrn.as_ref().map(Mrn::as_str), Some("MH-1"));
        assert_eq!(query.filter_names(), vec!["q", "mrn"]);
        assert_eq!(like_prefix("50%_o\\k"), "50\\%\\_o\\\\k%");
    }

    #[test]
    fn an_update_names_the_fields_it_changes() {
        let details = PatientDetails::new(
            PatientName::new("Ada", "Lovelace").unwrap(),
            BirthDate::parse("1984-02-29", day("2026-01-01")).unwrap(),
            Sex::Female,
            Some(Phone::parse("+254712345678").unwrap()),
            None,
            Vec::new(),
        )
        .unwrap();
        let at = Utc::now();
        let current = Patient {
            id: Uuid::new_v4(),
            mrn: Mrn::parse("MH1").unwrap(),
            name: details.name.clone(),
            birth_date: details.birth_date,
            sex: details.sex,
            phone: details.phone.clone(),
            address: None,
            emergency_contacts: Vec::new(),
            user_id: None,
            version: 1,
            created_at: at,
            updated_at: at,
        };
        assert!(changed_fields(&current, &current.mrn, &details, None).is_empty());
        let mut moved = details.clone();
        moved.phone = None;
        moved.address = Some(Address::new("1 Main St", "Mombasa", None, "KE", None).unwrap());
        let linked = Some(Uuid::new_v4());
        assert_eq!(changed_fields(&current, &Mrn::parse("MH2").unwrap(), &moved, linked), vec!["mrn", "phone", "address", "user_id"]);
    }
}
