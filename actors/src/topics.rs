//! Live topics: their names, who may subscribe, and the snapshot a new subscriber starts from.
//! The WebSocket layer asks here on every subscribe, so this is the one place the rules live.

use serde_json::{json, Value};
use sqlx::PgPool;

use crate::domain::{Principal, Role, TenantSlug};
use crate::facility;
use crate::store;
use crate::schedule::{self, AppointmentsOf};
use uuid::Uuid;

pub fn beds_topic(tenant: &TenantSlug) -> String {
    format!("tenant/{tenant}/beds")
}

pub fn schedule_topic(tenant: &TenantSlug, doctor_id: Uuid) -> String {
    format!("tenant/{tenant}/schedule/{doctor_id}")
}

/// The dispatchers' live map: units, their positions and status, incidents, hospitals.
pub fn map_topic(tenant: &TenantSlug) -> String {
    format!("tenant/{tenant}/map")
}

/// A facility's incoming patients: pre-arrival alerts from units bringing them.
pub fn arrivals_topic(tenant: &TenantSlug, facility_id: Uuid) -> String {
    format!("tenant/{tenant}/facility/{facility_id}/arrivals")
}

/// A pharmacy's live stock board: batches and stock alerts.
pub fn stock_topic(tenant: &TenantSlug, pharmacy_id: Uuid) -> String {
    format!("tenant/{tenant}/stock/{pharmacy_id}")
}

/// A video consult's room: its state, participants and chat (and, over the WebSocket, its
/// media signaling).
pub fn consult_topic(tenant: &TenantSlug, session_id: Uuid) -> String {
    format!("tenant/{tenant}/consult/{session_id}")
}

/// A user's own feed: what concerns them personally (a patient's appointments, later their
/// prescriptions).
pub fn user_topic(tenant: &TenantSlug, user_id: Uuid) -> String {
    format!("tenant/{tenant}/user/{user_id}")
}

/// A topic a client may subscribe to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topic {
    /// `tenant/{t}/beds`: every facility's wards and beds.
    Beds { tenant: TenantSlug },
    /// `tenant/{t}/schedule/{doctor}`: one doctor's appointments, hours and time off.
    Schedule { tenant: TenantSlug, doctor_id: Uuid },
    /// `tenant/{t}/user/{user}`: one user's own feed.
    User { tenant: TenantSlug, user_id: Uuid },
    /// `tenant/{t}/stock/{pharmacy}`: a pharmacy's batches and stock alerts.
    Stock { tenant: TenantSlug, pharmacy_id: Uuid },
    /// `tenant/{t}/map`: ambulance units (live positions), their status and missions.
    Map { tenant: TenantSlug },
    /// `tenant/{t}/facility/{id}/arrivals`: pre-arrival alerts for patients on their way in.
    Arrivals { tenant: TenantSlug, facility_id: Uuid },
    /// `tenant/{t}/consult/{session}`: one video consult (its doctor, patient and guests only).
    Consult { tenant: TenantSlug, session_id: Uuid },
}

/// Why a subscription was refused, as told to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub error: &'static str,
    pub detail: String,
}

/// Who may watch which topic.
const BED_WATCHERS: &[Role] = &[Role::Admin, Role::Dispatcher, Role::Doctor, Role::Nurse];
const SCHEDULE_WATCHERS: &[Role] = &[Role::Admin, Role::Doctor, Role::Nurse];
const STOCK_WATCHERS: &[Role] = &[Role::Admin, Role::Pharmacist, Role::Doctor];
const MAP_WATCHERS: &[Role] = &[Role::Admin, Role::Dispatcher, Role::Doctor, Role::Nurse];

impl Topic {
    pub fn parse(name: &str) -> Result<Topic, Refusal> {
        let unknown = || Refusal { error: "unknown_topic", detail: format!("{name:?} is not a topic this hub publishes") };
        let parts: Vec<&str> = name.split('/').collect();
        let tenant = |slug: &str| TenantSlug::parse(slug).map_err(|_| unknown());
        let id = |text: &str| Uuid::parse_str(text).map_err(|_| unknown());
        match parts.as_slice() {
            ["tenant", slug, "beds"] => Ok(Topic::Beds { tenant: tenant(slug)? }),
            ["tenant", slug, "map"] => Ok(Topic::Map { tenant: tenant(slug)? }),
            ["tenant", slug, "facility", facility, "arrivals"] => Ok(Topic::Arrivals { tenant: tenant(slug)?, facility_id: id(facility)? }),
            ["tenant", slug, "schedule", doctor] => Ok(Topic::Schedule { tenant: tenant(slug)?, doctor_id: id(doctor)? }),
            ["tenant", slug, "user", user] => Ok(Topic::User { tenant: tenant(slug)?, user_id: id(user)? }),
            ["tenant", slug, "stock", pharmacy] => Ok(Topic::Stock { tenant: tenant(slug)?, pharmacy_id: id(pharmacy)? }),
            ["tenant", slug, "consult", session] => Ok(Topic::Consult { tenant: tenant(slug)?, session_id: id(session)? }),
            _ => Err(unknown()),
        }
    }

    pub fn name(&self) -> String {
        match self {
            Topic::Beds { tenant } => beds_topic(tenant),
            Topic::Schedule { tenant, doctor_id } => schedule_topic(tenant, *doctor_id),
            Topic::User { tenant, user_id } => user_topic(tenant, *user_id),
            Topic::Stock { tenant, pharmacy_id } => stock_topic(tenant, *pharmacy_id),
            Topic::Map { tenant } => map_topic(tenant),
            Topic::Arrivals { tenant, facility_id } => arrivals_topic(tenant, *facility_id),
            Topic::Consult { tenant, session_id } => consult_topic(tenant, *session_id),
        }
    }

    fn tenant(&self) -> &TenantSlug {
        match self {
            Topic::Beds { tenant } | Topic::Schedule { tenant, .. } | Topic::User { tenant, .. } | Topic::Stock { tenant, .. } | Topic::Map { tenant } | Topic::Arrivals { tenant, .. } | Topic::Consult { tenant, .. } => tenant,
        }
    }

    /// Checks tenant and role. Another tenant's topics are refused without saying whether that
    /// tenant exists.
    pub fn authorize(&self, principal: &Principal) -> Result<(), Refusal> {
        if self.tenant() != &principal.tenant_slug {
            return Err(Refusal { error: "forbidden", detail: format!("{} is not a topic of your tenant", self.name()) });
        }
        let allowed = match self {
            Topic::Beds { .. } => principal.has_role(BED_WATCHERS),
            Topic::Schedule { .. } => principal.has_role(SCHEDULE_WATCHERS),
            Topic::User { user_id, .. } => *user_id == principal.user_id,
            Topic::Stock { .. } => principal.has_role(STOCK_WATCHERS),
            Topic::Map { .. } => principal.has_role(MAP_WATCHERS),
            Topic::Arrivals { .. } => principal.has_role(SCHEDULE_WATCHERS),
            // Membership needs the database: see `authorize_member`.
            Topic::Consult { .. } => true,
        };
        if allowed {
            Ok(())
        } else {
            Err(Refusal { error: "forbidden", detail: format!("{} {} may not watch {}", principal.role, principal.user_id, self.name()) })
        }
    }

    /// [`Topic::authorize`], then what only the database can tell: whether the principal is a
    /// member of the consult (its doctor, its patient or an invited guest). Every subscribe and
    /// every media join goes through here.
    pub async fn authorize_member(&self, pool: &PgPool, principal: &Principal) -> Result<(), Refusal> {
        self.authorize(principal)?;
        let Topic::Consult { session_id, .. } = self else { return Ok(()) };
        match crate::consult::member_role(pool, principal.tenant_id, *session_id, principal.user_id).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(Refusal {
                error: "forbidden",
                detail: format!("only the consult's doctor, its patient and invited guests may join {}", self.name()),
            }),
            Err(e) => {
                tracing::warn!(error = %e, topic = %self.name(), "cannot check consult membership");
                Err(Refusal { error: "unavailable", detail: "the hub cannot check this consult right now; retry".to_owned() })
            }
        }
    }

    /// The topic's current state and the seq it reflects.
    pub async fn snapshot(&self, pool: &PgPool, principal: &Principal) -> Result<(i64, Value), sqlx::Error> {
        match self {
            Topic::Beds { tenant } => {
                let (seq, facilities) = facility::bed_board(pool, principal.tenant_id, &beds_topic(tenant)).await?;
                Ok((seq, json!({"seq": seq, "facilities": facilities})))
            }
            Topic::Schedule { tenant, doctor_id } => {
                let (seq, appointments) =
                    schedule::topic_snapshot(pool, principal.tenant_id, &self.name(), AppointmentsOf::Doctor(*doctor_id)).await?;
                Ok((seq, json!({"seq": seq, "doctor_id": doctor_id, "tenant": tenant, "appointments": appointments})))
            }
            Topic::User { user_id, .. } => {
                let (seq, appointments) =
                    schedule::topic_snapshot(pool, principal.tenant_id, &self.name(), AppointmentsOf::PatientUser(*user_id)).await?;
                Ok((seq, json!({"seq": seq, "appointments": appointments})))
            }
            Topic::Map { .. } => {
                let (seq, map) = crate::ambulance::map_snapshot(pool, principal.tenant_id, &self.name()).await?;
                Ok((seq, map))
            }
            Topic::Arrivals { facility_id, .. } => {
                // Alerts are events: a new watcher starts from now; `since` replays missed ones.
                let mut conn = pool.acquire().await?;
                let seq = store::topic_head(&mut conn, &self.name()).await?;
                Ok((seq, json!({"seq": seq, "facility_id": facility_id})))
            }
            Topic::Stock { pharmacy_id, .. } => {
                let board = crate::pharmacy::stock_board(pool, principal.tenant_id, *pharmacy_id, &self.name()).await?;
                Ok((board.seq, json!(board)))
            }
            Topic::Consult { session_id, .. } => crate::consult::topic_snapshot(pool, principal.tenant_id, &self.name(), *session_id).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(tenant: &str, role: Role) -> Principal {
        Principal {
            user_id: Uuid::new_v4(),
            tenant_id: Uuid::new_v4(),
            tenant_slug: TenantSlug::parse(tenant).unwrap(),
            role,
            session_id: Uuid::new_v4(),
        }
    }

    #[test]
    fn bed_topics_are_for_the_own_tenant_clinical_and_dispatch_staff() {
        let topic = Topic::parse("tenant/alpha/beds").unwrap();
        assert!(topic.authorize(&principal("alpha", Role::Nurse)).is_ok());
        assert!(topic.authorize(&principal("alpha", Role::Dispatcher)).is_ok());
        assert_eq!(topic.authorize(&principal("alpha", Role::Patient)).unwrap_err().error, "forbidden");
        assert_eq!(topic.authorize(&principal("beta", Role::Admin)).unwrap_err().error, "forbidden");
    }

    #[test]
    fn schedules_are_for_clinical_staff_and_user_feeds_for_their_user_only() {
        let doctor = Uuid::new_v4();
        let topic = Topic::parse(&format!("tenant/alpha/schedule/{doctor}")).unwrap();
        assert_eq!(topic, Topic::Schedule { tenant: TenantSlug::parse("alpha").unwrap(), doctor_id: doctor });
        assert!(topic.authorize(&principal("alpha", Role::Nurse)).is_ok());
        assert_eq!(topic.authorize(&principal("alpha", Role::Dispatcher)).unwrap_err().error, "forbidden");
        let me = principal("alpha", Role::Patient);
        let mine = Topic::parse(&format!("tenant/alpha/user/{}", me.user_id)).unwrap();
        assert!(mine.authorize(&me).is_ok());
        assert!(mine.authorize(&principal("alpha", Role::Admin)).is_err());
        assert_eq!(Topic::parse("tenant/alpha/schedule/not-a-uuid").unwrap_err().error, "unknown_topic");
    }

    #[test]
    fn consult_topics_name_a_session_of_the_own_tenant() {
        let session = Uuid::new_v4();
        let topic = Topic::parse(&format!("tenant/alpha/consult/{session}")).unwrap();
        assert_eq!(topic, Topic::Consult { tenant: TenantSlug::parse("alpha").unwrap(), session_id: session });
        assert_eq!(topic.name(), format!("tenant/alpha/consult/{session}"));
        assert_eq!(topic.authorize(&principal("beta", Role::Doctor)).unwrap_err().error, "forbidden");
        assert_eq!(Topic::parse("tenant/alpha/consult/nope").unwrap_err().error, "unknown_topic");
    }

    #[test]
    fn unknown_topics_are_refused_by_name() {
        assert_eq!(Topic::parse("tenant/alpha/secrets").unwrap_err().error, "unknown_topic");
        assert_eq!(Topic::parse("tenant/ALPHA/beds").unwrap_err().error, "unknown_topic");
        assert_eq!(Topic::parse("").unwrap_err().error, "unknown_topic");
    }
}
