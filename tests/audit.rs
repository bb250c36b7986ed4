//! The audit trail an administrator relies on: every change is in it with who, what and from
//! where; it can be searched; the database refuses to rewrite it; and if someone rewrites it
//! anyway (a superuser with the guard dropped), verification names the exact entry.

mod common;

use common::World;
use medhub_actors::Role;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trail_records_changes_and_can_be_searched_page_by_page() {
    let world = World::start(4).await;
    let (admin, nurse, facility) = (&world.admin, &world.nurse, &world.facility);
    let patient = Uuid::new_v4();
    nurse.put(&format!("/api/facilities/{}/beds/{}/status", facility.id, facility.beds[0]), serde_json::json!({"status": "occupied", "patient_id": patient}))
        .await
        .unwrap()
        .ok();
    for bed in 1..4 {
        nurse.set_bed(facility.id, facility.beds[bed], "cleaning").await.unwrap().ok();
    }

    let nurse_id = nurse.user["id"].as_str().unwrap();
    let page = admin.get(&format!("/api/audit?action=bed.status_change&user_id={nurse_id}&limit=3")).await.unwrap().ok();
    let entries = page["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    assert!(entries.windows(2).all(|w| w[0]["seq"].as_i64() > w[1]["seq"].as_i64()), "newest first");
    for entry in entries {
        assert_eq!(entry["actor_id"], nurse_id);
        assert_eq!(entry["actor_role"], "nurse");
        assert_eq!(entry["outcome"], "success");
        assert_eq!(entry["source_addr"], "127.0.0.1");
        assert_eq!(entry["resource_type"], "bed");
    }
    let older = admin.get(&format!("/api/audit?action=bed.status_change&limit=3&before_seq={}", page["next_before_seq"])).await.unwrap().ok();
    let older = older["entries"].as_array().unwrap();
    assert_eq!(older.len(), 1, "four changes in all");
    assert_eq!(older[0]["resource_id"], facility.beds[0].to_string());
    assert_eq!(older[0]["patient_id"], patient.to_string(), "the patient put in the bed is named");

    let by_patient = admin.get(&format!("/api/audit?patient_id={patient}")).await.unwrap().ok();
    assert_eq!(by_patient["entries"].as_array().unwrap().len(), 1);

    // Bad filters are named; non-admins may not read the trail.
    let bad = admin.get("/api/audit?from=yesterday").await.unwrap();
    assert_eq!((bad.status, bad.body["field"].as_str()), (400, Some("from")));
    let unknown = admin.get("/api/audit?colour=red").await.unwrap();
    assert_eq!((unknown.status, unknown.body["field"].as_str()), (400, Some("colour")));
    let limit = admin.get("/api/audit?limit=0").await.unwrap();
    assert_eq!((limit.status, limit.body["field"].as_str()), (400, Some("limit")));
    assert_eq!(nurse.get("/api/audit").await.unwrap().status, 403);
    assert_eq!(world.hub.login(&world.tenant, Role::Doctor).await.get("/api/audit/verify").await.unwrap().status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_with_one_entry_is_reported_at_that_entry() {
    let world = World::start(3).await;
    let (admin, nurse, facility) = (&world.admin, &world.nurse, &world.facility);
    for (bed, status) in [(0, "cleaning"), (1, "out_of_service"), (2, "cleaning"), (0, "free")] {
        nurse.set_bed(facility.id, facility.beds[bed], status).await.unwrap().ok();
    }
    let clean = admin.get("/api/audit/verify").await.unwrap().ok();
    assert_eq!(clean["ok"], true, "{clean}");
    assert!(clean["entries_checked"].as_i64().unwrap() >= 10);

    let pool = &world.db.pool;
    let tenant = world.tenant.id;
    // The out-of-service change is the entry a tamperer would want to hide.
    let target: i64 = sqlx::query_scalar(
        "SELECT seq FROM audit_log WHERE tenant_id = $1 AND action = 'bed.status_change' AND detail->>'to' = 'out_of_service'",
    )
    .bind(tenant)
    .fetch_one(pool)
    .await
    .unwrap();

    // The database itself refuses to rewrite or remove entries.
    for statement in [
        "UPDATE audit_log SET outcome = 'failed' WHERE tenant_id = $1 AND seq = $2",
        "DELETE FROM audit_log WHERE tenant_id = $1 AND seq = $2",
    ] {
        let refused = sqlx::query(statement).bind(tenant).bind(target).execute(pool).await;
        let error = refused.expect_err("the audit trail is append-only").to_string();
        assert!(error.contains("append-only"), "{error}");
    }

    // A superuser drops the guard, rewrites what the entry says, and puts the guard back.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update_or_delete").execute(&mut *tx).await.unwrap();
    sqlx::query("UPDATE audit_log SET detail = jsonb_set(detail, '{to}', '\"cleaning\"') WHERE tenant_id = $1 AND seq = $2")
        .bind(tenant)
        .bind(target)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_update_or_delete").execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();

    let report = admin.get("/api/audit/verify").await.unwrap().ok();
    assert_eq!(report["ok"], false);
    assert_eq!(report["first_broken"]["seq"].as_i64(), Some(target), "{report}");
    assert!(report["first_broken"]["reason"].as_str().unwrap().contains("altered"), "{report}");
}
