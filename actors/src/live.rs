//! Live updates that are not events: high-rate telemetry (a unit's position several times a
//! second) goes to WebSocket subscribers straight away, without the event log. They carry no
//! sequence number (`seq` 0): a client that misses some gets the next, and a resubscribing client
//! starts from the topic's snapshot, which holds the latest values. An update replaces any update
//! of the same kind about the same subject (a unit) that a client has not been sent yet.

use serde_json::Value;

/// Where actors hand live-only updates (the realtime broker implements it).
pub trait LiveFeed: Send + Sync + 'static {
    fn publish(&self, topic: &str, event_type: &str, subject: &str, data: &Value);
}

/// For tools and tests that run no WebSocket endpoint.
pub struct NoLiveFeed;

impl LiveFeed for NoLiveFeed {
    fn publish(&self, _topic: &str, _event_type: &str, _subject: &str, _data: &Value) {}
}
