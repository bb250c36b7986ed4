//! The `TenantSupervisor`: one per tenant. It starts the tenant's child actors on demand by key,
//! keeps their addresses, and runs each under actix's `Supervisor` so that a child that crashes is
//! restarted in place (same address, same mailbox) and recovers its committed state.
//!
//! Children: a `FacilityActor` per facility, a `DoctorScheduleActor` per doctor and an
//! `InventoryBatchActor` per medication batch, an `AmbulanceActor` per unit and a
//! `VideoSessionActor` per video consult. Looking one up
//! is atomic, so two first requests for one key can never start two writers.
//!
//! A supervisor serves its tenant only while its node holds the tenant's lease (see `lease`): it
//! acquires the lease as it starts (messages wait meanwhile), refuses everything as unavailable
//! when another node holds it, and on [`LeaseLost`] drops its children and refuses from then on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::future::Future;

use actix::prelude::*;
use sqlx::PgPool;
use tracing::{info, info_span, warn, Instrument};
use uuid::Uuid;

use crate::domain::{Caller, TenantSlug};
use crate::error::ActorError;
use crate::facility::{self, Facility, FacilityActor, NewFacility};
use crate::metrics::ActorMetrics;
use crate::ambulance::{self, AmbulanceActor, Unit};
use crate::consult::{self, Consult, Opened, VideoSessionActor};
use crate::dispatch::DispatchActor;
use crate::durable::{Core, DurableActor};
use crate::inventory::{self, Batch, InventoryBatchActor, NewBatch};
use crate::lease::{self, LeaseNode};
use crate::runtime::Services;
use crate::schedule::{self, DoctorScheduleActor, NewDoctor, Schedule};

pub struct TenantSupervisor {
    tenant_id: Uuid,
    tenant: TenantSlug,
    pool: PgPool,
    snapshot_every: i64,
    metrics: ActorMetrics,
    facilities: HashMap<Uuid, Addr<FacilityActor>>,
    schedules: HashMap<Uuid, Addr<DoctorScheduleActor>>,
    batches: HashMap<Uuid, Addr<InventoryBatchActor>>,
    ambulances: HashMap<Uuid, Addr<AmbulanceActor>>,
    consults: HashMap<Uuid, Addr<VideoSessionActor>>,
    /// The supervisor's own address (children that ask it for their siblings hold it).
    me: Option<Addr<TenantSupervisor>>,
    /// Started with the supervisor: one per tenant.
    dispatch: Option<Addr<DispatchActor>>,
    services: Services,
    /// This node's leases; `None` where no lease is needed (tools that run no server).
    lease: Option<LeaseNode>,
    /// The fencing token this supervisor serves the tenant under, once acquired.
    fence: Option<i64>,
    /// Why this supervisor does not serve (the lease is held elsewhere, or was lost).
    refusal: Option<Refusal>,
    /// What the runtime sees of this supervisor's placement.
    placement: Arc<Placement>,
}

/// Why a supervisor stopped serving.
enum Refusal {
    /// Another node holds the tenant's lease.
    NotOwner(String),
    /// The lease could not be acquired (the database failed).
    Failed(String),
}

/// A supervisor's placement as the runtime sees it.
#[derive(Default)]
pub(crate) struct Placement {
    /// Set when the supervisor stopped serving for good; the runtime then starts a new one.
    pub retired: AtomicBool,
    /// The fencing token it serves under (0 until the lease is acquired).
    pub token: AtomicI64,
}

/// A kind of child: how to recover its state and start it, and where its address is kept.
trait Child: Actor<Context = Context<Self>> + Supervised + Send {
    type State: Send + 'static;
    const NAME: &'static str;
    fn recover(pool: PgPool, tenant_id: Uuid, id: Uuid) -> impl Future<Output = Result<Option<Self::State>, ActorError>> + 'static;
    fn build(supervisor: &TenantSupervisor, state: Self::State) -> Self;
    fn id(state: &Self::State) -> Uuid;
    fn registry(supervisor: &mut TenantSupervisor) -> &mut HashMap<Uuid, Addr<Self>>;
    /// The fencing token the child commits under: its supervisor's.
    fn fence(&mut self) -> &mut Option<i64>;
}

impl Child for FacilityActor {
    type State = Facility;
    const NAME: &'static str = "facility";
    fn recover(pool: PgPool, tenant_id: Uuid, id: Uuid) -> impl Future<Output = Result<Option<Facility>, ActorError>> + 'static {
        async move { facility::recover(&pool, tenant_id, id).await }
    }
    fn build(s: &TenantSupervisor, state: Facility) -> Self {
        FacilityActor::new(s.tenant_id, s.tenant.clone(), state, s.pool.clone(), s.snapshot_every, s.metrics.clone())
    }
    fn id(state: &Facility) -> Uuid {
        state.id
    }
    fn fence(&mut self) -> &mut Option<i64> {
        &mut DurableActor::core_mut(self).fence
    }
    fn registry(s: &mut TenantSupervisor) -> &mut HashMap<Uuid, Addr<Self>> {
        &mut s.facilities
    }
}

impl Child for DoctorScheduleActor {
    type State = Schedule;
    const NAME: &'static str = "doctor";
    fn recover(pool: PgPool, tenant_id: Uuid, id: Uuid) -> impl Future<Output = Result<Option<Schedule>, ActorError>> + 'static {
        async move { schedule::recover(&pool, tenant_id, id).await }
    }
    fn build(s: &TenantSupervisor, state: Schedule) -> Self {
        DoctorScheduleActor::new(s.tenant_id, s.tenant.clone(), state, s.pool.clone(), s.snapshot_every, s.metrics.clone())
    }
    fn id(state: &Schedule) -> Uuid {
        state.profile.id
    }
    fn fence(&mut self) -> &mut Option<i64> {
        &mut DurableActor::core_mut(self).fence
    }
    fn registry(s: &mut TenantSupervisor) -> &mut HashMap<Uuid, Addr<Self>> {
        &mut s.schedules
    }
}

impl Child for InventoryBatchActor {
    type State = Batch;
    const NAME: &'static str = "batch";
    fn recover(pool: PgPool, tenant_id: Uuid, id: Uuid) -> impl Future<Output = Result<Option<Batch>, ActorError>> + 'static {
        async move { inventory::recover(&pool, tenant_id, id).await }
    }
    fn build(s: &TenantSupervisor, state: Batch) -> Self {
        InventoryBatchActor::new(s.tenant_id, s.tenant.clone(), state, s.pool.clone(), s.snapshot_every, s.metrics.clone())
    }
    fn id(state: &Batch) -> Uuid {
        state.id
    }
    fn fence(&mut self) -> &mut Option<i64> {
        &mut DurableActor::core_mut(self).fence
    }
    fn registry(s: &mut TenantSupervisor) -> &mut HashMap<Uuid, Addr<Self>> {
        &mut s.batches
    }
}

impl Child for AmbulanceActor {
    type State = Unit;
    const NAME: &'static str = "ambulance";
    fn recover(pool: PgPool, tenant_id: Uuid, id: Uuid) -> impl Future<Output = Result<Option<Unit>, ActorError>> + 'static {
        async move { ambulance::recover(&pool, tenant_id, id).await }
    }
    fn build(s: &TenantSupervisor, state: Unit) -> Self {
        let core = Core::new(s.tenant_id, s.tenant.clone(), state.id, state, s.pool.clone(), s.snapshot_every, s.metrics.clone());
        let dispatch = s.dispatch.clone().expect("the dispatch actor starts with the supervisor").recipient();
        AmbulanceActor::new(core, s.services.live.clone(), s.services.track.clone(), dispatch, s.services.dispatch.geofence_m)
    }
    fn id(state: &Unit) -> Uuid {
        state.id
    }
    fn fence(&mut self) -> &mut Option<i64> {
        &mut DurableActor::core_mut(self).fence
    }
    fn registry(s: &mut TenantSupervisor) -> &mut HashMap<Uuid, Addr<Self>> {
        &mut s.ambulances
    }
}

impl Child for VideoSessionActor {
    type State = Consult;
    const NAME: &'static str = "consult";
    fn recover(pool: PgPool, tenant_id: Uuid, id: Uuid) -> impl Future<Output = Result<Option<Consult>, ActorError>> + 'static {
        async move { consult::recover(&pool, tenant_id, id).await }
    }
    fn build(s: &TenantSupervisor, state: Consult) -> Self {
        let core = Core::new(s.tenant_id, s.tenant.clone(), state.id, state, s.pool.clone(), s.snapshot_every, s.metrics.clone());
        let supervisor = s.me.clone().expect("the supervisor knows its address once started");
        VideoSessionActor::new(core, supervisor, s.services.consult)
    }
    fn id(state: &Consult) -> Uuid {
        state.id
    }
    fn fence(&mut self) -> &mut Option<i64> {
        &mut DurableActor::core_mut(self).fence
    }
    fn registry(s: &mut TenantSupervisor) -> &mut HashMap<Uuid, Addr<Self>> {
        &mut s.consults
    }
}

impl TenantSupervisor {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        tenant_id: Uuid,
        tenant: TenantSlug,
        pool: PgPool,
        snapshot_every: i64,
        metrics: ActorMetrics,
        services: Services,
        lease: Option<LeaseNode>,
        placement: Arc<Placement>,
    ) -> Self {
        TenantSupervisor {
            tenant_id,
            tenant,
            pool,
            snapshot_every,
            metrics,
            facilities: HashMap::new(),
            schedules: HashMap::new(),
            batches: HashMap::new(),
            ambulances: HashMap::new(),
            consults: HashMap::new(),
            me: None,
            dispatch: None,
            services,
            lease,
            fence: None,
            refusal: None,
            placement,
        }
    }

    /// Refuses while this supervisor does not serve its tenant.
    fn serving(&self) -> Result<(), ActorError> {
        match &self.refusal {
            Some(Refusal::NotOwner(reason)) => Err(ActorError::NotOwner(reason.clone())),
            Some(Refusal::Failed(reason)) => Err(ActorError::Unavailable(reason.clone())),
            None => Ok(()),
        }
    }

    fn start_dispatch(&mut self, ctx: &mut Context<Self>) {
        if self.dispatch.is_none() {
            let (tenant_id, tenant, pool, metrics, services, me) =
                (self.tenant_id, self.tenant.clone(), self.pool.clone(), self.metrics.clone(), self.services.clone(), ctx.address());
            self.dispatch = Some(Supervisor::start_in_arbiter(&Arbiter::current(), move |_| {
                DispatchActor::new(tenant_id, tenant, pool, metrics, services.dispatch.clone(), services.commands.clone(), me)
            }));
        }
    }

    /// Stops serving for good: the children lose their addresses (and stop once idle), and every
    /// later message is refused with `reason`.
    fn retire(&mut self, reason: Refusal) {
        self.refusal = Some(reason);
        self.placement.retired.store(true, Ordering::SeqCst);
        self.facilities.clear();
        self.schedules.clear();
        self.batches.clear();
        self.ambulances.clear();
        self.consults.clear();
        self.dispatch = None;
        self.me = None;
    }

    fn start_child<C: Child>(&mut self, state: C::State) -> Addr<C> {
        let id = C::id(&state);
        let mut actor = C::build(self, state);
        *actor.fence() = self.fence;
        // Children live on the supervisor's arbiter: one thread per tenant's actors.
        let addr = Supervisor::start_in_arbiter(&Arbiter::current(), move |_| actor);
        C::registry(self).insert(id, addr.clone());
        addr
    }

    /// The child's address, recovering and starting it on first use.
    fn child<C: Child>(&mut self, id: Uuid) -> AtomicResponse<Self, Result<Addr<C>, ActorError>> {
        if let Err(refused) = self.serving() {
            return AtomicResponse::new(Box::pin(fut::ready(Err(refused))));
        }
        if let Some(addr) = C::registry(self).get(&id).filter(|addr| addr.connected()) {
            return AtomicResponse::new(Box::pin(fut::ready(Ok(addr.clone()))));
        }
        let span = info_span!("start_child", tenant = %self.tenant, actor = C::NAME, %id);
        AtomicResponse::new(Box::pin(C::recover(self.pool.clone(), self.tenant_id, id).instrument(span).into_actor(self).map(
            move |recovered, supervisor, _ctx| match recovered? {
                Some(state) => Ok(supervisor.start_child::<C>(state)),
                None => Err(ActorError::NotFound(C::NAME)),
            },
        )))
    }
}

impl Actor for TenantSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.placement.retired.load(Ordering::SeqCst) {
            return;
        }
        info!(tenant = %self.tenant, actor = "tenant", "tenant supervisor started");
        self.me = Some(ctx.address());
        if self.fence.is_some() {
            // Restarted after a crash: the lease is still this supervisor's.
            self.start_dispatch(ctx);
            return;
        }
        let Some(node) = self.lease.clone() else {
            self.start_dispatch(ctx);
            return;
        };
        // Every message waits until the lease is ours (or known to be another node's).
        let (tenant_id, tenant) = (self.tenant_id, self.tenant.clone());
        let span = info_span!("acquire_lease", tenant = %self.tenant, node = %node.config().node_id);
        ctx.wait(async move { node.acquire(tenant_id, &tenant).await }.instrument(span).into_actor(self).map(
            |acquired, supervisor, ctx| match acquired {
                Ok(token) => {
                    supervisor.fence = Some(token);
                    supervisor.placement.token.store(token, Ordering::SeqCst);
                    supervisor.start_dispatch(ctx);
                }
                Err(ActorError::NotOwner(reason)) => supervisor.retire(Refusal::NotOwner(reason)),
                Err(failed) => supervisor.retire(Refusal::Failed(format!("cannot place tenant {} on this node: {failed}; retry", supervisor.tenant))),
            },
        ));
    }
}

impl actix::Supervised for TenantSupervisor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        // The children maps survive a restart, so no child ever gets a second writer.
        self.metrics.restarts.with_label_values(&["tenant"]).inc();
    }
}

/// The address of a facility's actor, starting (and recovering) it on first use.
#[derive(Message)]
#[rtype(result = "Result<Addr<FacilityActor>, ActorError>")]
pub struct FacilityAddr(pub Uuid);

impl Handler<FacilityAddr> for TenantSupervisor {
    type Result = AtomicResponse<Self, Result<Addr<FacilityActor>, ActorError>>;

    fn handle(&mut self, FacilityAddr(id): FacilityAddr, _ctx: &mut Context<Self>) -> Self::Result {
        self.child::<FacilityActor>(id)
    }
}

/// The address of a doctor's schedule actor, starting (and recovering) it on first use.
#[derive(Message)]
#[rtype(result = "Result<Addr<DoctorScheduleActor>, ActorError>")]
pub struct ScheduleAddr(pub Uuid);

impl Handler<ScheduleAddr> for TenantSupervisor {
    type Result = AtomicResponse<Self, Result<Addr<DoctorScheduleActor>, ActorError>>;

    fn handle(&mut self, ScheduleAddr(id): ScheduleAddr, _ctx: &mut Context<Self>) -> Self::Result {
        self.child::<DoctorScheduleActor>(id)
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
        if let Err(refused) = self.serving() {
            return Box::pin(fut::ready(Err(refused)));
        }
        let (pool, tenant_id, tenant, every, metrics, fence) =
            (self.pool.clone(), self.tenant_id, self.tenant.clone(), self.snapshot_every, self.metrics.clone(), self.fence);
        let span = info_span!("command", tenant = %self.tenant, actor = "tenant", command = "create_facility");
        Box::pin(
            lease::with_fence(fence, async move { facility::create(&pool, tenant_id, &tenant, &msg.caller, &msg.facility, every, &metrics).await })
                .instrument(span)
                .into_actor(self)
                .map(|created, supervisor, _ctx| {
                    let facility = created?;
                    supervisor.start_child::<FacilityActor>(facility.clone());
                    Ok(facility)
                }),
        )
    }
}

/// Registers a doctor (their schedule's first event) and starts the schedule's actor.
#[derive(Message)]
#[rtype(result = "Result<Schedule, ActorError>")]
pub struct RegisterDoctor {
    pub caller: Caller,
    pub doctor: NewDoctor,
}

impl Handler<RegisterDoctor> for TenantSupervisor {
    type Result = ResponseActFuture<Self, Result<Schedule, ActorError>>;

    fn handle(&mut self, msg: RegisterDoctor, _ctx: &mut Context<Self>) -> Self::Result {
        if let Err(refused) = self.serving() {
            return Box::pin(fut::ready(Err(refused)));
        }
        let (pool, tenant_id, tenant, every, metrics, fence) =
            (self.pool.clone(), self.tenant_id, self.tenant.clone(), self.snapshot_every, self.metrics.clone(), self.fence);
        let span = info_span!("command", tenant = %self.tenant, actor = "tenant", command = "register_doctor");
        Box::pin(
            lease::with_fence(fence, async move { schedule::register(&pool, tenant_id, &tenant, &msg.caller, &msg.doctor, every, &metrics).await })
                .instrument(span)
                .into_actor(self)
                .map(|registered, supervisor, _ctx| {
                    let schedule = registered?;
                    supervisor.start_child::<DoctorScheduleActor>(schedule.clone());
                    Ok(schedule)
                }),
        )
    }
}

/// The address of a medication batch's actor, starting (and recovering) it on first use.
#[derive(Message)]
#[rtype(result = "Result<Addr<InventoryBatchActor>, ActorError>")]
pub struct BatchAddr(pub Uuid);

impl Handler<BatchAddr> for TenantSupervisor {
    type Result = AtomicResponse<Self, Result<Addr<InventoryBatchActor>, ActorError>>;

    fn handle(&mut self, BatchAddr(id): BatchAddr, _ctx: &mut Context<Self>) -> Self::Result {
        self.child::<InventoryBatchActor>(id)
    }
}

/// Receives a new batch of a medication at a pharmacy and starts its actor.
#[derive(Message)]
#[rtype(result = "Result<Batch, ActorError>")]
pub struct ReceiveBatch {
    pub caller: Caller,
    pub batch: NewBatch,
}

impl Handler<ReceiveBatch> for TenantSupervisor {
    type Result = ResponseActFuture<Self, Result<Batch, ActorError>>;

    fn handle(&mut self, msg: ReceiveBatch, _ctx: &mut Context<Self>) -> Self::Result {
        if let Err(refused) = self.serving() {
            return Box::pin(fut::ready(Err(refused)));
        }
        let (pool, tenant_id, tenant, every, metrics, fence) =
            (self.pool.clone(), self.tenant_id, self.tenant.clone(), self.snapshot_every, self.metrics.clone(), self.fence);
        let span = info_span!("command", tenant = %self.tenant, actor = "tenant", command = "receive_batch");
        Box::pin(
            lease::with_fence(fence, async move { inventory::receive(&pool, tenant_id, &tenant, &msg.caller, &msg.batch, every, &metrics).await })
                .instrument(span)
                .into_actor(self)
                .map(|received, supervisor, _ctx| {
                    let batch = received?;
                    supervisor.start_child::<InventoryBatchActor>(batch.clone());
                    Ok(batch)
                }),
        )
    }
}

/// The address of an ambulance unit's actor, starting (and recovering) it on first use.
#[derive(Message)]
#[rtype(result = "Result<Addr<AmbulanceActor>, ActorError>")]
pub struct AmbulanceAddr(pub Uuid);

impl Handler<AmbulanceAddr> for TenantSupervisor {
    type Result = AtomicResponse<Self, Result<Addr<AmbulanceActor>, ActorError>>;

    fn handle(&mut self, AmbulanceAddr(id): AmbulanceAddr, _ctx: &mut Context<Self>) -> Self::Result {
        self.child::<AmbulanceActor>(id)
    }
}

/// Registers an ambulance unit and starts its actor.
#[derive(Message)]
#[rtype(result = "Result<Unit, ActorError>")]
pub struct RegisterAmbulance {
    pub caller: Caller,
    pub call_sign: String,
}

impl Handler<RegisterAmbulance> for TenantSupervisor {
    type Result = ResponseActFuture<Self, Result<Unit, ActorError>>;

    fn handle(&mut self, msg: RegisterAmbulance, _ctx: &mut Context<Self>) -> Self::Result {
        if let Err(refused) = self.serving() {
            return Box::pin(fut::ready(Err(refused)));
        }
        let (pool, tenant_id, tenant, metrics, fence) = (self.pool.clone(), self.tenant_id, self.tenant.clone(), self.metrics.clone(), self.fence);
        let span = info_span!("command", tenant = %self.tenant, actor = "tenant", command = "register_ambulance");
        Box::pin(
            lease::with_fence(fence, async move { ambulance::register(&pool, tenant_id, &tenant, &msg.caller, &msg.call_sign, &metrics).await })
                .instrument(span)
                .into_actor(self)
                .map(|registered, supervisor, _ctx| {
                    let unit = registered?;
                    supervisor.start_child::<AmbulanceActor>(unit.clone());
                    Ok(unit)
                }),
        )
    }
}

/// The tenant's dispatch actor.
#[derive(Message)]
#[rtype(result = "Result<Addr<DispatchActor>, ActorError>")]
pub struct DispatchAddr;

impl Handler<DispatchAddr> for TenantSupervisor {
    type Result = Result<Addr<DispatchActor>, ActorError>;

    fn handle(&mut self, _msg: DispatchAddr, _ctx: &mut Context<Self>) -> Self::Result {
        self.serving()?;
        self.dispatch.clone().ok_or_else(|| ActorError::Unavailable(format!("the dispatch of tenant {} is not running; retry", self.tenant)))
    }
}

/// The address of a video consult's actor, starting (and recovering) it on first use.
#[derive(Message)]
#[rtype(result = "Result<Addr<VideoSessionActor>, ActorError>")]
pub struct ConsultAddr(pub Uuid);

impl Handler<ConsultAddr> for TenantSupervisor {
    type Result = AtomicResponse<Self, Result<Addr<VideoSessionActor>, ActorError>>;

    fn handle(&mut self, ConsultAddr(id): ConsultAddr, _ctx: &mut Context<Self>) -> Self::Result {
        self.child::<VideoSessionActor>(id)
    }
}

/// Opens the video consult of an appointment (its doctor only) and starts its actor; the
/// appointment's existing consult when it was opened before.
#[derive(Message)]
#[rtype(result = "Result<Opened, ActorError>")]
pub struct OpenConsult {
    pub caller: Caller,
    pub appointment_id: Uuid,
}

impl Handler<OpenConsult> for TenantSupervisor {
    type Result = ResponseActFuture<Self, Result<Opened, ActorError>>;

    fn handle(&mut self, msg: OpenConsult, _ctx: &mut Context<Self>) -> Self::Result {
        if let Err(refused) = self.serving() {
            return Box::pin(fut::ready(Err(refused)));
        }
        let (pool, tenant_id, tenant, every, metrics, fence) =
            (self.pool.clone(), self.tenant_id, self.tenant.clone(), self.snapshot_every, self.metrics.clone(), self.fence);
        let span = info_span!("command", tenant = %self.tenant, actor = "tenant", command = "open_consult");
        Box::pin(
            lease::with_fence(fence, async move { consult::open(&pool, tenant_id, &tenant, &msg.caller, msg.appointment_id, every, &metrics).await })
                .instrument(span)
                .into_actor(self)
                .map(|opened, supervisor, _ctx| {
                    let opened = opened?;
                    if let Opened::Created(consult) = &opened {
                        supervisor.start_child::<VideoSessionActor>(Consult::clone(consult));
                    }
                    Ok(opened)
                }),
        )
    }
}

/// This node lost the tenant's lease (another node took it over): stop serving it here.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct LeaseLost;

impl Handler<LeaseLost> for TenantSupervisor {
    type Result = ();

    fn handle(&mut self, _msg: LeaseLost, _ctx: &mut Context<Self>) {
        warn!(tenant = %self.tenant, actor = "tenant", token = ?self.fence, "this node lost the tenant's lease; stopping the tenant's actors here");
        let node = self.lease.as_ref().map_or_else(|| "unnamed".to_owned(), |node| node.config().node_id.clone());
        self.retire(Refusal::NotOwner(format!("this node ({node}) no longer owns tenant {}; nothing was done here, retry", self.tenant)));
    }
}
