//! Two hub nodes on one database: a tenant is served by exactly one of them at a time, through its
//! lease; the other forwards its clients' requests to it. A node cannot take a tenant whose lease
//! another node keeps renewing; a node that was paused past its lease finds the tenant taken over
//! when it wakes, and can never commit for it again (the fencing token is checked in every
//! commit's transaction), nor take it back while the new owner's lease is live.

mod common;

use std::time::Duration;

use common::{metric, spawn_hub_with, Hub, HubOptions, TestDb};
use medhub_actors::Role;
use uuid::Uuid;

const LEASE_TTL_SECS: u64 = 2;

async fn node(db: &TestDb, name: &str) -> Hub {
    spawn_hub_with(HubOptions::node(db, name).arg("--lease-ttl-secs", LEASE_TTL_SECS)).await
}

/// (owner, token) of the tenant's lease row.
async fn lease(db: &TestDb, tenant: Uuid) -> (String, i64) {
    sqlx::query_as("SELECT owner, token FROM tenant_leases WHERE tenant_id = $1").bind(tenant).fetch_one(&db.pool).await.expect("lease row")
}

/// The status of a bed as the event log last recorded it (the read model).
async fn bed_status(db: &TestDb, bed: Uuid) -> String {
    sqlx::query_scalar("SELECT status FROM beds WHERE id = $1").bind(bed).fetch_one(&db.pool).await.expect("bed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_hub_forwards_to_the_node_whose_lease_is_live_and_never_takes_it() {
    let db = TestDb::start().await;
    let alpha = db.tenant("alpha").await;
    let hub_a = node(&db, "node-a").await;
    let hub_b = node(&db, "node-b").await;

    // Node A serves alpha: it holds the lease.
    let admin_a = hub_a.login(&alpha, Role::Admin).await;
    let facility = admin_a.create_facility("Alpha General", 2).await;
    let (owner, token) = lease(&db, alpha.id).await;
    assert_eq!(owner, "node-a");

    // A nurse who reaches node B is served by node A, as if B had answered: B forwards.
    let nurse_b = hub_b.login(&alpha, Role::Nurse).await;
    let changed = nurse_b.set_bed(facility.id, facility.beds[0], "cleaning").await.expect("reply");
    assert_eq!((changed.status, changed.served_by.as_deref()), (200, Some("node-a")), "{changed:?}");
    assert_eq!(bed_status(&db, facility.beds[0]).await, "cleaning");
    // Bad input forwarded is refused by the owner, naming the field, as it would be locally.
    let refused = nurse_b.set_bed(facility.id, facility.beds[0], "sideways").await.expect("reply");
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert_eq!(refused.body["field"], "status");

    // However long node B serves alpha's clients, node A keeps the lease (it keeps renewing).
    tokio::time::sleep(Duration::from_secs(LEASE_TTL_SECS + 1)).await;
    nurse_b.set_bed(facility.id, facility.beds[1], "cleaning").await.expect("reply").ok();
    assert_eq!(lease(&db, alpha.id).await, (owner, token), "node B did not take the live lease");

    let metrics_a = hub_a.metrics().await;
    assert_eq!(metric(&metrics_a, "medhub_lease_owned_tenants"), 1.0);
    assert!(metric(&metrics_a, "medhub_lease_renewals_total") >= 1.0);
    assert!(metric(&metrics_a, "medhub_cluster_forwarded_in_total") >= 3.0);
    let metrics_b = hub_b.metrics().await;
    assert_eq!(metric(&metrics_b, "medhub_lease_owned_tenants"), 0.0);
    assert!(metric(&metrics_b, "medhub_cluster_forwarded_total{outcome=\"answered\"}") >= 3.0);

    // A request claiming to come from a hub node without a valid signature is refused.
    let forged = reqwest::Client::new()
        .post(format!("{}/internal/device-messages", hub_b.url))
        .header("x-medhub-forwarded-by", "node-a")
        .header("x-medhub-forwarded-at", chrono::Utc::now().timestamp().to_string())
        .header("x-medhub-forwarded-signature", "00".repeat(32))
        .body("{}")
        .send()
        .await
        .expect("reply");
    assert_eq!(forged.status(), 401);
    // Nor may a client open a consult relay (only nodes relay signaling to each other).
    let unsigned = reqwest::get(format!("{}/internal/consult-signaling", hub_a.url)).await.expect("reply");
    assert_eq!(unsigned.status(), 401);
    let body: serde_json::Value = unsigned.json().await.expect("a JSON error");
    assert_eq!(body["error"], "unauthorized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_paused_past_its_lease_never_commits_for_the_tenant_again() {
    let db = TestDb::start().await;
    let alpha = db.tenant("alpha").await;
    let mut hub_a = node(&db, "node-a").await;
    let hub_b = node(&db, "node-b").await;

    // Hub A serves alpha; a nurse on each node is logged in.
    let admin_a = hub_a.login(&alpha, Role::Admin).await;
    let facility = admin_a.create_facility("Alpha General", 2).await;
    let nurse_a = hub_a.login(&alpha, Role::Nurse).await;
    let nurse_b = hub_b.login(&alpha, Role::Nurse).await;
    nurse_a.set_bed(facility.id, facility.beds[0], "cleaning").await.expect("reply").ok();
    let (_, token_a) = lease(&db, alpha.id).await;

    // Hub A freezes (a long GC pause, a VM migration, a partition) past its lease.
    hub_a.signal(libc::SIGSTOP);
    tokio::time::sleep(Duration::from_secs(LEASE_TTL_SECS + 1)).await;

    // Hub B takes alpha over: a write through B succeeds, under a newer token, served by B.
    let taken = nurse_b.set_bed(facility.id, facility.beds[0], "free").await.expect("reply");
    assert_eq!((taken.status, taken.served_by.as_deref()), (200, None), "{taken:?}");
    let (owner, token_b) = lease(&db, alpha.id).await;
    assert_eq!(owner, "node-b");
    assert!(token_b > token_a, "the takeover bumped the fencing token ({token_a} → {token_b})");
    assert_eq!(bed_status(&db, facility.beds[0]).await, "free");

    // Hub A wakes up, still believing it serves alpha. Its own commit is refused by the fence (in
    // the commit's transaction): the change is then done by hub B, the owner, not by A.
    hub_a.signal(libc::SIGCONT);
    let through_a = nurse_a.set_bed(facility.id, facility.beds[1], "out_of_service").await.expect("reply");
    assert_eq!((through_a.status, through_a.served_by.as_deref()), (200, Some("node-b")), "{through_a:?}");
    let metrics_a = hub_a.metrics().await;
    assert!(
        metric(&metrics_a, "medhub_lease_losses_total") + metric(&metrics_a, "medhub_lease_fenced_commits_total") >= 1.0,
        "hub A noticed it lost alpha"
    );
    assert_eq!(bed_status(&db, facility.beds[1]).await, "out_of_service");
    // Exactly one change event for bed 1: A's refused attempt left nothing behind.
    let bed_events: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE tenant_id = $1 AND event_type = 'bed.status_changed' AND data->>'bed_id' = $2")
        .bind(alpha.id)
        .bind(facility.beds[1].to_string())
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(bed_events, 1);

    // Nor does hub A take the lease back while hub B renews it, however long it waits.
    tokio::time::sleep(Duration::from_secs(LEASE_TTL_SECS + 1)).await;
    let again = nurse_a.set_bed(facility.id, facility.beds[1], "cleaning").await.expect("reply");
    assert_eq!((again.status, again.served_by.as_deref()), (200, Some("node-b")), "{again:?}");
    assert_eq!(lease(&db, alpha.id).await, ("node-b".to_owned(), token_b));
    assert_eq!(metric(&hub_a.metrics().await, "medhub_lease_owned_tenants"), 0.0);
    assert_eq!(metric(&hub_b.metrics().await, "medhub_lease_takeovers_total"), 1.0);
    hub_a.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_under_a_superseded_fencing_token_is_refused_in_its_own_transaction() {
    use medhub_actors::lease::{LeaseConfig, LeaseMetrics, LeaseNode};
    use medhub_actors::store::{self, EventDraft};
    use medhub_actors::{ActorError, TenantSlug};

    let db = TestDb::start().await;
    let alpha = db.tenant("alpha").await;
    let slug = TenantSlug::parse("alpha").expect("slug");
    let config = LeaseConfig { node_id: "node-a".to_owned(), ttl: Duration::from_secs(30) };
    let node_a = LeaseNode::new(db.pool.clone(), config, LeaseMetrics::unregistered());
    let token = node_a.acquire(alpha.id, &slug).await.expect("a free lease is granted");
    let live_owner: Option<String> = sqlx::query_scalar("SELECT owner FROM tenant_leases WHERE tenant_id = $1 AND expires_at > now()")
        .bind(alpha.id)
        .fetch_optional(&db.pool)
        .await
        .expect("owner");
    assert_eq!(live_owner.as_deref(), Some("node-a"));

    let draft = |n: i64| EventDraft { stream: format!("test/{n}"), expected_version: 0, topic: "tenant/alpha/test".to_owned(), event_type: "test.written", data: serde_json::json!({"n": n}) };
    let mut tx = db.pool.begin().await.expect("tx");
    store::append_event(&mut tx, alpha.id, &draft(1)).await.expect("the owner commits");
    tx.commit().await.expect("commit");

    // Another node takes the tenant over (as after node A's lease expired): the token moves on.
    sqlx::query("UPDATE tenant_leases SET owner = 'node-b', token = token + 1 WHERE tenant_id = $1").bind(alpha.id).execute(&db.pool).await.expect("takeover");
    let mut tx = db.pool.begin().await.expect("tx");
    match store::append_event(&mut tx, alpha.id, &draft(2)).await {
        Err(ActorError::NotOwner(detail)) => {
            assert!(detail.contains("no longer owns tenant") && detail.contains("node-b"), "{detail}");
        }
        other => panic!("a commit under token {token} after the takeover must be refused, got {other:?}"),
    }
    drop(tx);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE topic = 'tenant/alpha/test'").fetch_one(&db.pool).await.expect("count");
    assert_eq!(events, 1, "only the owner's event was committed");
    // And the node does not get the tenant back while the new owner's lease is live.
    sqlx::query("UPDATE tenant_leases SET expires_at = now() + interval '30 seconds' WHERE tenant_id = $1").bind(alpha.id).execute(&db.pool).await.expect("renewal by node-b");
    let refused = medhub_actors::lease::try_acquire(&db.pool, alpha.id, node_a.config()).await.expect("attempt");
    assert!(matches!(refused, medhub_actors::lease::Acquisition::HeldElsewhere { ref owner, .. } if owner == "node-b"), "{refused:?}");
}
