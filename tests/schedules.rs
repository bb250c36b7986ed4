//! Booking against a doctor's live schedule, as a busy front desk does: one doctor, one time, one
//! appointment, whatever the load and however many hub processes serve it; availability that is
//! right in the facility's own time zone; reminders that go out even across a restart.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc, Weekday};
use common::{around_the_clock, email, spawn_hub_with, Api, HubOptions, Live, World};
use futures_util::future::join_all;
use medhub_actors::Role;
use serde_json::{json, Value};
use uuid::Uuid;

/// Tomorrow at `hour`:00 UTC.
fn tomorrow_at(hour: u32) -> DateTime<Utc> {
    let day = (Utc::now() + chrono::Duration::days(1)).date_naive();
    Utc.from_utc_datetime(&day.and_hms_opt(hour, 0, 0).unwrap())
}

async fn doctor_in(world: &World, consult_minutes: i32) -> Uuid {
    let user = world.db.user_id(&email(&world.tenant.slug, Role::Doctor)).await;
    world.admin.register_doctor(user, world.facility.id, consult_minutes, around_the_clock()).await
}

fn book_body(doctor: Uuid, patient: Uuid, start: DateTime<Utc>) -> Value {
    json!({"doctor_id": doctor, "patient_id": patient, "start": start, "kind": "in_person", "reason": "check-up"})
}

async fn active_appointments(world: &World, doctor: Uuid) -> Vec<(Uuid, DateTime<Utc>)> {
    sqlx::query_as("SELECT id, starts_at FROM appointments WHERE doctor_id = $1 AND status IN ('booked', 'checked_in') ORDER BY starts_at")
        .bind(doctor)
        .fetch_all(&world.db.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_bookings_of_one_slot_make_exactly_one_appointment() {
    let world = World::start(1).await;
    let doctor = doctor_in(&world, 30).await;
    let patients = world.db.patients(&world.tenant, 100).await;
    let topic = format!("tenant/{}/schedule/{doctor}", world.tenant.slug);
    let mut screens = Vec::new();
    for role in [Role::Doctor, Role::Nurse] {
        let api = world.hub.login(&world.tenant, role).await;
        let mut live = Live::connect(&world.hub, &api).await;
        assert_eq!(live.subscribe(&topic, None).await["type"], "subscribed");
        assert_eq!(live.next().await["type"], "snapshot");
        screens.push(live);
    }

    let mut desks = Vec::new();
    for role in [Role::Nurse, Role::Admin, Role::Doctor].into_iter().cycle().take(30) {
        desks.push(world.hub.login(&world.tenant, role).await);
    }
    let slot = tomorrow_at(10);
    let requests = (0..1000).map(|n| {
        let desk = desks[n % desks.len()].clone();
        let body = book_body(doctor, patients[n % patients.len()], slot);
        async move { desk.post("/api/appointments", body).await.unwrap() }
    });
    let replies = join_all(requests).await;

    let winners: Vec<&Value> = replies.iter().filter(|r| r.status == 201).map(|r| &r.body).collect();
    assert_eq!(winners.len(), 1, "exactly one booking succeeds");
    let winner = winners[0]["appointment"]["id"].as_str().unwrap().to_owned();
    for reply in replies.iter().filter(|r| r.status != 201) {
        assert_eq!(reply.status, 409, "{}", reply.body);
        assert_eq!(reply.body["error"], "conflict");
        assert_eq!(reply.body["conflicting_appointment"]["id"], winner.as_str(), "{}", reply.body);
    }
    assert_eq!(active_appointments(&world, doctor).await.len(), 1, "the database holds one appointment");

    // Every screen saw exactly one booking: the next event after it is a later, known one.
    let marker = world.nurse.post("/api/appointments", book_body(doctor, patients[0], tomorrow_at(12))).await.unwrap().expect(201);
    for live in &mut screens {
        let events = live.events(2).await;
        assert_eq!(events[0]["type"], "appointment.booked");
        assert_eq!(events[0]["data"]["appointment"]["id"], winner.as_str());
        assert_eq!(events[1]["data"]["appointment"]["id"], marker["appointment"]["id"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hub_processes_on_one_database_still_book_a_slot_once() {
    let world = World::start(1).await;
    let doctor = doctor_in(&world, 30).await;
    let patients = world.db.patients(&world.tenant, 50).await;
    let second = spawn_hub_with(HubOptions::serve(&world.db)).await;
    let hubs = [world.hub.login(&world.tenant, Role::Nurse).await, second.login(&world.tenant, Role::Nurse).await];
    // One process holds the tenant's lease and runs the schedule; the other forwards to it.
    for api in &hubs {
        api.get(&format!("/api/doctors/{doctor}/availability")).await.unwrap().ok();
    }

    let slot = tomorrow_at(9);
    let requests = (0..1000).map(|n| {
        let api = hubs[n % 2].clone();
        let body = book_body(doctor, patients[n % patients.len()], slot);
        async move { api.post("/api/appointments", body).await.unwrap() }
    });
    let replies = join_all(requests).await;
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "exactly one booking across both processes");
    assert!(statuses.iter().all(|s| *s == 201 || *s == 409), "{statuses:?}");
    assert_eq!(active_appointments(&world, doctor).await.len(), 1);

    // Both processes now know the slot is taken.
    for api in &hubs {
        let day = slot.date_naive();
        let free = api.get(&format!("/api/doctors/{doctor}/availability?from={day}&to={day}")).await.unwrap().ok();
        let starts: Vec<&str> = free["slots"].as_array().unwrap().iter().map(|s| s["start"].as_str().unwrap()).collect();
        assert!(!starts.iter().any(|s| s.parse::<DateTime<Utc>>().unwrap() == slot), "slot still offered: {starts:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescheduling_into_a_taken_slot_leaves_the_appointment_where_it_was() {
    let world = World::start(1).await;
    let doctor = doctor_in(&world, 30).await;
    let patients = world.db.patients(&world.tenant, 2).await;
    let nurse = &world.nurse;
    let first = nurse.post("/api/appointments", book_body(doctor, patients[0], tomorrow_at(10))).await.unwrap().expect(201);
    let second = nurse.post("/api/appointments", book_body(doctor, patients[1], tomorrow_at(11))).await.unwrap().expect(201);
    let second_id = second["appointment"]["id"].as_str().unwrap();

    let refused = nurse.post(&format!("/api/appointments/{second_id}/reschedule"), json!({"start": tomorrow_at(10)})).await.unwrap();
    assert_eq!(refused.status, 409);
    assert_eq!(refused.body["conflicting_appointment"]["id"], first["appointment"]["id"]);
    let unchanged = nurse.get(&format!("/api/appointments/{second_id}")).await.unwrap().ok();
    assert_eq!(unchanged["start"].as_str().unwrap().parse::<DateTime<Utc>>().unwrap(), tomorrow_at(11));
    assert_eq!(unchanged["status"], "booked");

    // A free time works, and frees the old one.
    let moved = nurse.post(&format!("/api/appointments/{second_id}/reschedule"), json!({"start": tomorrow_at(14)})).await.unwrap().ok();
    assert_eq!(moved["appointment"]["start"].as_str().unwrap().parse::<DateTime<Utc>>().unwrap(), tomorrow_at(14));
    nurse.post("/api/appointments", book_body(doctor, patients[0], tomorrow_at(11))).await.unwrap().expect(201);

    // A patient cannot be in two places at once, even with another doctor's schedule free.
    let overlapping = nurse.post("/api/appointments", book_body(doctor, patients[0], tomorrow_at(10))).await.unwrap();
    assert_eq!(overlapping.status, 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_booking_requests_are_refused_naming_the_field() {
    let world = World::start(1).await;
    let user = world.db.user_id(&email(&world.tenant.slug, Role::Doctor)).await;
    let hours = json!([{"weekday": "monday", "start": "08:00", "end": "12:00"}]);
    let doctor = world.admin.register_doctor(user, world.facility.id, 20, hours).await;
    let patient = world.db.patients(&world.tenant, 1).await[0];
    let nurse = &world.nurse;
    // The next Monday, in Nairobi (UTC+3): 08:00 local is 05:00 UTC.
    let mut monday = Utc::now().date_naive() + chrono::Duration::days(1);
    while monday.weekday() != Weekday::Mon {
        monday = monday.succ_opt().unwrap();
    }
    let at = |hour: u32, minute: u32| Utc.from_utc_datetime(&monday.and_hms_opt(hour, minute, 0).unwrap());

    let cases = [
        (json!({"doctor_id": Uuid::new_v4(), "patient_id": patient, "start": at(5, 0)}), "doctor_id"),
        (json!({"doctor_id": doctor, "patient_id": Uuid::new_v4(), "start": at(5, 0)}), "patient_id"),
        (json!({"doctor_id": doctor, "patient_id": patient, "start": at(10, 0)}), "start"),
        (json!({"doctor_id": doctor, "patient_id": patient, "start": "2020-01-06T05:00:00Z"}), "start"),
        (json!({"doctor_id": doctor, "patient_id": patient, "start": at(5, 40), "end": at(5, 20)}), "end"),
        (json!({"doctor_id": doctor, "patient_id": patient, "start": "2030-01-07T08:00:00"}), "start"),
        (json!({"doctor_id": doctor, "patient_id": patient, "start": "next monday"}), "start"),
        (json!({"doctor_id": doctor, "patient_id": patient, "start": at(5, 0), "kind": "telepathy"}), "kind"),
        (json!({"doctor_id": doctor, "patient_id": patient}), "start"),
    ];
    for (body, field) in cases {
        let reply = nurse.post("/api/appointments", body.clone()).await.unwrap();
        assert_eq!(reply.status, 400, "{body} → {}", reply.body);
        assert_eq!(reply.body["field"], field, "{body} → {}", reply.body);
    }
    // The seed's route works the same.
    let booked = nurse.post("/v1/appointments", json!({"doctor_id": doctor, "patient_id": patient, "start": at(5, 0)})).await.unwrap().expect(201);
    assert_eq!(booked["appointment"]["end"].as_str().unwrap().parse::<DateTime<Utc>>().unwrap(), at(5, 20), "consult length by default");
    assert_eq!(active_appointments(&world, doctor).await.len(), 1, "nothing refused was stored");
}

/// The last Sunday of March after today: when Europe/London moves from GMT to BST (at 01:00 UTC).
fn next_uk_spring_change() -> NaiveDate {
    let today = Utc::now().date_naive();
    let mut year = today.year();
    loop {
        let mut day = NaiveDate::from_ymd_opt(year, 3, 31).unwrap();
        while day.weekday() != Weekday::Sun {
            day = day.pred_opt().unwrap();
        }
        if day - chrono::Duration::days(2) > today {
            return day;
        }
        year += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn availability_in_london_follows_the_clocks_across_the_spring_change() {
    let world = World::start(1).await;
    let london = world
        .admin
        .post("/api/facilities", json!({"name": "London Clinic", "kind": "clinic", "location": {"lat": 51.5, "lon": -0.12},
                                       "timezone": "Europe/London", "wards": []}))
        .await
        .unwrap()
        .expect(201);
    let user = world.db.user_id(&email(&world.tenant.slug, Role::Doctor)).await;
    let hours = json!([{"weekday": "friday", "start": "09:00", "end": "10:00"}, {"weekday": "monday", "start": "09:00", "end": "10:00"}]);
    let doctor = world.admin.register_doctor(user, london["id"].as_str().unwrap().parse().unwrap(), 30, hours).await;

    let sunday = next_uk_spring_change();
    let (friday, monday) = (sunday - chrono::Duration::days(2), sunday + chrono::Duration::days(1));
    let free = world.nurse.get(&format!("/api/doctors/{doctor}/availability?from={friday}&to={monday}")).await.unwrap().ok();
    assert_eq!(free["timezone"], "Europe/London");
    let starts: Vec<DateTime<Utc>> = free["slots"].as_array().unwrap().iter().map(|s| s["start"].as_str().unwrap().parse().unwrap()).collect();
    let utc = |day: NaiveDate, hour: u32, minute: u32| Utc.from_utc_datetime(&day.and_hms_opt(hour, minute, 0).unwrap());
    assert_eq!(starts, vec![utc(friday, 9, 0), utc(friday, 9, 30), utc(monday, 8, 0), utc(monday, 8, 30)], "09:00 GMT, then 09:00 BST");

    let bad = world.nurse.get(&format!("/api/doctors/{doctor}/availability?from=29-03-2027")).await.unwrap();
    assert_eq!((bad.status, bad.body["field"].as_str()), (400, Some("from")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patients_see_their_own_appointments_live_and_others_see_nothing() {
    let world = World::start(1).await;
    let doctor = doctor_in(&world, 30).await;
    let patients = world.db.patients(&world.tenant, 2).await;
    let patient_user = world.db.link_patient_user(&world.tenant, patients[0]).await;
    let patient = world.hub.login(&world.tenant, Role::Patient).await;
    let mut feed = Live::connect(&world.hub, &patient).await;
    let own = format!("tenant/{}/user/{patient_user}", world.tenant.slug);
    assert_eq!(feed.subscribe(&own, None).await["type"], "subscribed");
    assert_eq!(feed.next().await["type"], "snapshot");
    let schedule = feed.subscribe(&format!("tenant/{}/schedule/{doctor}", world.tenant.slug), None).await;
    assert_eq!(schedule["error"], "forbidden", "a patient does not watch the doctor's whole schedule");

    // The patient books for themself (not for someone else), and hears about it live.
    let mine = patient.post("/api/appointments", book_body(doctor, patients[0], tomorrow_at(10))).await.unwrap().expect(201);
    let refused = patient.post("/api/appointments", book_body(doctor, patients[1], tomorrow_at(11))).await.unwrap();
    assert_eq!(refused.status, 403);
    let event = feed.next().await;
    assert_eq!(event["type"], "appointment.booked");
    assert_eq!(event["data"]["appointment"]["id"], mine["appointment"]["id"]);
    let theirs = world.nurse.post("/api/appointments", book_body(doctor, patients[1], tomorrow_at(12))).await.unwrap().expect(201);
    let id = mine["appointment"]["id"].as_str().unwrap();
    world.nurse.post(&format!("/api/appointments/{id}/cancel"), json!({"reason": "doctor unwell"})).await.unwrap().ok();
    let cancelled = feed.next().await;
    assert_eq!(cancelled["type"], "appointment.cancelled", "the other patient's booking never reached this feed: {cancelled}");

    // Reads: the patient sees their own list only; another's appointment does not exist for them.
    let listed = patient.get("/api/appointments").await.unwrap().ok();
    assert_eq!(listed["appointments"].as_array().unwrap().len(), 1);
    let other = theirs["appointment"]["id"].as_str().unwrap();
    assert_eq!(patient.get(&format!("/api/appointments/{other}")).await.unwrap().status, 404);
    let dispatcher = world.hub.login(&world.tenant, Role::Dispatcher).await;
    assert_eq!(dispatcher.get("/api/appointments").await.unwrap().status, 403);
    assert_eq!(dispatcher.get(&format!("/api/appointments/{other}")).await.unwrap().status, 403);

    // Every read that named a patient is in the audit trail with that patient.
    world.nurse.get(&format!("/api/appointments?doctor_id={doctor}")).await.unwrap().ok();
    let trail = world.admin.get(&format!("/api/audit?patient_id={}&action=appointment.list", patients[1])).await.unwrap().ok();
    assert_eq!(trail["entries"].as_array().unwrap().len(), 1, "{trail}");
    let denied = world.admin.get(&format!("/api/audit?user_id={}", dispatcher.user["id"].as_str().unwrap())).await.unwrap().ok();
    assert!(denied["entries"].as_array().unwrap().iter().any(|e| e["outcome"] == "denied"), "{denied}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_booking_storm_keeps_every_acknowledged_booking_and_nothing_refused() {
    let mut world = World::start(1).await;
    let doctor = doctor_in(&world, 15).await;
    let patients = world.db.patients(&world.tenant, 40).await;
    let mut desks = Vec::new();
    for _ in 0..8 {
        desks.push(world.hub.login(&world.tenant, Role::Nurse).await);
    }
    // 8 desks each try to book 40 quarter-hours, overlapping each other's so that some are refused.
    let acked = Arc::new(AtomicUsize::new(0));
    let storm = desks.into_iter().enumerate().map(|(desk_no, desk)| {
        let patients = patients.clone();
        let acked = acked.clone();
        async move {
            let (mut booked, mut refused) = (Vec::new(), Vec::new());
            for n in 0..40usize {
                let start = tomorrow_at(0) + chrono::Duration::minutes(15 * ((n * 3 + desk_no * 5) % 96) as i64);
                let body = book_body(doctor, patients[(n + desk_no * 5) % patients.len()], start);
                match desk.post("/api/appointments", body).await {
                    Ok(reply) if reply.status == 201 => {
                        booked.push(reply.body["appointment"]["id"].as_str().unwrap().parse::<Uuid>().unwrap());
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(reply) if reply.status == 409 || reply.status == 400 => refused.push(start),
                    _ => break, // the hub is gone
                }
            }
            (booked, refused)
        }
    });
    let kill = async {
        while acked.load(Ordering::SeqCst) < 30 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        world.hub.signal(libc::SIGKILL);
    };
    let (results, ()) = tokio::join!(join_all(storm), kill);
    world.hub.kill9().await;
    world.hub = spawn_hub_with(HubOptions::serve(&world.db)).await;

    let booked: BTreeSet<Uuid> = results.iter().flat_map(|(b, _)| b.iter().copied()).collect();
    assert!(booked.len() >= 30);
    let rows = active_appointments(&world, doctor).await;
    let stored: BTreeSet<Uuid> = rows.iter().map(|(id, _)| *id).collect();
    assert!(booked.is_subset(&stored), "acknowledged bookings lost: {:?}", booked.difference(&stored).collect::<Vec<_>>());
    // Beyond the acknowledged ones, at most the request each desk had in flight at the kill.
    assert!(stored.len() <= booked.len() + 8, "{} stored, {} acknowledged", stored.len(), booked.len());
    // Each refusal was for a time someone else holds.
    let taken: BTreeSet<DateTime<Utc>> = rows.iter().map(|(_, start)| *start).collect();
    for start in results.iter().flat_map(|(_, refused)| refused) {
        assert!(taken.contains(start), "{start} was refused but is free");
    }
    // No two stored appointments overlap, and the recovered actor agrees with the database.
    let admin: Api = world.hub.login(&world.tenant, Role::Admin).await;
    let day = tomorrow_at(0).date_naive();
    let free = admin.get(&format!("/api/doctors/{doctor}/availability?from={day}&to={day}")).await.unwrap().ok();
    assert_eq!(free["slots"].as_array().unwrap().len() + stored.len(), 96, "every quarter-hour is either free or booked once");
    let verified = admin.get("/api/audit/verify").await.unwrap().ok();
    assert_eq!(verified["ok"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reminder_goes_out_once_even_when_the_hub_restarts_before_it_is_due() {
    // The first hub sweeps only at start-up (before anything is booked), so it sends nothing.
    let mut world = World::start_with(1, |o| o.arg("--reminder-lead-secs", 7200).arg("--reminder-sweep-secs", 3600)).await;
    let doctor = doctor_in(&world, 30).await;
    let patient = world.db.patients(&world.tenant, 1).await[0];
    let patient_user = world.db.link_patient_user(&world.tenant, patient).await;
    let start = Utc::now() + chrono::Duration::minutes(90);
    let booked = world.nurse.post("/api/appointments", book_body(doctor, patient, start)).await.unwrap().expect(201);
    let id: Uuid = booked["appointment"]["id"].as_str().unwrap().parse().unwrap();
    let sent = || async {
        sqlx::query_scalar::<_, Option<DateTime<Utc>>>("SELECT reminder_sent_at FROM appointments WHERE id = $1")
            .bind(id)
            .fetch_one(&world.db.pool)
            .await
            .unwrap()
    };
    assert!(sent().await.is_none());

    world.hub.kill9().await;
    world.hub = spawn_hub_with(HubOptions::serve(&world.db).arg("--reminder-lead-secs", 7200).arg("--reminder-sweep-secs", 1)).await;
    let patient_api = world.hub.login(&world.tenant, Role::Patient).await;
    let mut feed = Live::connect(&world.hub, &patient_api).await;
    let own = format!("tenant/{}/user/{patient_user}", world.tenant.slug);
    let subscribed = feed.subscribe(&own, Some(0)).await;
    assert_eq!(subscribed["type"], "subscribed");
    let mut kinds = Vec::new();
    while let Some(event) = feed.next_within(Duration::from_secs(10)).await {
        kinds.push(event["type"].as_str().unwrap().to_owned());
        if event["type"] == "appointment.reminder" {
            assert_eq!(event["data"]["appointment"]["id"], id.to_string());
            break;
        }
    }
    assert_eq!(kinds, ["appointment.booked", "appointment.reminder"]);
    assert!(sent().await.is_some());
    // Sent once: later sweeps leave it alone.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let reminders: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'appointment.reminder' AND stream LIKE 'schedule/%'")
        .fetch_one(&world.db.pool)
        .await
        .unwrap();
    assert_eq!(reminders, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctors_are_found_by_specialty_and_distance_with_their_next_free_slot() {
    let world = World::start(1).await; // Alpha General, Nairobi (-1.29, 36.82)
    let coast = world
        .admin
        .post("/api/facilities", json!({"name": "Coast Clinic", "kind": "clinic", "location": {"lat": -4.04, "lon": 39.67}, "timezone": "Africa/Nairobi", "wards": []}))
        .await
        .unwrap()
        .expect(201);
    let coast_id: Uuid = coast["id"].as_str().unwrap().parse().unwrap();
    let near_user = world.db.user_id(&email(&world.tenant.slug, Role::Doctor)).await;
    medhub_hub::seed::create_user(&world.db.pool, &world.tenant.slug, "cardio@alpha.test", "Dr. Far Cardiologist", Role::Doctor, common::PASSWORD).await.unwrap();
    let far_user = world.db.user_id("cardio@alpha.test").await;
    let register = |user: Uuid, facility: Uuid, specialty: &str| {
        let body = json!({"user_id": user, "specialties": [specialty, "general practice"], "facility_id": facility, "consult_minutes": 30, "working_hours": around_the_clock()});
        let admin = world.admin.clone();
        async move { admin.post("/api/doctors", body).await.unwrap().expect(201)["id"].as_str().unwrap().to_owned() }
    };
    let near = register(near_user, world.facility.id, "paediatrics").await;
    let far = register(far_user, coast_id, "cardiology").await;

    // From Mombasa, the coast doctor is nearest; from Nairobi, the other.
    let from_coast = world.nurse.get("/api/doctors?near=-4.05,39.66").await.unwrap().ok();
    let order: Vec<&str> = from_coast["doctors"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(order, [far.as_str(), near.as_str()]);
    assert!(from_coast["doctors"][0]["distance_km"].as_f64().unwrap() < 5.0);
    assert!(from_coast["doctors"][1]["distance_km"].as_f64().unwrap() > 400.0);
    assert!(from_coast["doctors"][0]["next_free_slot"]["start"].is_string(), "{from_coast}");
    let cardiology = world.nurse.get("/api/doctors?specialty=Cardiology").await.unwrap().ok();
    let found: Vec<&str> = cardiology["doctors"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(found, [far.as_str()]);
    let bad = world.nurse.get("/api/doctors?near=91,0").await.unwrap();
    assert_eq!((bad.status, bad.body["field"].as_str()), (400, Some("near")));
}
