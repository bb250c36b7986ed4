//! The `TenantSupervisor`: one per tenant. It starts the tenant's child actors on demand by key,
//! keeps their addresses, and runs each under actix's `Supervisor` so that a child that crashes is
//! restarted in place (same address, same mailbox) and recovers its committed state.

use std::collections::HashMap;

use actix::prelude::*;
use sqlx::PgPool;
use tracing::{info, info_span, Instrument};
use uuid::Uuid;

use crate::domain::{Caller, TenantSlug};
use crate::error::ActorError;
use crate::facility::{self, Facility, FacilityActor, NewFacility};
use crate::metrics::ActorMetrics;

pub struct TenantSupervisor {
    tenant_id: Uuid,
    tenant: TenantSlug,
    pool: PgPool,
    snapshot_every: i64,
    metrics: ActorMetrics,
    facilities: HashMap<Uuid, Addr<FacilityActor>>,
}

impl TenantSupervisor {
    pub(crate) fn new(tenant_id: Uuid, tenant: TenantSlug, pool: PgPool, snapshot_every: i64, metrics: ActorMetrics) -> Self {
        TenantSupervisor { tenant_id, tenant, pool, snapshot_every, metrics, facilities: HashMap::new() }
    }

    fn start_facility(&mut self, state: Facility) -> Addr<FacilityActor> {
        let id = state.id;
        let (tenant_id, tenant, pool, every, metrics) =
            (self.tenant_id, self.tenant.clone(), self.pool.clone(), self.snapshot_every, self.metrics.clone());
        // Children live on the supervisor's arbiter: one thread per tenant's actors.
        let addr = Supervisor::start_in_arbiter(&Arbiter::current(), move |_| {
            FacilityActor::new(tenant_id, tenant, state, pool, every, metrics)
        });
        self.facilities.insert(id, addr.clone());
        addr
    }
}

impl Actor for TenantSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Context<Self>) {
        info!(tenant = %self.tenant, actor = "tenant", "tenant supervisor started");
    }
}

impl actix::Supervised for TenantSupervisor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        // The children map survives a restart, so no facility ever gets a second writer.
        self.metrics.restarts.with_label_values(&["tenant"]).inc();
    }
}

/// The address of a facility's actor, starting (and recovering) it on first use.
#[derive(Message)]
#[rtype(result = "Result<Addr<FacilityActor>, ActorError>")]
pub struct FacilityAddr(pub Uuid);

impl Handler<FacilityAddr> for TenantSupervisor {
    type Result = AtomicResponse<Self, Result<Addr<FacilityActor>, ActorError>>;

    fn handle(&mut self, FacilityAddr(facility_id): FacilityAddr, _ctx: &mut Context<Self>) -> Self::Result {
        if let Some(addr) = self.facilities.get(&facility_id).filter(|addr| addr.connected()) {
            return AtomicResponse::new(Box::pin(fut::ready(Ok(addr.clone()))));
        }
        let (pool, tenant_id) = (self.pool.clone(), self.tenant_id);
        let span = info_span!("start_child", tenant = %self.tenant, actor = "facility", %facility_id);
        // Atomic: two first requests for one facility cannot start two actors.
        AtomicResponse::new(Box::pin(
            async move { facility::recover(&pool, tenant_id, facility_id).await }
                .instrument(span)
                .into_actor(self)
                .map(|recovered, supervisor, _ctx| match recovered? {
                    Some(state) => Ok(supervisor.start_facility(state)),
                    None => Err(ActorError::NotFound("facility")),
                }),
        ))
    }
}

/// Creates a facility and starts its actor.
#[derive(Message)]
#[rtype(result = "Result<Facility, ActorError>")]
pub struct CreateFacility {
    pub caller: Caller,
    pub facility: NewFacility,
}

impl Handler<CreateFacility> for TenantSupervisor {
    type Result = ResponseActFuture<Self, Result<Facility, ActorError>>;

    fn handle(&mut self, msg: CreateFacility, _ctx: &mut Context<Self>) -> Self::Result {
        let (pool, tenant_id, tenant, every, metrics) =
            (self.pool.clone(), self.tenant_id, self.tenant.clone(), self.snapshot_every, self.metrics.clone());
        let span = info_span!("command", tenant = %self.tenant, actor = "tenant", command = "create_facility");
        Box::pin(
            async move { facility::create(&pool, tenant_id, &tenant, &msg.caller, &msg.facility, every, &metrics).await }
                .instrument(span)
                .into_actor(self)
                .map(|created, supervisor, _ctx| {
                    let facility = created?;
                    supervisor.start_facility(facility.clone());
                    Ok(facility)
                }),
        )
    }
}
