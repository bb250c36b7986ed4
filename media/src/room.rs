//! The SFU's moving parts: a participant's peer connection and its negotiation, the tracks it
//! publishes, and its subscriptions to the others' tracks.
//!
//! Ownership: a room (in `SfuInner::rooms`) holds its participants; a participant holds its
//! peer connection, the tracks it publishes and its subscriptions; a published track holds the
//! subscriptions that receive it. Back references (subscription → track, subscription →
//! subscriber, track → owner) are weak, so leaving frees everything.
//!
//! Locks: every change to a participant's peer connection (adding or removing a forwarded
//! track, creating an offer, applying an answer) happens under its `negotiation` (tokio) mutex,
//! so one offer is outstanding at a time and a change made meanwhile triggers the next offer
//! when the answer arrives. The std mutexes guard plain data and are never held across an await.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{Instrument, Span};
use uuid::Uuid;
use webrtc::ice_transport::ice_candidate::RTCIceCandidateInit;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;
use webrtc::rtp_transceiver::rtp_sender::RTCRtpSender;
use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;
use webrtc::rtp_transceiver::RTCRtpTransceiverInit;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_local::{TrackLocal, TrackLocalWriter};
use webrtc::track::track_remote::TrackRemote;
use webrtc::util::MarshalSize;

use crate::metrics::MediaMetrics;
use crate::{webrtc_error, MediaError, ParticipantStats, SfuInner, SignalOut};

/// Signals waiting for the hub's consult actor to pick them up; generous, since a stalled
/// reader stalls that participant's ICE and negotiation.
const SIGNAL_CAPACITY: usize = 256;
/// A keyframe costs a sender a burst of bandwidth: several receivers joining or losing picture
/// together share one request.
const KEYFRAME_REQUEST_MIN_INTERVAL: Duration = Duration::from_millis(300);
const BITRATE_WINDOW: Duration = Duration::from_secs(1);
/// A participant that has sent nothing for this long has no incoming bitrate, whatever its
/// last window measured.
const BITRATE_STALE_AFTER: Duration = Duration::from_secs(3);

static JOIN_ORDER: AtomicU64 = AtomicU64::new(0);

/// Creates the participant's peer connection, enters it in the room, subscribes it to what the
/// others already publish and sends the first offer.
pub(crate) async fn join(
    sfu: &Arc<SfuInner>,
    room: Uuid,
    id: Uuid,
    span: Span,
) -> Result<(Arc<Participant>, mpsc::Receiver<SignalOut>), MediaError> {
    if lock(&sfu.rooms)
        .get(&room)
        .is_some_and(|members| members.contains_key(&id))
    {
        return Err(MediaError::AlreadyJoined {
            room,
            participant: id,
        });
    }
    let pc = Arc::new(
        sfu.api
            .new_peer_connection(RTCConfiguration::default())
            .await
            .map_err(webrtc_error("creating the peer connection"))?,
    );
    // The participant's microphone and camera arrive on these: a browser that answers with
    // addTrack'd getUserMedia tracks sends on them.
    for kind in [RTPCodecType::Audio, RTPCodecType::Video] {
        let receive_only = RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Recvonly,
            send_encodings: vec![],
        };
        if let Err(error) = pc.add_transceiver_from_kind(kind, Some(receive_only)).await {
            let _ = pc.close().await;
            return Err(webrtc_error("adding the receive-only transceivers")(error));
        }
    }

    let (signals, signals_rx) = mpsc::channel(SIGNAL_CAPACITY);
    let participant = Arc::new(Participant {
        id,
        room,
        joined_order: JOIN_ORDER.fetch_add(1, Ordering::Relaxed),
        sfu: Arc::downgrade(sfu),
        metrics: sfu.metrics.clone(),
        pc,
        span,
        signals: Mutex::new(Some(signals)),
        closed_reported: AtomicBool::new(false),
        negotiation: tokio::sync::Mutex::new(Negotiation::default()),
        local_candidates: Mutex::new(LocalCandidates::default()),
        remote_candidates: tokio::sync::Mutex::new(Some(Vec::new())),
        published: Mutex::new(Vec::new()),
        subscriptions: Mutex::new(HashMap::new()),
        state: Mutex::new(StateSlot::default()),
        left: AtomicBool::new(false),
        counters: Arc::new(Counters::default()),
    });
    participant.install_handlers();

    let entered: Option<Vec<Arc<Participant>>> = {
        let mut rooms = lock(&sfu.rooms);
        let created = !rooms.contains_key(&room);
        let members = rooms.entry(room).or_default();
        match members.entry(id) {
            std::collections::hash_map::Entry::Occupied(_) => None,
            std::collections::hash_map::Entry::Vacant(seat) => {
                seat.insert(Arc::clone(&participant));
                if created {
                    sfu.metrics.rooms.inc();
                }
                Some(
                    members
                        .values()
                        .filter(|member| member.id != id)
                        .cloned()
                        .collect(),
                )
            }
        }
    };
    let Some(others) = entered else {
        // Raced with a second join of the same participant: this one never entered.
        participant.left.store(true, Ordering::SeqCst);
        let _ = participant.pc.close().await;
        return Err(MediaError::AlreadyJoined {
            room,
            participant: id,
        });
    };
    sfu.metrics.participants.inc();
    {
        let mut slot = lock(&participant.state);
        slot.counted = true;
        participant
            .metrics
            .peer_states
            .with_label_values(&[state_label(slot.state)])
            .inc();
    }
    tracing::info!(others = others.len(), "participant joined the consult room");

    for other in &others {
        for track in other.published_tracks() {
            subscribe(&track, &participant).await;
        }
    }
    if let Err(error) = participant.start_negotiating().await {
        if participant.mark_left(true) {
            participant.teardown().await;
        }
        return Err(error);
    }
    Ok((participant, signals_rx))
}

pub(crate) struct Participant {
    id: Uuid,
    room: Uuid,
    joined_order: u64,
    sfu: Weak<SfuInner>,
    metrics: MediaMetrics,
    pc: Arc<RTCPeerConnection>,
    span: Span,
    /// Taken when the participant leaves, which ends the consult actor's receiver.
    signals: Mutex<Option<mpsc::Sender<SignalOut>>>,
    closed_reported: AtomicBool,
    negotiation: tokio::sync::Mutex<Negotiation>,
    local_candidates: Mutex<LocalCandidates>,
    /// The participant's candidates that arrived before its first answer (`None` after it).
    remote_candidates: tokio::sync::Mutex<Option<Vec<RTCIceCandidateInit>>>,
    published: Mutex<Vec<Arc<PublishedTrack>>>,
    /// What the hub forwards to this participant, by published track key.
    subscriptions: Mutex<HashMap<String, Arc<Subscription>>>,
    state: Mutex<StateSlot>,
    left: AtomicBool,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct Negotiation {
    /// The first offer has been sent (set up complete); until then changes only accumulate.
    ready: bool,
    offer_outstanding: bool,
    /// Something changed since the last offer was created.
    needed: bool,
}

/// The hub's own candidates wait for the first offer: a participant cannot use a candidate
/// before it has the offer it belongs to.
#[derive(Default)]
struct LocalCandidates {
    released: bool,
    buffered: Vec<serde_json::Value>,
}

#[derive(Default)]
struct StateSlot {
    state: RTCPeerConnectionState,
    /// Whether `medhub_media_peer_states` counts this participant (from joining to leaving).
    counted: bool,
}

#[derive(Default)]
struct Counters {
    packets_received: AtomicU64,
    bytes_received: AtomicU64,
    packets_sent: AtomicU64,
    packets_lost: AtomicU64,
    bitrate: Mutex<Bitrate>,
}

#[derive(Default)]
struct Bitrate {
    window_start: Option<Instant>,
    window_bytes: u64,
    bits_per_second: u64,
    last_packet: Option<Instant>,
}

impl Counters {
    fn record_received(&self, bytes: u64) {
        self.packets_received.fetch_add(1, Ordering::Relaxed);
        self.bytes_received.fetch_add(bytes, Ordering::Relaxed);
        let now = Instant::now();
        let mut bitrate = lock(&self.bitrate);
        let window_start = *bitrate.window_start.get_or_insert(now);
        let elapsed = now.duration_since(window_start);
        if elapsed >= BITRATE_WINDOW {
            bitrate.bits_per_second =
                (bitrate.window_bytes as f64 * 8.0 / elapsed.as_secs_f64()).round() as u64;
            bitrate.window_start = Some(now);
            bitrate.window_bytes = 0;
        }
        bitrate.window_bytes += bytes;
        bitrate.last_packet = Some(now);
    }

    fn bitrate_in_bps(&self) -> u64 {
        let bitrate = lock(&self.bitrate);
        match bitrate.last_packet {
            Some(last) if last.elapsed() < BITRATE_STALE_AFTER => bitrate.bits_per_second,
            _ => 0,
        }
    }
}

/// A track a participant sends to the hub, and who receives it.
struct PublishedTrack {
    /// Unique within the SFU: owner, track id and SSRC.
    key: String,
    owner: Weak<Participant>,
    owner_id: Uuid,
    remote: Arc<TrackRemote>,
    subscribers: RwLock<Vec<Arc<Subscription>>>,
    /// Set when the owner stops sending it; no subscription is added after that.
    ended: AtomicBool,
    last_keyframe_request: Mutex<Option<Instant>>,
    metrics: MediaMetrics,
}

/// One published track as forwarded to one other participant.
struct Subscription {
    key: String,
    track: Weak<PublishedTrack>,
    subscriber: Weak<Participant>,
    local: Arc<TrackLocalStaticRTP>,
    sender: Arc<RTCRtpSender>,
    negotiated: AtomicU8,
    keyframe_requested: AtomicBool,
    subscriber_counters: Arc<Counters>,
}

const NOT_OFFERED: u8 = 0;
const OFFERED: u8 = 1;
const ANSWERED: u8 = 2;

impl Participant {
    pub(crate) fn id(&self) -> Uuid {
        self.id
    }

    pub(crate) fn span(&self) -> &Span {
        &self.span
    }

    pub(crate) fn joined_order(&self) -> u64 {
        self.joined_order
    }

    pub(crate) fn stats(&self) -> ParticipantStats {
        let state = lock(&self.state).state;
        ParticipantStats {
            participant: self.id,
            state: state_label(state).to_owned(),
            packets_received: self.counters.packets_received.load(Ordering::Relaxed),
            packets_sent: self.counters.packets_sent.load(Ordering::Relaxed),
            bytes_received: self.counters.bytes_received.load(Ordering::Relaxed),
            bitrate_in_bps: self.counters.bitrate_in_bps(),
            packets_lost: self.counters.packets_lost.load(Ordering::Relaxed),
            tracks_in: lock(&self.published).len(),
            tracks_out: lock(&self.subscriptions).len(),
        }
    }

    fn published_tracks(&self) -> Vec<Arc<PublishedTrack>> {
        lock(&self.published).clone()
    }

    fn other_members(&self) -> Vec<Arc<Participant>> {
        let Some(sfu) = self.sfu.upgrade() else {
            return Vec::new();
        };
        let rooms = lock(&sfu.rooms);
        rooms
            .get(&self.room)
            .map(|members| {
                members
                    .values()
                    .filter(|member| member.id != self.id)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    fn install_handlers(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let span = self.span.clone();
        self.pc.on_ice_candidate(Box::new(move |candidate| {
            let weak = weak.clone();
            Box::pin(
                async move {
                    let (Some(participant), Some(candidate)) = (weak.upgrade(), candidate) else {
                        return;
                    };
                    match candidate.to_json().map(serde_json::to_value) {
                        Ok(Ok(json)) => participant.send_local_candidate(json).await,
                        Ok(Err(error)) => {
                            tracing::warn!(%error, "could not serialise an ICE candidate")
                        }
                        Err(error) => {
                            tracing::warn!(%error, "could not serialise an ICE candidate")
                        }
                    }
                }
                .instrument(span.clone()),
            )
        }));

        let weak = Arc::downgrade(self);
        let span = self.span.clone();
        self.pc
            .on_peer_connection_state_change(Box::new(move |state| {
                let weak = weak.clone();
                Box::pin(
                    async move {
                        if let Some(participant) = weak.upgrade() {
                            participant.state_changed(state).await;
                        }
                    }
                    .instrument(span.clone()),
                )
            }));

        let weak = Arc::downgrade(self);
        self.pc
            .on_track(Box::new(move |remote, _receiver, _transceiver| {
                if let Some(participant) = weak.upgrade() {
                    let span = participant.span.clone();
                    tokio::spawn(participant.publish(remote).instrument(span));
                }
                Box::pin(async {})
            }));
    }

    async fn send_signal(&self, message: SignalOut) {
        let signals = lock(&self.signals).clone();
        if let Some(signals) = signals {
            // An error only means the consult actor dropped the receiver: nobody to tell.
            let _ = signals.send(message).await;
        }
    }

    /// State notices are informative; one never waits for a stalled reader (it could hold up
    /// closing the connection).
    fn send_state_notice(&self, state: RTCPeerConnectionState) {
        let signals = lock(&self.signals).clone();
        if let Some(signals) = signals {
            let notice = SignalOut::State {
                state: state_label(state).to_owned(),
            };
            if let Err(mpsc::error::TrySendError::Full(_)) = signals.try_send(notice) {
                tracing::warn!(parent: &self.span, %state, "signal receiver is full: state notice dropped");
            }
        }
    }

    async fn send_local_candidate(&self, candidate: serde_json::Value) {
        {
            let mut gate = lock(&self.local_candidates);
            if !gate.released {
                gate.buffered.push(candidate);
                return;
            }
        }
        self.send_signal(SignalOut::Candidate { candidate }).await;
    }

    async fn release_local_candidates(&self) {
        let buffered = {
            let mut gate = lock(&self.local_candidates);
            if gate.released {
                return;
            }
            gate.released = true;
            std::mem::take(&mut gate.buffered)
        };
        for candidate in buffered {
            self.send_signal(SignalOut::Candidate { candidate }).await;
        }
    }

    async fn state_changed(self: Arc<Self>, state: RTCPeerConnectionState) {
        {
            let mut slot = lock(&self.state);
            if slot.counted {
                let states = &self.metrics.peer_states;
                states.with_label_values(&[state_label(slot.state)]).dec();
                states.with_label_values(&[state_label(state)]).inc();
            }
            slot.state = state;
        }
        tracing::info!(%state, "peer connection state changed");
        if state == RTCPeerConnectionState::Closed
            && self.closed_reported.swap(true, Ordering::SeqCst)
        {
            return;
        }
        self.send_state_notice(state);
        match state {
            RTCPeerConnectionState::Connected => {
                self.request_keyframes_for_new_subscriptions().await
            }
            RTCPeerConnectionState::Failed => {
                tracing::warn!("peer connection failed: removing the participant");
                if self.mark_left(true) {
                    let span = self.span.clone();
                    tokio::spawn(async move { self.teardown().await }.instrument(span));
                }
            }
            _ => {}
        }
    }

    async fn start_negotiating(&self) -> Result<(), MediaError> {
        let mut negotiation = self.negotiation.lock().await;
        negotiation.ready = true;
        negotiation.needed = true;
        self.offer_if_needed(&mut negotiation).await
    }

    /// Sends a new offer if something changed and none is outstanding; the caller holds the
    /// negotiation lock.
    async fn offer_if_needed(&self, negotiation: &mut Negotiation) -> Result<(), MediaError> {
        if !negotiation.ready
            || negotiation.offer_outstanding
            || !negotiation.needed
            || self.left.load(Ordering::SeqCst)
        {
            return Ok(());
        }
        negotiation.needed = false;
        let offer = self
            .pc
            .create_offer(None)
            .await
            .map_err(webrtc_error("creating an offer"))?;
        let offered_sdp = offer.sdp.clone();
        self.pc
            .set_local_description(offer)
            .await
            .map_err(webrtc_error("applying the hub's own offer"))?;
        for subscription in lock(&self.subscriptions).values() {
            let _ = subscription.negotiated.compare_exchange(
                NOT_OFFERED,
                OFFERED,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        }
        // The local description carries the candidates gathered so far; the rest trickle.
        let sdp = self
            .pc
            .local_description()
            .await
            .map(|description| description.sdp)
            .unwrap_or(offered_sdp);
        negotiation.offer_outstanding = true;
        self.metrics.offers_sent.inc();
        // Called from other participants' tasks too: log under this participant's span.
        tracing::debug!(
            parent: &self.span,
            tracks_out = lock(&self.subscriptions).len(),
            "sending an offer"
        );
        self.send_signal(SignalOut::Offer { sdp }).await;
        self.release_local_candidates().await;
        Ok(())
    }

    pub(crate) async fn apply_answer(&self, sdp: String) -> Result<(), MediaError> {
        if self.left.load(Ordering::SeqCst) {
            return Err(MediaError::Closed);
        }
        let mut negotiation = self.negotiation.lock().await;
        if self.left.load(Ordering::SeqCst) {
            return Err(MediaError::Closed);
        }
        if !negotiation.offer_outstanding {
            return Err(MediaError::UnexpectedAnswer);
        }
        let answer = RTCSessionDescription::answer(sdp).map_err(webrtc_error(
            "reading the answer (send the SDP answering the hub's latest offer)",
        ))?;
        self.pc
            .set_remote_description(answer)
            .await
            .map_err(webrtc_error(
                "applying the answer (it must answer the hub's latest offer)",
            ))?;
        negotiation.offer_outstanding = false;
        for subscription in lock(&self.subscriptions).values() {
            let _ = subscription.negotiated.compare_exchange(
                OFFERED,
                ANSWERED,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        }
        tracing::debug!("answer applied");

        let early_candidates = self.remote_candidates.lock().await.take();
        for candidate in early_candidates.unwrap_or_default() {
            if let Err(error) = self.pc.add_ice_candidate(candidate).await {
                tracing::warn!(%error, "could not add an early ICE candidate of the participant");
            }
        }
        if self.pc.connection_state() == RTCPeerConnectionState::Connected {
            self.request_keyframes_for_new_subscriptions().await;
        }
        if let Err(error) = self.offer_if_needed(&mut negotiation).await {
            tracing::warn!(%error, "could not send the next offer");
        }
        Ok(())
    }

    pub(crate) async fn add_remote_candidate(
        &self,
        candidate: serde_json::Value,
    ) -> Result<(), MediaError> {
        if self.left.load(Ordering::SeqCst) {
            return Err(MediaError::Closed);
        }
        if candidate.is_null() {
            return Ok(());
        }
        let candidate: RTCIceCandidateInit =
            serde_json::from_value(candidate).map_err(MediaError::InvalidCandidate)?;
        if candidate.candidate.is_empty() {
            // End of candidates: nothing to do for ICE here.
            return Ok(());
        }
        let mut early = self.remote_candidates.lock().await;
        if let Some(early) = early.as_mut() {
            early.push(candidate);
            return Ok(());
        }
        self.pc
            .add_ice_candidate(candidate)
            .await
            .map_err(webrtc_error(
                "adding the participant's ICE candidate (send candidates of the answered session)",
            ))
    }

    /// Asks the senders of video this participant now receives for a keyframe, once per
    /// subscription, when both the connection is up and the subscription is negotiated.
    async fn request_keyframes_for_new_subscriptions(&self) {
        let subscriptions: Vec<Arc<Subscription>> =
            lock(&self.subscriptions).values().cloned().collect();
        for subscription in subscriptions {
            if subscription.negotiated.load(Ordering::SeqCst) == ANSWERED
                && !subscription.keyframe_requested.swap(true, Ordering::SeqCst)
            {
                if let Some(track) = subscription.track.upgrade() {
                    track.request_keyframe("new receiver").await;
                }
            }
        }
    }

    /// A track of this participant started arriving: forward it to everyone else in the room
    /// until it ends.
    async fn publish(self: Arc<Self>, remote: Arc<TrackRemote>) {
        let track = Arc::new(PublishedTrack {
            key: format!("{}/{}/{}", self.id, remote.id(), remote.ssrc()),
            owner: Arc::downgrade(&self),
            owner_id: self.id,
            remote,
            subscribers: RwLock::new(Vec::new()),
            ended: AtomicBool::new(false),
            last_keyframe_request: Mutex::new(None),
            metrics: self.metrics.clone(),
        });
        {
            // Checked under the lock that teardown takes the list with, after setting `left`.
            let mut published = lock(&self.published);
            if self.left.load(Ordering::SeqCst) {
                return;
            }
            published.push(Arc::clone(&track));
        }
        tracing::info!(
            kind = %track.remote.kind(),
            ssrc = track.remote.ssrc(),
            codec = %track.remote.codec().capability.mime_type,
            "participant started sending a track"
        );
        for other in self.other_members() {
            subscribe(&track, &other).await;
        }

        forward(&track, &self.counters).await;

        tracing::info!(kind = %track.remote.kind(), ssrc = track.remote.ssrc(), "track ended");
        lock(&self.published).retain(|published| !Arc::ptr_eq(published, &track));
        unpublish(&track).await;
    }

    /// Marks the participant gone (and takes it out of its room unless the whole room is
    /// being closed). True for the one caller that should then run [`Participant::teardown`].
    pub(crate) fn mark_left(&self, leave_room: bool) -> bool {
        if self.left.swap(true, Ordering::SeqCst) {
            return false;
        }
        if leave_room {
            if let Some(sfu) = self.sfu.upgrade() {
                let mut rooms = lock(&sfu.rooms);
                if let Some(members) = rooms.get_mut(&self.room) {
                    if members
                        .get(&self.id)
                        .is_some_and(|member| std::ptr::eq(member.as_ref(), self))
                    {
                        members.remove(&self.id);
                    }
                    if members.is_empty() {
                        rooms.remove(&self.room);
                        self.metrics.rooms.dec();
                    }
                }
            }
        }
        self.metrics.participants.dec();
        let mut slot = lock(&self.state);
        if slot.counted {
            slot.counted = false;
            self.metrics
                .peer_states
                .with_label_values(&[state_label(slot.state)])
                .dec();
        }
        true
    }

    /// Stops forwarding to and from the participant, renegotiates the others, closes the peer
    /// connection and ends the signal receiver after a last `closed` state notice.
    pub(crate) async fn teardown(&self) {
        tracing::info!("participant leaving the consult room");
        let published = std::mem::take(&mut *lock(&self.published));
        for track in published {
            unpublish(&track).await;
        }
        {
            let _negotiation = self.negotiation.lock().await;
            let subscriptions = std::mem::take(&mut *lock(&self.subscriptions));
            for subscription in subscriptions.values() {
                if let Some(track) = subscription.track.upgrade() {
                    write(&track.subscribers).retain(|other| !Arc::ptr_eq(other, subscription));
                }
            }
        }
        if let Err(error) = self.pc.close().await {
            tracing::debug!(%error, "closing the peer connection reported an error");
        }
        if !self.closed_reported.swap(true, Ordering::SeqCst) {
            self.send_state_notice(RTCPeerConnectionState::Closed);
        }
        lock(&self.signals).take();
    }
}

impl PublishedTrack {
    async fn request_keyframe(&self, reason: &'static str) {
        if self.remote.kind() != RTPCodecType::Video || self.ended.load(Ordering::SeqCst) {
            return;
        }
        {
            let mut last = lock(&self.last_keyframe_request);
            if last.is_some_and(|at| at.elapsed() < KEYFRAME_REQUEST_MIN_INTERVAL) {
                return;
            }
            *last = Some(Instant::now());
        }
        let Some(owner) = self.owner.upgrade() else {
            return;
        };
        let media_ssrc = self.remote.ssrc();
        let request = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc,
        };
        match owner.pc.write_rtcp(&[Box::new(request)]).await {
            Ok(_) => {
                self.metrics.keyframe_requests.inc();
                tracing::debug!(parent: &owner.span, media_ssrc, reason, "asked for a keyframe");
            }
            Err(error) => {
                tracing::debug!(parent: &owner.span, %error, media_ssrc, "could not ask for a keyframe")
            }
        }
    }
}

/// Starts forwarding `track` to `subscriber` (no-op for its own track, a repeat, or anyone or
/// anything already gone) and renegotiates the subscriber.
async fn subscribe(track: &Arc<PublishedTrack>, subscriber: &Arc<Participant>) {
    if subscriber.id == track.owner_id {
        return;
    }
    let mut negotiation = subscriber.negotiation.lock().await;
    if subscriber.left.load(Ordering::SeqCst)
        || track.ended.load(Ordering::SeqCst)
        || lock(&subscriber.subscriptions).contains_key(&track.key)
    {
        return;
    }
    let codec = track.remote.codec();
    // Stream id = the sending participant, so the receiving client can tell whose media it is.
    let local = Arc::new(TrackLocalStaticRTP::new(
        codec.capability.clone(),
        format!("{}-{}", track.owner_id, track.remote.id()),
        track.owner_id.to_string(),
    ));
    let send_only = RTCRtpTransceiverInit {
        direction: RTCRtpTransceiverDirection::Sendonly,
        send_encodings: vec![],
    };
    let transceiver = match subscriber
        .pc
        .add_transceiver_from_track(
            Arc::clone(&local) as Arc<dyn TrackLocal + Send + Sync>,
            Some(send_only),
        )
        .await
    {
        Ok(transceiver) => transceiver,
        Err(error) => {
            tracing::warn!(parent: &subscriber.span, %error, track = %track.key, "could not add a forwarded track");
            return;
        }
    };
    // Offer only the codec the sender uses: forwarding cannot transcode.
    if let Err(error) = transceiver.set_codec_preferences(vec![codec]).await {
        tracing::debug!(parent: &subscriber.span, %error, "could not restrict the forwarded track's codecs");
    }
    let sender = transceiver.sender().await;
    let subscription = Arc::new(Subscription {
        key: track.key.clone(),
        track: Arc::downgrade(track),
        subscriber: Arc::downgrade(subscriber),
        local,
        sender: Arc::clone(&sender),
        negotiated: AtomicU8::new(NOT_OFFERED),
        keyframe_requested: AtomicBool::new(false),
        subscriber_counters: Arc::clone(&subscriber.counters),
    });
    let attached = {
        let mut subscribers = write(&track.subscribers);
        let attached = !track.ended.load(Ordering::SeqCst);
        if attached {
            subscribers.push(Arc::clone(&subscription));
        }
        attached
    };
    if !attached {
        let _ = subscriber.pc.remove_track(&sender).await;
        return;
    }
    lock(&subscriber.subscriptions).insert(track.key.clone(), subscription);
    tracing::debug!(parent: &subscriber.span, track = %track.key, "forwarding a track to the participant");
    tokio::spawn(
        read_receiver_feedback(sender, Arc::downgrade(track)).instrument(subscriber.span.clone()),
    );
    negotiation.needed = true;
    if let Err(error) = subscriber.offer_if_needed(&mut negotiation).await {
        tracing::warn!(parent: &subscriber.span, %error, "could not renegotiate after adding a track");
    }
}

/// The track's sender is gone: stop forwarding it to anyone.
async fn unpublish(track: &Arc<PublishedTrack>) {
    track.ended.store(true, Ordering::SeqCst);
    let subscriptions = std::mem::take(&mut *write(&track.subscribers));
    for subscription in subscriptions {
        unsubscribe(&subscription).await;
    }
}

async fn unsubscribe(subscription: &Subscription) {
    let Some(subscriber) = subscription.subscriber.upgrade() else {
        return;
    };
    let mut negotiation = subscriber.negotiation.lock().await;
    if lock(&subscriber.subscriptions)
        .remove(&subscription.key)
        .is_none()
        || subscriber.left.load(Ordering::SeqCst)
    {
        return;
    }
    if let Err(error) = subscriber.pc.remove_track(&subscription.sender).await {
        tracing::debug!(parent: &subscriber.span, %error, "could not remove a forwarded track");
    }
    tracing::debug!(parent: &subscriber.span, track = %subscription.key, "stopped forwarding a track to the participant");
    negotiation.needed = true;
    if let Err(error) = subscriber.offer_if_needed(&mut negotiation).await {
        tracing::warn!(parent: &subscriber.span, %error, "could not renegotiate after removing a track");
    }
}

/// Drains a forwarded track's RTCP (the interceptors answer NACKs only while it is read) and
/// passes the receiver's keyframe requests on to the sender.
async fn read_receiver_feedback(sender: Arc<RTCRtpSender>, track: Weak<PublishedTrack>) {
    while let Ok((packets, _)) = sender.read_rtcp().await {
        let wants_keyframe = packets.iter().any(|packet| {
            let packet = packet.as_any();
            packet.is::<PictureLossIndication>() || packet.is::<FullIntraRequest>()
        });
        if wants_keyframe {
            let Some(track) = track.upgrade() else { return };
            track.request_keyframe("receiver asked").await;
        }
    }
}

/// Reads the sender's RTP and writes each packet to every subscription's local track, which
/// rewrites SSRC and payload type for its peer connection and nothing else.
async fn forward(track: &PublishedTrack, owner_counters: &Counters) {
    let metrics = &track.metrics;
    let mut sequence = SequenceGaps::default();
    loop {
        let packet = match track.remote.read_rtp().await {
            Ok((packet, _)) => packet,
            Err(error) => {
                tracing::debug!(%error, "track read ended");
                return;
            }
        };
        let size = (packet.header.marshal_size() + packet.payload.len()) as u64;
        owner_counters.record_received(size);
        metrics.rtp_packets_received.inc();
        metrics.rtp_bytes_received.inc_by(size);
        let lost = sequence.record(packet.header.sequence_number);
        if lost > 0 {
            owner_counters
                .packets_lost
                .fetch_add(lost, Ordering::Relaxed);
            metrics.rtp_packets_lost.inc_by(lost);
        }

        let subscriptions = read(&track.subscribers).clone();
        for subscription in subscriptions {
            match subscription.local.write_rtp(&packet).await {
                // Not negotiated yet (or no longer): nobody to send to.
                Ok(0) => {}
                Ok(written) => {
                    subscription
                        .subscriber_counters
                        .packets_sent
                        .fetch_add(1, Ordering::Relaxed);
                    metrics.rtp_packets_forwarded.inc();
                    metrics.rtp_bytes_forwarded.inc_by(written as u64);
                }
                Err(error) => {
                    tracing::trace!(%error, track = %subscription.key, "forwarding a packet failed")
                }
            }
        }
    }
}

/// Counts packets missing from a stream by its RTP sequence numbers (which wrap at 2^16):
/// expected (highest − first + 1) minus received, reported as it grows. Late packets
/// already counted as lost stay counted.
#[derive(Default)]
struct SequenceGaps {
    /// Extended (unwrapped) sequence numbers; the first is offset by 2^16 so that packets
    /// reordered before it do not underflow.
    first: Option<u64>,
    highest: u64,
    received: u64,
    reported_lost: u64,
}

impl SequenceGaps {
    /// Records one packet; returns how many newly count as lost.
    fn record(&mut self, sequence_number: u16) -> u64 {
        let Some(first) = self.first else {
            let extended = u64::from(sequence_number) + (1 << 16);
            self.first = Some(extended);
            self.highest = extended;
            self.received = 1;
            return 0;
        };
        let ahead = sequence_number.wrapping_sub(self.highest as u16) as i16;
        if ahead > 0 {
            self.highest += ahead as u64;
        }
        self.received += 1;
        let expected = self.highest - first + 1;
        let lost = expected.saturating_sub(self.received);
        if lost > self.reported_lost {
            let newly_lost = lost - self.reported_lost;
            self.reported_lost = lost;
            newly_lost
        } else {
            0
        }
    }
}

fn state_label(state: RTCPeerConnectionState) -> &'static str {
    match state {
        RTCPeerConnectionState::Unspecified | RTCPeerConnectionState::New => "new",
        RTCPeerConnectionState::Connecting => "connecting",
        RTCPeerConnectionState::Connected => "connected",
        RTCPeerConnectionState::Disconnected => "disconnected",
        RTCPeerConnectionState::Failed => "failed",
        RTCPeerConnectionState::Closed => "closed",
    }
}

/// The data behind these locks stays consistent at every unlock, so a panic elsewhere while
/// holding one does not make it unusable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_without_gaps_loses_nothing() {
        let mut gaps = SequenceGaps::default();
        let lost: u64 = (100..200u16).map(|sequence| gaps.record(sequence)).sum();
        assert_eq!(lost, 0);
    }

    #[test]
    fn gaps_count_as_lost_across_the_wrap() {
        let mut gaps = SequenceGaps::default();
        let mut lost = 0;
        for sequence in [65_533u16, 65_534, 0, 1, 4, 5] {
            lost += gaps.record(sequence);
        }
        // 65535, 2 and 3 never arrived.
        assert_eq!(lost, 3);
    }

    #[test]
    fn reordered_and_duplicate_packets_are_not_losses() {
        let mut gaps = SequenceGaps::default();
        let mut lost = 0;
        for sequence in [10u16, 12, 11, 13, 13, 9, 14] {
            lost += gaps.record(sequence);
        }
        // 11 arrived late: counted lost when 12 came, never uncounted; nothing else missing.
        assert_eq!(lost, 1);
    }

    #[test]
    fn state_labels_are_the_browser_names() {
        assert_eq!(state_label(RTCPeerConnectionState::Unspecified), "new");
        assert_eq!(state_label(RTCPeerConnectionState::Connected), "connected");
        assert_eq!(state_label(RTCPeerConnectionState::Closed), "closed");
    }
}
