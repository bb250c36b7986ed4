// The video consult room (`#/consult/{appointment_id}`, or `#/consult/session/{session_id}` for an
// invited guest): the doctor's room and the patient's join page are one page, reached from a video
// appointment on the doctor's schedule or in the patient's own appointments.
//
// Who does what: the doctor opens the consult when they open the page (`POST
// /api/appointments/{id}/consult`); the patient's page waits (reading `GET .../consult` every few
// seconds) until then. Everyone in the room sees their own camera and everyone else's, mutes
// their microphone or camera, chats, and sees who is connected, reconnecting or gone. The doctor
// also sees each participant's media statistics, invites guests (an interpreter, a specialist)
// and ends the consult with its record (chief complaint, assessment, plan, follow-up), which
// completes the appointment and hangs everyone up.
//
// Media goes through the hub (a selective forwarding unit): one RTCPeerConnection per join. The
// hub always offers: its first offer has two receive-only transceivers (our microphone and camera
// go on those) and a send-only one per track of every other participant, whose stream id is that
// participant's user id (so a remote video knows whose it is). Someone joining or leaving brings a
// new offer, answered the same way. ICE candidates trickle both ways. Signaling is the live
// connection's (`join`, `signal`, `mute`, `leave` on the consult's topic); the topic's events
// carry presence, mute states and chat. When the live connection drops, the hub counts us as
// dropped (shown to the others as reconnecting) and forgets our peer: this page closes its peer
// connection and joins again, with a new one, once the connection is back.
//
// For automated tests: the root `#consult` carries `data-session-id`, `data-state` (waiting,
// in_progress, ended), `data-media` (out, joining, in, reconnecting, left) and, once ended,
// `data-appointment-status`; remote videos are `video.consult-remote-video` with
// `data-participant-id`; participant rows `[data-participant-id][data-connection]`; chat messages
// `.chat-message[data-seq]`.

import { request } from './api.js';
import { h, replaceChildren, formatTime, timeElement, isUuid } from './dom.js';
import { appointmentStatusBadge, staleNotice } from './appointments.js';

const ROLE_LABELS = { doctor: 'Doctor', patient: 'Patient', guest: 'Guest' };
const CONNECTION_LABELS = { invited: 'Invited', connected: 'Connected', reconnecting: 'Reconnecting…', left: 'Left' };
const STATE_LABELS = { waiting: 'Waiting to start', in_progress: 'In progress', ended: 'Ended' };
const MEDIA_STATE_LABELS = {
  new: 'Setting up media…', connecting: 'Connecting media…', connected: 'Media connected',
  disconnected: 'Media interrupted…', failed: 'Media failed', closed: 'Media closed',
};
/** How often a patient's page asks whether the doctor has opened the consult yet. */
const WAITING_POLL_MS = 3_000;
/** How often the doctor's page reads the media statistics. */
const STATS_EVERY_MS = 3_000;
const CHAT_HISTORY_LIMIT = 500;
const RECORD_LIMIT = 4000;

export function mountConsult(container, { user, live, announce, params = [] }) {
  let mounted = true;
  const bySession = params[0] === 'session';
  const address = bySession ? params[1] : params[0];

  /** The consult as `GET /api/consults/{id}` shows it, kept current by the topic's events. */
  let consult = null;
  /** The appointment (names, times), when this user may read it. */
  let appointment = null;
  /** user id → participant */
  const participants = new Map();
  /** user id → the media part of `GET .../stats` */
  const mediaStats = new Map();
  /** chat seq → message */
  const messages = new Map();
  let topic = null;
  let unsubscribe = null;
  let stopRoom = null;
  let stopStatus = null;
  let waitTimer = null;
  let statsTimer = null;

  let localStream = null;
  let pc = null;
  /** Whether this page's user wants to be in the room (until they leave or it ends). */
  let wantIn = false;
  /** out | joining | in | reconnecting | left */
  let media = 'out';
  /** The hub's last word on our peer connection (`signal {kind: state}`). */
  let hubMediaState = null;
  /** Signals are applied one at a time, in order (an offer's candidates need the offer first). */
  let signalChain = Promise.resolve();
  /** After `leave`, join again at once (a failed peer, or a confused hub). */
  let rejoinAfterLeft = false;
  let audioOn = true;
  let videoOn = true;
  /** participant id → {tile, video, stream} */
  const remoteTiles = new Map();
  let soundBlocked = false;

  // ---- The page's frame ----------------------------------------------------------------------

  const title = h('h1', { id: 'page-title', tabindex: '-1' }, 'Video consult');
  const subtitle = h('p', { class: 'muted' }, 'Loading the consult…');
  const stateTag = h('span', { class: 'consult-state', hidden: true });
  const problem = h('div', { class: 'board__problem', role: 'alert' });
  const stale = staleNotice(live, 'the consult');
  const body = h('div', { class: 'consult__body', 'aria-busy': 'true' }, h('p', { class: 'placeholder' }, 'Loading the consult…'));
  const root = h('section', { class: 'consult', id: 'consult', 'aria-labelledby': 'page-title', dataset: { state: '', media: 'out', sessionId: '' } },
    h('header', { class: 'page-header' },
      h('div', {}, title, subtitle),
      stateTag),
    problem,
    stale.element,
    body);
  replaceChildren(container, root);

  // Pieces of the room, built once the consult is known.
  let room = null;

  if (!address || (!bySession && params.length !== 1) || (bySession && params.length !== 2) || !isUuid(address)) {
    showBodyMessage('No consult at this address.', 'Open a video consult from a video appointment: your schedule or your appointments.', true);
  } else {
    load();
  }

  function showBodyMessage(heading, text, isError = false, extra = null) {
    body.setAttribute('aria-busy', 'false');
    replaceChildren(body, h('div', { class: isError ? 'notice notice--error' : 'empty-state' },
      h('strong', {}, heading), text ? h('p', {}, text) : null, extra));
  }

  // ---- Finding the consult -------------------------------------------------------------------

  async function load() {
    clearTimeout(waitTimer);
    let found;
    try {
      found = await findConsult();
    } catch (failure) {
      if (!mounted) return;
      if (failure.status === 404 && !bySession && user.role !== 'doctor') {
        // Not opened yet (or not this user's appointment, which the hub does not tell a patient).
        waitTimer = setTimeout(load, WAITING_POLL_MS);
        if (body.querySelector('.consult-waiting')) return; // said already; keep the reader's place
        showBodyMessage('Waiting for your doctor to open the consult room…',
          'This page joins you automatically as soon as they do; keep it open.', false,
          h('span', { class: 'consult-waiting', dataset: { waiting: 'true' } }));
        subtitle.textContent = 'Your video consult';
        return;
      }
      showBodyMessage('The consult cannot be opened.', failure.detail || failure.message, true);
      return;
    }
    if (!mounted) return;
    consult = found;
    openRoom();
  }

  async function findConsult() {
    if (bySession) return request('GET', `/api/consults/${address}`);
    if (user.role !== 'doctor') return request('GET', `/api/appointments/${address}/consult`);
    try {
      return await request('POST', `/api/appointments/${address}/consult`);
    } catch (failure) {
      // Not another doctor's: an appointment no longer active may still have a consult to show.
      if (failure.status !== 409) throw failure;
      try {
        return await request('GET', `/api/appointments/${address}/consult`);
      } catch {
        throw failure;
      }
    }
  }

  // ---- The room ------------------------------------------------------------------------------

  function openRoom() {
    topic = consult.topic;
    root.dataset.sessionId = consult.id;
    for (const participant of consult.participants || []) participants.set(participant.user_id, participant);
    buildRoom();
    renderHeader();
    renderParticipants();
    body.setAttribute('aria-busy', 'false');
    replaceChildren(body, room.element);

    request('GET', `/api/appointments/${consult.appointment_id}`).then((answer) => {
      if (!mounted) return;
      appointment = answer.appointment || answer;
      renderHeader();
    }).catch(() => {});

    unsubscribe = live.subscribe(topic, onTopicMessage);
    stopRoom = live.onRoom(topic, onRoomMessage);
    loadChatHistory();
    if (isDoctor()) {
      readStats();
      statsTimer = setInterval(readStats, STATS_EVERY_MS);
    }
    if (consult.state === 'ended') {
      showEnded();
      return;
    }
    enterRoom();
  }

  function isDoctor() {
    return consult && consult.you && consult.you.role === 'doctor';
  }

  function ended() {
    return consult && consult.state === 'ended';
  }

  function buildRoom() {
    const localVideo = h('video', { class: 'consult-local-video', id: 'consult-local-video', autoplay: true, playsinline: true, muted: true });
    localVideo.muted = true; // never play our own microphone back
    const localTile = h('figure', { class: 'consult-tile consult-tile--local' },
      localVideo,
      h('div', { class: 'consult-tile__off', hidden: true }, 'Camera off'),
      h('figcaption', { class: 'consult-tile__label' }, 'You'));
    const remoteArea = h('div', { class: 'consult-remotes', 'aria-live': 'off' });
    const waitingNote = h('p', { class: 'consult-remotes__empty placeholder' }, 'Waiting for the others to join…');
    const mediaStatus = h('p', { class: 'consult-media-status', role: 'status', id: 'consult-media-status' });
    const audioButton = h('button', { type: 'button', class: 'button', id: 'consult-toggle-audio', 'aria-pressed': 'false', onclick: () => setMuted('audio') }, 'Mute microphone');
    const videoButton = h('button', { type: 'button', class: 'button', id: 'consult-toggle-video', 'aria-pressed': 'false', onclick: () => setMuted('video') }, 'Turn camera off');
    const leaveButton = h('button', { type: 'button', class: 'button button--danger-quiet', id: 'consult-leave', onclick: leave }, 'Leave consult');
    const rejoinButton = h('button', { type: 'button', class: 'button button--primary', id: 'consult-rejoin', hidden: true, onclick: rejoin }, 'Join again');
    const soundButton = h('button', { type: 'button', class: 'button', id: 'consult-sound', hidden: true, onclick: unblockSound }, 'Turn sound on');
    const controls = h('div', { class: 'consult-controls', role: 'group', 'aria-label': 'Your microphone and camera' },
      audioButton, videoButton, soundButton, leaveButton, rejoinButton);
    const endedNotice = h('div', { class: 'consult-ended', hidden: true, role: 'status', id: 'consult-ended' });

    const participantList = h('ul', { class: 'consult-participants', id: 'consult-participants', 'aria-label': 'Participants' });

    const chatList = h('ol', { class: 'chat-list', id: 'consult-chat', 'aria-label': 'Chat messages' });
    const chatInput = h('textarea', { id: 'consult-chat-input', name: 'message', rows: '2', maxlength: '4000', 'aria-label': 'Message' });
    const chatError = h('div', { class: 'form-error', role: 'alert' });
    const chatSend = h('button', { type: 'submit', class: 'button button--primary', id: 'consult-chat-send' }, 'Send');
    const chatForm = h('form', { class: 'chat-form', novalidate: true, onsubmit: sendChat }, chatInput, chatSend);
    chatInput.addEventListener('keydown', (event) => {
      // Enter sends, Shift+Enter starts a new line.
      if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        chatForm.requestSubmit();
      }
    });

    const sideCards = [
      h('section', { class: 'card consult-card', 'aria-labelledby': 'consult-participants-title' },
        h('h2', { id: 'consult-participants-title' }, 'In the consult'), participantList),
      h('section', { class: 'card consult-card consult-chat', 'aria-labelledby': 'consult-chat-title' },
        h('h2', { id: 'consult-chat-title' }, 'Chat'), chatList, chatError, chatForm),
    ];

    let invite = null;
    let record = null;
    if (isDoctor()) {
      invite = buildInvite();
      sideCards.push(invite.element);
      record = buildRecordForm();
    }

    const stage = h('div', { class: 'consult-stage card' },
      h('div', { class: 'consult-videos' }, localTile, remoteArea),
      waitingNote,
      mediaStatus,
      controls);
    const chatClosed = h('p', { class: 'hint chat-closed', hidden: true }, 'The chat closed with the consult.');
    sideCards[1].append(chatClosed);
    const element = h('div', { class: 'consult__layout' },
      h('div', { class: 'consult__main' },
        endedNotice,
        stage,
        record ? record.element : null),
      h('div', { class: 'consult__side' }, sideCards));

    room = {
      element, localVideo, localTile, remoteArea, waitingNote, mediaStatus, audioButton, videoButton, leaveButton, rejoinButton,
      soundButton, controls, endedNotice, participantList, chatList, chatInput, chatError, chatSend, chatForm, chatClosed, invite, record,
      stage,
    };
  }

  function renderHeader() {
    root.dataset.state = consult.state;
    stateTag.hidden = false;
    stateTag.className = `consult-state consult-state--${consult.state}`;
    replaceChildren(stateTag, h('span', { class: 'status__mark', 'aria-hidden': 'true' }), STATE_LABELS[consult.state] || consult.state);
    const doctor = [...participants.values()].find((p) => p.role === 'doctor');
    const patient = [...participants.values()].find((p) => p.role === 'patient');
    const you = consult.you?.role;
    const other = you === 'patient'
      ? (appointment?.doctor_name || doctor?.display_name)
      : (appointment?.patient_name || patient?.display_name);
    title.textContent = other ? `Video consult with ${other}` : 'Video consult';
    document.title = `${title.textContent} · medhub`;
    const when = appointment ? [h('time', { datetime: appointment.start }, formatTime(appointment.start)), '–',
      h('time', { datetime: appointment.end }, formatTime(appointment.end))] : null;
    replaceChildren(subtitle,
      when ? ['Appointment ', when] : null,
      appointment?.reason ? ` · ${appointment.reason}` : null,
      you === 'guest' ? `${when ? ' · ' : ''}You are a guest of ${doctor?.display_name || 'the doctor'}` : null,
      !when && you !== 'guest' ? 'Your video consult' : null);
  }

  // ---- Live: the consult's topic (presence, mute states, chat, the end) ----------------------

  function onTopicMessage(message) {
    if (!mounted || message.topic !== topic) return;
    // Refusals naming the topic reach the room handler too; it says them once.
    if (message.type === 'error') return;
    if (message.type === 'snapshot') {
      const data = message.data || {};
      if (data.session) {
        consult = { ...consult, ...data.session };
      }
      for (const participant of data.participants || []) participants.set(participant.user_id, { ...participants.get(participant.user_id), ...participant });
      for (const chat of data.messages || []) addMessage(chat, { quiet: true });
      renderHeader();
      renderParticipants();
      if (ended()) showEnded();
      return;
    }
    if (!message.type.startsWith('consult.')) return;
    const data = message.data || {};
    const before = data.participant ? participants.get(data.participant.user_id) : null;
    for (const participant of [data.participant, ...(data.participants || [])].filter(Boolean)) {
      participants.set(participant.user_id, { ...participants.get(participant.user_id), ...participant });
    }
    for (const key of ['state', 'started_at', 'ended_at', 'record', 'appointment_status']) {
      if (data[key] !== undefined) consult = { ...consult, [key]: data[key] };
    }
    if (data.message) addMessage(data.message);
    if (message.type === 'consult.participant_joined' && data.participant && data.participant.user_id !== user.id
      && before?.connection !== 'connected') {
      announce(`${data.participant.display_name} joined.`);
    }
    if (message.type === 'consult.participant_left' && data.participant && data.participant.user_id !== user.id) {
      if (data.participant.connection !== 'connected') removeRemote(data.participant.user_id);
      announce(data.participant.connection === 'reconnecting'
        ? `${data.participant.display_name} lost the connection; they may come back.`
        : `${data.participant.display_name} left the consult.`);
    }
    renderHeader();
    renderParticipants();
    if (message.type === 'consult.ended' || ended()) showEnded();
  }

  // ---- Joining and the peer connection -------------------------------------------------------

  async function enterRoom() {
    wantIn = true;
    await startLocalMedia();
    if (!mounted || !wantIn || ended()) return;
    if (!stopStatus) stopStatus = live.onStatus(onLiveStatus);
    else if (live.status === 'connected') join();
  }

  async function startLocalMedia() {
    if (localStream) return;
    setMedia(media, 'Starting your camera and microphone…');
    try {
      const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: { ideal: 640 }, height: { ideal: 480 } } });
      if (!mounted || ended() || !wantIn) {
        stream.getTracks().forEach((track) => track.stop());
        return;
      }
      localStream = stream;
      for (const track of localStream.getAudioTracks()) track.enabled = audioOn;
      for (const track of localStream.getVideoTracks()) track.enabled = videoOn;
      room.localVideo.srcObject = localStream;
      room.localVideo.play().catch(() => {});
      room.localTile.classList.remove('consult-tile--no-media');
    } catch (failure) {
      // The others can still be seen and heard; say why we are not.
      room.localTile.classList.add('consult-tile--no-media');
      replaceChildren(problem, h('div', { class: 'notice notice--warning' },
        h('strong', {}, 'Your camera and microphone are not available. '),
        failure.name === 'NotAllowedError'
          ? 'The browser was not allowed to use them; allow them for this site and join again. '
          : `${failure.message || failure.name}. `,
        'You join without sending sound or video.'));
    }
    renderControls();
  }

  function onLiveStatus(status) {
    if (!mounted) return;
    if (status === 'connected') {
      if (wantIn && !ended() && (media === 'out' || media === 'reconnecting')) join();
      return;
    }
    // The hub drops our rooms with the socket: this peer connection is over.
    if (media === 'in' || media === 'joining') {
      closePeer();
      setMedia('reconnecting', 'Connection to the hub lost; rejoining when it is back…');
    }
  }

  function join() {
    if (!wantIn || ended() || media === 'joining' || media === 'in') return;
    closePeer();
    rejoinAfterLeft = false;
    if (!live.send({ type: 'join', topic })) {
      setMedia('reconnecting', 'Waiting for the connection to the hub…');
      return;
    }
    setMedia('joining', 'Joining…');
  }

  function onRoomMessage(message) {
    if (!mounted) return;
    switch (message.type) {
      case 'joined':
        setMedia('in', 'Joined; connecting media…');
        syncMuteWithHub();
        break;
      case 'signal':
        signalChain = signalChain.then(() => onSignal(message)).catch((error) => {
          console.warn('medhub consult: a signal could not be applied', error);
          setMedia(media, `Media problem: ${error.message || error}`);
        });
        break;
      case 'left':
        if (rejoinAfterLeft && wantIn && !ended()) {
          media = 'out';
          join();
        }
        break;
      case 'muted':
        break;
      case 'error':
        onRoomError(message);
        break;
      default:
        break;
    }
  }

  function onRoomError(message) {
    switch (message.error) {
      case 'ended':
        consult = { ...consult, state: 'ended' };
        showEnded();
        return;
      case 'already_joined':
        // This connection is still in the room from an earlier join: leave it and join afresh.
        rejoinAfterLeft = true;
        live.send({ type: 'leave', topic });
        return;
      case 'closed':
        // The hub hung up this peer: the consult ended (its event follows) or this user joined
        // from another window. Rejoining by ourselves could take the room back and forth between
        // two windows, so the user decides.
        closePeer();
        if (media === 'joining' || media === 'in') {
          wantIn = false;
          setMedia('out', 'The hub closed your media connection (the consult ended, or you joined from another window).');
        }
        return;
      case 'not_joined':
        // A signal reached a connection that is not in the room (it was replaced): join again.
        closePeer();
        if (media === 'joining' || media === 'in') {
          media = 'out';
          if (wantIn && !ended()) join();
        }
        return;
      case 'forbidden':
      case 'not_found':
      case 'unknown_topic':
        if (media !== 'joining') {
          // The topic's subscription was refused, not our place in the room.
          replaceChildren(problem, h('div', { class: 'notice notice--error' },
            h('strong', {}, 'Live updates of this consult are refused. '), message.detail || message.error));
          return;
        }
        wantIn = false;
        closePeer();
        setMedia('out', '');
        replaceChildren(problem, h('div', { class: 'notice notice--error' },
          h('strong', {}, 'You cannot join this consult. '), message.detail || message.error));
        return;
      case 'unavailable':
        // A subscription the hub could not read yet is retried by the live connection itself.
        if (media !== 'joining') return;
        wantIn = false;
        closePeer();
        setMedia('out', '');
        replaceChildren(problem, h('div', { class: 'notice notice--error' },
          h('strong', {}, 'Video is not available right now. '), message.detail || '', ' The chat still works; press "Join again" in a moment.'));
        return;
      default:
        // A signal the hub could not use (media, invalid_message): worth a line, not a stop.
        console.warn(`medhub consult: ${message.error}: ${message.detail || ''}`);
        setMedia(media, `Media problem: ${message.detail || message.error}`);
    }
  }

  function createPeer() {
    const peer = new RTCPeerConnection({ iceServers: [] });
    peer.localTracksAttached = false;
    peer.addEventListener('icecandidate', (event) => {
      if (pc !== peer || !event.candidate) return;
      live.send({ type: 'signal', topic, kind: 'candidate', candidate: event.candidate.toJSON() });
    });
    peer.addEventListener('track', (event) => {
      if (pc !== peer) return;
      const stream = event.streams[0];
      if (stream) showRemote(stream, event.track);
    });
    peer.addEventListener('connectionstatechange', () => {
      if (pc !== peer) return;
      renderMediaStatus();
      if (peer.connectionState === 'failed' && wantIn && !ended()) {
        // The hub gives up on a failed peer too: leave and join afresh with a new one.
        closePeer();
        rejoinAfterLeft = true;
        live.send({ type: 'leave', topic });
      }
    });
    return peer;
  }

  async function onSignal(message) {
    if (!mounted || ended()) return;
    if (message.kind === 'offer') {
      // A late offer after we left or lost the connection belongs to a peer that is gone.
      if (media !== 'joining' && media !== 'in') return;
      if (!pc) pc = createPeer();
      const peer = pc;
      await peer.setRemoteDescription({ type: 'offer', sdp: message.sdp });
      if (!peer.localTracksAttached) {
        await attachLocalTracks(peer, message.sdp);
        peer.localTracksAttached = true;
      }
      const answer = await peer.createAnswer();
      await peer.setLocalDescription(answer);
      if (pc !== peer) return;
      live.send({ type: 'signal', topic, kind: 'answer', sdp: peer.localDescription.sdp });
      dropEndedRemotes(peer);
      return;
    }
    if (message.kind === 'candidate') {
      if (!pc || !message.candidate || !message.candidate.candidate) return;
      try {
        await pc.addIceCandidate(message.candidate);
      } catch (error) {
        console.warn('medhub consult: an ICE candidate of the hub was refused', error);
      }
      return;
    }
    if (message.kind === 'state') {
      hubMediaState = message.state;
      if (message.state === 'closed') {
        closePeer();
        if (ended()) return;
        if (media === 'in' || media === 'joining') {
          // The consult ended (its event follows) or we joined from elsewhere.
          media = 'out';
          wantIn = false;
          setMedia('out', 'The hub closed your media connection (the consult ended, or you joined from another window).');
          renderControls();
        }
        return;
      }
      renderMediaStatus();
    }
  }

  /**
   * Puts our microphone and camera on the transceivers the hub offered to receive them on (its
   * recvonly m-lines); addTrack would pick the same ones, but could pick another participant's
   * forwarded track's transceiver should the order ever change.
   */
  async function attachLocalTracks(peer, offerSdp) {
    if (!localStream) return;
    const receiving = receivingMids(offerSdp);
    for (const track of localStream.getTracks()) {
      const transceiver = peer.getTransceivers().find((t) => t.mid !== null && t.mid === receiving[track.kind]);
      if (transceiver) {
        await transceiver.sender.replaceTrack(track);
        transceiver.sender.setStreams?.(localStream);
        transceiver.direction = 'sendonly';
      } else {
        peer.addTrack(track, localStream);
      }
    }
  }

  function closePeer() {
    const peer = pc;
    pc = null;
    hubMediaState = null;
    if (peer) {
      try {
        peer.close();
      } catch {
        // closed already
      }
    }
    for (const id of [...remoteTiles.keys()]) removeRemote(id);
    renderMediaStatus();
  }

  function setMedia(state, text) {
    media = state;
    root.dataset.media = state;
    if (room) {
      room.mediaStatus.textContent = text ?? '';
      renderControls();
    }
  }

  function renderMediaStatus() {
    if (!room) return;
    if (media === 'in') {
      const state = pc ? pc.connectionState : hubMediaState;
      room.mediaStatus.textContent = MEDIA_STATE_LABELS[state] || 'Connecting media…';
      room.mediaStatus.dataset.peer = state || '';
    }
    renderWaiting();
  }

  function renderControls() {
    if (!room) return;
    const hasAudio = Boolean(localStream && localStream.getAudioTracks().length);
    const hasVideo = Boolean(localStream && localStream.getVideoTracks().length);
    const over = ended();
    room.audioButton.disabled = over || !hasAudio;
    room.videoButton.disabled = over || !hasVideo;
    room.audioButton.setAttribute('aria-pressed', String(!audioOn));
    room.videoButton.setAttribute('aria-pressed', String(!videoOn));
    room.audioButton.textContent = audioOn ? 'Mute microphone' : 'Unmute microphone';
    room.videoButton.textContent = videoOn ? 'Turn camera off' : 'Turn camera on';
    room.localTile.querySelector('.consult-tile__off').hidden = videoOn && hasVideo;
    room.leaveButton.hidden = over || !wantIn;
    room.rejoinButton.hidden = over || wantIn;
    room.controls.hidden = over;
  }

  function setMuted(kind) {
    if (kind === 'audio') audioOn = !audioOn;
    else videoOn = !videoOn;
    if (localStream) {
      for (const track of localStream.getAudioTracks()) track.enabled = audioOn;
      for (const track of localStream.getVideoTracks()) track.enabled = videoOn;
    }
    if (media === 'in') live.send({ type: 'mute', topic, audio: audioOn, video: videoOn });
    renderControls();
    announce(kind === 'audio' ? (audioOn ? 'Microphone on.' : 'Microphone muted.') : (videoOn ? 'Camera on.' : 'Camera off.'));
  }

  /** Tells the hub our mute state after a join, when it remembers another one. */
  function syncMuteWithHub() {
    const known = participants.get(user.id);
    if (known && known.audio === audioOn && known.video === videoOn) return;
    live.send({ type: 'mute', topic, audio: audioOn, video: videoOn });
  }

  function leave() {
    wantIn = false;
    rejoinAfterLeft = false;
    if (media === 'in' || media === 'joining') live.send({ type: 'leave', topic });
    closePeer();
    stopLocalMedia();
    setMedia('left', 'You left the consult. You can join again while it lasts.');
    announce('You left the consult.');
    room.rejoinButton.focus();
  }

  function rejoin() {
    replaceChildren(problem);
    media = 'out';
    enterRoom().then(() => {
      if (mounted && wantIn) room.leaveButton.focus();
    });
  }

  function stopLocalMedia() {
    if (localStream) localStream.getTracks().forEach((track) => track.stop());
    localStream = null;
    if (room) room.localVideo.srcObject = null;
  }

  // ---- Remote videos -------------------------------------------------------------------------

  function showRemote(stream, track) {
    const id = stream.id;
    let entry = remoteTiles.get(id);
    if (!entry) {
      const video = h('video', { class: 'consult-remote-video', autoplay: true, playsinline: true, dataset: { participantId: id } });
      const label = h('figcaption', { class: 'consult-tile__label' });
      const tile = h('figure', { class: 'consult-tile consult-tile--remote', dataset: { participantId: id } }, video, label);
      entry = { tile, video, label, stream: null };
      remoteTiles.set(id, entry);
      room.remoteArea.append(tile);
    }
    if (entry.stream !== stream) {
      entry.stream = stream;
      entry.video.srcObject = stream;
      stream.addEventListener('removetrack', () => {
        if (remoteTiles.get(id)?.stream === stream && stream.getTracks().length === 0) removeRemote(id);
      });
    }
    track.addEventListener('ended', () => {
      if (remoteTiles.get(id)?.stream === stream && stream.getTracks().every((t) => t.readyState === 'ended')) removeRemote(id);
    });
    if (soundBlocked) entry.video.muted = true;
    playRemote(entry.video);
    labelRemote(id);
    renderWaiting();
  }

  function playRemote(video) {
    video.play().catch((error) => {
      if (error.name !== 'NotAllowedError' || video.muted) return;
      // No user gesture on this page yet: play without sound and offer to turn it on.
      soundBlocked = true;
      for (const entry of remoteTiles.values()) entry.video.muted = true;
      video.play().catch(() => {});
      room.soundButton.hidden = false;
    });
  }

  function unblockSound() {
    soundBlocked = false;
    for (const entry of remoteTiles.values()) {
      entry.video.muted = false;
      entry.video.play().catch(() => {});
    }
    room.soundButton.hidden = true;
  }

  /** Drops tiles whose tracks the latest negotiation stopped (someone left). */
  function dropEndedRemotes(peer) {
    const receiving = new Set();
    for (const transceiver of peer.getTransceivers()) {
      const direction = transceiver.currentDirection;
      if (direction === 'recvonly' || direction === 'sendrecv') receiving.add(transceiver.receiver.track.id);
    }
    for (const [id, entry] of remoteTiles) {
      const tracks = entry.stream ? entry.stream.getTracks() : [];
      if (!tracks.some((track) => receiving.has(track.id))) removeRemote(id);
    }
  }

  function removeRemote(id) {
    const entry = remoteTiles.get(id);
    if (!entry) return;
    remoteTiles.delete(id);
    entry.video.srcObject = null;
    entry.tile.remove();
    renderWaiting();
  }

  function labelRemote(id) {
    const entry = remoteTiles.get(id);
    if (!entry) return;
    const participant = participants.get(id);
    const text = participant ? `${participant.display_name} (${ROLE_LABELS[participant.role] || participant.role})` : 'Participant';
    const off = participant && participant.video === false ? ' · camera off' : '';
    const muted = participant && participant.audio === false ? ' · muted' : '';
    entry.label.textContent = `${text}${off}${muted}`;
    entry.video.setAttribute('aria-label', `Video of ${text}`);
  }

  function renderWaiting() {
    if (!room) return;
    room.waitingNote.hidden = remoteTiles.size > 0 || ended() || media === 'left';
  }

  // ---- Participants --------------------------------------------------------------------------

  function renderParticipants() {
    if (!room) return;
    const order = { doctor: 0, patient: 1, guest: 2 };
    const list = [...participants.values()].sort((a, b) => (order[a.role] ?? 3) - (order[b.role] ?? 3)
      || String(a.display_name).localeCompare(String(b.display_name)));
    replaceChildren(room.participantList, list.map((participant) => {
      const you = participant.user_id === user.id;
      const stats = mediaStats.get(participant.user_id);
      const states = [participant.audio === false ? 'microphone muted' : null, participant.video === false ? 'camera off' : null].filter(Boolean);
      return h('li', { class: ['consult-participant', `consult-participant--${participant.connection}`], dataset: { participantId: participant.user_id, connection: participant.connection, role: participant.role } },
        h('span', { class: 'consult-participant__who' },
          h('strong', {}, participant.display_name, you ? ' (you)' : ''),
          h('span', { class: 'muted' }, ROLE_LABELS[participant.role] || participant.role)),
        h('span', { class: ['presence', `presence--${participant.connection}`] },
          h('span', { class: 'status__mark', 'aria-hidden': 'true' }), CONNECTION_LABELS[participant.connection] || participant.connection),
        states.length ? h('span', { class: 'consult-participant__mute muted' }, states.join(', ')) : null,
        isDoctor() && stats && participant.connection === 'connected' ? statsLine(stats) : null);
    }));
    for (const id of remoteTiles.keys()) labelRemote(id);
  }

  function statsLine(stats) {
    const kbps = Math.round((stats.bitrate_in_bps || 0) / 1000);
    const received = stats.packets_received || 0;
    const lost = stats.packets_lost || 0;
    const loss = received + lost > 0 ? ((100 * lost) / (received + lost)).toFixed(1) : '0.0';
    return h('span', { class: 'consult-participant__stats', dataset: { packetsReceived: String(received) } },
      `${kbps} kbit/s in · ${received} packets · ${loss}% lost · ${stats.tracks_in || 0} tracks in, ${stats.tracks_out || 0} out`);
  }

  async function readStats() {
    if (!mounted || !consult || ended()) return;
    try {
      const answer = await request('GET', `/api/consults/${consult.id}/stats`);
      if (!mounted) return;
      mediaStats.clear();
      for (const participant of answer.participants || []) {
        if (participant.media) mediaStats.set(participant.user_id, participant.media);
      }
      renderParticipants();
    } catch {
      // Statistics are a help, not the consult: the next read may work.
    }
  }

  // ---- Chat ----------------------------------------------------------------------------------

  async function loadChatHistory() {
    try {
      let after = 0;
      for (;;) {
        const answer = await request('GET', `/api/consults/${consult.id}/messages`, { query: { after, limit: CHAT_HISTORY_LIMIT } });
        if (!mounted) return;
        for (const chat of answer.messages || []) addMessage(chat, { quiet: true });
        if (!answer.next_after) break;
        after = answer.next_after;
      }
    } catch (failure) {
      if (!mounted) return;
      room.chatError.textContent = `The earlier messages could not be read: ${failure.detail || failure.message}`;
    }
  }

  function addMessage(chat, { quiet = false } = {}) {
    if (!chat || messages.has(chat.seq)) return;
    messages.set(chat.seq, chat);
    if (!room) return;
    const mine = chat.sender_user_id === user.id;
    const item = h('li', { class: ['chat-message', mine ? 'chat-message--mine' : null], dataset: { seq: String(chat.seq), sender: chat.sender_user_id } },
      h('div', { class: 'chat-message__meta' },
        h('strong', {}, mine ? 'You' : chat.sender_name),
        chat.sender_role && !mine ? h('span', { class: 'muted' }, ` · ${ROLE_LABELS[chat.sender_role] || chat.sender_role}`) : null,
        ' ', timeElement(chat.sent_at, formatTime(chat.sent_at))),
      h('p', { class: 'chat-message__body' }, chat.body));
    // In seq order, whichever arrives first (history or live).
    const next = [...room.chatList.children].find((child) => Number(child.dataset.seq) > chat.seq);
    room.chatList.insertBefore(item, next || null);
    if (!next) room.chatList.scrollTop = room.chatList.scrollHeight;
    if (!quiet && !mine) announce(`${chat.sender_name}: ${chat.body}`);
  }

  async function sendChat(event) {
    event.preventDefault();
    const text = room.chatInput.value.trim();
    room.chatError.replaceChildren();
    if (!text) {
      room.chatInput.focus();
      return;
    }
    room.chatSend.disabled = true;
    try {
      const answer = await request('POST', `/api/consults/${consult.id}/messages`, { body: { body: text } });
      if (!mounted) return;
      room.chatInput.value = '';
      if (answer && answer.message) addMessage(answer.message, { quiet: true });
    } catch (failure) {
      if (!mounted) return;
      room.chatError.textContent = `Not sent: ${failure.detail || failure.message}`;
    } finally {
      if (mounted) {
        room.chatSend.disabled = ended();
        room.chatInput.focus();
      }
    }
  }

  // ---- The doctor: guests, the record and the end --------------------------------------------

  function buildInvite() {
    const input = h('input', { id: 'consult-guest', name: 'user_id', spellcheck: 'false', autocomplete: 'off', 'aria-describedby': 'consult-guest-hint' });
    const result = h('div', { class: 'consult-invite__result', role: 'status' });
    const submit = h('button', { type: 'submit', class: 'button' }, 'Invite');
    async function onSubmit(event) {
      event.preventDefault();
      const id = input.value.trim();
      result.replaceChildren();
      if (!isUuid(id)) {
        input.setAttribute('aria-invalid', 'true');
        replaceChildren(result, h('p', { class: 'form-error' }, 'Enter the guest\'s user id (a UUID, as in the admin\'s user list).'));
        input.focus();
        return;
      }
      input.removeAttribute('aria-invalid');
      submit.disabled = true;
      try {
        const participant = await request('POST', `/api/consults/${consult.id}/guests`, { body: { user_id: id } });
        if (!mounted) return;
        participants.set(participant.user_id, { ...participants.get(participant.user_id), ...participant });
        renderParticipants();
        input.value = '';
        const link = `${location.origin}${location.pathname}#/consult/session/${consult.id}`;
        replaceChildren(result, h('p', { class: 'notice notice--success' },
          h('strong', {}, `${participant.display_name} is invited. `), 'They join at ', h('code', {}, link)));
      } catch (failure) {
        if (!mounted) return;
        if (failure.field === 'user_id') input.setAttribute('aria-invalid', 'true');
        replaceChildren(result, h('p', { class: 'form-error' }, `Not invited: ${failure.detail || failure.message}`));
      } finally {
        submit.disabled = ended();
      }
    }
    const element = h('section', { class: 'card consult-card consult-invite', 'aria-labelledby': 'consult-invite-title' },
      h('h2', { id: 'consult-invite-title' }, 'Invite a guest'),
      h('form', { novalidate: true, onsubmit: onSubmit },
        h('div', { class: 'field' },
          h('label', { for: 'consult-guest' }, 'Staff user id'),
          input,
          h('p', { class: 'hint', id: 'consult-guest-hint' }, 'An interpreter or a specialist of your organisation; patients cannot be guests.')),
        submit),
      result);
    return { element, submit, input };
  }

  function buildRecordForm() {
    const fields = [
      { name: 'chief_complaint', label: 'Chief complaint', rows: 2, required: true },
      { name: 'assessment', label: 'Assessment', rows: 3, required: true },
      { name: 'plan', label: 'Plan', rows: 3, required: true },
      { name: 'follow_up', label: 'Follow-up', rows: 2, required: false, hint: 'Optional: when and how to follow up.' },
    ];
    const inputs = {};
    const error = h('div', { class: 'form-error', role: 'alert', id: 'consult-record-error' });
    const submit = h('button', { type: 'submit', class: 'button button--danger', id: 'consult-end' }, 'End consult');
    const form = h('form', { class: 'consult-record__form', novalidate: true, onsubmit: endConsult },
      fields.map((field) => {
        const id = `consult-${field.name.replace('_', '-')}`;
        inputs[field.name] = h('textarea', { id, name: field.name, rows: String(field.rows), maxlength: String(RECORD_LIMIT), required: field.required });
        return h('div', { class: 'field' },
          h('label', { for: id }, field.label, field.required ? null : h('span', { class: 'muted' }, ' (optional)')),
          inputs[field.name],
          field.hint ? h('p', { class: 'hint' }, field.hint) : null);
      }),
      error,
      h('div', { class: 'form-actions' },
        h('p', { class: 'hint' }, 'Ending files this record, completes the appointment and hangs up everyone.'),
        submit));
    const element = h('section', { class: 'card consult-card consult-record', 'aria-labelledby': 'consult-record-title' },
      h('h2', { id: 'consult-record-title' }, 'Consult record'), form);

    async function endConsult(event) {
      event.preventDefault();
      error.replaceChildren();
      const values = Object.fromEntries(Object.entries(inputs).map(([name, input]) => [name, input.value.trim()]));
      for (const input of Object.values(inputs)) input.removeAttribute('aria-invalid');
      const missing = fields.find((field) => field.required && !values[field.name]);
      if (missing) {
        error.textContent = `Write the ${missing.label.toLowerCase()} before ending the consult.`;
        inputs[missing.name].setAttribute('aria-invalid', 'true');
        inputs[missing.name].focus();
        return;
      }
      submit.disabled = true;
      submit.textContent = 'Ending…';
      try {
        const body = { chief_complaint: values.chief_complaint, assessment: values.assessment, plan: values.plan };
        if (values.follow_up) body.follow_up = values.follow_up;
        const answer = await request('POST', `/api/consults/${consult.id}/end`, { body });
        if (!mounted) return;
        consult = { ...consult, ...answer };
        for (const participant of answer.participants || []) participants.set(participant.user_id, participant);
        renderHeader();
        renderParticipants();
        showEnded();
        announce('The consult ended; the record is filed and the appointment completed.');
      } catch (failure) {
        if (!mounted) return;
        error.replaceChildren(h('strong', {}, 'Not ended. '), failure.detail || failure.message);
        if (inputs[failure.field]) {
          inputs[failure.field].setAttribute('aria-invalid', 'true');
          inputs[failure.field].focus();
        }
        if (failure.status === 409) load409();
      } finally {
        if (mounted) {
          submit.disabled = ended();
          submit.textContent = 'End consult';
        }
      }
    }

    /** Ended elsewhere (another window of the doctor's): show it as the hub has it. */
    function load409() {
      request('GET', `/api/consults/${consult.id}`).then((answer) => {
        if (!mounted) return;
        consult = { ...consult, ...answer };
        if (ended()) showEnded();
      }).catch(() => {});
    }

    return { element, inputs, submit };
  }

  /** The consult is over: hang up, stop the camera, and say so with what was recorded. */
  function showEnded() {
    if (!room) return;
    wantIn = false;
    rejoinAfterLeft = false;
    closePeer();
    stopLocalMedia();
    setMedia('out', '');
    room.mediaStatus.textContent = '';
    root.dataset.state = 'ended';
    root.dataset.appointmentStatus = consult.appointment_status || '';
    renderHeader();
    renderControls();
    renderWaiting();
    clearInterval(statsTimer);
    room.chatInput.disabled = true;
    room.chatSend.disabled = true;
    room.chatForm.hidden = true;
    room.chatClosed.hidden = false;
    if (room.invite) room.invite.element.hidden = true;
    if (room.record) room.record.element.hidden = true;
    room.stage.hidden = true;
    const record = consult.record;
    room.endedNotice.hidden = false;
    replaceChildren(room.endedNotice, h('div', { class: 'notice notice--info' },
      h('strong', {}, 'This consult has ended'),
      consult.ended_at ? [' at ', timeElement(consult.ended_at, formatTime(consult.ended_at))] : null,
      '.',
      consult.appointment_status ? h('p', {}, 'Appointment: ', appointmentStatusBadge(consult.appointment_status)) : null,
      record ? h('dl', { class: 'consult-record__summary' },
        h('dt', {}, 'Chief complaint'), h('dd', {}, record.chief_complaint),
        h('dt', {}, 'Assessment'), h('dd', {}, record.assessment),
        h('dt', {}, 'Plan'), h('dd', {}, record.plan),
        record.follow_up ? [h('dt', {}, 'Follow-up'), h('dd', {}, record.follow_up)] : null) : null));
  }

  return () => {
    mounted = false;
    clearTimeout(waitTimer);
    clearInterval(statsTimer);
    if (media === 'in' || media === 'joining') live.send({ type: 'leave', topic });
    wantIn = false;
    closePeer();
    stopLocalMedia();
    if (stopStatus) stopStatus();
    if (stopRoom) stopRoom();
    if (unsubscribe) unsubscribe();
    stale.stop();
  };
}

/** The mids of the offer's m-lines the hub receives on (`a=recvonly`), the first per kind. */
function receivingMids(sdp) {
  const found = {};
  for (const section of sdp.split(/\r?\nm=/).slice(1)) {
    const kind = section.split(' ', 1)[0];
    const mid = /\r?\na=mid:(\S+)/.exec(section);
    if (mid && /\r?\na=recvonly/.test(section) && !(kind in found)) found[kind] = mid[1];
  }
  return found;
}
