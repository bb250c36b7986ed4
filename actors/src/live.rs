//! Live updates that are not events: high-rate telemetry (a unit's position several times a
//! second) goes to WebSocket subscribers straight away, without the event log. They carry no
//! sequence number (`seq` 0): a client that misses some gets the next, and a resubscribing client
//! starts from the topic's snapshot, which holds the latest values.

use serde_json::Value;

/// Where actors hand live-only updates (the realtime broker implements it).
pub trait LiveFeed: Send + Sync + 'static {
    fn publish(&self, topic: &str, event_type: &str, data: &Value);
}

/// For tools and tests that run no WebSocket endpoint.
pub struct NoLiveFeed;

impl LiveFeed for NoLiveFeed {
    fn publish(&self, _topic: &str, _event_type: &str, _data: &Value) {}
}
