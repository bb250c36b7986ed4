//! No one let in: a role may do only what it may, and a tenant sees nothing of another tenant,
//! over REST or over the live WebSocket.

mod common;

use std::time::Duration;

use common::{spawn_hub, Live, TestDb};
use medhub_actors::Role;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_may_watch_beds_but_not_change_them() {
    let db = TestDb::start().await;
    let tenant = db.tenant("alpha").await;
    let hub = spawn_hub(&db).await;
    let admin = hub.login(&tenant, Role::Admin).await;
    let facility = admin.create_facility("Alpha General", 3).await;
    let dispatcher = hub.login(&tenant, Role::Dispatcher).await;

    let refused = dispatcher.set_bed(facility.id, facility.beds[0], "cleaning").await.unwrap();
    assert_eq!(refused.status, 403);
    assert_eq!(refused.body["error"], "forbidden");
    assert!(refused.body["detail"].as_str().unwrap().contains("dispatcher"), "{}", refused.body);

    let board = dispatcher.get("/api/beds").await.unwrap().ok();
    assert_eq!(board["facilities"][0]["wards"][0]["beds"][0]["status"], "free", "the refused change left the bed as it was");
    let denied: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE tenant_id = $1 AND action = 'bed.status_change' AND outcome = 'denied' AND resource_id = $2",
    )
    .bind(tenant.id)
    .bind(facility.beds[0].to_string())
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(denied, 1, "the refusal is audited");

    // Admin-only and clinical-only parts are refused too.
    assert_eq!(dispatcher.post("/api/facilities", json!({})).await.unwrap().status, 403);
    assert_eq!(dispatcher.get("/api/audit").await.unwrap().status, 403);
    let patient = hub.login(&tenant, Role::Patient).await;
    assert_eq!(patient.get("/api/beds").await.unwrap().status, 403);
    assert_eq!(patient.get(&format!("/api/facilities/{}", facility.id)).await.unwrap().status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nurse_of_one_tenant_sees_nothing_of_another() {
    let db = TestDb::start().await;
    let alpha = db.tenant("alpha").await;
    let beta = db.tenant("beta").await;
    let hub = spawn_hub(&db).await;
    let alpha_facility = hub.login(&alpha, Role::Admin).await.create_facility("Alpha General", 2).await;
    let beta_facility = hub.login(&beta, Role::Admin).await.create_facility("Beta General", 2).await;
    let alpha_nurse = hub.login(&alpha, Role::Nurse).await;
    let beta_nurse = hub.login(&beta, Role::Nurse).await;

    // REST: another tenant's facility and beds do not exist for this nurse.
    let foreign = alpha_nurse.get(&format!("/api/facilities/{}", beta_facility.id)).await.unwrap();
    assert_eq!(foreign.status, 404);
    assert_eq!(foreign.body["error"], "not_found");
    assert!(foreign.body.get("wards").is_none());
    let foreign_write = alpha_nurse.set_bed(beta_facility.id, beta_facility.beds[0], "cleaning").await.unwrap();
    assert_eq!(foreign_write.status, 404);
    let listed = alpha_nurse.get("/api/facilities").await.unwrap().ok();
    let ids: Vec<&str> = listed.as_array().unwrap().iter().map(|f| f["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![alpha_facility.id.to_string()]);
    let board = alpha_nurse.get("/api/beds").await.unwrap().ok();
    assert_eq!(board["facilities"].as_array().unwrap().len(), 1);
    let beta_board = beta_nurse.get("/api/beds").await.unwrap().ok();
    assert_eq!(beta_board["facilities"][0]["wards"][0]["beds"][0]["status"], "free", "the foreign write changed nothing");

    // WebSocket: subscribing to the other tenant's beds is refused by name, and no event leaks.
    let mut live = Live::connect(&hub, &alpha_nurse).await;
    let refused = live.subscribe(&beta.beds_topic(), None).await;
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["error"], "forbidden");
    assert_eq!(refused["topic"], beta.beds_topic());

    beta_nurse.set_bed(beta_facility.id, beta_facility.beds[1], "cleaning").await.unwrap().ok();
    // Sync point: subscribe to the own topic and make an own change; whatever arrives before
    // that change's event must not be the other tenant's.
    let subscribed = live.subscribe(&alpha.beds_topic(), None).await;
    assert_eq!(subscribed["type"], "subscribed");
    let snapshot = live.next().await;
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(snapshot["data"]["facilities"].as_array().unwrap().len(), 1);
    alpha_nurse.set_bed(alpha_facility.id, alpha_facility.beds[0], "cleaning").await.unwrap().ok();
    let event = live.next().await;
    assert_eq!(event["topic"], alpha.beds_topic(), "only the own tenant's events arrive: {event}");
    assert_eq!(event["data"]["bed_id"], alpha_facility.beds[0].to_string());
    beta_nurse.set_bed(beta_facility.id, beta_facility.beds[0], "cleaning").await.unwrap().ok();
    assert!(live.next_within(Duration::from_millis(500)).await.is_none(), "no event of tenant beta may arrive");

    // A patient may not watch the bed board of their own tenant either.
    let patient = hub.login(&alpha, Role::Patient).await;
    let mut patient_live = Live::connect(&hub, &patient).await;
    let refused = patient_live.subscribe(&alpha.beds_topic(), None).await;
    assert_eq!(refused["error"], "forbidden");

    // Unknown topics and junk messages get an error naming the problem, and the connection lives on.
    let unknown = live.subscribe("tenant/alpha/secrets", None).await;
    assert_eq!(unknown["error"], "unknown_topic");
    live.send_text("{not json").await;
    assert_eq!(live.next().await["error"], "invalid_message");
    live.send(json!({"type": "ping"})).await;
    assert_eq!(live.next().await["type"], "pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_without_a_valid_token_gets_nothing() {
    let db = TestDb::start().await;
    let tenant = db.tenant("alpha").await;
    let hub = spawn_hub(&db).await;

    let mut live = Live::connect_raw(&hub).await;
    live.send(json!({"type": "subscribe", "topic": tenant.beds_topic()})).await;
    assert_eq!(live.next().await["error"], "unauthorized");

    let mut live = Live::connect_raw(&hub).await;
    live.send(json!({"type": "auth", "token": "forged.token.value"})).await;
    let refused = live.next().await;
    assert_eq!(refused["error"], "unauthorized");
    assert!(live.next_within(Duration::from_secs(2)).await.is_none(), "the hub closes the connection");
}
