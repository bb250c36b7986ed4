//! Patient records as the people of a hospital group use them: a nurse registers a patient, a
//! doctor finds and corrects the record, the patient reads their own; a dispatcher, a pharmacist or
//! another hospital group's doctor sees nothing, and every look at the record is in the audit trail.

mod common;

use common::{Api, World};
use medhub_actors::Role;
use serde_json::{json, Value};

/// What a nurse types at the front desk for a new patient.
fn ada() -> Value {
    json!({
        "given_name": "Ada Mary",
        "family_name": "Lovelace",
        "birth_date": "1984-02-29",
        "sex": "female",
        "phone": "+254 712 345-678",
        "address": {"line": "12 Ngong Road", "city": "Nairobi", "postal_code": "00100", "country": "ke",
                    "location": {"lat": -1.3, "lon": 36.78}},
        "emergency_contacts": [{"name": "Grace Hopper", "relationship": "aunt", "phone": "+1 202 555 0100"}],
    })
}

fn with(mut body: Value, field: &str, value: Value) -> Value {
    body[field] = value;
    body
}

async fn register(api: &Api, body: Value) -> Value {
    api.post("/api/patients", body).await.unwrap().expect(201)
}

/// The patient-record entries of the audit trail that name `patient_id` (oldest first).
async fn patient_audit(admin: &Api, patient_id: &str) -> Vec<Value> {
    let page = admin.get(&format!("/api/audit?patient_id={patient_id}&limit=1000")).await.unwrap().ok();
    let mut entries: Vec<Value> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["resource_type"] == "patient")
        .cloned()
        .collect();
    entries.reverse();
    entries
}

fn actions_of(entries: &[Value]) -> Vec<(String, String, String)> {
    entries
        .iter()
        .map(|e| (e["action"].as_str().unwrap().to_owned(), e["actor_role"].as_str().unwrap().to_owned(), e["outcome"].as_str().unwrap().to_owned()))
        .collect()
}

fn ids(found: &Value) -> Vec<&str> {
    found["patients"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nurse_registers_a_patient_and_a_doctor_finds_and_corrects_the_record() {
    let world = World::start(1).await;
    let nurse = &world.nurse;
    let doctor = world.hub.login(&world.tenant, Role::Doctor).await;

    let created = register(nurse, ada()).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let mrn = created["mrn"].as_str().unwrap().to_owned();
    assert!(mrn.len() == 10 && mrn.starts_with("MH") && mrn[2..].chars().all(|c| c.is_ascii_digit()), "a generated MRN: {mrn}");
    assert_eq!(created["given_name"], "Ada Mary");
    assert_eq!(created["family_name"], "Lovelace");
    assert_eq!(created["birth_date"], "1984-02-29");
    assert_eq!(created["sex"], "female");
    assert_eq!(created["phone"], "+254712345678", "the phone is kept in one canonical form");
    assert_eq!(created["address"]["country"], "KE");
    assert_eq!(created["address"]["location"], json!({"lat": -1.3, "lon": 36.78}));
    assert_eq!(created["emergency_contacts"][0]["phone"], "+12025550100");
    assert_eq!(created["user_id"], Value::Null);
    assert_eq!(created["version"], 1);

    let read = doctor.get(&format!("/api/patients/{id}")).await.unwrap().ok();
    assert_eq!(read, created, "the doctor reads what the nurse registered");

    // The doctor corrects the phone and moves the patient; the record moves to version 2.
    let mut correction = with(ada(), "version", json!(1));
    correction["phone"] = json!("0722 000 111");
    correction["address"] = json!({"line": "4 Moi Avenue", "city": "Mombasa", "country": "KE"});
    let updated = doctor.put(&format!("/api/patients/{id}"), correction.clone()).await.unwrap().ok();
    assert_eq!(updated["version"], 2);
    assert_eq!(updated["phone"], "0722000111");
    assert_eq!(updated["address"]["location"], Value::Null);
    assert_eq!(updated["mrn"], mrn.as_str(), "an update without mrn keeps it");

    // The nurse, still looking at version 1, cannot overwrite the doctor's correction.
    let stale = nurse.put(&format!("/api/patients/{id}"), with(ada(), "version", json!(1))).await.unwrap();
    assert_eq!(stale.status, 409, "{}", stale.body);
    assert_eq!(stale.body["error"], "conflict");
    assert!(stale.body["detail"].as_str().unwrap().contains("version 2"), "{}", stale.body);
    assert_eq!(doctor.get(&format!("/api/patients/{id}")).await.unwrap().ok()["phone"], "0722000111");
    // Saving the form again without changing anything does not move the version.
    let resaved = doctor.put(&format!("/api/patients/{id}"), with(correction, "version", json!(2))).await.unwrap().ok();
    assert_eq!(resaved["version"], 2);

    // Two more patients, then the searches a front desk does.
    let byron = register(nurse, with(with(ada(), "given_name", json!("George")), "family_name", json!("Byron"))).await;
    let mut other = with(with(ada(), "given_name", json!("Charles")), "family_name", json!("Babbage"));
    other["mrn"] = json!("ward-7");
    other["phone"] = json!("+44 20 7946 0000");
    let babbage = register(nurse, other).await;
    assert_eq!(babbage["mrn"], "WARD-7");

    let by_prefix = doctor.get("/api/patients?q=lOvE").await.unwrap().ok();
    assert_eq!(ids(&by_prefix), vec![id.as_str()], "family-name prefix, any case");
    assert_eq!(by_prefix["more"], false);
    let by_given = doctor.get("/api/patients?q=mary").await.unwrap().ok();
    assert!(ids(&by_given).is_empty(), "a prefix matches the start of a name only");
    let by_given = doctor.get("/api/patients?q=geo").await.unwrap().ok();
    assert_eq!(ids(&by_given), vec![byron["id"].as_str().unwrap()], "given-name prefix");
    let two_words = doctor.get("/api/patients?q=ada%20lov").await.unwrap().ok();
    assert_eq!(ids(&two_words), vec![id.as_str()]);
    let by_mrn = doctor.get("/api/patients?mrn=ward-7").await.unwrap().ok();
    assert_eq!(ids(&by_mrn), vec![babbage["id"].as_str().unwrap()], "exact MRN, any case");
    let by_phone = doctor.get("/api/patients?phone=%2B254712345678").await.unwrap().ok();
    assert_eq!(ids(&by_phone), vec![byron["id"].as_str().unwrap()], "Ada's number changed; Byron still has it");
    let by_phone = doctor.get("/api/patients?phone=0722-000-111").await.unwrap().ok();
    assert_eq!(ids(&by_phone), vec![id.as_str()], "a phone is found however it is typed");
    let initials = doctor.get("/api/patients?q=a%20l").await.unwrap().ok();
    assert_eq!(ids(&initials), vec![id.as_str()], "every word must start the given or the family name");
    let ordered = nurse.get("/api/patients?phone=%2B254712345678&q=b").await.unwrap().ok();
    assert_eq!(ids(&ordered), vec![byron["id"].as_str().unwrap()], "filters combine");
    let all = ["Babbage", "Byron", "Lovelace"].map(|name| name.to_owned());
    let listed = doctor.get("/api/patients?q=%25").await.unwrap().ok();
    assert!(ids(&listed).is_empty(), "a % is a character, not a wildcard");
    let mut family_names = Vec::new();
    for prefix in ["b", "l"] {
        let found = doctor.get(&format!("/api/patients?q={prefix}")).await.unwrap().ok();
        family_names.extend(found["patients"].as_array().unwrap().iter().map(|p| p["family_name"].as_str().unwrap().to_owned()));
    }
    assert_eq!(family_names, all, "ordered by family name");

    // A search needs a filter, and only known ones.
    let nothing = doctor.get("/api/patients").await.unwrap();
    assert_eq!((nothing.status, nothing.body["field"].as_str()), (400, Some("q")), "{}", nothing.body);
    let blank = doctor.get("/api/patients?q=&mrn=").await.unwrap();
    assert_eq!((blank.status, blank.body["field"].as_str()), (400, Some("q")));
    let unknown = doctor.get("/api/patients?name=ada").await.unwrap();
    assert_eq!((unknown.status, unknown.body["field"].as_str()), (400, Some("name")));
    let bad_phone = doctor.get("/api/patients?phone=12").await.unwrap();
    assert_eq!((bad_phone.status, bad_phone.body["field"].as_str()), (400, Some("phone")));

    // What the trail says about Ada: registered, read, changed, found by the searches.
    let trail = patient_audit(&world.admin, &id).await;
    let actions: Vec<&str> = trail.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions.first(), Some(&"patient.create"));
    assert_eq!(trail[0]["actor_role"], "nurse");
    let update = trail.iter().find(|e| e["action"] == "patient.update" && e["outcome"] == "success").unwrap();
    assert_eq!(update["detail"]["changed"], json!(["phone", "address"]), "which fields changed, never their values");
    assert_eq!(update["detail"]["version"], 2);
    let updates: Vec<&Value> = trail.iter().filter(|e| e["action"] == "patient.update").collect();
    assert_eq!(updates.len(), 2, "the save that changed nothing is recorded too");
    assert_eq!(updates[1]["detail"]["changed"], json!([]));
    let searches = trail.iter().filter(|e| e["action"] == "patient.search").count();
    assert_eq!(searches, 5, "one entry for each search that returned Ada: {actions:?}");
    assert!(trail.iter().all(|e| !e["detail"].to_string().contains("Lovelace")), "no patient data in the immutable trail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_naming_the_field_and_nothing_is_stored() {
    let world = World::start(1).await;
    let nurse = &world.nurse;

    let cases: Vec<(&str, Value, &str)> = vec![
        ("a date that does not exist", with(ada(), "birth_date", json!("1985-02-29")), "birth_date"),
        ("a date in another format", with(ada(), "birth_date", json!("29/02/1984")), "birth_date"),
        ("a date in the future", with(ada(), "birth_date", json!("2999-01-01")), "birth_date"),
        ("a sex that is not a FHIR code", with(ada(), "sex", json!("f")), "sex"),
        ("a phone with letters", with(ada(), "phone", json!("call the ward")), "phone"),
        ("a phone too short", with(ada(), "phone", json!("12345")), "phone"),
        ("an empty given name", with(ada(), "given_name", json!("  ")), "given_name"),
        ("a missing family name", { let mut b = ada(); b.as_object_mut().unwrap().remove("family_name"); b }, "family_name"),
        ("an unknown field", with(ada(), "blood_type", json!("O+")), "blood_type"),
        ("an MRN with spaces", with(ada(), "mrn", json!("MH 1")), "mrn"),
        ("a user id that is not a UUID", with(ada(), "user_id", json!("me")), "user_id"),
    ];
    for (what, body, field) in cases {
        let refused = nurse.post("/api/patients", body).await.unwrap();
        assert_eq!(refused.status, 400, "{what}: {}", refused.body);
        assert_eq!(refused.body["field"], field, "{what}: {}", refused.body);
        assert!(refused.body["detail"].as_str().is_some_and(|d| !d.is_empty()), "{what}: {}", refused.body);
    }

    let mut north = ada();
    north["address"]["location"]["lat"] = json!(91);
    let refused = nurse.post("/api/patients", north).await.unwrap();
    assert_eq!((refused.status, refused.body["field"].as_str()), (400, Some("address.location.lat")), "{}", refused.body);
    assert!(refused.body["detail"].as_str().unwrap().contains("latitude 91"), "{}", refused.body);
    let mut nowhere = ada();
    nowhere["address"]["country"] = json!("Kenya");
    let refused = nurse.post("/api/patients", nowhere).await.unwrap();
    assert_eq!((refused.status, refused.body["field"].as_str()), (400, Some("address.country")), "{}", refused.body);
    let mut contact = ada();
    contact["emergency_contacts"] = json!([{"name": "Grace", "relationship": "aunt", "phone": "+12025550100"},
                                           {"name": "Alan", "relationship": "friend", "phone": "ask Grace"}]);
    let refused = nurse.post("/api/patients", contact).await.unwrap();
    assert_eq!((refused.status, refused.body["field"].as_str()), (400, Some("emergency_contacts[1].phone")), "{}", refused.body);
    let many = with(ada(), "emergency_contacts", json!(vec![ada()["emergency_contacts"][0].clone(); 11]));
    let refused = nurse.post("/api/patients", many).await.unwrap();
    assert_eq!((refused.status, refused.body["field"].as_str()), (400, Some("emergency_contacts")), "{}", refused.body);
    let garbage = nurse.send(reqwest::Method::POST, "/api/patients", Some(common::RawBody::Text("{\"given_name\": ".into()))).await.unwrap();
    assert_eq!(garbage.status, 400, "{}", garbage.body);

    // Linking: only a patient-role user of this tenant.
    let nurse_id = nurse.user["id"].clone();
    let refused = nurse.post("/api/patients", with(ada(), "user_id", nurse_id)).await.unwrap();
    assert_eq!((refused.status, refused.body["field"].as_str()), (400, Some("user_id")), "{}", refused.body);
    let stranger = uuid::Uuid::new_v4().to_string();
    let refused = nurse.post("/api/patients", with(ada(), "user_id", json!(stranger))).await.unwrap();
    assert_eq!((refused.status, refused.body["field"].as_str()), (400, Some("user_id")), "{}", refused.body);

    assert!(ids(&nurse.get("/api/patients?q=lovelace").await.unwrap().ok()).is_empty(), "nothing refused was stored");

    // An MRN is unique within the tenant; so is the link to a patient user.
    let first = register(nurse, with(ada(), "mrn", json!("MH-1"))).await;
    let taken = nurse.post("/api/patients", with(ada(), "mrn", json!("mh-1"))).await.unwrap();
    assert_eq!(taken.status, 409, "{}", taken.body);
    assert!(taken.body["detail"].as_str().unwrap().contains("MH-1"), "{}", taken.body);
    let patient_user = world.hub.login(&world.tenant, Role::Patient).await.user["id"].clone();
    register(nurse, with(with(ada(), "mrn", json!("MH-2")), "user_id", patient_user.clone())).await;
    let linked_twice = nurse.post("/api/patients", with(with(ada(), "mrn", json!("MH-3")), "user_id", patient_user)).await.unwrap();
    assert_eq!(linked_twice.status, 409, "{}", linked_twice.body);

    // Updates are checked the same way, and moving to a taken MRN is a conflict too.
    let path = format!("/api/patients/{}", first["id"].as_str().unwrap());
    let no_version = nurse.put(&path, ada()).await.unwrap();
    assert_eq!((no_version.status, no_version.body["field"].as_str()), (400, Some("version")), "{}", no_version.body);
    let bad_sex = nurse.put(&path, with(with(ada(), "version", json!(1)), "sex", json!("yes"))).await.unwrap();
    assert_eq!((bad_sex.status, bad_sex.body["field"].as_str()), (400, Some("sex")), "{}", bad_sex.body);
    let clash = nurse.put(&path, with(with(ada(), "version", json!(1)), "mrn", json!("MH-2"))).await.unwrap();
    assert_eq!(clash.status, 409, "{}", clash.body);
    let missing = nurse.put(&format!("/api/patients/{}", uuid::Uuid::new_v4()), with(ada(), "version", json!(1))).await.unwrap();
    assert_eq!(missing.status, 404);
    assert_eq!(nurse.get("/api/patients/not-a-uuid").await.unwrap().status, 404);
    let unchanged = nurse.get(&path).await.unwrap().ok();
    assert_eq!((unchanged["mrn"].as_str(), unchanged["version"].as_i64()), (Some("MH-1"), Some(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_clinical_staff_and_the_patient_themself_read_a_record_and_every_read_is_audited() {
    let world = World::start(1).await;
    let (hub, tenant, admin) = (&world.hub, &world.tenant, &world.admin);
    let patient = hub.login(tenant, Role::Patient).await;
    let own = register(&world.nurse, with(ada(), "user_id", patient.user["id"].clone())).await;
    let own_id = own["id"].as_str().unwrap().to_owned();
    assert_eq!(own["user_id"], patient.user["id"]);
    let someone_else = register(&world.nurse, with(ada(), "given_name", json!("Augusta"))).await;
    let other_id = someone_else["id"].as_str().unwrap().to_owned();

    // Clinical staff read any patient of the tenant, as JSON and as FHIR.
    for role in [Role::Doctor, Role::Nurse, Role::Admin] {
        let staff = hub.login(tenant, role).await;
        assert_eq!(staff.get(&format!("/api/patients/{own_id}")).await.unwrap().ok()["id"], own_id.as_str(), "{role}");
        assert_eq!(staff.get(&format!("/fhir/Patient/{other_id}")).await.unwrap().ok()["id"], other_id.as_str(), "{role}");
    }
    // The patient reads their own record, and nobody else's exists for them.
    assert_eq!(patient.get(&format!("/api/patients/{own_id}")).await.unwrap().ok()["mrn"], own["mrn"]);
    assert_eq!(patient.get(&format!("/fhir/Patient/{own_id}")).await.unwrap().ok()["resourceType"], "Patient");
    let not_theirs = patient.get(&format!("/api/patients/{other_id}")).await.unwrap();
    assert_eq!(not_theirs.status, 404, "{}", not_theirs.body);
    assert_eq!(not_theirs.body["error"], "not_found");
    assert_eq!(patient.get(&format!("/fhir/Patient/{other_id}")).await.unwrap().status, 404);
    let never = patient.get(&format!("/api/patients/{}", uuid::Uuid::new_v4())).await.unwrap();
    assert_eq!(never.body, not_theirs.body, "another patient's record looks exactly like no record");
    // ... and may not search, register or change records, not even their own.
    assert_eq!(patient.get("/api/patients?q=ada").await.unwrap().status, 403);
    assert_eq!(patient.post("/api/patients", ada()).await.unwrap().status, 403);
    assert_eq!(patient.put(&format!("/api/patients/{own_id}"), with(ada(), "version", json!(1))).await.unwrap().status, 403);

    // Dispatchers and pharmacists are not clinical staff: refused, and the refusal is recorded.
    for role in [Role::Dispatcher, Role::Pharmacist] {
        let outsider = hub.login(tenant, role).await;
        let refused = outsider.get(&format!("/api/patients/{own_id}")).await.unwrap();
        assert_eq!(refused.status, 403, "{role}: {}", refused.body);
        assert_eq!(refused.body["error"], "forbidden");
        assert!(refused.body.get("given_name").is_none());
        assert_eq!(outsider.get(&format!("/fhir/Patient/{own_id}")).await.unwrap().status, 403, "{role}");
        assert_eq!(outsider.get("/api/patients?q=ada").await.unwrap().status, 403, "{role}");
        // The role is checked before the body is looked at.
        assert_eq!(outsider.post("/api/patients", json!({"junk": true})).await.unwrap().status, 403, "{role}");
        assert_eq!(outsider.put(&format!("/api/patients/{own_id}"), json!({})).await.unwrap().status, 403, "{role}");
    }

    // Another hospital group's doctor: the record does not exist for them, in any form.
    let beta = world.db.tenant("beta").await;
    let foreign_doctor = hub.login(&beta, Role::Doctor).await;
    for path in [format!("/api/patients/{own_id}"), format!("/fhir/Patient/{own_id}")] {
        let foreign = foreign_doctor.get(&path).await.unwrap();
        assert_eq!(foreign.status, 404, "{path}: {}", foreign.body);
        assert!(foreign.body.get("mrn").is_none());
    }
    let foreign_write = foreign_doctor.put(&format!("/api/patients/{own_id}"), with(ada(), "version", json!(1))).await.unwrap();
    assert_eq!(foreign_write.status, 404);
    let mrn = own["mrn"].as_str().unwrap();
    assert!(ids(&foreign_doctor.get(&format!("/api/patients?mrn={mrn}")).await.unwrap().ok()).is_empty());
    let foreign_link = foreign_doctor.post("/api/patients", with(ada(), "user_id", patient.user["id"].clone())).await.unwrap();
    assert_eq!((foreign_link.status, foreign_link.body["field"].as_str()), (400, Some("user_id")), "another tenant's user cannot be linked");
    let beta_admin = hub.login(&beta, Role::Admin).await;
    let beta_trail = beta_admin.get(&format!("/api/audit?patient_id={own_id}")).await.unwrap().ok();
    assert!(
        beta_trail["entries"].as_array().unwrap().iter().all(|e| e["action"] == "audit.search"),
        "nothing about alpha's patient was read in beta: {beta_trail}"
    );

    // The trail names the patient in every allowed read, and in every refusal.
    let trail = actions_of(&patient_audit(admin, &own_id).await);
    let expected: Vec<(String, String, String)> = [
        ("patient.create", "nurse", "success"),
        ("patient.read", "doctor", "success"),
        ("patient.read", "nurse", "success"),
        ("patient.read", "admin", "success"),
        ("patient.read", "patient", "success"),
        ("patient.read_fhir", "patient", "success"),
        ("patient.update", "patient", "denied"),
        ("patient.read", "dispatcher", "denied"),
        ("patient.read_fhir", "dispatcher", "denied"),
        ("patient.update", "dispatcher", "denied"),
        ("patient.read", "pharmacist", "denied"),
        ("patient.read_fhir", "pharmacist", "denied"),
        ("patient.update", "pharmacist", "denied"),
    ]
    .iter()
    .map(|(a, r, o)| (a.to_string(), r.to_string(), o.to_string()))
    .collect();
    assert_eq!(trail, expected);
    let other_trail = actions_of(&patient_audit(admin, &other_id).await);
    let reads: Vec<_> = other_trail.iter().filter(|(action, _, _)| action == "patient.read_fhir").collect();
    assert_eq!(reads.len(), 3 + 1, "three staff reads and the patient's refused attempt: {other_trail:?}");
    assert!(other_trail.contains(&("patient.read".into(), "patient".into(), "denied".into())), "{other_trail:?}");
    assert!(other_trail.contains(&("patient.read_fhir".into(), "patient".into(), "denied".into())), "{other_trail:?}");
    let entries = patient_audit(admin, &own_id).await;
    for entry in &entries {
        assert_eq!(entry["patient_id"], own_id.as_str(), "{entry}");
        assert_eq!(entry["resource_id"], own_id.as_str(), "{entry}");
    }
    let refusal = entries.iter().find(|e| e["actor_role"] == "dispatcher").unwrap();
    assert!(refusal["detail"]["reason"].as_str().unwrap().contains("dispatcher"), "{refusal}");
    assert_eq!(admin.get("/api/audit/verify").await.unwrap().ok()["ok"], true, "the chain still holds");

    // Once the record is unlinked from the patient's login, the patient no longer sees it.
    let unlink = with(with(ada(), "version", json!(1)), "user_id", Value::Null);
    let unlinked = world.nurse.put(&format!("/api/patients/{own_id}"), unlink).await.unwrap().ok();
    assert_eq!((unlinked["user_id"].clone(), unlinked["version"].as_i64()), (Value::Null, Some(2)));
    assert_eq!(patient.get(&format!("/api/patients/{own_id}")).await.unwrap().status, 404);
    let relink = with(with(ada(), "version", json!(2)), "user_id", patient.user["id"].clone());
    assert_eq!(world.nurse.put(&format!("/api/patients/{own_id}"), relink).await.unwrap().ok()["version"], 3);
    let kept = world.nurse.put(&format!("/api/patients/{own_id}"), with(ada(), "version", json!(3))).await.unwrap().ok();
    assert_eq!(kept["user_id"], patient.user["id"], "an update that leaves user_id out keeps the link");
    assert_eq!(patient.get(&format!("/api/patients/{own_id}")).await.unwrap().ok()["id"], own_id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_is_also_a_fhir_r4_patient() {
    let world = World::start(1).await;
    let created = register(&world.nurse, with(ada(), "mrn", json!("mh-0042"))).await;
    let id = created["id"].as_str().unwrap();
    let doctor = world.hub.login(&world.tenant, Role::Doctor).await;

    let response = reqwest::Client::new()
        .get(format!("{}/fhir/Patient/{id}", world.hub.url))
        .bearer_auth(doctor.token.as_deref().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("application/fhir+json"), "{content_type}");
    let resource: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();

    assert_eq!(resource["resourceType"], "Patient");
    assert_eq!(resource["id"], id);
    assert_eq!(resource["meta"]["versionId"], "1");
    let identifier = &resource["identifier"][0];
    assert_eq!(identifier["system"], "urn:medhub:alpha:mrn");
    assert_eq!(identifier["value"], "MH-0042");
    assert_eq!(identifier["type"]["coding"][0]["code"], "MR");
    assert_eq!(identifier["type"]["coding"][0]["system"], "http://terminology.hl7.org/CodeSystem/v2-0203");
    let name = &resource["name"][0];
    assert_eq!(name["use"], "official");
    assert_eq!(name["family"], "Lovelace");
    assert_eq!(name["given"], json!(["Ada", "Mary"]));
    assert_eq!(resource["gender"], "female");
    assert_eq!(resource["birthDate"], "1984-02-29");
    assert_eq!(resource["telecom"], json!([{"system": "phone", "value": "+254712345678"}]));
    let address = &resource["address"][0];
    assert_eq!(address["line"], json!(["12 Ngong Road"]));
    assert_eq!(address["city"], "Nairobi");
    assert_eq!(address["postalCode"], "00100");
    assert_eq!(address["country"], "KE");
    let geolocation = &address["extension"][0];
    assert_eq!(geolocation["url"], "http://hl7.org/fhir/StructureDefinition/geolocation");
    assert_eq!(
        geolocation["extension"],
        json!([{"url": "latitude", "valueDecimal": -1.3}, {"url": "longitude", "valueDecimal": 36.78}])
    );
    let contact = &resource["contact"][0];
    assert_eq!(contact["relationship"], json!([{"text": "aunt"}]));
    assert_eq!(contact["name"]["text"], "Grace Hopper");
    assert_eq!(contact["telecom"], json!([{"system": "phone", "value": "+12025550100"}]));

    // Without a phone, an address location or contacts, the resource leaves those parts out.
    let mut sparse = with(ada(), "version", json!(1));
    for field in ["phone", "emergency_contacts"] {
        sparse.as_object_mut().unwrap().remove(field);
    }
    sparse["address"].as_object_mut().unwrap().remove("location");
    world.nurse.put(&format!("/api/patients/{id}"), sparse).await.unwrap().ok();
    let resource = doctor.get(&format!("/fhir/Patient/{id}")).await.unwrap().ok();
    assert_eq!(resource["meta"]["versionId"], "2");
    assert!(resource.get("telecom").is_none() && resource.get("contact").is_none(), "{resource}");
    assert!(resource["address"][0].get("extension").is_none(), "{resource}");
    assert_eq!(resource["address"][0]["city"], "Nairobi");

    let unauthenticated = world.hub.api().get(&format!("/fhir/Patient/{id}")).await.unwrap();
    assert_eq!(unauthenticated.status, 401);
}
