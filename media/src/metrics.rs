//! Prometheus metrics of the SFU: how many rooms and participants there are, in which
//! connection state their peer connections are, and how much RTP flows in and out. Registered
//! once per `Sfu` in the registry the hub exposes on `/metrics`.

use prometheus::{IntCounter, IntGauge, IntGaugeVec, Opts, Registry};

/// Peer connection states as `medhub_media_peer_states{state}` labels them.
pub(crate) const PEER_STATES: [&str; 6] = [
    "new",
    "connecting",
    "connected",
    "disconnected",
    "failed",
    "closed",
];

#[derive(Clone)]
pub(crate) struct MediaMetrics {
    pub rooms: IntGauge,
    pub participants: IntGauge,
    pub peer_states: IntGaugeVec,
    pub rtp_packets_received: IntCounter,
    pub rtp_bytes_received: IntCounter,
    pub rtp_packets_lost: IntCounter,
    pub rtp_packets_forwarded: IntCounter,
    pub rtp_bytes_forwarded: IntCounter,
    pub offers_sent: IntCounter,
    pub keyframe_requests: IntCounter,
}

impl MediaMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<MediaMetrics> {
        let metrics = MediaMetrics {
            rooms: IntGauge::new(
                "medhub_media_rooms",
                "Consult rooms with at least one participant.",
            )?,
            participants: IntGauge::new(
                "medhub_media_participants",
                "Participants holding a peer connection with the SFU.",
            )?,
            peer_states: IntGaugeVec::new(
                Opts::new(
                    "medhub_media_peer_states",
                    "Participants' peer connections by connection state.",
                ),
                &["state"],
            )?,
            rtp_packets_received: IntCounter::new(
                "medhub_media_rtp_packets_received_total",
                "RTP packets received from participants.",
            )?,
            rtp_bytes_received: IntCounter::new(
                "medhub_media_rtp_bytes_received_total",
                "RTP bytes (header and payload) received from participants.",
            )?,
            rtp_packets_lost: IntCounter::new(
                "medhub_media_rtp_packets_lost_total",
                "RTP packets from participants that never arrived (sequence number gaps).",
            )?,
            rtp_packets_forwarded: IntCounter::new(
                "medhub_media_rtp_packets_forwarded_total",
                "RTP packets forwarded to other participants (one per receiving participant).",
            )?,
            rtp_bytes_forwarded: IntCounter::new(
                "medhub_media_rtp_bytes_forwarded_total",
                "RTP bytes forwarded to other participants.",
            )?,
            offers_sent: IntCounter::new(
                "medhub_media_offers_sent_total",
                "SDP offers the SFU sent (first offers and renegotiations).",
            )?,
            keyframe_requests: IntCounter::new(
                "medhub_media_keyframe_requests_total",
                "Picture loss indications the SFU sent to video senders.",
            )?,
        };
        registry.register(Box::new(metrics.rooms.clone()))?;
        registry.register(Box::new(metrics.participants.clone()))?;
        registry.register(Box::new(metrics.peer_states.clone()))?;
        registry.register(Box::new(metrics.rtp_packets_received.clone()))?;
        registry.register(Box::new(metrics.rtp_bytes_received.clone()))?;
        registry.register(Box::new(metrics.rtp_packets_lost.clone()))?;
        registry.register(Box::new(metrics.rtp_packets_forwarded.clone()))?;
        registry.register(Box::new(metrics.rtp_bytes_forwarded.clone()))?;
        registry.register(Box::new(metrics.offers_sent.clone()))?;
        registry.register(Box::new(metrics.keyframe_requests.clone()))?;
        // Every state shows up from the start, at zero, so dashboards need no special case.
        for state in PEER_STATES {
            metrics.peer_states.with_label_values(&[state]).set(0);
        }
        Ok(metrics)
    }
}
