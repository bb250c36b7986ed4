//! The actor runtime: a small pool of arbiters (threads) that host the tenant supervisors, and
//! the registry that finds or starts a tenant's supervisor. Hub code talks to actors only through
//! [`ActorRuntime`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::TenantSlug;
use crate::error::ActorError;
use crate::facility::FacilityActor;
use crate::metrics::ActorMetrics;
use crate::schedule::DoctorScheduleActor;
use crate::ambulance::{AmbulanceActor, TrackWriter};
use crate::consult::{ConsultConfig, VideoSessionActor};
use crate::dispatch::{CommandsSlot, DispatchActor, DispatchConfig};
use crate::inventory::InventoryBatchActor;
use crate::live::LiveFeed;
use crate::pharmacy::PrescriptionLocks;
use crate::tenant::{AmbulanceAddr, BatchAddr, ConsultAddr, DispatchAddr, FacilityAddr, ScheduleAddr, TenantSupervisor};

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Write a snapshot of an actor's state every this many events.
    pub snapshot_every: i64,
    /// How many arbiter threads host actors; tenants are spread over them.
    pub threads: usize,
}

/// What actors share besides the database: the live-only feed and the track writer.
#[derive(Clone)]
pub struct Services {
    pub live: Arc<dyn LiveFeed>,
    pub track: TrackWriter,
    pub dispatch: DispatchConfig,
    /// Set once the device gateway runs.
    pub commands: CommandsSlot,
    /// How video consults treat connections that drop.
    pub consult: ConsultConfig,
}

pub struct ActorRuntime {
    pool: PgPool,
    config: RuntimeConfig,
    metrics: ActorMetrics,
    services: Services,
    arbiters: Mutex<Vec<Arbiter>>,
    tenants: Mutex<HashMap<Uuid, Addr<TenantSupervisor>>>,
    prescription_locks: PrescriptionLocks,
}

impl ActorRuntime {
    /// Starts the arbiters. Must be called inside a running actix `System`.
    pub fn start(pool: PgPool, config: RuntimeConfig, metrics: ActorMetrics, services: Services) -> Arc<ActorRuntime> {
        let arbiters = (0..config.threads.max(1)).map(|_| Arbiter::new()).collect();
        Arc::new(ActorRuntime {
            pool,
            config,
            metrics,
            services,
            arbiters: Mutex::new(arbiters),
            tenants: Mutex::new(HashMap::new()),
            prescription_locks: PrescriptionLocks::default(),
        })
    }

    /// The tenant's supervisor, started on first use on one of the arbiters.
    pub fn tenant(&self, tenant_id: Uuid, tenant: &TenantSlug) -> Result<Addr<TenantSupervisor>, ActorError> {
        let mut tenants = self.tenants.lock().expect("tenant registry lock");
        if let Some(addr) = tenants.get(&tenant_id).filter(|addr| addr.connected()) {
            return Ok(addr.clone());
        }
        let arbiters = self.arbiters.lock().expect("arbiter list lock");
        if arbiters.is_empty() {
            return Err(ActorError::Unavailable("the hub is shutting down".to_owned()));
        }
        let arbiter = arbiters[tenants.len() % arbiters.len()].handle();
        let (pool, every, metrics, slug, services) =
            (self.pool.clone(), self.config.snapshot_every, self.metrics.clone(), tenant.clone(), self.services.clone());
        let addr = Supervisor::start_in_arbiter(&arbiter, move |_| {
            TenantSupervisor::new(tenant_id, slug, pool, every, metrics, services)
        });
        tenants.insert(tenant_id, addr.clone());
        Ok(addr)
    }

    /// The actor of a facility of this tenant; `NotFound` for another tenant's facility.
    pub async fn facility(&self, tenant_id: Uuid, tenant: &TenantSlug, facility_id: Uuid) -> Result<Addr<FacilityActor>, ActorError> {
        self.tenant(tenant_id, tenant)?.send(FacilityAddr(facility_id)).await?
    }

    /// The schedule actor of a doctor of this tenant; `NotFound` for another tenant's doctor.
    pub async fn schedule(&self, tenant_id: Uuid, tenant: &TenantSlug, doctor_id: Uuid) -> Result<Addr<DoctorScheduleActor>, ActorError> {
        self.tenant(tenant_id, tenant)?.send(ScheduleAddr(doctor_id)).await?
    }

    /// The actor of a medication batch of this tenant; `NotFound` for another tenant's batch.
    pub async fn batch(&self, tenant_id: Uuid, tenant: &TenantSlug, batch_id: Uuid) -> Result<Addr<InventoryBatchActor>, ActorError> {
        self.tenant(tenant_id, tenant)?.send(BatchAddr(batch_id)).await?
    }

    /// The actor of an ambulance unit of this tenant; `NotFound` for another tenant's unit.
    pub async fn ambulance(&self, tenant_id: Uuid, tenant: &TenantSlug, unit_id: Uuid) -> Result<Addr<AmbulanceActor>, ActorError> {
        self.tenant(tenant_id, tenant)?.send(AmbulanceAddr(unit_id)).await?
    }

    /// The actor of a video consult of this tenant; `NotFound` for another tenant's consult.
    pub async fn consult(&self, tenant_id: Uuid, tenant: &TenantSlug, session_id: Uuid) -> Result<Addr<VideoSessionActor>, ActorError> {
        self.tenant(tenant_id, tenant)?.send(ConsultAddr(session_id)).await?
    }

    /// The tenant's dispatch actor (incidents and which unit serves them).
    pub async fn dispatch(&self, tenant_id: Uuid, tenant: &TenantSlug) -> Result<Addr<DispatchActor>, ActorError> {
        Ok(self.tenant(tenant_id, tenant)?.send(DispatchAddr).await?)
    }

    /// Serialises the work on each prescription (see `pharmacy`).
    pub fn prescription_locks(&self) -> &PrescriptionLocks {
        &self.prescription_locks
    }

    /// Stops every actor thread. Call after the HTTP server has drained, so that no command
    /// is in flight.
    pub fn shutdown(&self) {
        self.tenants.lock().expect("tenant registry lock").clear();
        let arbiters: Vec<Arbiter> = std::mem::take(&mut *self.arbiters.lock().expect("arbiter list lock"));
        for arbiter in &arbiters {
            arbiter.stop();
        }
        for arbiter in arbiters {
            let _ = arbiter.join();
        }
    }
}
