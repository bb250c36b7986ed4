//! The HTTP API under `/api`: auth, facilities and beds, audit, patients, doctors and appointments,
//! video consults. Every handler authenticates
//! through [`extract::Authenticated`], checks the role it needs, scopes every query to the
//! caller's tenant (another tenant's records are simply not found), and maps failures once,
//! through [`error::ApiError`].

pub mod ambulances;
pub mod audit;
pub mod auth;
pub mod billing;
pub mod consults;
pub mod devices;
pub mod error;
pub mod extract;
pub mod facilities;
pub mod fhir_pharmacy;
pub mod incidents;
pub mod patients;
pub mod pharmacy;
pub mod schedules;

use actix_web::web;

pub fn routes(cfg: &mut web::ServiceConfig, fault_injection: bool) {
    auth::routes(cfg);
    facilities::routes(cfg, fault_injection);
    audit::routes(cfg);
    billing::routes(cfg);
    devices::routes(cfg, fault_injection);
    patients::routes(cfg);
    schedules::routes(cfg);
    consults::routes(cfg);
    pharmacy::routes(cfg);
    fhir_pharmacy::routes(cfg);
    ambulances::routes(cfg);
    incidents::routes(cfg);
}
