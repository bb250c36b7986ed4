//! What every durable actor shares: how a command is committed, acknowledged, refused, and how a
//! panic becomes a restart instead of a silent failure.
//!
//! A durable actor owns state that it rebuilds from PostgreSQL (snapshot + events) and changes only
//! through [`commit_then_install`]: the commit runs while the actor holds its mailbox (an
//! `AtomicResponse`, so the next command sees the committed state), and only after `COMMIT` is the
//! new state installed and the caller answered. A panic in the commit or in the answer is caught:
//! the caller gets [`ActorError::Crashed`], the actor stops, and its `Supervisor` restarts it, which
//! reloads from what was committed.
//!
//! Every commit runs under the fencing token of the tenant's lease the actor was started under
//! (`lease::with_fence`), so an actor left over from a lease this node lost can never commit.
//!
//! Each durable actor keeps its identity, its connections and its state in a [`Core`]; recovery
//! (snapshot + later events, while the mailbox waits), "not loaded yet" refusals and the restart
//! bookkeeping are written once here for all of them.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use actix::prelude::*;
use futures_util::FutureExt;
use sqlx::PgPool;
use tracing::{error, info, info_span, warn, Instrument};
use uuid::Uuid;

use crate::domain::TenantSlug;

use crate::error::ActorError;
use crate::metrics::ActorMetrics;
use crate::store::Committed;

/// State an actor rebuilds from its stream.
pub(crate) trait DurableState: Clone + Send + 'static {
    /// Rebuilds the state of `id` in the tenant from its snapshot and later events; `None` when
    /// there is no such stream in this tenant.
    fn recover(pool: PgPool, tenant_id: Uuid, id: Uuid) -> impl Future<Output = Result<Option<Self>, ActorError>> + Send + 'static;
}

/// What every durable actor holds: who it is, how it commits, and its state (`None` while it
/// loads, or when loading failed: commands are then refused as unavailable).
pub(crate) struct Core<S> {
    pub tenant_id: Uuid,
    pub tenant: TenantSlug,
    pub id: Uuid,
    pub pool: PgPool,
    pub snapshot_every: i64,
    pub metrics: ActorMetrics,
    pub state: Option<S>,
    /// The fencing token of the tenant's lease this actor was started under: its commits are
    /// refused once the lease carries another (see `lease`).
    pub fence: Option<i64>,
}

impl<S> Core<S> {
    pub fn new(tenant_id: Uuid, tenant: TenantSlug, id: Uuid, state: S, pool: PgPool, snapshot_every: i64, metrics: ActorMetrics) -> Core<S> {
        Core { tenant_id, tenant, id, pool, snapshot_every, metrics, state: Some(state), fence: crate::lease::held_token(tenant_id) }
    }
}

/// An actor whose commands commit through this module.
pub(crate) trait DurableActor: Actor<Context = Context<Self>> + Supervised {
    type State: DurableState;
    /// The actor's kind as metrics and logs name it (`facility`, `schedule`, `inventory`).
    const KIND: &'static str;
    fn core(&self) -> &Core<Self::State>;
    fn core_mut(&mut self) -> &mut Core<Self::State>;

    fn metrics(&self) -> &ActorMetrics {
        &self.core().metrics
    }

    /// The state as committed, or "unavailable" while it loads.
    fn current(&self) -> Result<&Self::State, ActorError> {
        self.core()
            .state
            .as_ref()
            .ok_or_else(|| ActorError::Unavailable(format!("the {} is loading; retry shortly", Self::KIND)))
    }

    /// The commit failed (not a panic): e.g. reload state that may no longer be current.
    fn commit_failed(&mut self, _error: &ActorError, _ctx: &mut Context<Self>) {}
}

/// Forgets the state and rebuilds it from the database; every queued message waits until then.
pub(crate) fn reload<A: DurableActor>(actor: &mut A, ctx: &mut Context<A>) {
    let core = actor.core_mut();
    core.state = None;
    let (pool, tenant_id, id) = (core.pool.clone(), core.tenant_id, core.id);
    let span = info_span!("recover", tenant = %core.tenant, actor = A::KIND, %id);
    ctx.wait(A::State::recover(pool, tenant_id, id).instrument(span).into_actor(actor).map(|result, actor: &mut A, _ctx| {
        let core = actor.core_mut();
        match result {
            Ok(Some(state)) => {
                info!(tenant = %core.tenant, actor = A::KIND, id = %core.id, "state recovered from snapshot and events");
                core.state = Some(state);
            }
            Ok(None) => error!(tenant = %core.tenant, actor = A::KIND, id = %core.id, "stream vanished from the event log"),
            Err(e) => error!(tenant = %core.tenant, actor = A::KIND, id = %core.id, error = %e, "recovery failed; commands refused until restart"),
        }
    }));
}

/// For `Actor::started`: load the state unless the actor was started with it.
pub(crate) fn start<A: DurableActor>(actor: &mut A, ctx: &mut Context<A>) {
    if actor.core().state.is_none() {
        reload(actor, ctx);
    }
}

/// For `Supervised::restarting`: whatever a crashed handler left in memory is not trusted.
pub(crate) fn restarting<A: DurableActor>(actor: &mut A) {
    let core = actor.core_mut();
    warn!(tenant = %core.tenant, actor = A::KIND, id = %core.id, "restarting after a crash");
    core.metrics.restarts.with_label_values(&[A::KIND]).inc();
    core.state = None;
}

pub(crate) type Reply<A, T> = AtomicResponse<A, Result<T, ActorError>>;

/// Refuses a command without touching the database.
pub(crate) fn refuse<A: DurableActor, T: 'static>(actor: &A, error: ActorError) -> Reply<A, T> {
    actor.metrics().commands.with_label_values(&[A::KIND, "refused"]).inc();
    AtomicResponse::new(Box::pin(fut::ready(Err(error))))
}

/// Answers at once with `value` (e.g. a command that changes nothing).
pub(crate) fn answer<A: DurableActor, T: 'static>(value: T) -> Reply<A, T> {
    AtomicResponse::new(Box::pin(fut::ready(Ok(value))))
}

/// Stops the actor so that its supervisor restarts it from committed state.
pub(crate) fn crashed<A: DurableActor, T>(actor: &mut A, ctx: &mut Context<A>) -> Result<T, ActorError> {
    let core = actor.core();
    error!(tenant = %core.tenant, actor = A::KIND, id = %core.id, "handler panicked; stopping so the supervisor restarts from committed state");
    actor.metrics().commands.with_label_values(&[A::KIND, "crashed"]).inc();
    ctx.stop();
    Err(ActorError::Crashed(A::KIND))
}

/// Runs a pure decision that might panic (a bug); a panic crashes the actor.
pub(crate) fn decide<A: DurableActor, R>(decision: impl FnOnce() -> R) -> Result<R, ()> {
    std::panic::catch_unwind(AssertUnwindSafe(decision)).map_err(|_| ())
}

/// The answer for a decision that panicked.
pub(crate) fn crash_now<A: DurableActor, T: 'static>() -> Reply<A, T> {
    AtomicResponse::new(Box::pin(ActorFutureExt::map(fut::ready(()), |(), actor: &mut A, ctx| crashed(actor, ctx))))
}

/// Commits with `commit` (which yields the next state once the database acknowledged), then
/// installs that state with `install` and answers with what it returns.
pub(crate) fn commit_then_install<A, S, T, F>(
    actor: &A,
    commit: F,
    install: impl FnOnce(&mut A, S, &Committed) -> T + 'static,
) -> Reply<A, T>
where
    A: DurableActor,
    S: 'static,
    T: 'static,
    F: Future<Output = Result<(S, Committed), ActorError>> + 'static,
{
    let commit = crate::lease::with_fence(actor.core().fence, commit);
    AtomicResponse::new(Box::pin(AssertUnwindSafe(commit).catch_unwind().into_actor(actor).map(
        move |outcome, actor: &mut A, ctx| match outcome {
            Ok(Ok((state, committed))) => {
                match std::panic::catch_unwind(AssertUnwindSafe(|| install(actor, state, &committed))) {
                    Ok(value) => {
                        actor.metrics().commands.with_label_values(&[A::KIND, "committed"]).inc();
                        Ok(value)
                    }
                    Err(_panic) => crashed(actor, ctx),
                }
            }
            Ok(Err(error)) => {
                actor.metrics().commands.with_label_values(&[A::KIND, "failed"]).inc();
                actor.commit_failed(&error, ctx);
                Err(error)
            }
            Err(_panic) => crashed(actor, ctx),
        },
    )))
}
