//! The actor runtime's Prometheus metrics: restarts, commands and commit latency. Registered in
//! the hub's registry once and shared (cheaply cloned) by every actor.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

#[derive(Clone)]
pub struct ActorMetrics {
    pub restarts: IntCounterVec,
    pub commands: IntCounterVec,
    pub commit_seconds: HistogramVec,
}

impl ActorMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<ActorMetrics> {
        let restarts = IntCounterVec::new(
            Opts::new(
                "medhub_actor_restarts_total",
                "Actors restarted by their supervisor after a crash",
            ),
            &["actor"],
        )?;
        let commands = IntCounterVec::new(
            Opts::new("medhub_actor_commands_total", "Commands handled by actors, by outcome"),
            &["actor", "outcome"],
        )?;
        let commit_seconds = HistogramVec::new(
            HistogramOpts::new(
                "medhub_commit_seconds",
                "Time to commit a command's effect, event and audit entry",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["actor"],
        )?;
        registry.register(Box::new(restarts.clone()))?;
        registry.register(Box::new(commands.clone()))?;
        registry.register(Box::new(commit_seconds.clone()))?;
        Ok(ActorMetrics { restarts, commands, commit_seconds })
    }

    /// Metrics that go nowhere, for unit tests and tools that run no server.
    pub fn unregistered() -> ActorMetrics {
        ActorMetrics::register(&Registry::new()).expect("fresh registry accepts metrics")
    }
}
