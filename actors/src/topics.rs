//! Live topics: their names, who may subscribe, and the snapshot a new subscriber starts from.
//! The WebSocket layer asks here on every subscribe, so this is the one place the rules live.

use serde_json::{json, Value};
use sqlx::PgPool;

use crate::domain::{Principal, Role, TenantSlug};
use crate::facility;

pub fn beds_topic(tenant: &TenantSlug) -> String {
    format!("tenant/{tenant}/beds")
}

/// A topic a client may subscribe to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topic {
    /// `tenant/{t}/beds`: every facility's wards and beds.
    Beds { tenant: TenantSlug },
}

/// Why a subscription was refused, as told to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub error: &'static str,
    pub detail: String,
}

impl Topic {
    pub fn parse(name: &str) -> Result<Topic, Refusal> {
        let unknown = || Refusal { error: "unknown_topic", detail: format!("{name:?} is not a topic this hub publishes") };
        let parts: Vec<&str> = name.split('/').collect();
        match parts.as_slice() {
            ["tenant", tenant, "beds"] => Ok(Topic::Beds { tenant: TenantSlug::parse(tenant).map_err(|_| unknown())? }),
            _ => Err(unknown()),
        }
    }

    pub fn name(&self) -> String {
        match self {
            Topic::Beds { tenant } => beds_topic(tenant),
        }
    }

    fn tenant(&self) -> &TenantSlug {
        match self {
            Topic::Beds { tenant } => tenant,
        }
    }

    /// Checks tenant and role. Another tenant's topics are refused without saying whether that
    /// tenant exists.
    pub fn authorize(&self, principal: &Principal) -> Result<(), Refusal> {
        if self.tenant() != &principal.tenant_slug {
            return Err(Refusal { error: "forbidden", detail: format!("{} is not a topic of your tenant", self.name()) });
        }
        let allowed: &[Role] = match self {
            Topic::Beds { .. } => &[Role::Admin, Role::Dispatcher, Role::Doctor, Role::Nurse],
        };
        if principal.has_role(allowed) {
            Ok(())
        } else {
            Err(Refusal { error: "forbidden", detail: format!("role {} may not watch {}", principal.role, self.name()) })
        }
    }

    /// The topic's current state and the seq it reflects.
    pub async fn snapshot(&self, pool: &PgPool, principal: &Principal) -> Result<(i64, Value), sqlx::Error> {
        match self {
            Topic::Beds { tenant } => {
                let (seq, facilities) = facility::bed_board(pool, principal.tenant_id, &beds_topic(tenant)).await?;
                Ok((seq, json!({"seq": seq, "facilities": facilities})))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

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
    fn unknown_topics_are_refused_by_name() {
        assert_eq!(Topic::parse("tenant/alpha/secrets").unwrap_err().error, "unknown_topic");
        assert_eq!(Topic::parse("tenant/ALPHA/beds").unwrap_err().error, "unknown_topic");
        assert_eq!(Topic::parse("").unwrap_err().error, "unknown_topic");
    }
}
