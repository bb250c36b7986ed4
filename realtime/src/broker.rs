//! The broker: listens for committed events and hands each to every connection subscribed to its
//! topic, through bounded queues it only ever `try_send`s into. A connection whose queue is full is
//! kicked (told and disconnected by its session) instead of slowing anyone else down.
//!
//! Live-only updates (telemetry such as a unit's position, `seq` 0) do not take queue slots: each
//! connection keeps only the latest update per subject ([`LatestUpdates`]), so a thousand units
//! reporting every second cost a slow reader at most one pending update per unit, never a kick,
//! and what it is sent is always the newest position.
//!
//! PostgreSQL delivers notifications in commit order, and a topic's commits are ordered by its seq,
//! so events arrive here in seq order. If the listening connection drops, notifications sent
//! meanwhile are lost: after reconnecting the broker reads every watched topic's missed events back
//! from the event log, and any gap it notices on the way is filled the same way.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Deserialize;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::{mpsc, watch, Notify};
use tracing::{debug, error, info, warn};

use medhub_actors::store::{self, Envelope, EVENTS_CHANNEL};

use crate::metrics::RealtimeMetrics;

/// One event on its way to a connection: the topic, its seq, and the envelope already serialised.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub topic: Arc<str>,
    pub seq: i64,
    pub json: Arc<str>,
}

impl Delivery {
    pub fn from_envelope(envelope: &Envelope) -> Delivery {
        Delivery {
            topic: Arc::from(envelope.topic.as_str()),
            seq: envelope.seq,
            json: Arc::from(serde_json::to_string(envelope).expect("envelopes serialise")),
        }
    }
}

/// Raised by the broker when a connection's queue overflowed.
#[derive(Default)]
pub struct Kick {
    kicked: AtomicBool,
    notify: Notify,
}

impl Kick {
    fn raise(&self) {
        if !self.kicked.swap(true, Ordering::SeqCst) {
            self.notify.notify_one();
        }
    }

    /// Resolves once the connection has been kicked.
    pub async fn raised(&self) {
        // notify_one stores a permit, so a kick raised before this call is not missed.
        self.notify.notified().await;
    }
}

/// A connection's pending live-only updates: the latest per (topic, kind, subject), in the order
/// their subjects first became pending. A newer update replaces the pending one in place.
#[derive(Default)]
pub struct LatestUpdates {
    pending: Mutex<PendingUpdates>,
    notify: Notify,
}

#[derive(Default)]
struct PendingUpdates {
    order: VecDeque<Arc<str>>,
    latest: HashMap<Arc<str>, Delivery>,
}

/// Distinct subjects a connection may have pending before it counts as not reading at all.
const MAX_PENDING_SUBJECTS: usize = 100_000;

/// What offering an update to a connection did.
#[derive(Debug, PartialEq, Eq)]
enum Offered {
    Queued,
    Replaced,
    Overflow,
}

impl LatestUpdates {
    fn offer(&self, key: Arc<str>, delivery: Delivery) -> Offered {
        let mut pending = self.pending.lock().expect("live updates lock");
        let full = pending.latest.len() >= MAX_PENDING_SUBJECTS;
        let outcome = match pending.latest.get_mut(&key) {
            Some(slot) => {
                *slot = delivery;
                Offered::Replaced
            }
            None if full => return Offered::Overflow,
            None => {
                pending.latest.insert(key.clone(), delivery);
                pending.order.push_back(key);
                Offered::Queued
            }
        };
        drop(pending);
        if outcome == Offered::Queued {
            self.notify.notify_one();
        }
        outcome
    }

    /// Resolves once there is something to take.
    pub async fn ready(&self) {
        self.notify.notified().await;
    }

    /// Everything pending, oldest subject first.
    pub fn take(&self) -> Vec<Delivery> {
        let mut pending = self.pending.lock().expect("live updates lock");
        let PendingUpdates { order, latest } = &mut *pending;
        order.drain(..).filter_map(|key| latest.remove(&key)).collect()
    }
}

#[derive(Clone)]
struct Subscriber {
    connection: u64,
    queue: mpsc::Sender<Delivery>,
    live: Arc<LatestUpdates>,
    kick: Arc<Kick>,
}

/// A connection's registration with the broker.
pub struct Connection {
    pub id: u64,
    queue: mpsc::Sender<Delivery>,
    /// Live-only updates waiting for this connection (see [`LatestUpdates`]).
    pub live: Arc<LatestUpdates>,
    pub kick: Arc<Kick>,
}

pub struct Broker {
    topics: RwLock<HashMap<Arc<str>, Vec<Subscriber>>>,
    next_connection: AtomicU64,
    metrics: RealtimeMetrics,
}

/// What a notification carries: the envelope, or for large ones only where to read it.
#[derive(Deserialize)]
struct Announced {
    topic: String,
    seq: i64,
    #[serde(default)]
    by_reference: bool,
}

impl Broker {
    pub fn new(metrics: RealtimeMetrics) -> Broker {
        Broker { topics: RwLock::new(HashMap::new()), next_connection: AtomicU64::new(1), metrics }
    }

    /// Registers a connection with a queue of `capacity` deliveries.
    pub fn connect(&self, capacity: usize) -> (Connection, mpsc::Receiver<Delivery>) {
        let (queue, receiver) = mpsc::channel(capacity.max(1));
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
        (Connection { id, queue, live: Arc::new(LatestUpdates::default()), kick: Arc::new(Kick::default()) }, receiver)
    }

    pub fn subscribe(&self, connection: &Connection, topic: &str) {
        let mut topics = self.topics.write().expect("broker lock");
        let subscribers = topics.entry(Arc::from(topic)).or_default();
        if !subscribers.iter().any(|s| s.connection == connection.id) {
            subscribers.push(Subscriber {
                connection: connection.id,
                queue: connection.queue.clone(),
                live: connection.live.clone(),
                kick: connection.kick.clone(),
            });
        }
    }

    pub fn unsubscribe(&self, connection: u64, topic: &str) {
        let mut topics = self.topics.write().expect("broker lock");
        if let Some(subscribers) = topics.get_mut(topic) {
            subscribers.retain(|s| s.connection != connection);
            if subscribers.is_empty() {
                topics.remove(topic);
            }
        }
    }

    pub fn disconnect(&self, connection: u64) {
        let mut topics = self.topics.write().expect("broker lock");
        topics.retain(|_, subscribers| {
            subscribers.retain(|s| s.connection != connection);
            !subscribers.is_empty()
        });
    }

    fn watched_topics(&self) -> Vec<Arc<str>> {
        self.topics.read().expect("broker lock").keys().cloned().collect()
    }

    /// Hands one event to every subscriber of its topic without waiting for any of them.
    pub fn fan_out(&self, delivery: &Delivery) {
        let mut dropped = Vec::new();
        {
            let topics = self.topics.read().expect("broker lock");
            let Some(subscribers) = topics.get(&delivery.topic) else { return };
            for subscriber in subscribers {
                match subscriber.queue.try_send(delivery.clone()) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        warn!(connection = subscriber.connection, topic = %delivery.topic, "client fell too far behind; disconnecting it");
                        self.metrics.slow_disconnects.inc();
                        subscriber.kick.raise();
                        dropped.push(subscriber.connection);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => dropped.push(subscriber.connection),
                }
            }
        }
        for connection in dropped {
            self.disconnect(connection);
        }
    }

    /// Hands a live-only update (no seq, not in the event log) to the topic's subscribers, where
    /// it replaces any update of the same kind about the same `subject` not sent yet.
    pub fn publish_live(&self, topic: &str, event_type: &str, subject: &str, data: &serde_json::Value) {
        let mut dropped = Vec::new();
        {
            let topics = self.topics.read().expect("broker lock");
            let Some(subscribers) = topics.get(topic) else { return };
            let envelope = Envelope { kind: event_type.to_owned(), topic: topic.to_owned(), seq: 0, ts: store::format_ts(chrono::Utc::now()), data: data.clone() };
            let delivery = Delivery::from_envelope(&envelope);
            let key: Arc<str> = Arc::from(format!("{topic}\u{0}{event_type}\u{0}{subject}"));
            for subscriber in subscribers {
                match subscriber.live.offer(key.clone(), delivery.clone()) {
                    Offered::Queued => {}
                    Offered::Replaced => self.metrics.live_coalesced.inc(),
                    Offered::Overflow => {
                        warn!(connection = subscriber.connection, topic, "client has not read live updates of {MAX_PENDING_SUBJECTS} subjects; disconnecting it");
                        self.metrics.slow_disconnects.inc();
                        subscriber.kick.raise();
                        dropped.push(subscriber.connection);
                    }
                }
            }
        }
        for connection in dropped {
            self.disconnect(connection);
        }
    }

    /// Listens for committed events until `shutdown` turns true. Reconnects on its own.
    pub async fn run(self: Arc<Self>, pool: PgPool, mut shutdown: watch::Receiver<bool>) {
        let mut last_seq: HashMap<Arc<str>, i64> = HashMap::new();
        loop {
            let mut listener = match connect_listener(&pool).await {
                Ok(listener) => listener,
                Err(e) => {
                    error!(error = %e, "cannot listen for events; retrying in 1 s");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = shutdown.changed() => return,
                    }
                }
            };
            info!(channel = EVENTS_CHANNEL, "listening for committed events");
            // Whatever was committed while we were not listening.
            self.catch_up(&pool, &mut last_seq).await;
            loop {
                tokio::select! {
                    received = listener.try_recv() => match received {
                        Ok(Some(notification)) => self.handle(&pool, notification.payload(), &mut last_seq).await,
                        Ok(None) => {
                            warn!("event listener lost its connection; reconnected, reading back what was missed");
                            self.catch_up(&pool, &mut last_seq).await;
                        }
                        Err(e) => {
                            error!(error = %e, "event listener failed; reconnecting");
                            break;
                        }
                    },
                    _ = shutdown.changed() => return,
                }
            }
        }
    }

    async fn handle(&self, pool: &PgPool, payload: &str, last_seq: &mut HashMap<Arc<str>, i64>) {
        let announced: Announced = match serde_json::from_str(payload) {
            Ok(announced) => announced,
            Err(e) => {
                error!(error = %e, "unreadable event notification ignored");
                return;
            }
        };
        let topic: Arc<str> = Arc::from(announced.topic.as_str());
        if let Some(&last) = last_seq.get(&topic) {
            if announced.seq <= last {
                return;
            }
            if announced.seq > last + 1 {
                debug!(topic = %topic, from = last + 1, to = announced.seq - 1, "filling a gap from the event log");
                self.metrics.gap_fills.inc();
                self.replay(pool, &topic, last, Some(announced.seq - 1), last_seq).await;
            }
        }
        let delivery = if announced.by_reference {
            match store::events_after(pool, &topic, announced.seq - 1, Some(announced.seq), 1).await {
                Ok(envelopes) if !envelopes.is_empty() => Delivery::from_envelope(&envelopes[0]),
                Ok(_) => return error!(topic = %topic, seq = announced.seq, "announced event not in the log"),
                Err(e) => return error!(topic = %topic, error = %e, "cannot read announced event"),
            }
        } else {
            Delivery { topic: topic.clone(), seq: announced.seq, json: Arc::from(payload) }
        };
        last_seq.insert(topic, announced.seq);
        self.fan_out(&delivery);
    }

    async fn catch_up(&self, pool: &PgPool, last_seq: &mut HashMap<Arc<str>, i64>) {
        for topic in self.watched_topics() {
            if let Some(&last) = last_seq.get(&topic) {
                self.replay(pool, &topic, last, None, last_seq).await;
            }
        }
    }

    async fn replay(&self, pool: &PgPool, topic: &Arc<str>, after: i64, up_to: Option<i64>, last_seq: &mut HashMap<Arc<str>, i64>) {
        let mut after = after;
        loop {
            match store::events_after(pool, topic, after, up_to, 500).await {
                Ok(envelopes) if envelopes.is_empty() => return,
                Ok(envelopes) => {
                    for envelope in &envelopes {
                        self.fan_out(&Delivery::from_envelope(envelope));
                        after = envelope.seq;
                    }
                    last_seq.insert(topic.clone(), after);
                }
                Err(e) => return error!(topic = %topic, error = %e, "cannot read back missed events"),
            }
        }
    }
}

async fn connect_listener(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(EVENTS_CHANNEL).await?;
    Ok(listener)
}

impl medhub_actors::live::LiveFeed for Broker {
    fn publish(&self, topic: &str, event_type: &str, subject: &str, data: &serde_json::Value) {
        self.publish_live(topic, event_type, subject, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(json: &str) -> Delivery {
        Delivery { topic: Arc::from("t/map"), seq: 0, json: Arc::from(json) }
    }

    #[test]
    fn a_newer_update_replaces_the_pending_one_and_keeps_its_place() {
        let live = LatestUpdates::default();
        assert_eq!(live.offer(Arc::from("a"), delivery("a1")), Offered::Queued);
        assert_eq!(live.offer(Arc::from("b"), delivery("b1")), Offered::Queued);
        assert_eq!(live.offer(Arc::from("a"), delivery("a2")), Offered::Replaced);
        let sent: Vec<String> = live.take().iter().map(|d| d.json.to_string()).collect();
        assert_eq!(sent, ["a2", "b1"]);
        assert!(live.take().is_empty());
        assert_eq!(live.offer(Arc::from("a"), delivery("a3")), Offered::Queued, "taken subjects start afresh");
    }

    #[tokio::test]
    async fn every_subscriber_gets_the_latest_position_of_every_unit() {
        let registry = prometheus::Registry::new();
        let broker = Broker::new(RealtimeMetrics::register(&registry).unwrap());
        let (fast, _) = broker.connect(4);
        let (slow, _) = broker.connect(4);
        broker.subscribe(&fast, "t/map");
        broker.subscribe(&slow, "t/map");
        broker.publish_live("t/map", "unit.position", "u1", &serde_json::json!({"fix": 1}));
        fast.live.ready().await;
        assert_eq!(fast.live.take().len(), 1);
        // The slow reader takes nothing while 1,000 fixes of two units arrive: it is not kicked,
        // its queue holds no more than two updates, and they are the newest.
        for fix in 2..=1000 {
            broker.publish_live("t/map", "unit.position", "u1", &serde_json::json!({"fix": fix}));
            broker.publish_live("t/map", "unit.position", "u2", &serde_json::json!({"fix": fix}));
        }
        let pending = slow.live.take();
        assert_eq!(pending.len(), 2);
        assert!(pending.iter().all(|d| d.json.contains(r#""fix":1000"#)), "{pending:?}");
        assert_eq!(fast.live.take().len(), 2);
        assert!(!slow.kick.kicked.load(Ordering::SeqCst));
        assert_eq!(broker.metrics.live_coalesced.get(), 2 * 998 + 2 * 998 + 1);
    }
}
