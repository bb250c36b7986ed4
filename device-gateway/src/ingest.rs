//! From an authorized publish to the hub: decode and validate the payload, hand it to the
//! [`DeviceSink`], count the outcome. Shared by the embedded endpoint and the external-broker
//! client, so both judge a message exactly alike. Also the log throttle that keeps a device
//! sending garbage from flooding the log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;

use medhub_actors::devices::{DeviceIdentity, DeviceSink};
use medhub_actors::ActorError;

use crate::metrics::GatewayMetrics;
use crate::payload::{self, RejectReason, Rejection};
use crate::topics::Telemetry;

/// How long the sink may take over one message before the hub counts it as unavailable.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// What became of one message.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Validated and taken by the hub.
    Taken,
    /// Refused for good (acknowledge it: resending the same bytes cannot help).
    Refused(Rejection),
    /// Valid, but the hub could not take it now (do not acknowledge: let the device resend).
    Unavailable(Rejection),
}

pub(crate) struct Ingest {
    sink: Arc<dyn DeviceSink>,
    metrics: GatewayMetrics,
    max_payload_bytes: usize,
}

impl Ingest {
    pub fn new(sink: Arc<dyn DeviceSink>, metrics: GatewayMetrics, max_payload_bytes: usize) -> Ingest {
        Ingest { sink, metrics, max_payload_bytes }
    }

    pub fn metrics(&self) -> &GatewayMetrics {
        &self.metrics
    }

    pub async fn take(&self, from: &DeviceIdentity, kind: Telemetry, payload: &[u8]) -> Verdict {
        let message = match payload::decode(kind, payload, self.max_payload_bytes, Utc::now()) {
            Ok(message) => message,
            Err(rejection) => return self.refused(rejection),
        };
        match tokio::time::timeout(DELIVERY_TIMEOUT, self.sink.deliver(from.clone(), message)).await {
            Ok(Ok(())) => {
                self.metrics.accepted(kind);
                Verdict::Taken
            }
            Ok(Err(
                error @ (ActorError::Invalid { .. }
                | ActorError::NotFound(_)
                | ActorError::Conflict(_)
                | ActorError::Forbidden(_)
                | ActorError::Taken { .. }),
            )) => self.refused(Rejection::new(RejectReason::RefusedByHub, error.to_string())),
            Ok(Err(error)) => self.unavailable(error.to_string()),
            Err(_) => self.unavailable(format!("the hub did not take the message within {} s", DELIVERY_TIMEOUT.as_secs())),
        }
    }

    fn refused(&self, rejection: Rejection) -> Verdict {
        self.metrics.rejected(rejection.reason);
        Verdict::Refused(rejection)
    }

    fn unavailable(&self, detail: String) -> Verdict {
        self.metrics.rejected(RejectReason::HubUnavailable);
        Verdict::Unavailable(Rejection::new(RejectReason::HubUnavailable, detail))
    }
}

/// Lets a few log lines through per window and counts the rest, so that one device sending
/// thousands of bad messages costs a handful of lines, each saying how many were left out.
pub(crate) struct LogThrottle {
    window: Duration,
    burst: u32,
    window_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl LogThrottle {
    pub fn new(burst: u32, window: Duration) -> LogThrottle {
        LogThrottle { window, burst, window_start: None, logged: 0, suppressed: 0 }
    }

    /// `Some(n)`: log now, mentioning the `n` lines left out before; `None`: stay quiet.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self.window_start.is_none_or(|start| now.duration_since(start) >= self.window) {
            self.window_start = Some(now);
            self.logged = 0;
        }
        if self.logged < self.burst {
            self.logged += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_throttle_lets_a_burst_through_per_window_and_counts_the_rest() {
        let mut throttle = LogThrottle::new(3, Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(throttle.allow(start), Some(0));
        assert_eq!(throttle.allow(start), Some(0));
        assert_eq!(throttle.allow(start), Some(0));
        for _ in 0..97 {
            assert_eq!(throttle.allow(start + Duration::from_secs(1)), None);
        }
        assert_eq!(throttle.allow(start + Duration::from_secs(10)), Some(97));
        assert_eq!(throttle.allow(start + Duration::from_secs(11)), Some(0));
    }
}
