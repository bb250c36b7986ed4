//! Logging in, refreshing and logging out, as a user of the console does, including everything a
//! user can get wrong: a wrong password, an unknown account, a malformed request.

mod common;

use common::{email, spawn_hub, Api, RawBody, TestDb, PASSWORD};
use medhub_actors::Role;
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_and_malformed_bodies_get_clear_errors_and_no_token() {
    let db = TestDb::start().await;
    let tenant = db.tenant("alpha").await;
    let hub = spawn_hub(&db).await;
    let api = hub.api();
    let nurse = email(&tenant.slug, Role::Nurse);

    let wrong_password = api.post("/api/auth/login", json!({"tenant": "alpha", "email": nurse, "password": "not the password"})).await.unwrap();
    assert_eq!(wrong_password.status, 401);
    assert_eq!(wrong_password.body["error"], "unauthorized");
    assert!(wrong_password.body.get("access_token").is_none());

    let unknown_user = api.post("/api/auth/login", json!({"tenant": "alpha", "email": "ghost@alpha.test", "password": PASSWORD})).await.unwrap();
    assert_eq!(unknown_user.status, 401);
    // The same answer as a wrong password: nobody learns which accounts exist.
    assert_eq!(unknown_user.body, wrong_password.body);

    let unknown_tenant = api.post("/api/auth/login", json!({"tenant": "nowhere", "email": nurse, "password": PASSWORD})).await.unwrap();
    assert_eq!(unknown_tenant.status, 401);

    let not_json = api.send(Method::POST, "/api/auth/login", Some(RawBody::Text("{\"tenant\": ".into()))).await.unwrap();
    assert_eq!(not_json.status, 400);
    assert_eq!(not_json.body["error"], "invalid_body");
    assert!(not_json.body["detail"].as_str().unwrap().contains("not valid JSON"), "{}", not_json.body);

    let missing = api.post("/api/auth/login", json!({"tenant": "alpha", "email": nurse})).await.unwrap();
    assert_eq!(missing.status, 400);
    assert_eq!(missing.body["field"], "password", "{}", missing.body);

    let wrong_type = api.post("/api/auth/login", json!({"tenant": "alpha", "email": 42, "password": PASSWORD})).await.unwrap();
    assert_eq!(wrong_type.status, 400);
    assert_eq!(wrong_type.body["field"], "email", "{}", wrong_type.body);

    let empty = api.post("/api/auth/login", json!({"tenant": "alpha", "email": "  ", "password": PASSWORD})).await.unwrap();
    assert_eq!(empty.status, 400);
    assert_eq!(empty.body["field"], "email");

    for reply in [&wrong_password, &unknown_user, &unknown_tenant, &not_json, &missing, &wrong_type, &empty] {
        assert!(reply.body.get("access_token").is_none() && reply.body.get("refresh_token").is_none());
    }

    // The failed attempts on the tenant (a real account, an unknown one) are in its audit trail.
    let denied: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE tenant_id = $1 AND action = 'auth.login' AND outcome = 'denied'",
    )
    .bind(tenant.id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(denied, 2, "the wrong password and the unknown account");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_refreshes_once_per_token_and_logout_ends_it_everywhere() {
    let db = TestDb::start().await;
    let tenant = db.tenant("alpha").await;
    let hub = spawn_hub(&db).await;
    let mut api = hub.login(&tenant, Role::Nurse).await;
    assert_eq!(api.user["role"], "nurse");
    assert_eq!(api.user["tenant"]["slug"], "alpha");
    assert_eq!(api.get("/api/me").await.unwrap().ok()["email"], email("alpha", Role::Nurse));

    // No token, a garbage token: 401 with a JSON error.
    let anonymous = hub.api().get("/api/me").await.unwrap();
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.body["error"], "unauthorized");
    let mut forged = hub.api();
    forged.token = Some("eyJhbGciOiJub25lIn0.e30.".into());
    assert_eq!(forged.get("/api/me").await.unwrap().status, 401);

    let first_refresh = api.refresh_token.clone().unwrap();
    let refreshed = api.post("/api/auth/refresh", json!({"refresh_token": first_refresh})).await.unwrap().ok();
    assert!(refreshed["access_token"].is_string());
    let spent_again = api.post("/api/auth/refresh", json!({"refresh_token": first_refresh})).await.unwrap();
    assert_eq!(spent_again.status, 401, "a refresh token is spent by its first use");

    let old_access = api.clone();
    api.token = refreshed["access_token"].as_str().map(str::to_owned);
    api.refresh_token = refreshed["refresh_token"].as_str().map(str::to_owned);
    api.post("/api/auth/logout", json!({"refresh_token": api.refresh_token.clone().unwrap()})).await.unwrap().expect(204);

    // Every access token of the session stops working at once, as does its refresh token.
    assert_eq!(api.get("/api/me").await.unwrap().status, 401);
    assert_eq!(old_access.get("/api/me").await.unwrap().status, 401);
    let after_logout = Api::new(&hub.url).post("/api/auth/refresh", json!({"refresh_token": api.refresh_token.clone().unwrap()})).await.unwrap();
    assert_eq!(after_logout.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_out_cuts_the_live_connection_of_that_session() {
    let db = TestDb::start().await;
    let tenant = db.tenant("alpha").await;
    let hub = common::spawn_hub_with(common::HubOptions::serve(&db).arg("--ws-heartbeat-secs", 1).arg("--ws-session-check-secs", 1)).await;
    let nurse = hub.login(&tenant, Role::Nurse).await;
    let other_session = hub.login(&tenant, Role::Nurse).await;
    let mut live = common::Live::connect(&hub, &nurse).await;
    let mut other_live = common::Live::connect(&hub, &other_session).await;
    live.subscribe(&tenant.beds_topic(), None).await;
    other_live.subscribe(&tenant.beds_topic(), None).await;
    live.next().await; // snapshot
    other_live.next().await;

    nurse.post("/api/auth/logout", json!({"refresh_token": nurse.refresh_token.clone().unwrap()})).await.unwrap().expect(204);
    let told = live.next_within(std::time::Duration::from_secs(5)).await.expect("told within the check interval");
    assert_eq!(told["error"], "session_ended", "{told}");
    assert!(live.next_within(std::time::Duration::from_secs(3)).await.is_none(), "the connection is closed");
    // The same user's other session is untouched.
    other_live.send(json!({"type": "ping"})).await;
    assert_eq!(other_live.next().await["type"], "pong");
}
