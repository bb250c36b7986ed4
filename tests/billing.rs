//! Billing as a hospital's cashier desk lives it: the pharmacist bills what the pharmacy dispensed
//! and the consultations a patient completed, to the cent; payments come in from many tills at
//! once, in cash, by card and by mobile money, and the invoice balances exactly; a retried payment
//! is not counted twice; refunds and voids follow the rules; a patient sees only their own bills,
//! clinical staff none; and every look at an invoice is in the audit trail with the patient's id.
//!
//! The billable items (medications, stock, prescriptions, dispenses, completed appointments) are set
//! up with SQL, as the pharmacy and the doctor's schedule would have left them; everything billing
//! does goes through the HTTP API.

mod common;

use chrono::{Datelike, Utc};
use common::{around_the_clock, email, Api, RawBody, World};
use futures_util::future::join_all;
use medhub_actors::Role;
use serde_json::{json, Value};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// What the pharmacy and the doctor's schedule leave behind (setup by SQL)

/// A medication of the formulary with a batch of stock at the world's facility.
struct Stock {
    medication: Uuid,
    batch: Uuid,
}

async fn stock(world: &World, name: &str, unit_price: &str) -> Stock {
    let (medication, batch) = (Uuid::new_v4(), Uuid::new_v4());
    sqlx::query(
        "INSERT INTO medications (id, tenant_id, name, generic_name, atc_code, form, strength, unit, unit_price)
         VALUES ($1, $2, $3, $3, 'N02BE01', 'tablet', '500 mg', 'tablet', $4::numeric)",
    )
    .bind(medication)
    .bind(world.tenant.id)
    .bind(name)
    .bind(unit_price)
    .execute(&world.db.pool)
    .await
    .expect("medication");
    sqlx::query(
        "INSERT INTO inventory_batches (id, tenant_id, pharmacy_id, medication_id, batch_number, expiry_date, on_hand,
                                        reserved, status, version, received_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, DATE '2030-01-01', 10000, 0, 'active', 1, now(), now())",
    )
    .bind(batch)
    .bind(world.tenant.id)
    .bind(world.facility.id)
    .bind(medication)
    .bind(format!("B-{}", &batch.simple().to_string()[..8]))
    .execute(&world.db.pool)
    .await
    .expect("batch");
    Stock { medication, batch }
}

/// A prescription for `patient` and `quantity` units of it handed over at `unit_price`.
async fn dispense(world: &World, patient: Uuid, stock: &Stock, quantity: i32, unit_price: &str) -> Uuid {
    let prescriber = world.db.user_id(&email(&world.tenant.slug, Role::Doctor)).await;
    let pharmacist = world.db.user_id(&email(&world.tenant.slug, Role::Pharmacist)).await;
    let (prescription, dispense) = (Uuid::new_v4(), Uuid::new_v4());
    sqlx::query(
        "INSERT INTO prescriptions (id, tenant_id, patient_id, prescriber_id, medication_id, pharmacy_id, dose, frequency,
                                    duration_days, quantity, refills, status, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, '1 tablet', 'three times a day', 7, $7, 0, 'dispensed', now(), now())",
    )
    .bind(prescription)
    .bind(world.tenant.id)
    .bind(patient)
    .bind(prescriber)
    .bind(stock.medication)
    .bind(world.facility.id)
    .bind(quantity)
    .execute(&world.db.pool)
    .await
    .expect("prescription");
    sqlx::query(
        "INSERT INTO dispenses (id, tenant_id, prescription_id, patient_id, batch_id, medication_id, quantity, unit_price,
                                dispensed_by, dispensed_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8::numeric, $9, clock_timestamp())",
    )
    .bind(dispense)
    .bind(world.tenant.id)
    .bind(prescription)
    .bind(patient)
    .bind(stock.batch)
    .bind(stock.medication)
    .bind(quantity)
    .bind(unit_price)
    .bind(pharmacist)
    .execute(&world.db.pool)
    .await
    .expect("dispense");
    dispense
}

/// The tenant's doctor, registered by the admin, charging `fee` per consultation.
async fn doctor_charging(world: &World, fee: &str) -> Uuid {
    let user = world.db.user_id(&email(&world.tenant.slug, Role::Doctor)).await;
    let doctor = world.admin.register_doctor(user, world.facility.id, 30, around_the_clock()).await;
    sqlx::query("UPDATE doctors SET consultation_fee = $2::numeric WHERE id = $1").bind(doctor).bind(fee).execute(&world.db.pool).await.expect("fee");
    doctor
}

/// A past appointment of `patient` with `doctor` at `start` (UTC), in `status`.
async fn consultation(world: &World, doctor: Uuid, patient: Uuid, start: &str, status: &str) -> Uuid {
    let id = Uuid::new_v4();
    let booked_by = world.db.user_id(&email(&world.tenant.slug, Role::Nurse)).await;
    sqlx::query(
        "INSERT INTO appointments (id, tenant_id, doctor_id, patient_id, starts_at, ends_at, kind, status, booked_by,
                                   created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5::timestamptz, $5::timestamptz + interval '30 minutes', 'in_person', $6, $7, now(), now())",
    )
    .bind(id)
    .bind(world.tenant.id)
    .bind(doctor)
    .bind(patient)
    .bind(start)
    .bind(status)
    .bind(booked_by)
    .execute(&world.db.pool)
    .await
    .expect("appointment");
    id
}

/// Three tablets at 0.10, seven at 33.33 and a consultation at 33.33: 0.30 + 233.31 + 33.33 =
/// 266.94, where floats already go wrong on the first line (0.1 × 3 = 0.30000000000000004).
/// Returns the dispenses and the billable consultation.
async fn a_week_of_care(world: &World, patient: Uuid) -> (Vec<Uuid>, Uuid) {
    let paracetamol = stock(world, "Paracetamol", "0.10").await;
    let amoxicillin = stock(world, "Amoxicillin", "33.33").await;
    let first = dispense(world, patient, &paracetamol, 3, "0.10").await;
    let second = dispense(world, patient, &amoxicillin, 7, "33.33").await;
    let doctor = doctor_charging(world, "33.33").await;
    // 21:30 UTC is already the next day in Nairobi, where the doctor works.
    let seen = consultation(world, doctor, patient, "2026-01-10T21:30:00Z", "completed").await;
    consultation(world, doctor, patient, "2026-01-12T08:00:00Z", "cancelled").await;
    consultation(world, doctor, patient, "2026-01-13T08:00:00Z", "no_show").await;
    (vec![first, second], seen)
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn uuid_of(value: &Value) -> Uuid {
    value.as_str().and_then(|text| text.parse().ok()).unwrap_or_else(|| panic!("not a UUID: {value}"))
}

/// "12.50" → 1250, exactly (the API writes amounts with two decimals).
fn cents(value: &Value) -> i64 {
    let text = value.as_str().unwrap_or_else(|| panic!("an amount is a string: {value}"));
    let (whole, fraction) = text.split_once('.').unwrap_or_else(|| panic!("two decimals: {text}"));
    assert_eq!(fraction.len(), 2, "two decimals: {text}");
    whole.parse::<i64>().unwrap() * 100 + fraction.parse::<i64>().unwrap()
}

/// How a cashier might type an amount of `cents`: "1", "0.1", "0.07", "1.25".
fn typed(cents: i64) -> String {
    match cents % 100 {
        0 => format!("{}", cents / 100),
        rest if rest % 10 == 0 => format!("{}.{}", cents / 100, rest / 10),
        rest => format!("{}.{rest:02}", cents / 100),
    }
}

async fn create(api: &Api, patient: Uuid) -> Value {
    api.post("/api/invoices", json!({"patient_id": patient})).await.unwrap().expect(201)
}

fn payment(amount: &str, method: &str, reference: &str) -> Value {
    json!({"amount": amount, "method": method, "reference": reference})
}

/// The audit entries that name `patient`, oldest first.
async fn audit_of(admin: &Api, patient: Uuid) -> Vec<Value> {
    let page = admin.get(&format!("/api/audit?patient_id={patient}&limit=1000")).await.unwrap().ok();
    let mut entries = page["entries"].as_array().unwrap().clone();
    entries.reverse();
    entries
}

fn entries_of<'a>(entries: &'a [Value], action: &str, outcome: &str) -> Vec<&'a Value> {
    entries.iter().filter(|e| e["action"] == action && e["outcome"] == outcome).collect()
}

fn detail_of(reply: &Value) -> &str {
    reply["detail"].as_str().unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Stories

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pharmacist_bills_a_week_of_care_to_the_cent_and_takes_payments_and_a_refund() {
    let world = World::start(1).await;
    let pharmacist = world.hub.login(&world.tenant, Role::Pharmacist).await;
    let patient = world.db.patients(&world.tenant, 1).await[0];
    let (dispenses, seen) = a_week_of_care(&world, patient).await;

    let invoice = create(&pharmacist, patient).await;
    let id = invoice["id"].as_str().unwrap().to_owned();
    let url = format!("/api/invoices/{id}");
    assert_eq!(invoice["number"], format!("INV-{}-000001", Utc::now().year()));
    assert_eq!(invoice["patient_id"], patient.to_string());
    assert_eq!(invoice["status"], "draft");
    assert_eq!(invoice["currency"], "KES");
    assert_eq!((&invoice["total"], &invoice["paid"], &invoice["balance"]), (&json!("266.94"), &json!("0.00"), &json!("266.94")));
    assert_eq!(invoice["version"], 1);
    assert_eq!(invoice["created_by"], pharmacist.user["id"]);
    let lines: Vec<(&str, &str, i64, &str, &str)> = invoice["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (l["kind"].as_str().unwrap(), l["description"].as_str().unwrap(), l["quantity"].as_i64().unwrap(),
             l["unit_price"].as_str().unwrap(), l["amount"].as_str().unwrap())
        })
        .collect();
    assert_eq!(
        lines,
        vec![
            ("medication", "Paracetamol × 3", 3, "0.10", "0.30"),
            ("medication", "Amoxicillin × 7", 7, "33.33", "233.31"),
            ("consultation", "Consultation: doctor of alpha 2026-01-11", 1, "33.33", "33.33"),
        ],
        "dispenses in order, then the completed consultation on the doctor's local date; cancelled and no-show ones are not billed"
    );
    assert_eq!(invoice["lines"][0]["dispense_id"], dispenses[0].to_string());
    assert_eq!(invoice["lines"][1]["dispense_id"], dispenses[1].to_string());
    assert_eq!(invoice["lines"][2]["appointment_id"], seen.to_string());
    assert_eq!(invoice["payments"], json!([]));
    let stored: (String, String) = sqlx::query_as(
        "SELECT i.total::text, (SELECT sum(amount)::text FROM invoice_lines WHERE invoice_id = i.id) FROM invoices i WHERE i.id = $1",
    )
    .bind(uuid_of(&invoice["id"]))
    .fetch_one(&world.db.pool)
    .await
    .unwrap();
    assert_eq!(stored, ("266.94".to_owned(), "266.94".to_owned()), "the database holds the exact decimals");
    assert_eq!(pharmacist.get(&url).await.unwrap().ok(), invoice, "what was created is what is read");

    // Everything is billed now: a second invoice finds nothing.
    let again = pharmacist.post("/api/invoices", json!({"patient_id": patient})).await.unwrap();
    assert_eq!(again.status, 409, "{}", again.body);
    assert!(detail_of(&again.body).contains("nothing to bill"), "{}", again.body);
    let stranger = pharmacist.post("/api/invoices", json!({"patient_id": Uuid::new_v4()})).await.unwrap();
    assert_eq!((stranger.status, stranger.body["field"].as_str()), (400, Some("patient_id")), "{}", stranger.body);

    // A draft takes no money; once issued it does, and it is issued once.
    let early = pharmacist.post(&format!("{url}/payments"), payment("10", "cash", "R-0")).await.unwrap();
    assert_eq!(early.status, 409, "{}", early.body);
    let issued = pharmacist.post(&format!("{url}/issue"), json!({})).await.unwrap().ok();
    assert_eq!(issued["status"], "issued");
    assert!(issued["issued_at"].is_string());
    assert_eq!(issued["version"], 2);
    assert_eq!(pharmacist.post(&format!("{url}/issue"), json!({})).await.unwrap().expect(409)["error"], "conflict");

    // More than the balance is refused, naming the balance, and nothing is recorded.
    let too_much = pharmacist.post(&format!("{url}/payments"), payment("266.95", "cash", "R-1")).await.unwrap();
    assert_eq!((too_much.status, too_much.body["field"].as_str()), (400, Some("amount")), "{}", too_much.body);
    assert!(detail_of(&too_much.body).contains("266.94"), "the refusal names the balance: {}", too_much.body);
    for (amount, why) in [(json!("1.005"), "three decimals"), (json!("-1"), "negative"), (json!("1e3"), "an exponent"),
                          (json!("abc"), "not a number"), (json!(""), "empty"), (json!(12.5), "a float"), (json!("0"), "zero")] {
        let reply = pharmacist.post(&format!("{url}/payments"), json!({"amount": amount, "method": "cash", "reference": "R-2"})).await.unwrap();
        assert_eq!((reply.status, reply.body["field"].as_str()), (400, Some("amount")), "{why}: {}", reply.body);
    }
    let cheque = pharmacist.post(&format!("{url}/payments"), payment("1", "cheque", "R-3")).await.unwrap();
    assert_eq!((cheque.status, cheque.body["field"].as_str()), (400, Some("method")), "{}", cheque.body);
    let extra = pharmacist.post(&format!("{url}/payments"), json!({"amount": "1", "method": "cash", "reference": "R-4", "tip": "5"})).await.unwrap();
    assert_eq!((extra.status, extra.body["field"].as_str()), (400, Some("tip")), "{}", extra.body);
    let unnamed = pharmacist.post(&format!("{url}/payments"), json!({"amount": "1", "method": "cash"})).await.unwrap();
    assert_eq!((unnamed.status, unnamed.body["field"].as_str()), (400, Some("reference")), "{}", unnamed.body);
    let untouched = pharmacist.get(&url).await.unwrap().ok();
    assert_eq!((&untouched["paid"], &untouched["status"], &untouched["payments"]), (&json!("0.00"), &json!("issued"), &json!([])));

    // A mobile-money payment, and the till retrying it after a lost answer: counted once.
    let paid = pharmacist.post(&format!("{url}/payments"), payment("100", "mobile_money", "MPESA-QX12")).await.unwrap().expect(201);
    assert_eq!((&paid["kind"], &paid["method"], &paid["amount"], &paid["reference"]), (&json!("payment"), &json!("mobile_money"), &json!("100.00"), &json!("MPESA-QX12")));
    assert_eq!((&paid["invoice"]["status"], &paid["invoice"]["paid"], &paid["invoice"]["balance"]), (&json!("partially_paid"), &json!("100.00"), &json!("166.94")));
    let retried = pharmacist.post(&format!("{url}/payments"), payment("100.00", "mobile_money", "MPESA-QX12")).await.unwrap().expect(200);
    assert_eq!(retried["id"], paid["id"], "the retry answers the payment already recorded");
    assert_eq!(retried["invoice"]["paid"], "100.00");
    let reused = pharmacist.post(&format!("{url}/payments"), payment("50", "mobile_money", "MPESA-QX12")).await.unwrap();
    assert_eq!(reused.status, 409, "the same reference for another amount is not a retry: {}", reused.body);

    // The rest by card pays the invoice; not a cent more is taken.
    let rest = pharmacist.post(&format!("{url}/payments"), payment("166.94", "card", "VISA-0042")).await.unwrap().expect(201);
    assert_eq!((&rest["invoice"]["status"], &rest["invoice"]["paid"], &rest["invoice"]["balance"]), (&json!("paid"), &json!("266.94"), &json!("0.00")));
    let beyond = pharmacist.post(&format!("{url}/payments"), payment("0.01", "cash", "R-5")).await.unwrap();
    assert_eq!((beyond.status, beyond.body["field"].as_str()), (400, Some("amount")), "{}", beyond.body);
    assert!(detail_of(&beyond.body).contains("0.00"), "{}", beyond.body);
    assert_eq!(pharmacist.post(&format!("{url}/void"), json!({"reason": "wrong patient"})).await.unwrap().expect(409)["error"], "conflict");

    // A refund: at most what was paid; the invoice is partly paid again.
    let refunded = pharmacist.post(&format!("{url}/refunds"), payment("50.00", "cash", "REFUND-1")).await.unwrap().expect(201);
    assert_eq!((&refunded["kind"], &refunded["amount"]), (&json!("refund"), &json!("50.00")));
    assert_eq!((&refunded["invoice"]["status"], &refunded["invoice"]["paid"], &refunded["invoice"]["balance"]), (&json!("partially_paid"), &json!("216.94"), &json!("50.00")));
    pharmacist.post(&format!("{url}/refunds"), payment("50.00", "cash", "REFUND-1")).await.unwrap().expect(200);
    let over_refund = pharmacist.post(&format!("{url}/refunds"), payment("216.95", "cash", "REFUND-2")).await.unwrap();
    assert_eq!((over_refund.status, over_refund.body["field"].as_str()), (400, Some("amount")), "{}", over_refund.body);
    assert!(detail_of(&over_refund.body).contains("216.94"), "{}", over_refund.body);

    let now = pharmacist.get(&url).await.unwrap().ok();
    let kinds: Vec<(&str, &str)> = now["payments"].as_array().unwrap().iter().map(|p| (p["kind"].as_str().unwrap(), p["amount"].as_str().unwrap())).collect();
    assert_eq!(kinds, vec![("payment", "100.00"), ("payment", "166.94"), ("refund", "50.00")]);
    assert_eq!((&now["paid"], &now["status"]), (&json!("216.94"), &json!("partially_paid")));
    let stored: (String, String, String) = sqlx::query_as("SELECT total::text, paid::text, status FROM invoices WHERE id = $1")
        .bind(uuid_of(&invoice["id"]))
        .fetch_one(&world.db.pool)
        .await
        .unwrap();
    assert_eq!(stored, ("266.94".to_owned(), "216.94".to_owned(), "partially_paid".to_owned()));

    // The trail has every step, each naming the patient, none naming what was dispensed.
    let trail = audit_of(&world.admin, patient).await;
    let billing: Vec<&Value> = trail.iter().filter(|e| e["resource_type"] == "invoice").collect();
    let actions: Vec<(&str, &str)> = billing.iter().map(|e| (e["action"].as_str().unwrap(), e["outcome"].as_str().unwrap())).collect();
    for expected in [("invoice.create", "success"), ("invoice.read", "success"), ("invoice.issue", "success"),
                     ("invoice.payment", "success"), ("invoice.refund", "success")] {
        assert!(actions.contains(&expected), "{expected:?} is in the trail: {actions:?}");
    }
    assert_eq!(entries_of(&trail, "invoice.payment", "success").len(), 3, "two payments and the retry");
    for entry in &billing {
        assert_eq!(entry["patient_id"], patient.to_string());
        assert_eq!(entry["resource_id"], invoice["id"]);
        assert!(!entry["detail"].to_string().contains("Paracetamol"), "no clinical detail in the trail: {entry}");
    }
    let created = entries_of(&trail, "invoice.create", "success")[0];
    assert_eq!((&created["detail"]["number"], &created["detail"]["total"]), (&invoice["number"], &json!("266.94")));
    assert_eq!(created["actor_role"], "pharmacist");
    assert_eq!(world.admin.get("/api/audit/verify").await.unwrap().ok()["ok"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_payments_from_many_tills_at_once_balance_to_the_cent() {
    let world = World::start(1).await;
    let patient = world.db.patients(&world.tenant, 1).await[0];
    a_week_of_care(&world, patient).await;
    let pharmacist = world.hub.login(&world.tenant, Role::Pharmacist).await;
    let invoice = create(&pharmacist, patient).await;
    let url = format!("/api/invoices/{}", invoice["id"].as_str().unwrap());
    pharmacist.post(&format!("{url}/issue"), json!({})).await.unwrap().ok();
    let total = cents(&invoice["total"]);
    assert_eq!(total, 26_694);

    // 199 payments of 0.01, 0.02, … 1.99 and one of the rest: together exactly the total, so
    // whatever order they land in, each fits the balance it finds.
    let mut amounts: Vec<i64> = (1..=199).collect();
    amounts.push(total - amounts.iter().sum::<i64>());
    let mut tills = Vec::new();
    for role in [Role::Pharmacist, Role::Admin].into_iter().cycle().take(10) {
        tills.push(world.hub.login(&world.tenant, role).await);
    }
    let methods = ["cash", "card", "mobile_money"];
    let requests = amounts.iter().enumerate().map(|(n, amount)| {
        let till = tills[n % tills.len()].clone();
        let body = payment(&typed(*amount), methods[n % methods.len()], &format!("TILL-{}-{n:03}", n % tills.len()));
        let url = format!("{url}/payments");
        async move {
            // A till whose request met a busy hub (503) sends it again, same reference.
            for _ in 0..50 {
                let reply = till.post(&url, body.clone()).await.unwrap();
                if reply.status != 503 {
                    return reply;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            panic!("the hub stayed busy for 5 s");
        }
    });
    let replies = join_all(requests).await;
    for reply in &replies {
        assert!(reply.status == 201 || reply.status == 200, "every payment is taken: {} {}", reply.status, reply.body);
    }

    let paid = pharmacist.get(&url).await.unwrap().ok();
    assert_eq!((&paid["status"], &paid["paid"], &paid["total"], &paid["balance"]), (&json!("paid"), &json!("266.94"), &json!("266.94"), &json!("0.00")));
    let payments = paid["payments"].as_array().unwrap();
    assert_eq!(payments.len(), 200, "each payment recorded once");
    assert_eq!(payments.iter().map(|p| cents(&p["amount"])).sum::<i64>(), total);
    let mut recorded: Vec<i64> = payments.iter().map(|p| cents(&p["amount"])).collect();
    recorded.sort_unstable();
    let mut sent = amounts.clone();
    sent.sort_unstable();
    assert_eq!(recorded, sent, "exactly the amounts the tills sent");
    let stored: (String, String) = sqlx::query_as("SELECT paid::text, total::text FROM invoices WHERE id = $1")
        .bind(uuid_of(&invoice["id"]))
        .fetch_one(&world.db.pool)
        .await
        .unwrap();
    assert_eq!(stored, ("266.94".to_owned(), "266.94".to_owned()));
    let summed: String = sqlx::query_scalar("SELECT sum(amount)::text FROM payments WHERE invoice_id = $1")
        .bind(uuid_of(&invoice["id"]))
        .fetch_one(&world.db.pool)
        .await
        .unwrap();
    assert_eq!(summed, "266.94");

    // One more cent is one too many, and the refusal says the balance is nothing.
    let extra = pharmacist.post(&format!("{url}/payments"), payment("0.01", "cash", "TILL-LATE")).await.unwrap();
    assert_eq!((extra.status, extra.body["field"].as_str()), (400, Some("amount")), "{}", extra.body);
    assert!(detail_of(&extra.body).contains("balance") && detail_of(&extra.body).contains("0.00"), "{}", extra.body);
    assert_eq!(pharmacist.get(&url).await.unwrap().ok()["payments"].as_array().unwrap().len(), 200);

    let trail = audit_of(&world.admin, patient).await;
    let recorded = entries_of(&trail, "invoice.payment", "success");
    assert!(recorded.len() >= 200, "every payment is in the trail");
    assert_eq!(recorded.iter().filter(|e| e["detail"]["replayed"].is_null()).count(), 200, "200 payments recorded");
    let last = recorded.iter().rev().find(|e| e["detail"]["replayed"].is_null()).unwrap();
    assert_eq!((&last["detail"]["status"], &last["detail"]["balance"]), (&json!("paid"), &json!("0.00")));

    // Eight patients billed at once from two tills each: one invoice per patient, every item on
    // exactly one, and the tenant's numbers taken one after the other without a gap.
    let patients = world.db.patients(&world.tenant, 8).await;
    let gauze = stock(&world, "Gauze", "1.10").await;
    for patient in &patients {
        dispense(&world, *patient, &gauze, 3, "1.10").await;
    }
    let creations = patients.iter().flat_map(|patient| [*patient, *patient]).enumerate().map(|(n, patient)| {
        let till = tills[n % tills.len()].clone();
        async move { till.post("/api/invoices", json!({"patient_id": patient})).await.unwrap() }
    });
    let replies = join_all(creations).await;
    let created: Vec<&Value> = replies.iter().filter(|r| r.status == 201).map(|r| &r.body).collect();
    assert_eq!(created.len(), 8, "one invoice per patient");
    assert!(replies.iter().filter(|r| r.status != 201).all(|r| r.status == 409), "the second till finds nothing to bill");
    assert!(created.iter().all(|invoice| invoice["total"] == "3.30"));
    let mut numbers: Vec<&str> = created.iter().map(|invoice| invoice["number"].as_str().unwrap()).collect();
    numbers.sort_unstable();
    let year = Utc::now().year();
    assert_eq!(numbers, (2..=9).map(|n| format!("INV-{year}-{n:06}")).collect::<Vec<_>>());
    assert_eq!(world.admin.get("/api/audit/verify").await.unwrap().ok()["ok"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_void_invoice_keeps_its_lines_and_its_items_can_be_billed_again() {
    let world = World::start(1).await;
    let pharmacist = world.hub.login(&world.tenant, Role::Pharmacist).await;
    let patient = world.db.patients(&world.tenant, 1).await[0];
    let syrup = stock(&world, "Cough syrup", "12.50").await;
    let bottle = dispense(&world, patient, &syrup, 2, "12.50").await;
    // A doctor who charges nothing (yet): the consultation is not billed, and stays billable.
    let doctor = doctor_charging(&world, "0").await;
    let visit = consultation(&world, doctor, patient, "2026-02-02T09:00:00Z", "completed").await;

    let first = create(&pharmacist, patient).await;
    let first_url = format!("/api/invoices/{}", first["id"].as_str().unwrap());
    assert_eq!(first["total"], "25.00");
    assert_eq!(first["lines"].as_array().unwrap().len(), 1, "a consultation without a fee bills nothing");
    let no_reason = pharmacist.post(&format!("{first_url}/void"), json!({})).await.unwrap();
    assert_eq!((no_reason.status, no_reason.body["field"].as_str()), (400, Some("reason")), "{}", no_reason.body);
    let blank = pharmacist.post(&format!("{first_url}/void"), json!({"reason": "  "})).await.unwrap();
    assert_eq!((blank.status, blank.body["field"].as_str()), (400, Some("reason")), "{}", blank.body);

    let voided = pharmacist.post(&format!("{first_url}/void"), json!({"reason": "billed to the wrong insurer"})).await.unwrap().ok();
    assert_eq!(voided["status"], "void");
    assert_eq!(voided["void_reason"], "billed to the wrong insurer");
    assert!(voided["voided_at"].is_string());
    assert_eq!(voided["lines"].as_array().unwrap().len(), 1, "the lines stay for the record");
    assert_eq!((&voided["lines"][0]["description"], &voided["lines"][0]["amount"]), (&json!("Cough syrup × 2"), &json!("25.00")));
    assert_eq!(voided["lines"][0]["dispense_id"], bottle.to_string(), "the line still says what it billed");
    assert_eq!(pharmacist.post(&format!("{first_url}/void"), json!({"reason": "again"})).await.unwrap().expect(409)["error"], "conflict");
    assert_eq!(pharmacist.post(&format!("{first_url}/issue"), json!({})).await.unwrap().status, 409);
    assert_eq!(pharmacist.post(&format!("{first_url}/payments"), payment("1", "cash", "V-1")).await.unwrap().status, 409);

    // The bottle is billable again, on a new invoice with the next number.
    let second = create(&pharmacist, patient).await;
    let second_url = format!("/api/invoices/{}", second["id"].as_str().unwrap());
    assert_eq!(second["number"], format!("INV-{}-000002", Utc::now().year()));
    assert_eq!(second["total"], "25.00");
    assert_eq!(second["lines"][0]["dispense_id"], bottle.to_string());
    let billed: i64 = sqlx::query_scalar("SELECT count(*) FROM invoice_lines WHERE dispense_id = $1").bind(bottle).fetch_one(&world.db.pool).await.unwrap();
    assert_eq!(billed, 1, "billed once, on the live invoice");

    // Paid, it cannot be voided; refunded in full, it is issued with nothing paid, and can.
    pharmacist.post(&format!("{second_url}/issue"), json!({})).await.unwrap().ok();
    pharmacist.post(&format!("{second_url}/payments"), payment("25", "cash", "C-1")).await.unwrap().expect(201);
    let refused = pharmacist.post(&format!("{second_url}/void"), json!({"reason": "patient disputes"})).await.unwrap();
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert!(detail_of(&refused.body).contains("refund"), "{}", refused.body);
    let back = pharmacist.post(&format!("{second_url}/refunds"), payment("25", "cash", "C-1")).await.unwrap().expect(201);
    assert_eq!((&back["invoice"]["status"], &back["invoice"]["paid"]), (&json!("issued"), &json!("0.00")), "a refund has its own reference space");
    let voided = pharmacist.post(&format!("{second_url}/void"), json!({"reason": "patient disputes"})).await.unwrap().ok();
    assert_eq!(voided["status"], "void");
    assert_eq!(voided["payments"].as_array().unwrap().len(), 2, "payments stay for the record too");

    sqlx::query("UPDATE doctors SET consultation_fee = 20 WHERE id = $1").bind(doctor).execute(&world.db.pool).await.unwrap();
    let third = create(&pharmacist, patient).await;
    assert_eq!(third["number"], format!("INV-{}-000003", Utc::now().year()));
    assert_eq!(third["total"], "45.00", "the bottle again, and the consultation now that it has a fee");
    assert_eq!(third["lines"][1]["appointment_id"], visit.to_string());
    assert_eq!(third["lines"][1]["description"], "Consultation: doctor of alpha 2026-02-02");
    let listed = pharmacist.get(&format!("/api/invoices?patient_id={patient}&status=void")).await.unwrap().ok();
    let numbers: Vec<&str> = listed["invoices"].as_array().unwrap().iter().map(|i| i["number"].as_str().unwrap()).collect();
    assert_eq!(numbers, vec![second["number"].as_str().unwrap(), first["number"].as_str().unwrap()], "newest first");
    assert_eq!(listed["more"], false);

    let trail = audit_of(&world.admin, patient).await;
    assert_eq!(entries_of(&trail, "invoice.void", "success").len(), 2);
    assert_eq!(entries_of(&trail, "invoice.create", "success").len(), 3);
    let listing = entries_of(&trail, "invoice.list", "success");
    assert_eq!(listing.len(), 1, "one entry for the one patient the list named");
    assert_eq!(listing[0]["detail"]["invoices"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_sees_only_their_own_bills_and_clinical_staff_none() {
    let world = World::start(1).await;
    let pharmacist = world.hub.login(&world.tenant, Role::Pharmacist).await;
    let ids = world.db.patients(&world.tenant, 2).await;
    let (own, other) = (ids[0], ids[1]);
    world.db.link_patient_user(&world.tenant, own).await;
    let pills = stock(&world, "Ibuprofen", "4.75").await;
    dispense(&world, own, &pills, 4, "4.75").await;
    dispense(&world, other, &pills, 1, "4.75").await;
    let mine = create(&pharmacist, own).await;
    let theirs = create(&pharmacist, other).await;
    assert_eq!((&mine["total"], &theirs["total"]), (&json!("19.00"), &json!("4.75")));
    let (mine_url, theirs_url) = (format!("/api/invoices/{}", mine["id"].as_str().unwrap()), format!("/api/invoices/{}", theirs["id"].as_str().unwrap()));

    // The patient reads their own invoice, and someone else's does not exist for them.
    let patient = world.hub.login(&world.tenant, Role::Patient).await;
    assert_eq!(patient.get(&mine_url).await.unwrap().ok()["total"], "19.00");
    assert_eq!(patient.get(&theirs_url).await.unwrap().expect(404)["error"], "not_found");
    let listed = patient.get("/api/invoices").await.unwrap().ok();
    let listed: Vec<&Value> = listed["invoices"].as_array().unwrap().iter().map(|i| &i["id"]).collect();
    assert_eq!(listed, vec![&mine["id"]]);
    let asked = patient.get(&format!("/api/invoices?patient_id={other}")).await.unwrap().ok();
    assert_eq!(asked["invoices"], json!([]));
    assert_eq!(patient.post(&format!("{mine_url}/payments"), payment("1", "cash", "SELF-1")).await.unwrap().expect(403)["error"], "forbidden");
    patient.post("/api/invoices", json!({"patient_id": own})).await.unwrap().expect(403);

    // Clinical staff and dispatchers see no bills; the role is judged before the body.
    let doctor = world.hub.login(&world.tenant, Role::Doctor).await;
    let dispatcher = world.hub.login(&world.tenant, Role::Dispatcher).await;
    world.nurse.get(&mine_url).await.unwrap().expect(403);
    world.nurse.get("/api/invoices").await.unwrap().expect(403);
    let garbage = world.nurse.send(reqwest::Method::POST, "/api/invoices", Some(RawBody::Text("{\"patient_id\": ".into()))).await.unwrap();
    assert_eq!(garbage.status, 403, "{}", garbage.body);
    let garbage = world.nurse.send(reqwest::Method::POST, &format!("{mine_url}/payments"), Some(RawBody::Text("{\"amount\": 1.005".into()))).await.unwrap();
    assert_eq!(garbage.status, 403, "{}", garbage.body);
    doctor.get(&format!("/api/invoices?patient_id={own}")).await.unwrap().expect(403);
    doctor.post(&format!("{mine_url}/void"), json!({"reason": "x"})).await.unwrap().expect(403);
    dispatcher.post(&format!("{mine_url}/issue"), json!({})).await.unwrap().expect(403);

    // Another hospital group's pharmacist finds nothing of this one.
    let beta = world.db.tenant("beta").await;
    let outsider = world.hub.login(&beta, Role::Pharmacist).await;
    assert_eq!(outsider.get(&mine_url).await.unwrap().expect(404)["error"], "not_found");
    assert_eq!(outsider.get("/api/invoices").await.unwrap().ok()["invoices"], json!([]));
    outsider.post(&format!("{mine_url}/issue"), json!({})).await.unwrap().expect(404);
    let foreign = outsider.post("/api/invoices", json!({"patient_id": own})).await.unwrap();
    assert_eq!((foreign.status, foreign.body["field"].as_str()), (400, Some("patient_id")), "{}", foreign.body);

    // Filters are checked; the pharmacist's list names both patients.
    let unknown = pharmacist.get("/api/invoices?patient=x").await.unwrap();
    assert_eq!((unknown.status, unknown.body["field"].as_str()), (400, Some("patient")));
    let bad_status = pharmacist.get("/api/invoices?status=open").await.unwrap();
    assert_eq!((bad_status.status, bad_status.body["field"].as_str()), (400, Some("status")));
    let bad_limit = pharmacist.get("/api/invoices?limit=0").await.unwrap();
    assert_eq!((bad_limit.status, bad_limit.body["field"].as_str()), (400, Some("limit")));
    let drafts = pharmacist.get("/api/invoices?status=draft&limit=1").await.unwrap().ok();
    assert_eq!((drafts["invoices"].as_array().unwrap().len(), &drafts["more"]), (1, &json!(true)));
    let drafts = pharmacist.get("/api/invoices?status=draft").await.unwrap().ok();
    assert_eq!(drafts["invoices"].as_array().unwrap().len(), 2);

    // The trail: the patient's reads, the nurse's refusal, and the patient's look at someone
    // else's bill, each naming the patient whose bill it was.
    let trail = audit_of(&world.admin, own).await;
    let read = entries_of(&trail, "invoice.read", "success");
    assert!(read.iter().any(|e| e["actor_role"] == "patient"), "the patient's own read is recorded");
    let refused = entries_of(&trail, "invoice.read", "denied");
    assert!(refused.iter().any(|e| e["actor_role"] == "nurse" && e["resource_id"] == mine["id"]), "the nurse's refusal names the patient: {refused:?}");
    let payment_refused = entries_of(&trail, "invoice.payment", "denied");
    assert!(payment_refused.iter().any(|e| e["actor_role"] == "patient"), "{payment_refused:?}");
    assert!(payment_refused.iter().any(|e| e["actor_role"] == "nurse"), "{payment_refused:?}");
    let listed = entries_of(&trail, "invoice.list", "success");
    assert!(listed.iter().any(|e| e["actor_role"] == "patient") && listed.iter().any(|e| e["actor_role"] == "pharmacist"));
    let snooped = entries_of(&audit_of(&world.admin, other).await, "invoice.read", "denied")
        .into_iter()
        .any(|e| e["actor_role"] == "patient" && e["resource_id"] == theirs["id"]);
    assert!(snooped, "the patient's look at another's bill is recorded as denied, naming that patient");
    let denied_lists = world.admin.get("/api/audit?action=invoice.list&limit=100").await.unwrap().ok();
    assert!(denied_lists["entries"].as_array().unwrap().iter().any(|e| e["outcome"] == "denied" && e["actor_role"] == "nurse"));
    assert_eq!(world.admin.get("/api/audit/verify").await.unwrap().ok()["ok"], true);
}
