//! What every durable actor shares: how a command is committed, acknowledged, refused, and how a
//! panic becomes a restart instead of a silent failure.
//!
//! A durable actor owns state that it rebuilds from PostgreSQL (snapshot + events) and changes only
//! through [`commit_then_install`]: the commit runs while the actor holds its mailbox (an
//! `AtomicResponse`, so the next command sees the committed state), and only after `COMMIT` is the
//! new state installed and the caller answered. A panic in the commit or in the answer is caught:
//! the caller gets [`ActorError::Crashed`], the actor stops, and its `Supervisor` restarts it, which
//! reloads from what was committed (the actor's `Supervised::restarting` must forget its state).

use std::future::Future;
use std::panic::AssertUnwindSafe;

use actix::prelude::*;
use futures_util::FutureExt;
use tracing::error;

use crate::error::ActorError;
use crate::metrics::ActorMetrics;
use crate::store::Committed;

/// An actor whose commands commit through this module.
pub(crate) trait DurableActor: Actor<Context = Context<Self>> + Supervised {
    /// The actor's kind as metrics and logs name it (`facility`, `schedule`).
    const KIND: &'static str;
    fn metrics(&self) -> &ActorMetrics;
    /// Logs the crash with the actor's identity (tenant, ids).
    fn log_crash(&self);
    /// The commit failed (not a panic): e.g. drop cached state that may no longer be current.
    fn commit_failed(&mut self, _error: &ActorError, _ctx: &mut Context<Self>) {}
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
    actor.log_crash();
    error!(actor = A::KIND, "handler panicked; stopping so the supervisor restarts from committed state");
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
