//! The reminder sweep: finds booked appointments whose reminder is due (they start within the
//! configured lead time and none was sent) and asks their doctor's schedule actor to send it.
//!
//! The database is the memory: a reminder is due exactly while its appointment row says so, so
//! reminders survive restarts and a crash between "due" and "sent" only delays one to the next
//! sweep. The actor sends each at most once (the appointment records that it was sent).

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::domain::TenantSlug;
use crate::runtime::ActorRuntime;
use crate::schedule::{self, SendReminder};

/// Sweeps every `every` until `shutdown` turns true.
pub async fn run(runtime: Arc<ActorRuntime>, pool: PgPool, lead: Duration, every: Duration, mut shutdown: watch::Receiver<bool>) {
    let lead = chrono::Duration::from_std(lead).unwrap_or(chrono::Duration::hours(1));
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => sweep(&runtime, &pool, lead).await,
            _ = shutdown.changed() => return,
        }
    }
}

async fn sweep(runtime: &ActorRuntime, pool: &PgPool, lead: chrono::Duration) {
    let due = match schedule::due_reminders(pool, lead, 200).await {
        Ok(due) => due,
        Err(e) => return warn!(error = %e, "cannot look for due reminders; next sweep retries"),
    };
    for (tenant_id, slug, doctor_id, appointment_id) in due {
        let Ok(tenant) = TenantSlug::parse(&slug) else { continue };
        if runtime.served_elsewhere(tenant_id).await {
            // The node that serves the tenant sends it (its sweep sees the same reminders).
            continue;
        }
        let sent = async {
            let actor = runtime.schedule(tenant_id, &tenant, doctor_id).await?;
            actor.send(SendReminder { appointment_id, lead_seconds: lead.num_seconds() }).await?
        };
        match sent.await {
            Ok(Some(seq)) => debug!(tenant = %tenant, %appointment_id, seq, "reminder sent"),
            Ok(None) => {}
            Err(e) => warn!(tenant = %tenant, %appointment_id, error = %e, "reminder not sent; next sweep retries"),
        }
    }
}
