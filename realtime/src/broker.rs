//! The broker: listens for committed events and hands each to every connection subscribed to its
//! topic, through bounded queues it only ever `try_send`s into. A connection whose queue is full is
//! kicked (told and disconnected by its session) instead of slowing anyone else down.
//!
//! Live-only updates (telemetry such as a unit's position, `seq` 0) are not events and take no
//! queue slots. The broker gathers each topic's updates over a short tick ([`LIVE_TICK`]), keeping
//! only the latest per subject (a unit), and hands every subscriber one `live` frame per topic and
//! tick, serialised once. A subscriber that has not taken its frames yet gets them merged, again
//! the latest per subject: ten thousand units reporting every second cost a map ten frames a
//! second, a slow reader is sent the newest positions rather than a backlog, and memory stays
//! bounded by the number of units.
//!
//! PostgreSQL delivers notifications in commit order, and a topic's commits are ordered by its seq,
//! so events arrive here in seq order. If the listening connection drops, notifications sent
//! meanwhile are lost: after reconnecting the broker reads every watched topic's missed events back
//! from the event log, and any gap it notices on the way is filled the same way.

use std::collections::HashMap;
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

/// How long the broker gathers a topic's live-only updates before handing them out together.
pub const LIVE_TICK: Duration = Duration::from_millis(100);

/// A topic's live-only updates of one tick (or several, merged): the latest per subject, each an
/// envelope already serialised, and the `live` frame that carries them all.
pub struct LiveBatch {
    pub topic: Arc<str>,
    updates: Vec<(Arc<str>, Arc<str>)>,
    pub frame: Arc<str>,
}

impl LiveBatch {
    fn new(topic: Arc<str>, updates: Vec<(Arc<str>, Arc<str>)>) -> LiveBatch {
        let envelopes: Vec<&str> = updates.iter().map(|(_, json)| &**json).collect();
        let frame = format!(
            r#"{{"type":"live","topic":{},"seq":0,"ts":{},"updates":[{}]}}"#,
            serde_json::Value::from(&*topic),
            serde_json::Value::from(store::format_ts(chrono::Utc::now())),
            envelopes.join(",")
        );
        LiveBatch { topic, updates, frame: Arc::from(frame) }
    }

    /// One batch with the latest update per subject of several, in the order subjects first
    /// appeared; and how many older updates it left out.
    fn merge(topic: Arc<str>, batches: &[Arc<LiveBatch>]) -> (LiveBatch, u64) {
        let mut latest = Latest::default();
        for batch in batches {
            for (subject, json) in &batch.updates {
                latest.put(subject.clone(), json.clone());
            }
        }
        let replaced = latest.replaced;
        (LiveBatch::new(topic, latest.into_updates()), replaced)
    }
}

/// The latest value per subject, in the order subjects first appeared.
#[derive(Default)]
struct Latest {
    order: Vec<Arc<str>>,
    values: HashMap<Arc<str>, Arc<str>>,
    replaced: u64,
}

impl Latest {
    fn put(&mut self, subject: Arc<str>, json: Arc<str>) {
        if self.values.insert(subject.clone(), json).is_some() {
            self.replaced += 1;
        } else {
            self.order.push(subject);
        }
    }

    fn into_updates(mut self) -> Vec<(Arc<str>, Arc<str>)> {
        self.order.into_iter().filter_map(|subject| self.values.remove(&subject).map(|json| (subject, json))).collect()
    }
}

/// A connection's live frames not sent yet, per topic.
#[derive(Default)]
pub struct LiveFrames {
    pending: Mutex<HashMap<Arc<str>, Vec<Arc<LiveBatch>>>>,
    notify: Notify,
}

/// Batches of one topic a connection may have waiting before they are merged into one.
const MERGE_AFTER: usize = 8;

impl LiveFrames {
    /// Queues a tick's batch; returns how many updates merging left out.
    fn offer(&self, batch: Arc<LiveBatch>) -> u64 {
        let mut pending = self.pending.lock().expect("live frames lock");
        let waiting = pending.entry(batch.topic.clone()).or_default();
        waiting.push(batch);
        let mut replaced = 0;
        if waiting.len() >= MERGE_AFTER {
            let (merged, left_out) = LiveBatch::merge(waiting[0].topic.clone(), waiting);
            *waiting = vec![Arc::new(merged)];
            replaced = left_out;
        }
        drop(pending);
        self.notify.notify_one();
        replaced
    }

    /// Resolves once there is something to take.
    pub async fn ready(&self) {
        self.notify.notified().await;
    }

    /// One frame per topic with everything pending (merged when several ticks waited), and how
    /// many updates merging left out.
    pub fn take(&self) -> (Vec<Arc<LiveBatch>>, u64) {
        let pending = std::mem::take(&mut *self.pending.lock().expect("live frames lock"));
        let mut replaced = 0;
        let frames = pending
            .into_iter()
            .filter_map(|(topic, mut batches)| match batches.len() {
                0 => None,
                1 => batches.pop(),
                _ => {
                    let (merged, left_out) = LiveBatch::merge(topic, &batches);
                    replaced += left_out;
                    Some(Arc::new(merged))
                }
            })
            .collect();
        (frames, replaced)
    }
}

#[derive(Clone)]
struct Subscriber {
    connection: u64,
    queue: mpsc::Sender<Delivery>,
    live: Arc<LiveFrames>,
    kick: Arc<Kick>,
}

/// A connection's registration with the broker.
pub struct Connection {
    pub id: u64,
    queue: mpsc::Sender<Delivery>,
    /// Live-only frames waiting for this connection (see [`LiveFrames`]).
    pub live: Arc<LiveFrames>,
    pub kick: Arc<Kick>,
}

pub struct Broker {
    topics: RwLock<HashMap<Arc<str>, Vec<Subscriber>>>,
    /// This tick's live-only updates, per topic.
    live: Mutex<HashMap<Arc<str>, Latest>>,
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
        Broker { topics: RwLock::new(HashMap::new()), live: Mutex::default(), next_connection: AtomicU64::new(1), metrics }
    }

    /// Registers a connection with a queue of `capacity` deliveries.
    pub fn connect(&self, capacity: usize) -> (Connection, mpsc::Receiver<Delivery>) {
        let (queue, receiver) = mpsc::channel(capacity.max(1));
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
        (Connection { id, queue, live: Arc::new(LiveFrames::default()), kick: Arc::new(Kick::default()) }, receiver)
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

    /// Takes a live-only update (no seq, not in the event log) for the topic's subscribers; it
    /// goes out with the next tick and replaces any update of the same kind about the same
    /// `subject` gathered in this one.
    pub fn publish_live(&self, topic: &str, event_type: &str, subject: &str, data: &serde_json::Value) {
        let Some(topic) = self.topics.read().expect("broker lock").get_key_value(topic).map(|(name, _)| name.clone()) else {
            return; // nobody is watching
        };
        let envelope = Envelope { kind: event_type.to_owned(), topic: topic.to_string(), seq: 0, ts: store::format_ts(chrono::Utc::now()), data: data.clone() };
        let json: Arc<str> = Arc::from(serde_json::to_string(&envelope).expect("envelopes serialise"));
        let key: Arc<str> = Arc::from(format!("{event_type}\u{0}{subject}"));
        let mut live = self.live.lock().expect("live updates lock");
        let latest = live.entry(topic).or_default();
        let before = latest.replaced;
        latest.put(key, json);
        self.metrics.live_coalesced.inc_by(latest.replaced - before);
    }

    /// Hands this tick's live-only updates to the subscribers: one frame per topic.
    pub fn flush_live(&self) {
        let gathered = std::mem::take(&mut *self.live.lock().expect("live updates lock"));
        if gathered.is_empty() {
            return;
        }
        let topics = self.topics.read().expect("broker lock");
        for (topic, latest) in gathered {
            let Some(subscribers) = topics.get(&topic) else { continue };
            let batch = Arc::new(LiveBatch::new(topic, latest.into_updates()));
            for subscriber in subscribers {
                let replaced = subscriber.live.offer(batch.clone());
                self.metrics.live_coalesced.inc_by(replaced);
            }
        }
    }

    /// Flushes live-only updates every [`LIVE_TICK`] until `shutdown` turns true.
    pub async fn run_live(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(LIVE_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.flush_live(),
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Listens for committed events until `shutdown` turns true. Reconnects on its own.
    /// Also ticks the live-only updates out (see [`Broker::run_live`]).
    pub async fn run(self: Arc<Self>, pool: PgPool, mut shutdown: watch::Receiver<bool>) {
        tokio::spawn(self.clone().run_live(shutdown.clone()));
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

    fn positions(frame: &str) -> Vec<(String, i64)> {
        let frame: serde_json::Value = serde_json::from_str(frame).expect("a frame is JSON");
        assert_eq!(frame["type"], "live");
        assert_eq!(frame["topic"], "t/map");
        frame["updates"].as_array().expect("updates").iter().map(|u| (u["data"]["unit"].as_str().unwrap().to_owned(), u["data"]["fix"].as_i64().unwrap())).collect()
    }

    fn fix(broker: &Broker, unit: &str, fix: i64) {
        broker.publish_live("t/map", "unit.position", unit, &serde_json::json!({"unit": unit, "fix": fix}));
    }

    #[test]
    fn one_frame_per_tick_with_the_latest_fix_of_each_unit() {
        let broker = Broker::new(RealtimeMetrics::register(&prometheus::Registry::new()).unwrap());
        fix(&broker, "u0", 0); // nobody watches yet: dropped
        let (fast, _) = broker.connect(4);
        broker.subscribe(&fast, "t/map");
        for n in 1..=3 {
            fix(&broker, "u1", n);
            fix(&broker, "u2", n);
        }
        broker.flush_live();
        let (frames, _) = fast.live.take();
        assert_eq!(frames.len(), 1);
        assert_eq!(positions(&frames[0].frame), [("u1".to_owned(), 3), ("u2".to_owned(), 3)]);
        assert_eq!(broker.metrics.live_coalesced.get(), 4);
        broker.flush_live();
        assert!(fast.live.take().0.is_empty(), "an empty tick sends nothing");
    }

    #[test]
    fn a_slow_reader_gets_the_newest_positions_merged_not_a_backlog() {
        let broker = Broker::new(RealtimeMetrics::register(&prometheus::Registry::new()).unwrap());
        let (slow, _) = broker.connect(4);
        broker.subscribe(&slow, "t/map");
        // 1,000 ticks pass while the slow reader takes nothing; u2 stops reporting half-way.
        for tick in 1..=1000 {
            fix(&broker, "u1", tick);
            if tick <= 500 {
                fix(&broker, "u2", tick);
            }
            broker.flush_live();
            let waiting = slow.live.pending.lock().unwrap().get("t/map").map_or(0, Vec::len);
            assert!(waiting < MERGE_AFTER, "frames waiting for a slow reader stay bounded: {waiting}");
        }
        let (frames, _) = slow.live.take();
        assert_eq!(frames.len(), 1);
        assert_eq!(positions(&frames[0].frame), [("u1".to_owned(), 1000), ("u2".to_owned(), 500)]);
        assert!(!slow.kick.kicked.load(Ordering::SeqCst), "a slow map reader is not cut off");
    }
}
