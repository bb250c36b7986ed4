//! Video consults as a doctor, their patient and an interpreter live them: each joins the consult
//! of a video appointment over the hub's WebSocket with a real WebRTC peer (the `webrtc` crate, on
//! loopback) and sees and hears the others through the hub; someone who is not in the consult is
//! turned away at signaling; the chat outlives a hub restart and is in the audit trail; ending the
//! consult files the record, completes the appointment and hangs up everyone.
//!
//! Every participant's RTP payload carries their user id, so a receiver can tell whose audio and
//! video reached it.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use common::{around_the_clock, email, metric, spawn_hub_with, Api, Hub, HubOptions, Live, World, PASSWORD};
use futures_util::{SinkExt, StreamExt};
use medhub_actors::Role;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::{MediaEngine, MIME_TYPE_OPUS, MIME_TYPE_VP8};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::APIBuilder;
use webrtc::ice::network_type::NetworkType;
use webrtc::ice_transport::ice_candidate::{RTCIceCandidate, RTCIceCandidateInit};
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtp_transceiver::rtp_codec::{RTCRtpCodecCapability, RTPCodecType};
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_local::TrackLocalWriter;

/// Tomorrow at `hour`:00 UTC.
fn tomorrow_at(hour: u32) -> DateTime<Utc> {
    let day = (Utc::now() + chrono::Duration::days(1)).date_naive();
    Utc.from_utc_datetime(&day.and_hms_opt(hour, 0, 0).unwrap())
}

fn id(value: &Value) -> Uuid {
    value.as_str().and_then(|text| text.parse().ok()).unwrap_or_else(|| panic!("not an id: {value}"))
}

/// A hub with a doctor, their patient (who can log in) and a video appointment whose consult the
/// doctor has opened.
struct Consultation {
    world: World,
    doctor: Api,
    patient: Api,
    doctor_user: Uuid,
    patient_user: Uuid,
    patient_id: Uuid,
    appointment: Uuid,
    session: Uuid,
    topic: String,
}

async fn consultation() -> Consultation {
    let world = World::start(1).await;
    let doctor_user = world.db.user_id(&email(&world.tenant.slug, Role::Doctor)).await;
    let doctor_id = world.admin.register_doctor(doctor_user, world.facility.id, 30, around_the_clock()).await;
    let patient_id = world.db.patients(&world.tenant, 1).await[0];
    let patient_user = world.db.link_patient_user(&world.tenant, patient_id).await;
    let booked = world
        .nurse
        .post("/api/appointments", json!({"doctor_id": doctor_id, "patient_id": patient_id, "start": tomorrow_at(10),
                                          "kind": "video", "reason": "cough for three weeks"}))
        .await
        .unwrap()
        .expect(201);
    let appointment = id(&booked["appointment"]["id"]);
    let doctor = world.hub.login(&world.tenant, Role::Doctor).await;
    let patient = world.hub.login(&world.tenant, Role::Patient).await;
    let opened = doctor.post(&format!("/api/appointments/{appointment}/consult"), json!({})).await.unwrap().expect(201);
    assert_eq!(opened["state"], "waiting");
    let session = id(&opened["id"]);
    let topic = format!("tenant/{}/consult/{session}", world.tenant.slug);
    assert_eq!(opened["topic"], topic.as_str());
    Consultation { world, doctor, patient, doctor_user, patient_user, patient_id, appointment, session, topic }
}

// ---------------------------------------------------------------------------------------------
// A participant's device: a WebSocket for signaling and a WebRTC peer for media

/// Audio and video packets received, by whose user id their payload carried.
type Received = Arc<Mutex<HashMap<(Uuid, &'static str), u64>>>;

fn kind_name(kind: RTPCodecType) -> &'static str {
    match kind {
        RTPCodecType::Audio => "audio",
        RTPCodecType::Video => "video",
        _ => "other",
    }
}

struct MediaClient {
    name: &'static str,
    topic: String,
    peer: Arc<RTCPeerConnection>,
    outgoing: mpsc::UnboundedSender<Value>,
    /// Everything but `signal`: joined, left, errors, subscriptions and events.
    messages: mpsc::UnboundedReceiver<Value>,
    /// `signal {kind: state}` messages the hub sent.
    signal_states: Arc<Mutex<Vec<String>>>,
    received: Received,
    peer_state: watch::Receiver<RTCPeerConnectionState>,
    tasks: Vec<JoinHandle<()>>,
}

/// Bytes that make a (fake) VP8 key frame start, so that a forwarder looking for key frames finds
/// them: payload descriptor (S=1), frame tag with P=0, the start code and a 640x480 size.
const VP8_KEY_FRAME: [u8; 11] = [0x10, 0x50, 0x05, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01];

impl MediaClient {
    /// Connects `api`'s user to the hub's WebSocket with a WebRTC peer that sends audio and video
    /// (marked with their user id) and counts what it receives from each of `others`.
    async fn connect(hub: &Hub, api: &Api, name: &'static str, topic: &str, others: &[Uuid]) -> MediaClient {
        let user_id = id(&api.user["id"]);
        let (socket, _) = tokio_tungstenite::connect_async(hub.ws_url.as_str()).await.expect("websocket connects");
        let (mut sink, mut stream) = socket.split();

        let mut media = MediaEngine::default();
        media.register_default_codecs().unwrap();
        let registry = register_default_interceptors(Registry::new(), &mut media).unwrap();
        let mut settings = SettingEngine::default();
        settings.set_include_loopback_candidate(true);
        settings.set_network_types(vec![NetworkType::Udp4]);
        let api_rtc = APIBuilder::new().with_media_engine(media).with_interceptor_registry(registry).with_setting_engine(settings).build();
        let peer = Arc::new(api_rtc.new_peer_connection(RTCConfiguration::default()).await.unwrap());

        let (outgoing, mut to_send) = mpsc::unbounded_channel::<Value>();
        let (deliver, messages) = mpsc::unbounded_channel::<Value>();
        let (state_tx, peer_state) = watch::channel(RTCPeerConnectionState::New);
        let received: Received = Arc::default();
        let signal_states: Arc<Mutex<Vec<String>>> = Arc::default();
        let mut tasks = Vec::new();

        tasks.push(tokio::spawn(async move {
            while let Some(message) = to_send.recv().await {
                if sink.send(Message::text(message.to_string())).await.is_err() {
                    return;
                }
            }
            let _ = sink.close().await;
        }));

        peer.on_peer_connection_state_change(Box::new(move |state| {
            let _ = state_tx.send(state);
            Box::pin(async {})
        }));
        {
            let (outgoing, topic) = (outgoing.clone(), topic.to_owned());
            peer.on_ice_candidate(Box::new(move |candidate: Option<RTCIceCandidate>| {
                if let Some(init) = candidate.and_then(|c| c.to_json().ok()) {
                    let _ = outgoing.send(json!({"type": "signal", "topic": topic, "kind": "candidate", "candidate": init}));
                }
                Box::pin(async {})
            }));
        }
        {
            let (received, others) = (received.clone(), others.to_vec());
            peer.on_track(Box::new(move |track, _receiver, _transceiver| {
                let (received, others) = (received.clone(), others.clone());
                tokio::spawn(async move {
                    let kind = track.kind();
                    while let Ok((packet, _)) = track.read_rtp().await {
                        let payload = &packet.payload[..];
                        let sender = others.iter().find(|other| payload.windows(16).any(|window| window == other.as_bytes()));
                        if let Some(sender) = sender {
                            *received.lock().unwrap().entry((*sender, kind_name(kind))).or_default() += 1;
                        }
                    }
                });
                Box::pin(async {})
            }));
        }

        // Camera and microphone: 50 packets a second each, marked with who sends them.
        let video = Arc::new(TrackLocalStaticRTP::new(
            RTCRtpCodecCapability { mime_type: MIME_TYPE_VP8.to_owned(), ..Default::default() },
            format!("video-{name}"),
            format!("stream-{name}"),
        ));
        let audio = Arc::new(TrackLocalStaticRTP::new(
            RTCRtpCodecCapability { mime_type: MIME_TYPE_OPUS.to_owned(), ..Default::default() },
            format!("audio-{name}"),
            format!("stream-{name}"),
        ));
        for track in [video.clone(), audio.clone()] {
            let sender = peer.add_track(track).await.unwrap();
            tasks.push(tokio::spawn(async move {
                let mut buffer = vec![0u8; 1500];
                while sender.read(&mut buffer).await.is_ok() {}
            }));
        }
        tasks.push(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_millis(20));
            for n in 0u32.. {
                ticker.tick().await;
                let mut video_payload = VP8_KEY_FRAME.to_vec();
                video_payload.extend_from_slice(user_id.as_bytes());
                video_payload.resize(200, 0);
                let mut audio_payload = user_id.as_bytes().to_vec();
                audio_payload.resize(60, 0);
                for (track, payload, step) in [(&video, video_payload, 1800u32), (&audio, audio_payload, 960)] {
                    let packet = webrtc::rtp::packet::Packet {
                        header: webrtc::rtp::header::Header {
                            version: 2,
                            marker: true,
                            sequence_number: n as u16,
                            timestamp: n.wrapping_mul(step),
                            ..Default::default()
                        },
                        payload: Bytes::from(payload),
                    };
                    let _ = track.write_rtp(&packet).await;
                }
            }
        }));

        // The hub's messages: offers are answered, candidates added, the rest handed to the test.
        {
            let (peer, outgoing, topic, signal_states) = (peer.clone(), outgoing.clone(), topic.to_owned(), signal_states.clone());
            tasks.push(tokio::spawn(async move {
                let mut pending: Vec<RTCIceCandidateInit> = Vec::new();
                while let Some(Ok(frame)) = stream.next().await {
                    let Message::Text(text) = frame else { continue };
                    let message: Value = serde_json::from_str(text.as_str()).expect("the hub sends JSON");
                    if message["type"] != "signal" {
                        let _ = deliver.send(message);
                        continue;
                    }
                    match message["kind"].as_str() {
                        Some("offer") => {
                            let offer = RTCSessionDescription::offer(message["sdp"].as_str().expect("offer sdp").to_owned()).unwrap();
                            peer.set_remote_description(offer).await.expect("the hub's offer is acceptable");
                            let answer = peer.create_answer(None).await.expect("answer");
                            peer.set_local_description(answer.clone()).await.expect("local answer");
                            let _ = outgoing.send(json!({"type": "signal", "topic": topic, "kind": "answer", "sdp": answer.sdp}));
                            for candidate in pending.drain(..) {
                                let _ = peer.add_ice_candidate(candidate).await;
                            }
                        }
                        Some("candidate") => {
                            let candidate = match &message["candidate"] {
                                Value::String(line) => RTCIceCandidateInit { candidate: line.clone(), ..Default::default() },
                                other => serde_json::from_value(other.clone()).expect("a candidate as RTCIceCandidateInit"),
                            };
                            if peer.remote_description().await.is_some() {
                                let _ = peer.add_ice_candidate(candidate).await;
                            } else {
                                pending.push(candidate);
                            }
                        }
                        Some("state") => signal_states.lock().unwrap().push(message["state"].as_str().unwrap_or_default().to_owned()),
                        other => panic!("unknown signal kind {other:?}: {message}"),
                    }
                }
            }));
        }

        let mut client = MediaClient {
            name,
            topic: topic.to_owned(),
            peer,
            outgoing,
            messages,
            signal_states,
            received,
            peer_state,
            tasks,
        };
        client.send(json!({"type": "auth", "token": api.token.as_deref().expect("logged in")}));
        let ready = client.next().await;
        assert_eq!(ready["type"], "ready", "{ready}");
        client
    }

    fn send(&self, message: Value) {
        self.outgoing.send(message).expect("the connection is open");
    }

    /// The next message that is not a signal (waits at most 20 s).
    async fn next(&mut self) -> Value {
        tokio::time::timeout(Duration::from_secs(20), self.messages.recv())
            .await
            .unwrap_or_else(|_| panic!("{}: no message within 20 s", self.name))
            .unwrap_or_else(|| panic!("{}: the connection closed", self.name))
    }

    /// The next message of `kind` (a `type`), skipping others.
    async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let message = self.next().await;
            if message["type"] == kind {
                return message;
            }
        }
    }

    /// Sends `join` and returns the answer (`joined`, or the error).
    async fn join(&mut self) -> Value {
        self.send(json!({"type": "join", "topic": self.topic}));
        loop {
            let message = self.next().await;
            if message["type"] == "joined" || message["type"] == "error" {
                return message;
            }
        }
    }

    async fn subscribe(&mut self) -> Value {
        self.send(json!({"type": "subscribe", "topic": self.topic}));
        let subscribed = self.next_of("subscribed").await;
        assert_eq!(subscribed["topic"], self.topic.as_str());
        self.next_of("snapshot").await
    }

    /// Waits for the next consult event whose participant is `user` in `connection`.
    async fn presence(&mut self, user: Uuid, connection: &str) -> Value {
        loop {
            let event = self.next().await;
            let participant = &event["data"]["participant"];
            if participant["user_id"] == user.to_string() && participant["connection"] == connection {
                return event;
            }
        }
    }

    fn received_from(&self, sender: Uuid, kind: RTPCodecType) -> u64 {
        self.received.lock().unwrap().get(&(sender, kind_name(kind))).copied().unwrap_or(0)
    }

    /// Waits until at least `count` audio and `count` video packets of each of `senders` arrived.
    async fn hears_and_sees(&self, senders: &[(Uuid, &str)], count: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
        loop {
            let missing: Vec<String> = senders
                .iter()
                .flat_map(|(sender, name)| {
                    [RTPCodecType::Audio, RTPCodecType::Video].into_iter().filter_map(move |kind| {
                        let got = self.received_from(*sender, kind);
                        (got < count).then(|| format!("{name}'s {kind} ({got} packets)"))
                    })
                })
                .collect();
            if missing.is_empty() {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("{} did not receive {count} packets of {} (its peer is {})", self.name, missing.join(", "), *self.peer_state.borrow());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the peer connection is no longer connected (closed, failed or disconnected).
    async fn hung_up(&mut self) -> RTCPeerConnectionState {
        let ended = |state: &RTCPeerConnectionState| {
            matches!(state, RTCPeerConnectionState::Closed | RTCPeerConnectionState::Failed | RTCPeerConnectionState::Disconnected)
        };
        let waited = tokio::time::timeout(Duration::from_secs(40), self.peer_state.wait_for(ended)).await.map(|state| state.map(|state| *state));
        match waited {
            Ok(Ok(state)) => state,
            _ => panic!("{}: the peer connection is still {} after the consult ended", self.name, *self.peer_state.borrow()),
        }
    }

    /// Hangs up without telling the hub (a dropped network, a closed laptop).
    async fn vanish(self) {
        for task in &self.tasks {
            task.abort();
        }
        let _ = self.peer.close().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Stories

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_doctor_and_a_patient_then_an_interpreter_see_and_hear_each_other_through_the_hub() {
    let c = consultation().await;
    let nurse_user = id(&c.world.nurse.user["id"]);
    let (doctor_id, patient_id) = (c.doctor_user, c.patient_user);

    let mut doctor = MediaClient::connect(&c.world.hub, &c.doctor, "doctor", &c.topic, &[patient_id, nurse_user]).await;
    assert_eq!(doctor.subscribe().await["data"]["session"]["state"], "waiting");
    let joined = doctor.join().await;
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(joined["role"], "doctor");
    let mut patient = MediaClient::connect(&c.world.hub, &c.patient, "patient", &c.topic, &[doctor_id, nurse_user]).await;
    let joined = patient.join().await;
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(joined["role"], "patient");

    doctor.hears_and_sees(&[(patient_id, "the patient")], 25).await;
    patient.hears_and_sees(&[(doctor_id, "the doctor")], 25).await;
    let consult = c.doctor.get(&format!("/api/consults/{}", c.session)).await.unwrap().ok();
    assert_eq!(consult["state"], "in_progress", "{consult}");

    // The doctor invites an interpreter, who joins: everyone gets everyone.
    let invited = c.doctor.post(&format!("/api/consults/{}/guests", c.session), json!({"user_id": nurse_user})).await.unwrap().expect(201);
    assert_eq!(invited["role"], "guest");
    let mut interpreter = MediaClient::connect(&c.world.hub, &c.world.nurse, "interpreter", &c.topic, &[doctor_id, patient_id]).await;
    let joined = interpreter.join().await;
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(joined["role"], "guest");
    interpreter.hears_and_sees(&[(doctor_id, "the doctor"), (patient_id, "the patient")], 25).await;
    let before = (doctor.received_from(nurse_user, RTPCodecType::Video), patient.received_from(nurse_user, RTPCodecType::Video));
    doctor.hears_and_sees(&[(patient_id, "the patient"), (nurse_user, "the interpreter")], before.0 + 25).await;
    patient.hears_and_sees(&[(doctor_id, "the doctor"), (nurse_user, "the interpreter")], before.1 + 25).await;

    // The doctor sees who is there and how their media is doing.
    let stats = c.doctor.get(&format!("/api/consults/{}/stats", c.session)).await.unwrap().ok();
    let participants = stats["participants"].as_array().unwrap();
    assert_eq!(participants.len(), 3, "{stats}");
    for participant in participants {
        assert_eq!(participant["connection"], "connected", "{stats}");
        assert!(participant["media"]["packets_received"].as_u64().unwrap_or(0) > 0, "{stats}");
    }
    assert_eq!(c.patient.get(&format!("/api/consults/{}/stats", c.session)).await.unwrap().status, 403, "stats are the doctor's");
    let metrics = c.world.hub.metrics().await;
    assert_eq!(metric(&metrics, "medhub_consults{state=\"in_progress\"}"), 1.0);
    assert_eq!(metric(&metrics, "medhub_consult_peers"), 3.0);
    assert!(metric(&metrics, "medhub_consult_joins_total{outcome=\"joined\"}") >= 3.0);
    assert!(metric(&metrics, "medhub_media_rtp_packets_forwarded_total") > 0.0, "the SFU's own metrics are on /metrics");
    assert_eq!(metric(&metrics, "medhub_media_participants"), 3.0);

    // The interpreter leaves: the others stop receiving them, and see them leave.
    interpreter.send(json!({"type": "leave", "topic": c.topic}));
    assert_eq!(interpreter.next_of("left").await["topic"], c.topic.as_str());
    let event = doctor.presence(nurse_user, "left").await;
    assert_eq!(event["type"], "consult.participant_left");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_leaving = doctor.received_from(nurse_user, RTPCodecType::Video);
    let patient_before = doctor.received_from(patient_id, RTPCodecType::Video);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(doctor.received_from(nurse_user, RTPCodecType::Video), after_leaving, "the interpreter's video stopped");
    assert!(doctor.received_from(patient_id, RTPCodecType::Video) > patient_before, "the patient's video goes on");
    interpreter.vanish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_whose_socket_reached_another_hub_node_joins_through_the_node_that_serves_the_consult() {
    let c = consultation().await;
    // A second node on the same database; the first serves the tenant (it placed it).
    let other = spawn_hub_with(HubOptions::node(&c.world.db, "node-b")).await;
    let (doctor_id, patient_id) = (c.doctor_user, c.patient_user);

    let mut doctor = MediaClient::connect(&c.world.hub, &c.doctor, "doctor", &c.topic, &[patient_id]).await;
    assert_eq!(doctor.subscribe().await["data"]["session"]["state"], "waiting");
    assert_eq!(doctor.join().await["type"], "joined");
    // The load balancer sent the patient's WebSocket to the other node: it relays the signaling to
    // the room's node, and the media flows through that node's SFU.
    let mut patient = MediaClient::connect(&other, &c.patient, "patient", &c.topic, &[doctor_id]).await;
    let joined = patient.join().await;
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(joined["role"], "patient");
    doctor.hears_and_sees(&[(patient_id, "the patient")], 25).await;
    patient.hears_and_sees(&[(doctor_id, "the doctor")], 25).await;
    assert_eq!(metric(&c.world.hub.metrics().await, "medhub_consult_peers"), 2.0, "both media peers are in the room's node");
    assert_eq!(metric(&other.metrics().await, "medhub_consult_peers"), 0.0);

    // Leaving through the relay: the doctor sees the patient leave.
    patient.send(json!({"type": "leave", "topic": c.topic}));
    assert_eq!(patient.next_of("left").await["topic"], c.topic.as_str());
    doctor.presence(patient_id, "left").await;
    patient.vanish().await;

    // Joined again through node B, the patient is told when the consult's node dies, instead of
    // waiting on a media connection that will never come back.
    let mut patient = MediaClient::connect(&other, &c.patient, "patient", &c.topic, &[doctor_id]).await;
    assert_eq!(patient.join().await["type"], "joined");
    let mut c = c;
    c.world.hub.kill9().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !patient.signal_states.lock().unwrap().iter().any(|s| s == "failed") {
        assert!(tokio::time::Instant::now() < deadline, "the patient was not told: {:?}", patient.signal_states.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    patient.vanish().await;
    doctor.vanish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_doctor_the_patient_and_invited_guests_may_join() {
    let c = consultation().await;
    let hub = &c.world.hub;
    let nurse_user = id(&c.world.nurse.user["id"]);
    let admin = hub.login(&c.world.tenant, Role::Admin).await;
    // Another patient of the same hospital group, who can log in too.
    let other_patient = c.world.db.patients(&c.world.tenant, 1).await[0];
    let other_user = medhub_hub::seed::create_user(&c.world.db.pool, &c.world.tenant.slug, "other.patient@alpha.test", "Other Patient", Role::Patient, PASSWORD)
        .await
        .unwrap();
    sqlx::query("UPDATE patients SET user_id = $2 WHERE id = $1").bind(other_patient).bind(other_user).execute(&c.world.db.pool).await.unwrap();
    let mut stranger = hub.api();
    stranger.login(&c.world.tenant.slug, "other.patient@alpha.test", PASSWORD).await.unwrap();
    // And a doctor of another tenant.
    let beta = c.world.db.tenant("beta").await;
    let foreign = hub.login(&beta, Role::Doctor).await;

    for (api, name, http_status) in [(&admin, "an admin", 403), (&c.world.nurse, "a nurse not invited", 403), (&stranger, "another patient", 404), (&foreign, "another tenant's doctor", 404)] {
        let mut client = MediaClient::connect(hub, api, "outsider", &c.topic, &[c.doctor_user, c.patient_user]).await;
        let answer = client.join().await;
        assert_eq!(answer["type"], "error", "{name}: {answer}");
        assert_eq!(answer["error"], "forbidden", "{name}: {answer}");
        client.send(json!({"type": "subscribe", "topic": c.topic}));
        let refused = client.next().await;
        assert_eq!((refused["type"].as_str(), refused["error"].as_str()), (Some("error"), Some("forbidden")), "{name}: {refused}");
        client.send(json!({"type": "signal", "topic": c.topic, "kind": "answer", "sdp": "v=0"}));
        assert_eq!(client.next().await["error"], "not_joined", "{name}: a refused caller holds no peer");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(client.signal_states.lock().unwrap().is_empty(), "{name} was never offered media");
        assert!(client.peer.remote_description().await.is_none(), "{name} was never offered media");
        for path in [format!("/api/consults/{}", c.session), format!("/api/consults/{}/messages", c.session)] {
            assert_eq!(api.get(&path).await.unwrap().status, http_status, "{name}: GET {path}");
        }
        assert_eq!(api.post(&format!("/api/consults/{}/messages", c.session), json!({"body": "hi"})).await.unwrap().status, http_status);
        client.vanish().await;
    }
    // Only the doctor opens the consult, invites and ends.
    assert_eq!(c.patient.post(&format!("/api/consults/{}/guests", c.session), json!({"user_id": nurse_user})).await.unwrap().status, 403);
    assert_eq!(admin.post(&format!("/api/appointments/{}/consult", c.appointment), json!({})).await.unwrap().status, 403);
    assert_eq!(stranger.post(&format!("/api/appointments/{}/consult", c.appointment), json!({})).await.unwrap().status, 404);
    let bad_guest = c.doctor.post(&format!("/api/consults/{}/guests", c.session), json!({"user_id": other_user})).await.unwrap().expect(400);
    assert_eq!(bad_guest["field"], "user_id", "a patient-role user is not a guest");
    assert!(hub.metrics().await.contains("medhub_consult_joins_total{outcome=\"refused\"} 4"));

    // Invited, the nurse is let in.
    c.doctor.post(&format!("/api/consults/{}/guests", c.session), json!({"user_id": nurse_user})).await.unwrap().expect(201);
    let mut nurse = MediaClient::connect(hub, &c.world.nurse, "interpreter", &c.topic, &[c.doctor_user]).await;
    let joined = nurse.join().await;
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(c.world.nurse.get(&format!("/api/consults/{}", c.session)).await.unwrap().ok()["you"]["role"], "guest");

    // Every refused join is in the audit trail, naming the consult and the patient.
    let denied = admin
        .get(&format!("/api/audit?action=consult.join&resource_type=consult&resource_id={}", c.session))
        .await
        .unwrap()
        .ok();
    let denied: Vec<&Value> = denied["entries"].as_array().unwrap().iter().filter(|e| e["outcome"] == "denied").collect();
    assert_eq!(denied.len(), 3, "the other tenant's doctor is refused before the consult is looked up: {denied:?}");
    assert!(denied.iter().all(|entry| entry["patient_id"] == c.patient_id.to_string()));
    nurse.vanish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_survives_a_hub_restart_and_is_in_the_audit_trail() {
    let mut c = consultation().await;
    let mut watching = Live::connect(&c.world.hub, &c.patient).await;
    assert_eq!(watching.subscribe(&c.topic, None).await["type"], "subscribed");
    let snapshot = watching.next().await;
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(snapshot["data"]["session"]["state"], "waiting");
    assert_eq!(snapshot["data"]["participants"].as_array().unwrap().len(), 2, "the doctor and the patient");

    let path = format!("/api/consults/{}/messages", c.session);
    let first = c.doctor.post(&path, json!({"body": "Good morning. Can you hear me?"})).await.unwrap().expect(201);
    assert_eq!(first["message"]["seq"], 1);
    c.patient.post(&path, json!({"body": "Yes. I still cough at night."})).await.unwrap().expect(201);
    assert_eq!(c.patient.post(&path, json!({"body": "   "})).await.unwrap().expect(400)["field"], "body");
    let pushed = watching.events(2).await;
    assert_eq!(pushed[0]["type"], "consult.message");
    assert_eq!(pushed[0]["data"]["message"]["body"], "Good morning. Can you hear me?");
    assert_eq!(pushed[0]["data"]["message"]["sender_role"], "doctor");
    assert_eq!(pushed[1]["data"]["message"]["sender_role"], "patient");

    // A graceful restart on the same database.
    assert!(c.world.hub.terminate().await.success(), "the hub exits 0 after SIGTERM");
    c.world.hub = spawn_hub_with(HubOptions::serve(&c.world.db)).await;
    let doctor = c.world.hub.login(&c.world.tenant, Role::Doctor).await;
    let patient = c.world.hub.login(&c.world.tenant, Role::Patient).await;

    let history = doctor.get(&path).await.unwrap().ok();
    let bodies: Vec<&str> = history["messages"].as_array().unwrap().iter().map(|m| m["body"].as_str().unwrap()).collect();
    assert_eq!(bodies, ["Good morning. Can you hear me?", "Yes. I still cough at night."]);
    let consult = patient.get(&format!("/api/consults/{}", c.session)).await.unwrap().ok();
    assert_eq!((consult["message_count"].as_i64(), consult["state"].as_str()), (Some(2), Some("waiting")));
    // The recovered actor numbers on from where it was; a new subscriber's snapshot has the chat.
    let third = patient.post(&path, json!({"body": "Should I bring my inhaler next time?"})).await.unwrap().expect(201);
    assert_eq!(third["message"]["seq"], 3);
    let mut watching = Live::connect(&c.world.hub, &doctor).await;
    watching.subscribe(&c.topic, None).await;
    let snapshot = watching.next().await;
    let bodies: Vec<&str> = snapshot["data"]["messages"].as_array().unwrap().iter().map(|m| m["body"].as_str().unwrap()).collect();
    assert_eq!(bodies.len(), 3, "{snapshot}");
    assert_eq!(doctor.get(&format!("{path}?after=2")).await.unwrap().ok()["messages"][0]["seq"], 3);

    // The audit trail has every message, naming the consult and the patient (not the words), and
    // every reading of the chat.
    let admin = c.world.hub.login(&c.world.tenant, Role::Admin).await;
    let audited = admin.get(&format!("/api/audit?action=consult.message&resource_id={}", c.session)).await.unwrap().ok();
    let entries = audited["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "{audited}");
    for entry in entries {
        assert_eq!(entry["resource_type"], "consult");
        assert_eq!(entry["patient_id"], c.patient_id.to_string());
        assert_eq!(entry["detail"]["session_id"], c.session.to_string());
        assert!(!entry["detail"].to_string().contains("cough"), "the audit entry does not copy the message");
    }
    let roles: Vec<&str> = entries.iter().map(|e| e["actor_role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["patient", "patient", "doctor"], "newest first");
    let reads = admin.get(&format!("/api/audit?action=consult.chat_read&patient_id={}", c.patient_id)).await.unwrap().ok();
    assert_eq!(reads["entries"].as_array().unwrap().len(), 2, "{reads}");
    assert_eq!(admin.get("/api/audit/verify").await.unwrap().ok()["ok"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_the_consult_files_the_record_completes_the_appointment_and_hangs_up_everyone() {
    let c = consultation().await;
    let hub = &c.world.hub;
    let (doctor_id, patient_id) = (c.doctor_user, c.patient_user);
    let mut doctor = MediaClient::connect(hub, &c.doctor, "doctor", &c.topic, &[patient_id]).await;
    doctor.subscribe().await;
    assert_eq!(doctor.join().await["type"], "joined");
    let mut patient = MediaClient::connect(hub, &c.patient, "patient", &c.topic, &[doctor_id]).await;
    assert_eq!(patient.join().await["type"], "joined");
    doctor.hears_and_sees(&[(patient_id, "the patient")], 20).await;
    patient.hears_and_sees(&[(doctor_id, "the doctor")], 20).await;

    // The patient's connection drops: shown as reconnecting; they come back on a new connection.
    patient.vanish().await;
    doctor.presence(patient_id, "reconnecting").await;
    let mut patient = MediaClient::connect(hub, &c.patient, "patient", &c.topic, &[doctor_id]).await;
    assert_eq!(patient.join().await["type"], "joined");
    doctor.presence(patient_id, "connected").await;
    patient.hears_and_sees(&[(doctor_id, "the doctor")], 20).await;
    let before = doctor.received_from(patient_id, RTPCodecType::Video);
    doctor.hears_and_sees(&[(patient_id, "the patient")], before + 20).await;
    let consult = c.doctor.get(&format!("/api/consults/{}", c.session)).await.unwrap().ok();
    let patient_entry = consult["participants"].as_array().unwrap().iter().find(|p| p["user_id"] == patient_id.to_string()).unwrap().clone();
    assert_eq!((patient_entry["connection"].as_str(), patient_entry["joins"].as_i64()), (Some("connected"), Some(2)), "{consult}");

    // Only the doctor ends it, and only with a complete record.
    let end = format!("/api/consults/{}/end", c.session);
    let record = json!({"chief_complaint": "Cough for three weeks", "assessment": "Post-viral cough; chest clear on history",
                        "plan": "Honey and warm fluids; salbutamol if wheeze", "follow_up": "Video review in two weeks"});
    assert_eq!(c.patient.post(&end, record.clone()).await.unwrap().status, 403);
    let incomplete = c.doctor.post(&end, json!({"chief_complaint": "Cough", "assessment": "", "plan": "Rest"})).await.unwrap().expect(400);
    assert_eq!(incomplete["field"], "assessment");
    let ended = c.doctor.post(&end, record.clone()).await.unwrap().ok();
    assert_eq!(ended["state"], "ended");
    assert_eq!(ended["record"], record);
    assert_eq!(ended["appointment_status"], "completed");
    assert!(ended["participants"].as_array().unwrap().iter().all(|p| p["connection"] == "left" || p["connection"] == "invited"), "{ended}");

    // Everyone is hung up: told so, and their peer connections close.
    for client in [&mut doctor, &mut patient] {
        let state = client.hung_up().await;
        println!("{}'s peer connection: {state}", client.name);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !client.signal_states.lock().unwrap().iter().any(|s| s == "closed") {
            assert!(tokio::time::Instant::now() < deadline, "{} was not told the call closed: {:?}", client.name, client.signal_states.lock().unwrap());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let event = doctor.next_of("consult.ended").await;
    assert_eq!(event["data"]["record"], record);
    let stopped = doctor.received_from(patient_id, RTPCodecType::Video);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(doctor.received_from(patient_id, RTPCodecType::Video), stopped, "no media after the end");

    // The record is attached to the appointment, which is completed and names the consult.
    let appointment = c.doctor.get(&format!("/api/appointments/{}", c.appointment)).await.unwrap().ok();
    assert_eq!(appointment["status"], "completed");
    let for_patient = c.patient.get(&format!("/api/appointments/{}/consult", c.appointment)).await.unwrap().ok();
    assert_eq!(for_patient["record"]["plan"], "Honey and warm fluids; salbutamol if wheeze");
    let completed: Value = sqlx::query_scalar("SELECT data FROM events WHERE event_type = 'appointment.completed' AND data->'appointment'->>'id' = $1 AND stream LIKE 'schedule/%'")
        .bind(c.appointment.to_string())
        .fetch_one(&c.world.db.pool)
        .await
        .unwrap();
    assert_eq!(completed["outcome"]["consult_session_id"], c.session.to_string());

    // Nothing more happens in an ended consult.
    assert_eq!(c.doctor.post(&end, record).await.unwrap().status, 409);
    assert_eq!(c.patient.post(&format!("/api/consults/{}/messages", c.session), json!({"body": "one more thing"})).await.unwrap().status, 409);
    let mut late = MediaClient::connect(hub, &c.patient, "late patient", &c.topic, &[doctor_id]).await;
    assert_eq!(late.join().await["error"], "ended");
    let metrics = hub.metrics().await;
    assert_eq!(metric(&metrics, "medhub_consults{state=\"ended\"}"), 1.0);
    assert_eq!(metric(&metrics, "medhub_consult_peers"), 0.0);
    for client in [doctor, patient, late] {
        client.vanish().await;
    }
}
