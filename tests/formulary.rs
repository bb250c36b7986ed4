//! A new hospital group starts with the shipped formulary: loading it gives the tenant every
//! medicine on the list with its ATC code and exact price, loading it again adds nothing, and
//! another tenant gets its own copy.

mod common;

use common::TestDb;
use medhub_actors::formulary::{self, FORMULARY_CSV};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_starter_formulary_is_loaded_once_per_tenant() {
    let db = TestDb::start().await;
    let alpha = db.tenant("alpha").await;
    let shipped = formulary::parse(FORMULARY_CSV).expect("the shipped formulary parses").len();

    let inserted = formulary::load(&db.pool, alpha.id).await.expect("first load");
    assert_eq!(inserted, shipped, "every shipped medicine is new to the tenant");
    let again = formulary::load(&db.pool, alpha.id).await.expect("second load");
    assert_eq!(again, 0, "loading twice inserts the rows once");

    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM medications WHERE tenant_id = $1")
        .bind(alpha.id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(usize::try_from(count).unwrap(), shipped);

    let (generic_name, atc_code, unit, price): (String, String, String, String) = sqlx::query_as(
        "SELECT generic_name, atc_code, unit, unit_price::text FROM medications
          WHERE tenant_id = $1 AND name = 'Amoxicillin 500 mg capsule' AND form = 'capsule' AND strength = '500 mg'",
    )
    .bind(alpha.id)
    .fetch_one(&db.pool)
    .await
    .expect("amoxicillin 500 mg capsules are on the list");
    assert_eq!((generic_name.as_str(), atc_code.as_str(), unit.as_str(), price.as_str()), ("amoxicillin", "J01CA04", "capsule", "5.00"));

    // A pharmacist out of omeprazole finds other proton pump inhibitors by ATC group.
    let proton_pump_inhibitors: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT generic_name FROM medications WHERE tenant_id = $1 AND left(atc_code, 5) = 'A02BC' ORDER BY 1",
    )
    .bind(alpha.id)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    for expected in ["esomeprazole", "omeprazole", "pantoprazole"] {
        assert!(proton_pump_inhibitors.iter().any(|name| name == expected), "{expected} in {proton_pump_inhibitors:?}");
    }

    let beta = db.tenant("beta").await;
    assert_eq!(formulary::load(&db.pool, beta.id).await.expect("load for beta"), shipped, "each tenant has its own formulary");
}
