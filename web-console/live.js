// The live connection to the hub's WebSocket (`/ws`): one per tab, shared by every view.
//
// It authenticates first, then (re)subscribes the topics the views asked for. It remembers, per
// topic, the last seq it delivered, so after any reconnect (network loss, `too_slow`, a hub
// restart) it resubscribes with `since` and the view receives exactly the events it missed, or a
// fresh snapshot when the hub has no longer got them. Reconnects back off exponentially (capped);
// the access token is renewed before it expires and sent again on the open connection.
//
// Consult rooms (video consults) talk over the same socket: a view that joins a room registers a
// room handler for its topic (`onRoom`) and sends `join`, `signal`, `mute` and `leave` with
// `send`; the handler receives the hub's `joined`, `signal`, `muted`, `left` and the `error`s
// naming that topic. Rooms are not rejoined here: the hub drops a connection's rooms when it
// closes, so the view rejoins (with a new peer connection) when the status is `connected` again.

import { ApiError, freshAccessToken, refresh } from './api.js';

const PING_EVERY_MS = 20_000;
/** A ping not answered (by its pong or any other message) within this long means a dead line. */
const PONG_LIMIT_MS = 15_000;
/** A socket not `ready` this long after it was created is given up and replaced. */
const READY_LIMIT_MS = 15_000;
/** A connection counts as healthy (and the backoff starts over) after staying up this long. */
const STABLE_AFTER_MS = 10_000;
const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 15_000;
/** A refused `subscribe` because the hub could not read the topic is retried after this. */
const UNAVAILABLE_RETRY_MS = 3_000;

/**
 * One topic a view watches. `onMessage` receives the topic's `snapshot`, its events
 * (`{type, topic, seq, ts, data}`) and its `error`s (`forbidden`, `unknown_topic`, ...).
 */
class Subscription {
  constructor(topic, onMessage) {
    this.topic = topic;
    this.onMessage = onMessage;
    /** The seq of the last snapshot or event delivered; null until the first snapshot. */
    this.lastSeq = null;
    this.refused = false;
    this.retryTimer = null;
    /** Set while a resubscribe after a seq gap is on its way, so one gap asks only once. */
    this.resyncing = false;
  }
}

export class LiveConnection {
  constructor() {
    this.socket = null;
    /** "idle" | "connecting" | "connected" | "reconnecting" | "closed" */
    this.status = 'idle';
    this.subscriptions = new Map();
    /** topic → the handler of a consult room's signaling (see `onRoom`) */
    this.roomHandlers = new Map();
    this.statusListeners = new Set();
    this.attempt = 0;
    this.reconnectTimer = null;
    this.pingTimer = null;
    this.reauthTimer = null;
    this.authenticated = false;
    this.awaitingPongSince = null;
    this.readyTimer = null;
    this.stableTimer = null;
    this.stopped = false;
    this.running = false;
    this.opening = false;
    /** Set when the hub refused our token at `auth`: the next attempt refreshes it first. */
    this.tokenRefused = false;
    // Back online, or back to a hidden tab whose throttled timers kept the backoff long: try now.
    this.onOnline = () => {
      if (this.status === 'reconnecting' && document.visibilityState === 'visible') this.reconnectNow();
    };
  }

  /** Calls `listener(status)` now and on every change; returns an unsubscribe function. */
  onStatus(listener) {
    this.statusListeners.add(listener);
    listener(this.status);
    return () => this.statusListeners.delete(listener);
  }

  setStatus(status) {
    if (status === this.status) return;
    this.status = status;
    for (const listener of this.statusListeners) listener(status);
  }

  /**
   * Watches `topic`; returns a function that stops watching. The first message is normally a
   * `snapshot`; after a reconnect, the missed events (or a new snapshot) follow automatically.
   */
  subscribe(topic, onMessage) {
    const previous = this.subscriptions.get(topic);
    if (previous) clearTimeout(previous.retryTimer);
    const subscription = new Subscription(topic, onMessage);
    this.subscriptions.set(topic, subscription);
    this.start();
    if (this.authenticated) this.sendSubscribe(subscription);
    return () => this.unsubscribe(subscription);
  }

  unsubscribe(subscription) {
    if (this.subscriptions.get(subscription.topic) !== subscription) return;
    clearTimeout(subscription.retryTimer);
    this.subscriptions.delete(subscription.topic);
    if (this.authenticated) this.send({ type: 'unsubscribe', topic: subscription.topic });
  }

  /**
   * Receives a consult room's signaling for `topic` (`joined`, `signal`, `muted`, `left`, and the
   * `error`s naming the topic, which its subscription, if any, also receives); returns a function
   * that stops it. Messages go out with `send`.
   */
  onRoom(topic, handler) {
    this.roomHandlers.set(topic, handler);
    this.start();
    return () => {
      if (this.roomHandlers.get(topic) === handler) this.roomHandlers.delete(topic);
    };
  }

  /** Asks for a fresh snapshot of `topic` (when a view finds its state inconsistent). */
  resync(topic) {
    const subscription = this.subscriptions.get(topic);
    if (!subscription) return;
    subscription.lastSeq = null;
    if (this.authenticated) this.sendSubscribe(subscription);
  }

  /** Opens the connection if it is not open or opening. */
  start() {
    if (this.stopped || this.running) return;
    this.running = true;
    window.addEventListener('online', this.onOnline);
    document.addEventListener('visibilitychange', this.onOnline);
    this.connect();
  }

  /** Closes for good (logout): no reconnect, all subscriptions dropped. */
  stop() {
    this.stopped = true;
    this.running = false;
    window.removeEventListener('online', this.onOnline);
    document.removeEventListener('visibilitychange', this.onOnline);
    for (const subscription of this.subscriptions.values()) clearTimeout(subscription.retryTimer);
    this.subscriptions.clear();
    this.roomHandlers.clear();
    this.clearTimers();
    if (this.socket) {
      const socket = this.socket;
      this.socket = null;
      socket.close(1000, 'signed out');
    }
    this.setStatus('closed');
  }

  clearTimers() {
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    this.clearConnectionTimers();
  }

  /** The timers that belong to one socket. */
  clearConnectionTimers() {
    clearInterval(this.pingTimer);
    clearTimeout(this.reauthTimer);
    clearTimeout(this.readyTimer);
    clearTimeout(this.stableTimer);
    this.pingTimer = this.reauthTimer = this.readyTimer = this.stableTimer = null;
    this.awaitingPongSince = null;
  }

  async connect() {
    if (this.opening || this.socket || this.stopped) return;
    this.opening = true;
    this.reconnectTimer = null;
    this.authenticated = false;
    this.setStatus(this.attempt === 0 && this.status !== 'reconnecting' ? 'connecting' : 'reconnecting');
    let credentials;
    try {
      if (this.tokenRefused) await refresh();
      credentials = await freshAccessToken(10_000);
      this.tokenRefused = false;
    } catch (error) {
      this.opening = false;
      // A refused refresh ends the session (the shell returns to login); anything else is a
      // network problem worth retrying.
      if (error instanceof ApiError && (error.status === 401 || error.status === 400)) {
        this.stop();
        return;
      }
      this.scheduleReconnect();
      return;
    }
    this.opening = false;
    if (this.stopped) return;
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const socket = new WebSocket(`${scheme}//${location.host}/ws`);
    this.socket = socket;
    this.readyTimer = setTimeout(() => {
      console.warn('medhub live: no answer from the hub; trying again');
      this.dropSocket();
    }, READY_LIMIT_MS);
    socket.addEventListener('open', () => {
      if (this.socket !== socket) return;
      this.tokenExpiresAt = credentials.expiresAt;
      this.send({ type: 'auth', token: credentials.token });
    });
    socket.addEventListener('message', (event) => {
      if (this.socket !== socket) return;
      this.awaitingPongSince = null; // any message shows the line is alive
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        console.warn('medhub live: ignoring a message that is not JSON');
        return;
      }
      this.onMessage(message);
    });
    socket.addEventListener('close', () => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.authenticated = false;
      this.clearConnectionTimers();
      if (!this.stopped) this.scheduleReconnect();
    });
    // An `error` event is always followed by `close`, which does the work.
  }

  scheduleReconnect() {
    if (this.stopped || this.reconnectTimer) return;
    this.setStatus('reconnecting');
    const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** this.attempt);
    // Jitter spreads the reconnects of many consoles after a hub restart.
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    this.attempt += 1;
    this.reconnectTimer = setTimeout(() => this.connect(), delay);
  }

  reconnectNow() {
    if (this.stopped) return;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    if (this.socket) this.dropSocket();
    else this.connect();
  }

  /** Closes the current socket; its `close` handler schedules the reconnect. */
  dropSocket() {
    if (this.socket && this.socket.readyState <= WebSocket.OPEN) this.socket.close(4000, 'reconnecting');
  }

  send(message) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify(message));
      return true;
    }
    return false;
  }

  sendSubscribe(subscription) {
    clearTimeout(subscription.retryTimer);
    subscription.retryTimer = null;
    subscription.refused = false;
    const message = { type: 'subscribe', topic: subscription.topic };
    if (subscription.lastSeq !== null) message.since = subscription.lastSeq;
    this.send(message);
  }

  onMessage(message) {
    switch (message.type) {
      case 'ready':
        return this.onReady(message);
      case 'pong':
      case 'subscribed':
      case 'unsubscribed':
        return undefined;
      case 'ping':
        this.send({ type: 'pong' });
        return undefined;
      case 'error':
        return this.onError(message);
      case 'snapshot':
        return this.deliverSnapshot(message);
      case 'joined':
      case 'signal':
      case 'muted':
      case 'left':
        this.roomHandlers.get(message.topic)?.(message);
        return undefined;
      case 'live':
        // Live-only telemetry gathered over a tick: the latest update per unit, each an event
        // envelope with seq 0.
        for (const update of message.updates || []) this.deliverEvent(update);
        return undefined;
      default:
        if (message.topic && typeof message.seq === 'number') return this.deliverEvent(message);
        console.warn('medhub live: unexpected message', message.type);
        return undefined;
    }
  }

  onReady() {
    const first = !this.authenticated;
    this.authenticated = true;
    this.scheduleReauth();
    if (!first) return; // a renewed token on a live connection: subscriptions carry on
    clearTimeout(this.readyTimer);
    // Reset the backoff only once the connection has proved itself, so a hub that accepts and
    // drops at once is not hammered.
    this.stableTimer = setTimeout(() => { this.attempt = 0; }, STABLE_AFTER_MS);
    this.setStatus('connected');
    clearInterval(this.pingTimer);
    this.pingTimer = setInterval(() => this.keepAlive(), PING_EVERY_MS);
    for (const subscription of this.subscriptions.values()) this.sendSubscribe(subscription);
  }

  keepAlive() {
    // Measured from our own unanswered ping, not from the last message: a background tab's
    // throttled timers may fire a minute apart on a healthy but quiet connection.
    if (this.awaitingPongSince !== null && Date.now() - this.awaitingPongSince > PONG_LIMIT_MS) {
      console.warn('medhub live: the hub stopped answering; reconnecting');
      this.dropSocket();
      return;
    }
    if (this.send({ type: 'ping' }) && this.awaitingPongSince === null) this.awaitingPongSince = Date.now();
  }

  /** Sends a renewed token shortly before the one this connection holds expires. */
  scheduleReauth() {
    clearTimeout(this.reauthTimer);
    const remaining = (this.tokenExpiresAt || Date.now()) - Date.now();
    // Two minutes ahead: timers in a background tab may fire up to a minute late.
    const lead = Math.min(120_000, Math.max(remaining / 4, 1_000));
    this.reauthTimer = setTimeout(() => this.reauthenticate(lead), Math.max(remaining - lead, 1_000));
  }

  async reauthenticate(lead) {
    try {
      const credentials = await freshAccessToken(2 * lead);
      if (!this.authenticated || this.stopped) return;
      this.tokenExpiresAt = credentials.expiresAt;
      this.send({ type: 'auth', token: credentials.token });
    } catch (error) {
      if (error instanceof ApiError && (error.status === 401 || error.status === 400)) this.stop();
      else this.reauthTimer = setTimeout(() => this.reauthenticate(lead), 5_000);
    }
  }

  onError(message) {
    const subscription = message.topic ? this.subscriptions.get(message.topic) : null;
    const room = message.topic ? this.roomHandlers.get(message.topic) : null;
    if (room) room(message);
    switch (message.error) {
      case 'too_slow':
      case 'resubscribe':
        // The hub closes the connection next; the reconnect resubscribes with `since`.
        console.info(`medhub live: ${message.error}; reconnecting and resuming from the last seq`);
        this.dropSocket();
        return;
      case 'unauthorized':
      case 'token_expired':
        // Before `ready` the hub closes; the reconnect refreshes the token first. After `ready`
        // (a refused re-auth) the old token holds until it expires, so try again soon.
        if (this.authenticated && message.error === 'unauthorized' && !subscription) {
          this.reauthTimer = setTimeout(() => this.reauthenticate(30_000), 5_000);
        } else if (!subscription) {
          this.tokenRefused = true;
        }
        if (!subscription) return;
        break;
      case 'unavailable':
        if (subscription) {
          subscription.retryTimer = setTimeout(() => {
            if (this.authenticated && this.subscriptions.get(subscription.topic) === subscription) this.sendSubscribe(subscription);
          }, UNAVAILABLE_RETRY_MS);
        }
        break;
      default:
        break;
    }
    if (subscription) {
      if (message.error === 'forbidden' || message.error === 'unknown_topic') subscription.refused = true;
      subscription.onMessage(message);
    } else if (!room) {
      console.warn(`medhub live: ${message.error}: ${message.detail || ''}`);
    }
  }

  deliverSnapshot(message) {
    const subscription = this.subscriptions.get(message.topic);
    if (!subscription) return;
    subscription.lastSeq = message.seq;
    subscription.resyncing = false;
    subscription.onMessage(message);
  }

  deliverEvent(message) {
    const subscription = this.subscriptions.get(message.topic);
    if (!subscription || subscription.lastSeq === null) return;
    // Live-only telemetry (a unit's position) has no sequence: nothing to order or fill, and the
    // next snapshot holds the latest value anyway.
    if (message.seq === 0) {
      subscription.onMessage(message);
      return;
    }
    if (message.seq <= subscription.lastSeq) return; // already delivered before a reconnect
    if (message.seq > subscription.lastSeq + 1) {
      // The hub fills gaps itself; seeing one means this view would go wrong, so ask again
      // from exactly where it stands.
      if (!subscription.resyncing) {
        console.warn(`medhub live: ${message.topic} jumped from ${subscription.lastSeq} to ${message.seq}; resubscribing`);
        this.sendSubscribe(subscription);
        subscription.resyncing = true;
      }
      return;
    }
    subscription.lastSeq = message.seq;
    subscription.resyncing = false;
    subscription.onMessage(message);
  }
}
