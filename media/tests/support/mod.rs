//! A consult participant for the tests, built like a browser tab: its own `webrtc` peer
//! connection with a microphone and a camera track that send synthetic Opus and VP8 payloads,
//! answering the hub's offers and trading ICE candidates only through the `Sfu` API, on
//! 127.0.0.1 only. It records what it receives (by the sending participant, which the hub puts
//! in the stream id), the keyframe requests its camera gets, and every signaling error.

#![allow(dead_code)] // each test file uses its own part of the helper

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use medhub_media::{MediaConfig, Sfu, SignalIn};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::{MediaEngine, MIME_TYPE_OPUS, MIME_TYPE_VP8};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::APIBuilder;
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice::network_type::NetworkType;
use webrtc::ice_transport::ice_candidate::RTCIceCandidateInit;
use webrtc::interceptor::registry::Registry as InterceptorRegistry;
use webrtc::media::Sample;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::signaling_state::RTCSignalingState;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::rtp_transceiver::rtp_codec::RTCRtpCodecCapability;
use webrtc::track::track_local::track_local_static_sample::TrackLocalStaticSample;
use webrtc::track::track_local::TrackLocal;

pub fn loopback_only(ip: IpAddr) -> bool {
    ip.is_loopback() && ip.is_ipv4()
}

/// The SFU as the hub builds it, gathering candidates on 127.0.0.1 only.
pub fn loopback_sfu(registry: &prometheus::Registry) -> anyhow::Result<Sfu> {
    let config = MediaConfig {
        udp_ports: None,
        public_ips: Vec::new(),
        include_loopback: true,
    };
    Ok(Sfu::with_ip_filter(config, registry, loopback_only)?)
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// Polls `check` until it holds; generous timeouts, no assertion on speed.
pub async fn eventually(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One incoming stream as the client sees it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The hub sets the stream id to the sending participant's id.
    pub stream_id: String,
    pub kind: String,
    pub packets: u64,
}

#[derive(Debug, Default)]
pub struct SignalingLog {
    pub offers_answered: usize,
    pub hub_states: Vec<String>,
    pub errors: Vec<String>,
    pub signals_ended: bool,
}

pub struct Client {
    pub id: Uuid,
    pub pc: Arc<RTCPeerConnection>,
    pub video_ssrc: u32,
    received: Arc<Mutex<HashMap<u32, Received>>>,
    keyframe_requests: Arc<Mutex<Vec<u32>>>,
    log: Arc<Mutex<SignalingLog>>,
    state: watch::Receiver<RTCPeerConnectionState>,
    leave: Option<oneshot::Sender<()>>,
    driver: Option<JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Client {
    /// Builds the client's peer connection and joins `room` through the SFU.
    pub async fn join(sfu: &Sfu, room: Uuid) -> anyhow::Result<Client> {
        let id = Uuid::new_v4();
        let mut media_engine = MediaEngine::default();
        media_engine.register_default_codecs()?;
        let interceptors =
            register_default_interceptors(InterceptorRegistry::new(), &mut media_engine)?;
        let mut settings = SettingEngine::default();
        settings.set_include_loopback_candidate(true);
        settings.set_ip_filter(Box::new(loopback_only));
        settings.set_network_types(vec![NetworkType::Udp4]);
        settings.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
        // A browser notices a vanished peer within seconds; so should the tests.
        settings.set_ice_timeouts(
            Some(Duration::from_secs(4)),
            Some(Duration::from_secs(4)),
            Some(Duration::from_millis(500)),
        );
        let api = APIBuilder::new()
            .with_media_engine(media_engine)
            .with_interceptor_registry(interceptors)
            .with_setting_engine(settings)
            .build();
        let pc = Arc::new(api.new_peer_connection(RTCConfiguration::default()).await?);

        // Like getUserMedia + addTrack before answering: the answer then sends these on the
        // hub's receive-only transceivers.
        let stream = format!("camera-of-{id}");
        let microphone = Arc::new(TrackLocalStaticSample::new(
            RTCRtpCodecCapability {
                mime_type: MIME_TYPE_OPUS.to_owned(),
                clock_rate: 48_000,
                channels: 2,
                ..Default::default()
            },
            "microphone".to_owned(),
            stream.clone(),
        ));
        let camera = Arc::new(TrackLocalStaticSample::new(
            RTCRtpCodecCapability {
                mime_type: MIME_TYPE_VP8.to_owned(),
                clock_rate: 90_000,
                ..Default::default()
            },
            "camera".to_owned(),
            stream,
        ));
        let microphone_sender = pc
            .add_track(Arc::clone(&microphone) as Arc<dyn TrackLocal + Send + Sync>)
            .await?;
        let camera_sender = pc
            .add_track(Arc::clone(&camera) as Arc<dyn TrackLocal + Send + Sync>)
            .await?;
        let video_ssrc = camera_sender
            .get_parameters()
            .await
            .encodings
            .first()
            .map(|encoding| encoding.ssrc)
            .context("the camera sender has no encoding")?;

        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(async move {
            while microphone_sender.read_rtcp().await.is_ok() {}
        }));
        let keyframe_requests = Arc::new(Mutex::new(Vec::new()));
        {
            let keyframe_requests = Arc::clone(&keyframe_requests);
            tasks.push(tokio::spawn(async move {
                while let Ok((packets, _)) = camera_sender.read_rtcp().await {
                    for packet in packets {
                        if let Some(pli) = packet.as_any().downcast_ref::<PictureLossIndication>() {
                            keyframe_requests.lock().unwrap().push(pli.media_ssrc);
                        }
                    }
                }
            }));
        }

        let received = Arc::new(Mutex::new(HashMap::<u32, Received>::new()));
        {
            let received = Arc::clone(&received);
            pc.on_track(Box::new(move |track, _receiver, _transceiver| {
                let received = Arc::clone(&received);
                tokio::spawn(async move {
                    let ssrc = track.ssrc();
                    received.lock().unwrap().insert(
                        ssrc,
                        Received {
                            stream_id: track.stream_id(),
                            kind: track.kind().to_string(),
                            packets: 0,
                        },
                    );
                    while track.read_rtp().await.is_ok() {
                        if let Some(stream) = received.lock().unwrap().get_mut(&ssrc) {
                            stream.packets += 1;
                        }
                    }
                });
                Box::pin(async {})
            }));
        }

        let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
        pc.on_peer_connection_state_change(Box::new(move |new_state| {
            let _ = state_tx.send(new_state);
            Box::pin(async {})
        }));
        let (candidates_tx, mut candidates_rx) = mpsc::unbounded_channel::<serde_json::Value>();
        pc.on_ice_candidate(Box::new(move |candidate| {
            if let Some(json) = candidate
                .and_then(|candidate| candidate.to_json().ok())
                .and_then(|init| serde_json::to_value(init).ok())
            {
                let _ = candidates_tx.send(json);
            }
            Box::pin(async {})
        }));

        // 50 audio frames and 25 video frames a second, like a small camera.
        tasks.push(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(20));
            for frame in 0u64.. {
                ticks.tick().await;
                let audio = Sample {
                    data: Bytes::from(vec![0xF8; 80]),
                    duration: Duration::from_millis(20),
                    ..Default::default()
                };
                if microphone.write_sample(&audio).await.is_err() {
                    return;
                }
                if frame % 2 == 0 {
                    let video = Sample {
                        data: Bytes::from(vec![0x90; 900]),
                        duration: Duration::from_millis(40),
                        ..Default::default()
                    };
                    if camera.write_sample(&video).await.is_err() {
                        return;
                    }
                }
            }
        }));

        let (peer, mut signals) = sfu.join(room, id).await?;
        assert_eq!(peer.participant(), id);
        let log = Arc::new(Mutex::new(SignalingLog::default()));
        let (leave, mut leave_rx) = oneshot::channel::<()>();
        let driver = {
            let pc = Arc::clone(&pc);
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut peer = Some(peer);
                let mut leaving = false;
                loop {
                    tokio::select! {
                        message = signals.recv() => {
                            let Some(message) = message else { break };
                            // Over the wire as the consult WebSocket carries it.
                            let wire = serde_json::to_string(&message).expect("signals serialise");
                            let message: serde_json::Value = serde_json::from_str(&wire).expect("signals are JSON");
                            if let Err(error) = handle_hub_signal(&pc, peer.as_ref(), &log, message).await {
                                log.lock().unwrap().errors.push(format!("{error:#}"));
                            }
                        }
                        Some(candidate) = candidates_rx.recv() => {
                            let Some(peer) = peer.as_ref() else { continue };
                            let wire = serde_json::to_string(&SignalIn::Candidate { candidate }).expect("candidates serialise");
                            let message: SignalIn = serde_json::from_str(&wire).expect("candidates deserialise");
                            if let Err(error) = peer.signal(message).await {
                                log.lock().unwrap().errors.push(format!("sending a candidate: {error}"));
                            }
                        }
                        _ = &mut leave_rx, if !leaving => {
                            leaving = true;
                            if let Some(peer) = peer.take() {
                                peer.leave().await;
                            }
                        }
                    }
                }
                log.lock().unwrap().signals_ended = true;
            })
        };

        Ok(Client {
            id,
            pc,
            video_ssrc,
            received,
            keyframe_requests,
            log,
            state,
            leave: Some(leave),
            driver: Some(driver),
            tasks,
        })
    }

    /// Packets received so far from `participant`'s tracks of `kind` ("audio" or "video").
    pub fn packets_from(&self, participant: Uuid, kind: &str) -> u64 {
        let stream_id = participant.to_string();
        self.received
            .lock()
            .unwrap()
            .values()
            .filter(|stream| stream.stream_id == stream_id && stream.kind == kind)
            .map(|stream| stream.packets)
            .sum()
    }

    /// Packets received so far on the given SSRCs.
    pub fn packets_on(&self, ssrcs: &[u32]) -> u64 {
        let received = self.received.lock().unwrap();
        ssrcs
            .iter()
            .filter_map(|ssrc| received.get(ssrc))
            .map(|stream| stream.packets)
            .sum()
    }

    /// The SSRCs on which `participant`'s media reached this client.
    pub fn ssrcs_of(&self, participant: Uuid) -> Vec<u32> {
        let stream_id = participant.to_string();
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, stream)| stream.stream_id == stream_id)
            .map(|(ssrc, _)| *ssrc)
            .collect()
    }

    /// Whether audio and video of each of `others` are arriving (at least a few packets each).
    pub fn receives_everyone_of(&self, others: &[&Client]) -> bool {
        others
            .iter()
            .filter(|other| other.id != self.id)
            .all(|other| {
                self.packets_from(other.id, "audio") >= 10
                    && self.packets_from(other.id, "video") >= 10
            })
    }

    pub fn keyframe_requests(&self) -> Vec<u32> {
        self.keyframe_requests.lock().unwrap().clone()
    }

    pub fn offers_answered(&self) -> usize {
        self.log.lock().unwrap().offers_answered
    }

    pub fn hub_states(&self) -> Vec<String> {
        self.log.lock().unwrap().hub_states.clone()
    }

    pub fn errors(&self) -> Vec<String> {
        self.log.lock().unwrap().errors.clone()
    }

    pub fn signals_ended(&self) -> bool {
        self.log.lock().unwrap().signals_ended
    }

    pub fn state(&self) -> RTCPeerConnectionState {
        *self.state.borrow()
    }

    pub fn is_stable(&self) -> bool {
        self.pc.signaling_state() == RTCSignalingState::Stable
    }

    /// Leaves through `Peer::leave` and waits until the hub has ended this client's signals.
    pub async fn leave(&mut self) -> anyhow::Result<()> {
        if let Some(leave) = self.leave.take() {
            let _ = leave.send(());
        }
        if let Some(driver) = self.driver.take() {
            tokio::time::timeout(Duration::from_secs(15), driver)
                .await
                .context("the hub did not end the signals of a participant who left")??;
        }
        Ok(())
    }

    /// Closes the client's own peer connection (a closed tab).
    pub async fn close(mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        if let Some(driver) = self.driver.take() {
            driver.abort();
        }
        let _ = self.pc.close().await;
    }
}

async fn handle_hub_signal(
    pc: &RTCPeerConnection,
    peer: Option<&medhub_media::Peer>,
    log: &Mutex<SignalingLog>,
    message: serde_json::Value,
) -> anyhow::Result<()> {
    match message["kind"].as_str() {
        Some("offer") => {
            let sdp = message["sdp"]
                .as_str()
                .context("offer without sdp")?
                .to_owned();
            pc.set_remote_description(RTCSessionDescription::offer(sdp)?)
                .await
                .context("applying the hub's offer")?;
            let answer = pc
                .create_answer(None)
                .await
                .context("creating the answer")?;
            pc.set_local_description(answer.clone())
                .await
                .context("applying the own answer")?;
            let Some(peer) = peer else { return Ok(()) };
            peer.signal(SignalIn::Answer { sdp: answer.sdp })
                .await
                .context("sending the answer")?;
            log.lock().unwrap().offers_answered += 1;
        }
        Some("candidate") => {
            let candidate: RTCIceCandidateInit =
                serde_json::from_value(message["candidate"].clone())
                    .context("the hub's candidate is not RTCIceCandidateInit JSON")?;
            pc.add_ice_candidate(candidate)
                .await
                .context("adding the hub's candidate")?;
        }
        Some("state") => {
            let state = message["state"]
                .as_str()
                .context("state without state")?
                .to_owned();
            log.lock().unwrap().hub_states.push(state);
        }
        other => bail!("unknown signal kind {other:?}"),
    }
    Ok(())
}

/// The value of a metric as `/metrics` shows it (summed over the label sets that carry `label`).
pub fn metric_value(
    registry: &prometheus::Registry,
    name: &str,
    label: Option<(&str, &str)>,
) -> f64 {
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .expect("metrics encode as text");
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(series, _)| {
            let metric = series.split('{').next().unwrap_or_default();
            metric == name
                && label.is_none_or(|(key, value)| series.contains(&format!("{key}=\"{value}\"")))
        })
        .filter_map(|(_, value)| value.parse::<f64>().ok())
        .sum()
}
