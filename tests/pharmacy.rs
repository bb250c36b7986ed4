//! The pharmacy as pharmacists and prescribers use it: stock that is never given out twice or
//! below zero, first expiry first out; expired and recalled stock that nobody can get; uploads that
//! report every bad row and never double the stock; alternatives when a medication is short; live
//! alerts and notifications.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{email, spawn_hub_with, Api, HubOptions, Live, World};
use futures_util::future::join_all;
use medhub_actors::Role;
use serde_json::{json, Value};
use uuid::Uuid;

fn prescription(patient: Uuid, medication: Uuid, pharmacy: Uuid, quantity: i64) -> Value {
    json!({"patient_id": patient, "medication_id": medication, "pharmacy_id": pharmacy, "dose": "1 tablet",
           "frequency": "once a day", "duration_days": quantity, "quantity": quantity})
}

async fn batch_numbers(world: &World, medication: Uuid) -> HashMap<Uuid, (i32, i32)> {
    sqlx::query_as::<_, (Uuid, i32, i32)>("SELECT id, on_hand, reserved FROM inventory_batches WHERE medication_id = $1")
        .bind(medication)
        .fetch_all(&world.db.pool)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, on_hand, reserved)| (id, (on_hand, reserved)))
        .collect()
}

async fn dispensed_from(world: &World, batch: Uuid) -> i64 {
    sqlx::query_scalar("SELECT COALESCE(sum(quantity), 0)::bigint FROM dispenses WHERE batch_id = $1").bind(batch).fetch_one(&world.db.pool).await.unwrap()
}

/// The stream position (event id) of a batch's reservation events, first and last.
async fn reservation_span(world: &World, batch: Uuid) -> (i64, i64) {
    sqlx::query_as("SELECT min(id), max(id) FROM events WHERE stream = $1 AND event_type = 'batch.reserved'")
        .bind(format!("batch/{batch}"))
        .fetch_one(&world.db.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_reservations_and_dispenses_take_exactly_the_500_units_earliest_expiry_first() {
    let world = World::start(1).await;
    let pharmacy = world.facility.id;
    let pharmacist = world.hub.login(&world.tenant, Role::Pharmacist).await;
    let medication = world.db.medication(&world.tenant, "Amoxicillin 500 mg capsule", "amoxicillin", "J01CA04", "12.50").await;
    let soonest = pharmacist.receive_batch(pharmacy, medication, "A-SOON", 60, 100).await;
    let middle = pharmacist.receive_batch(pharmacy, medication, "B-MID", 120, 150).await;
    let latest = pharmacist.receive_batch(pharmacy, medication, "C-LATE", 400, 250).await;
    let patients = world.db.patients(&world.tenant, 100).await;
    let mut doctors = Vec::new();
    for _ in 0..10 {
        doctors.push(world.hub.login(&world.tenant, Role::Doctor).await);
    }

    // 1,000 prescriptions of one unit each, at once: each reserves first expiry first.
    let prescribing = (0..1000).map(|n| {
        let doctor = doctors[n % doctors.len()].clone();
        let body = prescription(patients[n % patients.len()], medication, pharmacy, 1);
        async move { doctor.post("/api/prescriptions", body).await.unwrap().expect(201) }
    });
    let prescribed = join_all(prescribing).await;
    let reserved: i64 = prescribed.iter().map(|p| p["reserved"].as_i64().unwrap()).sum();
    assert_eq!(reserved, 500, "every unit reserved once, none twice");
    assert_eq!(prescribed.iter().filter(|p| p["short"] == 1).count(), 500);
    let stock = batch_numbers(&world, medication).await;
    assert_eq!(stock[&soonest], (100, 100));
    assert_eq!(stock[&latest], (250, 250));
    let (_, a_last) = reservation_span(&world, soonest).await;
    let (b_first, b_last) = reservation_span(&world, middle).await;
    let (c_first, _) = reservation_span(&world, latest).await;
    assert!(a_last < b_first && b_last < c_first, "a later batch was touched only once the earlier ones were empty");

    // 1,000 dispenses at once from several pharmacists: exactly the 500 reserved units leave.
    let mut pharmacists = Vec::new();
    for _ in 0..10 {
        pharmacists.push(world.hub.login(&world.tenant, Role::Pharmacist).await);
    }
    let dispensing = prescribed.iter().enumerate().map(|(n, p)| {
        let pharmacist = pharmacists[n % pharmacists.len()].clone();
        let id = p["prescription"]["id"].as_str().unwrap().to_owned();
        async move { pharmacist.post(&format!("/api/prescriptions/{id}/dispense"), Value::Null).await.unwrap() }
    });
    let answers = join_all(dispensing).await;
    let given: i64 = answers.iter().filter(|a| a.status == 200).map(|a| a.body["dispensed"].as_i64().unwrap()).sum();
    assert_eq!(given, 500);
    assert!(answers.iter().all(|a| a.status == 200 || a.status == 409), "{:?}", answers.iter().find(|a| a.status != 200 && a.status != 409));
    assert_eq!(answers.iter().filter(|a| a.status == 409).count(), 500);

    // Conserved, batch by batch; events, rows and audit agree.
    let stock = batch_numbers(&world, medication).await;
    for (batch, initial) in [(soonest, 100), (middle, 150), (latest, 250)] {
        assert_eq!(stock[&batch], (0, 0));
        assert_eq!(dispensed_from(&world, batch).await, initial, "on hand + dispensed is what was received");
    }
    let pool = &world.db.pool;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'batch.dispensed'").fetch_one(pool).await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM dispenses").fetch_one(pool).await.unwrap();
    let audited: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'batch.dispense' AND patient_id IS NOT NULL").fetch_one(pool).await.unwrap();
    assert_eq!((events, audited), (rows, rows));
    let verified = world.admin.get("/api/audit/verify").await.unwrap().ok();
    assert_eq!(verified["ok"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_recalled_stock_is_never_given_out() {
    let mut world = World::start(1).await;
    let pharmacy = world.facility.id;
    let pharmacist = world.hub.login(&world.tenant, Role::Pharmacist).await;
    let doctor = world.hub.login(&world.tenant, Role::Doctor).await;
    let medication = world.db.medication(&world.tenant, "Metformin 500 mg tablet", "metformin", "A10BA02", "3.00").await;
    let patients = world.db.patients(&world.tenant, 2).await;

    // A batch that expired yesterday (its history rewritten to say so, as if received long ago),
    // a good one, and a third that will be recalled.
    let old = pharmacist.receive_batch(pharmacy, medication, "OLD-1", 1, 50).await;
    let good = pharmacist.receive_batch(pharmacy, medication, "GOOD-1", 300, 10).await;
    let doomed = pharmacist.receive_batch(pharmacy, medication, "RECALL-1", 400, 30).await;
    let yesterday = (chrono::Utc::now() - chrono::Duration::days(1)).date_naive();
    sqlx::query("UPDATE events SET data = jsonb_set(data, '{batch,expiry_date}', to_jsonb($2::text)) WHERE stream = $1")
        .bind(format!("batch/{old}"))
        .bind(yesterday.to_string())
        .execute(&world.db.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE inventory_batches SET expiry_date = $2 WHERE id = $1").bind(old).bind(yesterday).execute(&world.db.pool).await.unwrap();
    world.hub.terminate().await;
    world.hub = spawn_hub_with(HubOptions::serve(&world.db)).await;
    let pharmacist = world.hub.login(&world.tenant, Role::Pharmacist).await;
    let doctor_api: Api = world.hub.login(&world.tenant, Role::Doctor).await;
    drop(doctor);

    let first = doctor_api.post("/api/prescriptions", prescription(patients[0], medication, pharmacy, 35)).await.unwrap().expect(201);
    assert_eq!(first["reserved"], 35, "10 good + 25 of the later batch; none of the expired one");
    let stock = batch_numbers(&world, medication).await;
    assert_eq!(stock[&old], (50, 0), "the expired batch was not touched");
    assert_eq!((stock[&good].1, stock[&doomed].1), (10, 25));

    // Recall: the batch leaves availability and the answer names the prescription that held it.
    let recalled = pharmacist.post(&format!("/api/inventory/{doomed}/recall"), json!({"reason": "supplier recall 2026-11"})).await.unwrap().ok();
    let affected = recalled["affected_prescriptions"].as_array().unwrap();
    assert_eq!(affected.len(), 1);
    assert_eq!(affected[0]["prescription"]["id"], first["prescription"]["id"]);
    assert_eq!(affected[0]["released_units"], 25);
    assert_eq!(recalled["batch"]["available"], 0);
    let availability = pharmacist.get(&format!("/api/pharmacies/{pharmacy}/availability?medication_id={medication}")).await.unwrap().ok();
    assert_eq!(availability["available"], 0, "expired and recalled stock is not available");
    let second = doctor_api.post("/api/prescriptions", prescription(patients[1], medication, pharmacy, 5)).await.unwrap().expect(201);
    assert_eq!(second["reserved"], 0);
    assert_eq!(second["short"], 5);

    // Dispensing the first gives out only the 10 good units it still holds, never recalled ones.
    let id = first["prescription"]["id"].as_str().unwrap();
    let dispensed = pharmacist.post(&format!("/api/prescriptions/{id}/dispense"), Value::Null).await.unwrap().ok();
    assert_eq!(dispensed["dispensed"], 10);
    assert_eq!(dispensed["prescription"]["status"], "partially_dispensed");
    assert_eq!(dispensed_from(&world, doomed).await, 0);
    assert_eq!(dispensed_from(&world, old).await, 0);
    let board = pharmacist.get(&format!("/api/pharmacies/{pharmacy}/stock")).await.unwrap().ok();
    assert!(board["alerts"].as_array().unwrap().iter().any(|a| a["kind"] == "recall"), "{board}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_of_ten_thousand_rows_applies_the_good_ones_reports_the_bad_ones_and_never_doubles_stock() {
    let world = World::start(1).await;
    let pharmacy = world.facility.id;
    let pharmacist = world.hub.login(&world.tenant, Role::Pharmacist).await;
    let names = ["Paracetamol 500 mg tablet", "Ibuprofen 400 mg tablet", "Amlodipine 5 mg tablet", "Omeprazole 20 mg capsule", "Metformin 500 mg tablet"];
    let atc = ["N02BE01", "M01AE01", "C08CA01", "A02BC01", "A10BA02"];
    for (name, code) in names.iter().zip(atc) {
        world.db.medication(&world.tenant, name, &name.split(' ').next().unwrap().to_lowercase(), code, "1.00").await;
    }
    let expiry = (chrono::Utc::now() + chrono::Duration::days(365)).date_naive();
    let mut csv = String::from("medication,batch_number,expiry_date,quantity,location\n");
    let mut bad_lines = Vec::new();
    for n in 0..10_000usize {
        let line = n + 2; // the header is line 1
        let name = names[n % names.len()];
        let row = match n {
            _ if n % 1000 == 3 => format!("{name},BAD-DATE-{n},2027-02-30,10,Shelf A"),
            _ if n % 1000 == 7 => format!("{name},NEG-{n},{expiry},-5,Shelf A"),
            _ if n % 1000 == 11 => format!("Unobtainium 1 mg tablet,UNK-{n},{expiry},10,Shelf A"),
            _ if n > 0 && n % 1400 == 0 => format!("{},B{:05},{expiry},3,Shelf B", names[(n - 1) % names.len()], n - 1), // a duplicate of the row before
            _ => format!("{name},B{n:05},{expiry},{},Shelf {}", 1 + n % 50, n % 7),
        };
        if n % 1000 == 3 || n % 1000 == 7 || n % 1000 == 11 || (n > 0 && n % 1400 == 0) {
            bad_lines.push(line);
        }
        csv.push_str(&row);
        csv.push('\n');
    }
    assert_eq!(bad_lines.len(), 37);

    let upload = |csv: String| {
        let pharmacist = pharmacist.clone();
        async move {
            pharmacist
                .send(reqwest::Method::POST, &format!("/api/inventory/upload?pharmacy_id={pharmacy}"), Some(common::RawBody::Text(csv)))
                .await
                .unwrap()
                .ok()
        }
    };
    let first = upload(csv.clone()).await;
    assert_eq!(first["applied"], 9_963);
    let rejected: Vec<u64> = first["rejected"].as_array().unwrap().iter().map(|r| r["line"].as_u64().unwrap()).collect();
    assert_eq!(rejected, bad_lines.iter().map(|l| *l as u64).collect::<Vec<_>>());
    let reasons: Vec<&str> = first["rejected"].as_array().unwrap().iter().map(|r| r["reason"].as_str().unwrap()).collect();
    assert!(reasons.iter().any(|r| r.contains("expiry_date")) && reasons.iter().any(|r| r.contains("quantity")));
    assert!(reasons.iter().any(|r| r.contains("unknown medication")) && reasons.iter().any(|r| r.contains("duplicate")));
    let units = || async {
        sqlx::query_as::<_, (i64, i64)>("SELECT count(*), COALESCE(sum(on_hand), 0)::bigint FROM inventory_batches WHERE pharmacy_id = $1")
            .bind(pharmacy)
            .fetch_one(&world.db.pool)
            .await
            .unwrap()
    };
    let after_first = units().await;
    assert_eq!(after_first.0, 9_963);

    let again = upload(csv).await;
    assert_eq!(again["applied"], 0);
    assert_eq!(again["already_received"].as_array().unwrap().len(), 9_963);
    assert_eq!(units().await, after_first, "the same file twice does not double the stock");

    // The uploaded batches are real batches: their actors load from the events the upload wrote.
    let some_batch: Uuid = sqlx::query_scalar("SELECT id FROM inventory_batches WHERE pharmacy_id = $1 AND batch_number = 'B00042'")
        .bind(pharmacy)
        .fetch_one(&world.db.pool)
        .await
        .unwrap();
    let batch = pharmacist.get(&format!("/api/inventory/{some_batch}")).await.unwrap().ok();
    assert_eq!(batch["on_hand"], 43);
    let verified = world.admin.get("/api/audit/verify").await.unwrap().ok();
    assert_eq!(verified["ok"], true, "{verified}");

    // A malformed upload is refused as a whole with the reason.
    let headless = pharmacist
        .send(reqwest::Method::POST, &format!("/api/inventory/upload?pharmacy_id={pharmacy}"), Some(common::RawBody::Text("medication,quantity\nx,1\n".into())))
        .await
        .unwrap();
    assert_eq!((headless.status, headless.body["field"].as_str()), (400, Some("batch_number")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prescribing_an_out_of_stock_medication_offers_alternatives_and_the_nearest_pharmacies() {
    let world = World::start(1).await;
    let here = world.facility.id; // at -1.29, 36.82 (Nairobi)
    let near = world.admin.post("/api/facilities", json!({"name": "Near Pharmacy", "kind": "clinic", "location": {"lat": -1.30, "lon": 36.83}, "timezone": "Africa/Nairobi", "wards": []})).await.unwrap().expect(201);
    let far = world.admin.post("/api/facilities", json!({"name": "Far Pharmacy", "kind": "clinic", "location": {"lat": -4.04, "lon": 39.67}, "timezone": "Africa/Nairobi", "wards": []})).await.unwrap().expect(201);
    let (near, far): (Uuid, Uuid) = (near["id"].as_str().unwrap().parse().unwrap(), far["id"].as_str().unwrap().parse().unwrap());
    let pharmacist = world.hub.login(&world.tenant, Role::Pharmacist).await;
    let amox500 = world.db.medication(&world.tenant, "Amoxicillin 500 mg capsule", "amoxicillin", "J01CA04", "12.50").await;
    let amox250 = world.db.medication(&world.tenant, "Amoxicillin 250 mg capsule", "amoxicillin", "J01CA04", "7.00").await;
    let ampicillin = world.db.medication(&world.tenant, "Ampicillin 500 mg capsule", "ampicillin", "J01CA01", "9.00").await;
    let unrelated = world.db.medication(&world.tenant, "Paracetamol 500 mg tablet", "paracetamol", "N02BE01", "1.00").await;
    pharmacist.receive_batch(here, amox250, "A250", 200, 40).await;
    pharmacist.receive_batch(here, ampicillin, "AMP", 200, 20).await;
    pharmacist.receive_batch(here, unrelated, "PARA", 200, 100).await;
    pharmacist.receive_batch(far, amox500, "FAR", 200, 30).await;
    pharmacist.receive_batch(near, amox500, "NEAR", 200, 5).await;
    let patient = world.db.patients(&world.tenant, 1).await[0];
    let doctor = world.hub.login(&world.tenant, Role::Doctor).await;

    let answer = doctor.post("/api/prescriptions", prescription(patient, amox500, here, 21)).await.unwrap().expect(201);
    assert_eq!((answer["available_before"].as_i64(), answer["reserved"].as_i64(), answer["short"].as_i64()), (Some(0), Some(0), Some(21)));
    let alternatives = &answer["alternatives"];
    let ids = |list: &Value, key: &str| -> Vec<String> { list.as_array().unwrap().iter().map(|a| a[key]["id"].as_str().map_or_else(|| a[key].to_string(), str::to_owned)).collect() };
    assert_eq!(ids(&alternatives["same_ingredient"], "medication"), vec![amox250.to_string()]);
    assert_eq!(ids(&alternatives["same_atc_group"], "medication"), vec![ampicillin.to_string()]);
    let pharmacies: Vec<&str> = alternatives["nearest_pharmacies"].as_array().unwrap().iter().map(|p| p["pharmacy_id"].as_str().unwrap()).collect();
    assert_eq!(pharmacies, vec![near.to_string(), far.to_string()], "nearest first");
    assert_eq!(alternatives["nearest_pharmacies"][0]["available"], 5);

    // In stock: no alternatives offered.
    let fine = doctor.post("/api/prescriptions", prescription(patient, amox250, here, 10)).await.unwrap().expect(201);
    assert_eq!((fine["reserved"].as_i64(), fine["short"].as_i64()), (Some(10), Some(0)));
    assert!(fine["alternatives"].is_null());

    // Bad prescriptions name the field; only doctors prescribe.
    for (body, field) in [
        (prescription(patient, Uuid::new_v4(), here, 1), "medication_id"),
        (prescription(Uuid::new_v4(), amox250, here, 1), "patient_id"),
        (json!({"patient_id": patient, "medication_id": amox250, "pharmacy_id": here, "dose": "1", "frequency": "daily", "duration_days": 5, "quantity": 0}), "quantity"),
        (json!({"patient_id": patient, "medication_id": amox250, "pharmacy_id": here, "dose": "", "frequency": "daily", "duration_days": 5, "quantity": 5}), "dose"),
    ] {
        let refused = doctor.post("/api/prescriptions", body).await.unwrap();
        assert_eq!((refused.status, refused.body["field"].as_str()), (400, Some(field)), "{}", refused.body);
    }
    assert_eq!(pharmacist.post("/api/prescriptions", prescription(patient, amox250, here, 1)).await.unwrap().status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispensing_notifies_prescriber_and_patient_and_low_stock_and_expiry_raise_live_alerts() {
    let world = World::start_with(1, |o| o.arg("--expiry-sweep-secs", 1).arg("--expiry-alert-days", "90,30,7")).await;
    let pharmacy = world.facility.id;
    let pharmacist = world.hub.login(&world.tenant, Role::Pharmacist).await;
    let medication = world.db.medication(&world.tenant, "Salbutamol 100 micrograms inhaler", "salbutamol", "R03AC02", "450.00").await;
    let patient = world.db.patients(&world.tenant, 1).await[0];
    let patient_user = world.db.link_patient_user(&world.tenant, patient).await;
    let doctor = world.hub.login(&world.tenant, Role::Doctor).await;
    let doctor_user = world.db.user_id(&email(&world.tenant.slug, Role::Doctor)).await;

    let mut board = Live::connect(&world.hub, &pharmacist).await;
    let stock_topic = format!("tenant/{}/stock/{pharmacy}", world.tenant.slug);
    assert_eq!(board.subscribe(&stock_topic, None).await["type"], "subscribed");
    assert_eq!(board.next().await["type"], "snapshot");
    let mut doctor_feed = Live::connect(&world.hub, &doctor).await;
    doctor_feed.subscribe(&format!("tenant/{}/user/{doctor_user}", world.tenant.slug), None).await;
    doctor_feed.next().await;
    let patient_api = world.hub.login(&world.tenant, Role::Patient).await;
    let mut patient_feed = Live::connect(&world.hub, &patient_api).await;
    patient_feed.subscribe(&format!("tenant/{}/user/{patient_user}", world.tenant.slug), None).await;
    patient_feed.next().await;

    // 20 days to expiry: the 30-day alert (only the tightest horizon crossed).
    let batch = pharmacist.receive_batch(pharmacy, medication, "SAL-1", 20, 12).await;
    pharmacist.put(&format!("/api/pharmacies/{pharmacy}/reorder-points/{medication}"), json!({"reorder_point": 5})).await.unwrap().expect(204);
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !seen.iter().any(|e: &Value| e["type"] == "stock.alert" && e["data"]["kind"] == "expiry") {
        assert!(std::time::Instant::now() < deadline, "no expiry alert: {seen:?}");
        if let Some(event) = board.next_within(Duration::from_secs(2)).await {
            seen.push(event);
        }
    }
    let expiry = seen.iter().find(|e| e["type"] == "stock.alert").unwrap();
    assert_eq!(expiry["data"]["horizon_days"], 30);
    assert_eq!(expiry["data"]["batch_id"], batch.to_string());

    // Prescribe 10 and dispense 8 now: 4 left on hand, 2 reserved → 2 available ≤ 5: low stock.
    let prescribed = doctor.post("/api/prescriptions", prescription(patient, medication, pharmacy, 10)).await.unwrap().expect(201);
    let id = prescribed["prescription"]["id"].as_str().unwrap();
    let dispensed = pharmacist.post(&format!("/api/prescriptions/{id}/dispense"), json!({"quantity": 8})).await.unwrap().ok();
    assert_eq!(dispensed["dispensed"], 8);
    let mut kinds = Vec::new();
    while !kinds.iter().any(|k: &String| k == "low_stock") {
        let event = board.next_within(Duration::from_secs(10)).await.expect("stock events keep coming");
        if event["type"] == "stock.alert" {
            kinds.push(event["data"]["kind"].as_str().unwrap().to_owned());
        }
    }
    let stock = pharmacist.get(&format!("/api/pharmacies/{pharmacy}/stock")).await.unwrap().ok();
    let low = stock["alerts"].as_array().unwrap().iter().find(|a| a["kind"] == "low_stock").expect("listed").clone();
    assert_eq!(low["detail"]["available"], 2);
    pharmacist.post(&format!("/api/stock-alerts/{}/acknowledge", low["id"].as_str().unwrap()), Value::Null).await.unwrap().expect(204);
    let stock = pharmacist.get(&format!("/api/pharmacies/{pharmacy}/stock")).await.unwrap().ok();
    assert!(!stock["alerts"].as_array().unwrap().iter().any(|a| a["kind"] == "low_stock"));

    // The prescriber and the patient hear that the prescription was picked up.
    for feed in [&mut doctor_feed, &mut patient_feed] {
        let mut types = Vec::new();
        while !types.contains(&"prescription.dispensed".to_owned()) {
            let event = feed.next_within(Duration::from_secs(10)).await.expect("notified");
            types.push(event["type"].as_str().unwrap().to_owned());
        }
        assert!(types.contains(&"prescription.created".to_owned()));
    }
    // Nurses do not dispense; every prescription step is audited with the patient.
    let nurse = world.nurse.post(&format!("/api/prescriptions/{id}/dispense"), Value::Null).await.unwrap();
    assert_eq!(nurse.status, 403);
    let trail = world.admin.get(&format!("/api/audit?patient_id={patient}&limit=1000")).await.unwrap().ok();
    let actions: Vec<&str> = trail["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    for action in ["prescription.create", "batch.reserve", "batch.dispense", "prescription.dispensed"] {
        assert!(actions.contains(&action), "{action} missing from {actions:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_dispense_storm_keeps_stock_and_dispensed_conserved() {
    let mut world = World::start(1).await;
    let pharmacy = world.facility.id;
    let pharmacist = world.hub.login(&world.tenant, Role::Pharmacist).await;
    let medication = world.db.medication(&world.tenant, "Amlodipine 5 mg tablet", "amlodipine", "C08CA01", "2.00").await;
    let batches = [
        pharmacist.receive_batch(pharmacy, medication, "K1", 100, 60).await,
        pharmacist.receive_batch(pharmacy, medication, "K2", 200, 60).await,
    ];
    let patients = world.db.patients(&world.tenant, 30).await;
    let doctor = world.hub.login(&world.tenant, Role::Doctor).await;
    let mut ids = Vec::new();
    for n in 0..60 {
        let body = prescription(patients[n % patients.len()], medication, pharmacy, 2);
        ids.push(doctor.post("/api/prescriptions", body).await.unwrap().expect(201)["prescription"]["id"].as_str().unwrap().to_owned());
    }
    let done = Arc::new(AtomicUsize::new(0));
    let storm = ids.iter().enumerate().map(|(n, id)| {
        let pharmacist = pharmacist.clone();
        let (id, done) = (id.clone(), done.clone());
        async move {
            tokio::time::sleep(Duration::from_millis(3 * n as u64)).await;
            let reply = pharmacist.post(&format!("/api/prescriptions/{id}/dispense"), json!({"quantity": 1})).await;
            if matches!(&reply, Ok(r) if r.status == 200) {
                done.fetch_add(1, Ordering::SeqCst);
            }
            reply.ok().filter(|r| r.status == 200).map(|r| r.body["dispensed"].as_i64().unwrap())
        }
    });
    let kill = async {
        while done.load(Ordering::SeqCst) < 15 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        world.hub.signal(libc::SIGKILL);
    };
    let (acknowledged, ()) = tokio::join!(join_all(storm), kill);
    world.hub.kill9().await;
    world.hub = spawn_hub_with(HubOptions::serve(&world.db)).await;
    let acknowledged: i64 = acknowledged.into_iter().flatten().sum();
    assert!(acknowledged >= 15);

    let pharmacist = world.hub.login(&world.tenant, Role::Pharmacist).await;
    let mut total_dispensed = 0;
    for batch in batches {
        let from_actor = pharmacist.get(&format!("/api/inventory/{batch}")).await.unwrap().ok();
        let dispensed = dispensed_from(&world, batch).await;
        assert_eq!(from_actor["on_hand"].as_i64().unwrap() + dispensed, 60, "batch {batch}: on hand + dispensed = received");
        let row: (i32, i32) = sqlx::query_as("SELECT on_hand, reserved FROM inventory_batches WHERE id = $1").bind(batch).fetch_one(&world.db.pool).await.unwrap();
        assert_eq!(i64::from(row.0), from_actor["on_hand"].as_i64().unwrap(), "the actor recovered what the rows say");
        assert_eq!(i64::from(row.1), from_actor["reserved"].as_i64().unwrap());
        total_dispensed += dispensed;
    }
    assert!(total_dispensed >= acknowledged, "every acknowledged dispense is there");
    assert!(total_dispensed <= acknowledged + 60, "and nothing beyond what was in flight");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refills_cancellations_and_fhir_views_follow_the_prescription() {
    let world = World::start(1).await;
    let pharmacy = world.facility.id;
    let pharmacist = world.hub.login(&world.tenant, Role::Pharmacist).await;
    let medication = world.db.medication(&world.tenant, "Enalapril 10 mg tablet", "enalapril", "C09AA02", "3.00").await;
    let batch = pharmacist.receive_batch(pharmacy, medication, "ENA-1", 300, 100).await;
    let patient = world.db.patients(&world.tenant, 1).await[0];
    let doctor = world.hub.login(&world.tenant, Role::Doctor).await;
    let mut body = prescription(patient, medication, pharmacy, 30);
    body["refills"] = json!(1);
    let prescribed = doctor.post("/api/prescriptions", body).await.unwrap().expect(201);
    let id = prescribed["prescription"]["id"].as_str().unwrap().to_owned();

    // Fill, refill once (reserving again), fill again; a second refill is refused.
    assert_eq!(pharmacist.post(&format!("/api/prescriptions/{id}/refill"), Value::Null).await.unwrap().status, 409, "not yet dispensed");
    let first = pharmacist.post(&format!("/api/prescriptions/{id}/dispense"), Value::Null).await.unwrap().ok();
    assert_eq!((first["dispensed"].as_i64(), first["prescription"]["status"].as_str()), (Some(30), Some("dispensed")));
    let refilled = pharmacist.post(&format!("/api/prescriptions/{id}/refill"), Value::Null).await.unwrap().ok();
    assert_eq!((refilled["status"].as_str(), refilled["refills_used"].as_i64(), refilled["reserved"].as_i64()), (Some("active"), Some(1), Some(30)));
    pharmacist.post(&format!("/api/prescriptions/{id}/dispense"), json!({"quantity": 10})).await.unwrap().ok();
    let rest = pharmacist.post(&format!("/api/prescriptions/{id}/dispense"), Value::Null).await.unwrap().ok();
    assert_eq!((rest["dispensed"].as_i64(), rest["prescription"]["status"].as_str()), (Some(20), Some("dispensed")));
    assert_eq!(pharmacist.post(&format!("/api/prescriptions/{id}/refill"), Value::Null).await.unwrap().status, 409, "refills used up");
    let too_much = pharmacist.post(&format!("/api/prescriptions/{id}/dispense"), json!({"quantity": 1})).await.unwrap();
    assert_eq!(too_much.status, 409);

    // Cancelling releases what a prescription holds.
    let other = doctor.post("/api/prescriptions", prescription(patient, medication, pharmacy, 15)).await.unwrap().expect(201);
    let other_id = other["prescription"]["id"].as_str().unwrap();
    assert_eq!(batch_numbers(&world, medication).await[&batch], (40, 15));
    let cancelled = pharmacist.post(&format!("/api/prescriptions/{other_id}/cancel"), json!({"reason": "changed to another drug"})).await.unwrap().ok();
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(batch_numbers(&world, medication).await[&batch], (40, 0));
    assert_eq!(pharmacist.post(&format!("/api/prescriptions/{other_id}/dispense"), Value::Null).await.unwrap().status, 409);

    // FHIR views.
    let request = pharmacist.get(&format!("/fhir/MedicationRequest/{id}")).await.unwrap().ok();
    assert_eq!((request["resourceType"].as_str(), request["status"].as_str(), request["intent"].as_str()), (Some("MedicationRequest"), Some("completed"), Some("order")));
    assert_eq!(request["subject"]["reference"], format!("Patient/{patient}"));
    assert_eq!(request["dispenseRequest"]["numberOfRepeatsAllowed"], 1);
    let med = pharmacist.get(&format!("/fhir/Medication/{medication}")).await.unwrap().ok();
    assert_eq!(med["code"]["coding"][0]["code"], "C09AA02");
    let dispense: Uuid = sqlx::query_scalar("SELECT id FROM dispenses WHERE prescription_id = $1 ORDER BY dispensed_at LIMIT 1")
        .bind(id.parse::<Uuid>().unwrap())
        .fetch_one(&world.db.pool)
        .await
        .unwrap();
    let handed = pharmacist.get(&format!("/fhir/MedicationDispense/{dispense}")).await.unwrap().ok();
    assert_eq!((handed["resourceType"].as_str(), handed["quantity"]["value"].as_i64()), (Some("MedicationDispense"), Some(30)));
    assert_eq!(handed["authorizingPrescription"][0]["reference"], format!("MedicationRequest/{id}"));
    let reads: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE patient_id = $1 AND action IN ('prescription.read_fhir', 'dispense.read_fhir')")
        .bind(patient)
        .fetch_one(&world.db.pool)
        .await
        .unwrap();
    assert_eq!(reads, 2);
    assert_eq!(world.hub.login(&world.tenant, Role::Dispatcher).await.get(&format!("/fhir/MedicationRequest/{id}")).await.unwrap().status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_adjustments_need_a_reason_and_never_take_reserved_units() {
    let world = World::start(1).await;
    let pharmacy = world.facility.id;
    let pharmacist = world.hub.login(&world.tenant, Role::Pharmacist).await;
    let medication = world.db.medication(&world.tenant, "Ibuprofen 400 mg tablet", "ibuprofen", "M01AE01", "2.50").await;
    let batch = pharmacist.receive_batch(pharmacy, medication, "IBU-9", 300, 20).await;
    let patient = world.db.patients(&world.tenant, 1).await[0];
    let doctor = world.hub.login(&world.tenant, Role::Doctor).await;
    doctor.post("/api/prescriptions", prescription(patient, medication, pharmacy, 15)).await.unwrap().expect(201);

    let path = format!("/api/inventory/{batch}");
    for (body, field) in [
        (json!({"delta": -1, "reason": "lost"}), "reason"),
        (json!({"delta": 0, "reason": "count"}), "delta"),
        (json!({"delta": "many", "reason": "count"}), "delta"),
        (json!({"delta": -1, "reason": "count", "colour": "red"}), "colour"),
    ] {
        let refused = pharmacist.put(&path, body.clone()).await.unwrap();
        assert_eq!((refused.status, refused.body["field"].as_str()), (400, Some(field)), "{body} → {}", refused.body);
    }
    let too_many = pharmacist.put(&path, json!({"delta": -6, "reason": "damage"})).await.unwrap();
    assert_eq!(too_many.status, 409, "only 5 units are not reserved: {}", too_many.body);
    let counted = pharmacist.put(&path, json!({"delta": -5, "reason": "damage", "note": "water damage"})).await.unwrap().ok();
    assert_eq!((counted["on_hand"].as_i64(), counted["reserved"].as_i64(), counted["available"].as_i64()), (Some(15), Some(15), Some(0)));
    let removal = world.db.pool.clone();
    let refused = pharmacist.send(reqwest::Method::DELETE, &path, Some(common::RawBody::Json(json!({"reason": "disposal"})))).await.unwrap();
    assert_eq!(refused.status, 409, "reserved units block a removal");
    let no_reason = pharmacist.post(&format!("{path}/recall"), json!({"reason": ""})).await.unwrap();
    assert_eq!((no_reason.status, no_reason.body["field"].as_str()), (400, Some("reason")));
    assert_eq!(world.nurse.put(&path, json!({"delta": 1, "reason": "count"})).await.unwrap().status, 403);
    let audited: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'batch.adjust' AND resource_id = $1")
        .bind(batch.to_string())
        .fetch_one(&removal)
        .await
        .unwrap();
    assert_eq!(audited, 1);
}
