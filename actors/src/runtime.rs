//! The actor runtime: a small pool of arbiters (threads) that host the tenant supervisors, and
//! the registry that finds or starts a tenant's supervisor. Hub code talks to actors only through
//! [`ActorRuntime`].
//!
//! A tenant's supervisor runs on this node only while the node holds the tenant's lease (see
//! `lease`): the supervisor acquires it as it starts, and a background task renews every lease the
//! node holds at a third of the TTL. A lease found taken over (by renewal, or by a commit the fence
//! refused) retires the tenant's supervisor here; the next request starts a new one, which
//! serves only once this node can acquire the lease again.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};

use actix::prelude::*;
use sqlx::PgPool;
use tracing::warn;
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
use crate::lease::{self, LeaseNode};
use crate::live::LiveFeed;
use crate::pharmacy::PrescriptionLocks;
use crate::tenant::{AmbulanceAddr, BatchAddr, ConsultAddr, DispatchAddr, FacilityAddr, LeaseLost, Placement, ScheduleAddr, TenantSupervisor};

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
    tenants: Mutex<HashMap<Uuid, Placed>>,
    /// This node's leases; `None` for tools that run no server (no placement, as before leases).
    lease: Option<LeaseNode>,
    /// How many supervisors were started: spreads tenants over the arbiters.
    started: std::sync::atomic::AtomicUsize,
    prescription_locks: PrescriptionLocks,
}

/// A tenant's supervisor on this node, and whether it has stopped serving for good.
struct Placed {
    addr: Addr<TenantSupervisor>,
    placement: Arc<Placement>,
}

impl ActorRuntime {
    /// Starts the arbiters and, with `lease`, the renewal of this node's leases. Must be called
    /// inside a running actix `System`.
    pub fn start(pool: PgPool, config: RuntimeConfig, metrics: ActorMetrics, services: Services, lease: Option<LeaseNode>) -> Arc<ActorRuntime> {
        let arbiters = (0..config.threads.max(1)).map(|_| Arbiter::new()).collect();
        if let Some(node) = &lease {
            lease::install(node);
        }
        let runtime = Arc::new(ActorRuntime {
            pool,
            config,
            metrics,
            services,
            arbiters: Mutex::new(arbiters),
            tenants: Mutex::new(HashMap::new()),
            lease: lease.clone(),
            started: Default::default(),
            prescription_locks: PrescriptionLocks::default(),
        });
        if let Some(node) = lease {
            actix::spawn(renew_leases(node, Arc::downgrade(&runtime)));
        }
        runtime
    }

    /// The tenant's supervisor, started on first use on one of the arbiters. A supervisor that
    /// stopped serving (its lease is held elsewhere, or was lost) is replaced by a new one, which
    /// tries to acquire the lease again.
    pub fn tenant(&self, tenant_id: Uuid, tenant: &TenantSlug) -> Result<Addr<TenantSupervisor>, ActorError> {
        let mut tenants = self.tenants.lock().expect("tenant registry lock");
        if let Some(placed) = tenants.get(&tenant_id) {
            let usable = placed.addr.connected() && !placed.placement.retired.load(Ordering::SeqCst);
            let token = placed.placement.token.load(Ordering::SeqCst);
            if usable && self.lease.is_some() && token != 0 && lease::held_token(tenant_id) != Some(token) {
                // A commit found the lease taken over before the renewal did.
                placed.placement.retired.store(true, Ordering::SeqCst);
                placed.addr.do_send(LeaseLost);
            } else if usable {
                return Ok(placed.addr.clone());
            }
        }
        let arbiters = self.arbiters.lock().expect("arbiter list lock");
        if arbiters.is_empty() {
            return Err(ActorError::Unavailable("the hub is shutting down".to_owned()));
        }
        let arbiter = arbiters[self.started.fetch_add(1, Ordering::Relaxed) % arbiters.len()].handle();
        let placement = Arc::new(Placement::default());
        let (pool, every, metrics, slug, services, lease, shared) = (
            self.pool.clone(),
            self.config.snapshot_every,
            self.metrics.clone(),
            tenant.clone(),
            self.services.clone(),
            self.lease.clone(),
            placement.clone(),
        );
        let addr = Supervisor::start_in_arbiter(&arbiter, move |_| {
            TenantSupervisor::new(tenant_id, slug, pool, every, metrics, services, lease, shared)
        });
        tenants.insert(tenant_id, Placed { addr: addr.clone(), placement });
        Ok(addr)
    }

    /// Stops serving a tenant whose lease this node lost.
    fn lost(&self, tenant_id: Uuid) {
        let mut tenants = self.tenants.lock().expect("tenant registry lock");
        if let Some(placed) = tenants.remove(&tenant_id) {
            placed.placement.retired.store(true, Ordering::SeqCst);
            placed.addr.do_send(LeaseLost);
        }
    }

    /// True when another live node serves the tenant (holds its lease): background work of this
    /// node (reminder sweeps) leaves it to that node instead of asking for it here.
    pub async fn served_elsewhere(&self, tenant_id: Uuid) -> bool {
        let Some(node) = &self.lease else { return false };
        if lease::held_token(tenant_id).is_some() {
            return false;
        }
        match lease::holder(&self.pool, tenant_id, node.config().ttl).await {
            Ok(lease::Holder::Node { node_id, .. }) => node_id != node.config().node_id,
            Ok(_) => false,
            Err(e) => {
                warn!(tenant_id = %tenant_id, error = %e, "cannot read the tenant's lease; trying to serve it here");
                false
            }
        }
    }

    /// Gives up this node's leases (graceful shutdown, after the HTTP server drained), so that
    /// whoever serves the tenants next need not wait for them to expire.
    pub async fn release_leases(&self) {
        if let Some(node) = &self.lease {
            if let Err(e) = node.release_all().await {
                warn!(error = %e, "could not release this node's tenant leases; they expire on their own");
            }
        }
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
        self.tenant(tenant_id, tenant)?.send(DispatchAddr).await?
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

/// Renews this node's leases every third of the TTL for as long as the runtime lives; a lease
/// taken over meanwhile retires its tenant's supervisor here.
async fn renew_leases(node: LeaseNode, runtime: Weak<ActorRuntime>) {
    let mut ticks = tokio::time::interval(node.config().renew_every());
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(runtime) = runtime.upgrade() else { return };
        if runtime.arbiters.lock().expect("arbiter list lock").is_empty() {
            return;
        }
        match node.renew_all().await {
            Ok(lost) => {
                for tenant_id in lost {
                    runtime.lost(tenant_id);
                }
            }
            Err(e) => warn!(node = %node.config().node_id, error = %e, "could not renew this node's tenant leases; retrying (commits stay fenced)"),
        }
    }
}
