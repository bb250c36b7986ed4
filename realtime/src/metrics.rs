//! WebSocket metrics for `/metrics`.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Clone)]
pub struct RealtimeMetrics {
    pub connections: IntGauge,
    pub events_sent: IntCounter,
    pub slow_disconnects: IntCounter,
    pub refused_subscriptions: IntCounterVec,
    pub gap_fills: IntCounter,
    pub live_coalesced: IntCounter,
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
        Ok(RealtimeMetrics { connections, events_sent, slow_disconnects, refused_subscriptions, gap_fills, live_coalesced })
    }
}
