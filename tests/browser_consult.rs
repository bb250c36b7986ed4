//! A video consult in a real browser: headless Chromium with a fake camera and microphone,
//! driven by Playwright (`tests/browser/consult.mjs`). A doctor and their patient, each signed in
//! through the console's form in a browser context of their own, reach the consult of a video
//! appointment from it (the doctor's schedule, the patient's own appointments) and meet through the
//! hub's media relay: each page's remote video must play the other's frames. The patient's live
//! connection drops and their page joins again by itself. They chat; the patient leaves and the
//! doctor's page shows it; the doctor ends the consult with its record and
//! both pages show it ended, and the patient's appointment completed.
//!
//! The world (a doctor working around the clock, a patient record linked to the tenant's
//! patient-role user, a video appointment tomorrow) is set up here through the API; the test then
//! checks through the API what the pages did: the record, the chat, who was in the room.
//!
//! Needs Node.js, Chromium and `tests/browser/node_modules`; `scripts/test` installs them.

mod common;

use std::time::Instant;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{json, Value};

use common::{around_the_clock, email, require_browser, run_browser_story_on, World, PASSWORD};
use medhub_actors::Role;

/// Tomorrow at 10:00 UTC: inside the doctor's (round-the-clock) hours, and never in the past.
fn tomorrow_at_ten() -> DateTime<Utc> {
    let day = (Utc::now() + chrono::Duration::days(1)).date_naive();
    Utc.from_utc_datetime(&day.and_hms_opt(10, 0, 0).expect("a valid time"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_doctor_and_a_patient_meet_in_a_video_consult_in_chromium_and_the_doctor_ends_it() {
    require_browser(&[]);

    // The hub's media offers loopback candidates too (`--media-loopback`, on by default), and the
    // script lets Chromium use loopback, so the two meet on this machine whatever its interfaces.
    let world = World::start(1).await;
    let slug = world.tenant.slug.clone();
    let doctor_user = world.db.user_id(&email(&slug, Role::Doctor)).await;
    let doctor_id = world.admin.register_doctor(doctor_user, world.facility.id, 30, around_the_clock()).await;
    let patient_id = world.db.patients(&world.tenant, 1).await[0];
    let patient_user = world.db.link_patient_user(&world.tenant, patient_id).await;
    let booked = world
        .nurse
        .post("/api/appointments", json!({"doctor_id": doctor_id, "patient_id": patient_id, "start": tomorrow_at_ten(),
                                          "kind": "video", "reason": "follow-up of a persistent cough"}))
        .await
        .expect("book")
        .expect(201);
    let appointment = booked["appointment"]["id"].as_str().expect("appointment id").to_owned();

    let started = Instant::now();
    let (doctor_email, patient_email) = (email(&slug, Role::Doctor), email(&slug, Role::Patient));
    let env = [
        ("MEDHUB_TENANT", slug.as_str()),
        ("MEDHUB_PASSWORD", PASSWORD),
        ("MEDHUB_DOCTOR_EMAIL", doctor_email.as_str()),
        ("MEDHUB_PATIENT_EMAIL", patient_email.as_str()),
        ("MEDHUB_APPOINTMENT", appointment.as_str()),
    ];
    run_browser_story_on(&world.hub, "consult.mjs", &env).await;
    println!("the browser story took {:.1} s", started.elapsed().as_secs_f64());

    // What the pages did, as the hub recorded it.
    let doctor = world.hub.login(&world.tenant, Role::Doctor).await;
    let consult = doctor.get(&format!("/api/appointments/{appointment}/consult")).await.expect("read the consult").ok();
    assert_eq!(consult["state"], "ended", "{consult}");
    assert_eq!(consult["appointment_status"], "completed", "{consult}");
    let record = &consult["record"];
    assert_eq!(record["chief_complaint"], "Persistent dry cough for three weeks", "{consult}");
    assert_eq!(record["plan"], "Chest X-ray; salbutamol inhaler as needed", "{consult}");
    assert_eq!(record["follow_up"], "Video review in two weeks", "{consult}");
    let participants = consult["participants"].as_array().expect("participants");
    let by_user = |user: uuid::Uuid| participants.iter().find(|p| p["user_id"] == user.to_string()).cloned().unwrap_or(Value::Null);
    let (doctor_seat, patient_seat) = (by_user(doctor_user), by_user(patient_user));
    assert_eq!(patient_seat["connection"], "left", "the patient pressed Leave: {consult}");
    assert_eq!(doctor_seat["joins"], 1, "{consult}");
    assert_eq!(patient_seat["joins"], 2, "the patient's page joined again after its connection dropped: {consult}");
    assert!(patient_seat["seconds_in_room"].as_f64() > Some(1.0), "the patient was in the room a while: {consult}");
    assert!(consult["started_at"].is_string(), "the consult started once both were in: {consult}");

    let session = consult["id"].as_str().expect("session id");
    let chat = doctor.get(&format!("/api/consults/{session}/messages")).await.expect("read the chat").ok();
    let bodies: Vec<&str> = chat["messages"].as_array().expect("messages").iter().filter_map(|m| m["body"].as_str()).collect();
    assert!(bodies.contains(&"Hello doctor, can you hear me?"), "the patient's chat message is stored: {chat}");

    let booked = doctor.get(&format!("/api/appointments/{appointment}")).await.expect("read the appointment").ok();
    let status = booked.get("appointment").unwrap_or(&booked)["status"].clone();
    assert_eq!(status, "completed", "{booked}");
}
