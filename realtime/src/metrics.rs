//! WebSocket and backplane metrics for `/metrics`.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Clone)]
pub struct RealtimeMetrics {
    pub connections: IntGauge,
    pub events_sent: IntCounter,
    pub slow_disconnects: IntCounter,
    pub refused_subscriptions: IntCounterVec,
    pub gap_fills: IntCounter,
    pub live_coalesced: IntCounter,
    /// The Redis backplane's (all zero on a hub without one).
    pub backplane: BackplaneMetrics,
}

/// What the Redis backplane (see `backplane.rs`) does: registered on every hub, so that dashboards
/// see the same series whether or not `--redis-url` is set.
#[derive(Clone)]
pub struct BackplaneMetrics {
    pub connected: IntGauge,
    pub relay: IntGauge,
    pub published: IntCounterVec,
    pub received: IntCounterVec,
    pub dropped: IntCounterVec,
}

impl BackplaneMetrics {
    fn register(registry: &Registry) -> prometheus::Result<BackplaneMetrics> {
        let connected = IntGauge::new("medhub_backplane_connected", "1 while this hub is subscribed to the Redis backplane")?;
        let relay = IntGauge::new(
            "medhub_backplane_relay",
            "1 while this hub is the one relaying PostgreSQL's event notifications to the Redis backplane",
        )?;
        let published = IntCounterVec::new(
            Opts::new("medhub_backplane_published_total", "Messages this hub published to the Redis backplane, by kind (event, live)"),
            &["kind"],
        )?;
        let received = IntCounterVec::new(
            Opts::new("medhub_backplane_received_total", "Messages this hub received from the Redis backplane, by kind (event, live)"),
            &["kind"],
        )?;
        let dropped = IntCounterVec::new(
            Opts::new(
                "medhub_backplane_dropped_total",
                "Backplane messages not passed on, by kind and reason (live: queue_full, redis_down; event: busy, read back from the event log instead)",
            ),
            &["kind", "reason"],
        )?;
        registry.register(Box::new(connected.clone()))?;
        registry.register(Box::new(relay.clone()))?;
        registry.register(Box::new(published.clone()))?;
        registry.register(Box::new(received.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        Ok(BackplaneMetrics { connected, relay, published, received, dropped })
    }
}

impl RealtimeMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<RealtimeMetrics> {
        let connections = IntGauge::new("medhub_ws_connections", "Open WebSocket connections")?;
        let events_sent = IntCounter::new("medhub_ws_events_sent_total", "Event envelopes sent to WebSocket clients")?;
        let slow_disconnects = IntCounter::new(
            "medhub_ws_slow_disconnects_total",
            "WebSocket clients disconnected because they fell too far behind",
        )?;
        let refused_subscriptions = IntCounterVec::new(
            Opts::new("medhub_ws_refused_subscriptions_total", "Subscriptions refused, by reason"),
            &["reason"],
        )?;
        let gap_fills = IntCounter::new(
            "medhub_ws_gap_fills_total",
            "Times missing events were read back from the event log to keep a stream gap-free",
        )?;
        let live_coalesced = IntCounter::new(
            "medhub_ws_live_updates_coalesced_total",
            "Live-only updates (telemetry) replaced by a newer one about the same subject before a client was sent them",
        )?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(events_sent.clone()))?;
        registry.register(Box::new(slow_disconnects.clone()))?;
        registry.register(Box::new(refused_subscriptions.clone()))?;
        registry.register(Box::new(gap_fills.clone()))?;
        registry.register(Box::new(live_coalesced.clone()))?;
        let backplane = BackplaneMetrics::register(registry)?;
        Ok(RealtimeMetrics { connections, events_sent, slow_disconnects, refused_subscriptions, gap_fills, live_coalesced, backplane })
    }
}
