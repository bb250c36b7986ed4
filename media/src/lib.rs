//! medhub's selective forwarding unit (SFU) for video consults.
//!
//! Every participant of a consult holds one WebRTC peer connection with the hub; the SFU
//! forwards each participant's audio and video RTP, untouched but for SSRC and payload type,
//! to every other participant of the same room. The hub is always the offerer, so there is no
//! glare: on [`Sfu::join`] it offers receive-only audio and video (for the participant's
//! microphone and camera) plus one send-only track per track the others already publish; when
//! a track appears or leaves, every affected participant gets a new offer, one outstanding at a
//! time. A participant who starts receiving video makes the SFU ask that video's sender for a
//! keyframe (RTCP PLI), so the picture starts at once instead of at the next periodic keyframe.
//!
//! Signaling travels as [`SignalOut`] (hub → participant) and [`SignalIn`] (participant → hub)
//! values, serialised as the JSON the consult WebSocket carries; the transport is not this
//! crate's business. Built on the `webrtc` crate's classic async API (0.14).

mod metrics;
mod room;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tracing::Instrument;
use uuid::Uuid;
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::MediaEngine;
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::{APIBuilder, API};
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice::udp_network::{EphemeralUDP, UDPNetwork};
use webrtc::ice_transport::ice_candidate_type::RTCIceCandidateType;
use webrtc::interceptor::registry::Registry as InterceptorRegistry;

use crate::metrics::MediaMetrics;
use crate::room::Participant;

/// Network settings of the SFU's ICE agent.
#[derive(Debug, Clone, Default)]
pub struct MediaConfig {
    /// UDP port range for ICE (None: ephemeral ports).
    pub udp_ports: Option<(u16, u16)>,
    /// Addresses to announce in candidates instead of the host's (NAT 1:1); empty: the host's own.
    pub public_ips: Vec<String>,
    /// Gather candidates on loopback interfaces too (off in production; the tests run on
    /// 127.0.0.1 only, see [`Sfu::with_ip_filter`] to gather there and nowhere else).
    pub include_loopback: bool,
}

/// The SFU: rooms of participants whose media it forwards to each other. Cheap to clone.
#[derive(Clone)]
pub struct Sfu {
    inner: Arc<SfuInner>,
}

pub(crate) struct SfuInner {
    api: API,
    /// room → participant → its state. One lock for both levels, so a room is created and
    /// removed together with its first and last participant.
    rooms: Mutex<HashMap<Uuid, HashMap<Uuid, Arc<Participant>>>>,
    metrics: MediaMetrics,
}

impl Sfu {
    /// Builds the SFU and registers its metrics in `registry` (once per registry).
    pub fn new(config: MediaConfig, registry: &prometheus::Registry) -> Result<Sfu, MediaError> {
        Sfu::build(config, registry, None)
    }

    /// As [`Sfu::new`], gathering ICE candidates only on the addresses `keep` accepts, e.g.
    /// `|ip| ip.is_loopback()` (with `include_loopback`) for tests that must stay on this machine.
    pub fn with_ip_filter(
        config: MediaConfig,
        registry: &prometheus::Registry,
        keep: impl Fn(IpAddr) -> bool + Send + Sync + 'static,
    ) -> Result<Sfu, MediaError> {
        Sfu::build(config, registry, Some(Box::new(keep)))
    }

    fn build(
        config: MediaConfig,
        registry: &prometheus::Registry,
        ip_filter: Option<Box<dyn Fn(IpAddr) -> bool + Send + Sync>>,
    ) -> Result<Sfu, MediaError> {
        let mut media_engine = MediaEngine::default();
        media_engine
            .register_default_codecs()
            .map_err(webrtc_error("registering the default codecs"))?;
        // NACK generation and answering, sender and receiver reports, transport-wide congestion
        // control feedback towards the senders: what browsers expect from a media server.
        let interceptors =
            register_default_interceptors(InterceptorRegistry::new(), &mut media_engine)
                .map_err(webrtc_error("registering the default interceptors"))?;

        let mut settings = SettingEngine::default();
        if let Some((min, max)) = config.udp_ports {
            let ports = EphemeralUDP::new(min, max).map_err(|error| {
                MediaError::Config(format!(
                    "udp_ports {min}..{max} is not a usable port range ({error}): give min <= max, both non-zero"
                ))
            })?;
            settings.set_udp_network(UDPNetwork::Ephemeral(ports));
        }
        if !config.public_ips.is_empty() {
            for ip in &config.public_ips {
                if ip.parse::<IpAddr>().is_err() {
                    return Err(MediaError::Config(format!(
                        "public_ips entry {ip:?} is not an IP address: give addresses such as 203.0.113.7, not host names"
                    )));
                }
            }
            settings.set_nat_1to1_ips(config.public_ips.clone(), RTCIceCandidateType::Host);
        }
        settings.set_include_loopback_candidate(config.include_loopback);
        // A server neither publishes .local names nor can resolve a browser's beyond its own
        // link; connectivity checks from the browser reach it as peer-reflexive candidates.
        settings.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
        if let Some(keep) = ip_filter {
            settings.set_ip_filter(keep);
        }

        let api = APIBuilder::new()
            .with_media_engine(media_engine)
            .with_interceptor_registry(interceptors)
            .with_setting_engine(settings)
            .build();
        let metrics = MediaMetrics::register(registry)?;
        Ok(Sfu {
            inner: Arc::new(SfuInner {
                api,
                rooms: Mutex::new(HashMap::new()),
                metrics,
            }),
        })
    }

    /// Adds a participant to a room (created on first join). The hub sends the first offer:
    /// the returned receiver yields [`SignalOut::Offer`] right away; the client answers through
    /// [`Peer::signal`]. The receiver ends after the peer connection has closed.
    pub async fn join(
        &self,
        room: Uuid,
        participant: Uuid,
    ) -> Result<(Peer, tokio::sync::mpsc::Receiver<SignalOut>), MediaError> {
        let span = tracing::info_span!("media_peer", %room, %participant);
        let (joined, signals) = room::join(&self.inner, room, participant, span.clone())
            .instrument(span)
            .await?;
        Ok((
            Peer {
                participant: joined,
            },
            signals,
        ))
    }

    /// Closes every peer connection of the room; its participants' signal receivers end after a
    /// last [`SignalOut::State`] `closed`.
    pub async fn close_room(&self, room: Uuid) {
        let members = self
            .inner
            .rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&room);
        let Some(members) = members else { return };
        self.inner.metrics.rooms.dec();
        tracing::info!(%room, participants = members.len(), "closing consult room");
        let members: Vec<Arc<Participant>> = members.into_values().collect();
        // Everyone is marked gone first, so nobody is renegotiated for a departure that is
        // about to close their own connection anyway.
        let leaving: Vec<Arc<Participant>> = members
            .into_iter()
            .filter(|participant| participant.mark_left(false))
            .collect();
        for participant in leaving {
            participant.teardown().await;
        }
    }

    /// Statistics of every participant currently in the room, in joining order.
    pub fn room_stats(&self, room: Uuid) -> Vec<ParticipantStats> {
        let members: Vec<Arc<Participant>> = self
            .inner
            .rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&room)
            .map(|members| members.values().cloned().collect())
            .unwrap_or_default();
        let mut members = members;
        members.sort_by_key(|participant| participant.joined_order());
        members
            .iter()
            .map(|participant| participant.stats())
            .collect()
    }
}

/// One participant's peer connection with the hub. Dropping it or calling [`Peer::leave`]
/// removes the participant: the others stop receiving its media and are renegotiated.
pub struct Peer {
    participant: Arc<Participant>,
}

impl Peer {
    pub fn participant(&self) -> Uuid {
        self.participant.id()
    }

    /// Applies a message from the participant: the answer to the hub's latest offer, or one of
    /// its ICE candidates (any time; candidates before the first answer wait for it).
    pub async fn signal(&self, message: SignalIn) -> Result<(), MediaError> {
        let participant = Arc::clone(&self.participant);
        let span = participant.span().clone();
        async move {
            match message {
                SignalIn::Answer { sdp } => participant.apply_answer(sdp).await,
                SignalIn::Candidate { candidate } => {
                    participant.add_remote_candidate(candidate).await
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Removes the participant and closes its peer connection.
    pub async fn leave(self) {
        if self.participant.mark_left(true) {
            let span = self.participant.span().clone();
            self.participant.teardown().instrument(span).await;
        }
    }

    pub fn stats(&self) -> ParticipantStats {
        self.participant.stats()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if !self.participant.mark_left(true) {
            return;
        }
        let participant = Arc::clone(&self.participant);
        let span = participant.span().clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move { participant.teardown().await }.instrument(span));
            }
            Err(_) => tracing::warn!(
                parent: &span,
                "peer dropped outside a tokio runtime: its connection closes when its last task ends"
            ),
        }
    }
}

/// A signaling message from the participant to the hub.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SignalIn {
    /// The participant's answer to the hub's latest offer.
    Answer { sdp: String },
    /// An ICE candidate: RTCIceCandidateInit JSON as browsers send it
    /// (`{candidate, sdpMid, sdpMLineIndex, usernameFragment}`); `null` or an empty candidate
    /// (end of candidates) is accepted and ignored.
    Candidate { candidate: serde_json::Value },
}

/// A signaling message from the hub to the participant.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SignalOut {
    /// An offer to answer (the first one right after joining, then one per renegotiation).
    Offer { sdp: String },
    /// One of the hub's ICE candidates, as RTCIceCandidateInit JSON.
    Candidate { candidate: serde_json::Value },
    /// The hub's peer connection state: new, connecting, connected, disconnected, failed or closed.
    State { state: String },
}

/// What the SFU knows of one participant's media.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ParticipantStats {
    pub participant: Uuid,
    /// new, connecting, connected, disconnected, failed or closed.
    pub state: String,
    /// RTP packets received from the participant.
    pub packets_received: u64,
    /// RTP packets forwarded to the participant (others' media).
    pub packets_sent: u64,
    /// RTP bytes (header and payload) received from the participant.
    pub bytes_received: u64,
    /// Incoming bitrate over the last second or so; 0 when nothing arrived lately.
    pub bitrate_in_bps: u64,
    /// Packets from the participant that never arrived (gaps in RTP sequence numbers).
    pub packets_lost: u64,
    /// Tracks the participant sends (its microphone and camera).
    pub tracks_in: usize,
    /// Tracks the hub forwards to the participant.
    pub tracks_out: usize,
}

/// What went wrong in the SFU, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("invalid media configuration: {0}")]
    Config(String),
    #[error(
        "could not register the media metrics ({0}): give each Sfu its own prometheus Registry"
    )]
    Metrics(#[from] prometheus::Error),
    #[error("participant {participant} is already in room {room}: leave with its Peer before joining again")]
    AlreadyJoined { room: Uuid, participant: Uuid },
    #[error("an answer arrived while no offer of the hub was outstanding: answer each offer once, in order")]
    UnexpectedAnswer,
    #[error("the ICE candidate is not RTCIceCandidateInit JSON ({0}): send {{candidate, sdpMid, sdpMLineIndex}} as the browser's icecandidate event gives it")]
    InvalidCandidate(serde_json::Error),
    #[error("the peer connection is closed (the participant left, the room was closed or the connection failed): join the room again")]
    Closed,
    #[error("{action} failed: {source}")]
    WebRtc {
        /// What the SFU was doing, and where relevant what the participant should send instead.
        action: &'static str,
        #[source]
        source: webrtc::Error,
    },
}

pub(crate) fn webrtc_error(action: &'static str) -> impl Fn(webrtc::Error) -> MediaError {
    move |source| MediaError::WebRtc { action, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn handles_can_live_in_actors_and_tasks() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Sfu>();
        assert_send_sync::<Peer>();
        assert_send_sync::<MediaError>();
    }

    /// The hub drives these from actors and spawned tasks: their futures must be `Send`.
    #[allow(dead_code, unused_must_use)]
    fn public_futures_are_send(sfu: Sfu, peer: Peer) {
        assert_send(&sfu.join(Uuid::nil(), Uuid::nil()));
        assert_send(&sfu.close_room(Uuid::nil()));
        assert_send(&peer.signal(SignalIn::Answer { sdp: String::new() }));
        assert_send(&peer.leave());
    }

    #[test]
    fn a_second_sfu_in_the_same_registry_is_refused_with_advice() {
        let registry = prometheus::Registry::new();
        let _first = Sfu::new(MediaConfig::default(), &registry).expect("the first registers");
        let error = Sfu::new(MediaConfig::default(), &registry)
            .err()
            .expect("the second is refused");
        assert!(
            error.to_string().contains("its own prometheus Registry"),
            "{error}"
        );
    }

    #[test]
    fn bad_configuration_says_what_to_give() {
        let registry = prometheus::Registry::new();
        let config = MediaConfig {
            public_ips: vec!["hub.example".into()],
            ..MediaConfig::default()
        };
        let error = Sfu::new(config, &registry)
            .err()
            .expect("a host name is refused");
        assert!(error.to_string().contains("not an IP address"), "{error}");
        let config = MediaConfig {
            udp_ports: Some((50_010, 50_000)),
            ..MediaConfig::default()
        };
        let error = Sfu::new(config, &prometheus::Registry::new())
            .err()
            .expect("a reversed range is refused");
        assert!(error.to_string().contains("udp_ports"), "{error}");
    }

    #[test]
    fn signals_are_the_json_the_consult_socket_carries() {
        let offer = serde_json::to_value(SignalOut::Offer { sdp: "v=0".into() }).unwrap();
        assert_eq!(offer, serde_json::json!({"kind": "offer", "sdp": "v=0"}));
        let state = serde_json::to_value(SignalOut::State {
            state: "connected".into(),
        })
        .unwrap();
        assert_eq!(
            state,
            serde_json::json!({"kind": "state", "state": "connected"})
        );
        let candidate: SignalIn = serde_json::from_value(serde_json::json!({
            "kind": "candidate",
            "candidate": {"candidate": "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host", "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": null}
        }))
        .unwrap();
        assert!(matches!(candidate, SignalIn::Candidate { .. }));
        let answer: SignalIn =
            serde_json::from_value(serde_json::json!({"kind": "answer", "sdp": "v=0"})).unwrap();
        assert!(matches!(answer, SignalIn::Answer { sdp } if sdp == "v=0"));
    }
}
