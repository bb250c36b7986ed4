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
//! from the event log, and any gap it notices on the way is filled the same way. A sweep
//! ([`SWEEP_INTERVAL`]) compares each watched topic's head in `topic_seqs` with what was delivered
//! and reads back what is missing, so an event whose notification was lost (a relay that died
//! between commit and publish) does not wait for the topic's next event.
//!
//! With several hubs, a Redis backplane ([`crate::backplane`]) carries the notifications (one hub
//! relays them from PostgreSQL) and every hub's live-only updates to every hub; one delivery loop
//! takes notifications from whichever source and applies the same dedupe, gap fill and sweep.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Deserialize;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::{mpsc, watch, Notify};
use tracing::{debug, error, info, warn};

use medhub_actors::store::{self, Envelope, EVENTS_CHANNEL};

use crate::backplane::{Backplane, BackplaneConfig, BackplaneError};
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
    /// `None`: a single hub (or hubs that share nothing but PostgreSQL).
    backplane: Option<Arc<Backplane>>,
}

/// What the delivery loop is handed: a notification's payload (from PostgreSQL or the backplane),
/// or word that notifications may have been lost and every watched topic should be read back.
pub(crate) enum Feed {
    Notification(String),
    CatchUp,
}

/// Notifications that may wait for the delivery loop.
const FEED_CAPACITY: usize = 4096;

/// How often the broker looks for committed events it was never told about. A topic counts as
/// behind only if an event committed by the previous sweep is still undelivered, so a notification
/// still on its way is not read back needlessly: a lost one is delivered within two intervals.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(500);

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
        Broker { topics: RwLock::new(HashMap::new()), live: Mutex::default(), next_connection: AtomicU64::new(1), metrics, backplane: None }
    }

    /// A broker that shares events and live-only updates with other hubs through Redis (see
    /// [`crate::backplane`]). Fails only on a URL that cannot be used; an unreachable Redis is
    /// retried once the broker runs.
    pub fn with_backplane(metrics: RealtimeMetrics, config: BackplaneConfig) -> Result<Broker, BackplaneError> {
        let backplane = Backplane::new(config, metrics.backplane.clone())?;
        Ok(Broker { backplane: Some(Arc::new(backplane)), ..Broker::new(metrics) })
    }

    /// Whether this hub hears the other hubs: always without a backplane, with one while it is
    /// subscribed to Redis. While it is not, the hub still delivers every event to its own
    /// clients (from PostgreSQL) but not other hubs' live positions.
    pub fn backplane_healthy(&self) -> bool {
        self.backplane.as_ref().is_none_or(|backplane| backplane.healthy())
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

    /// The topic's shared name if anyone here watches it.
    fn watched(&self, topic: &str) -> Option<Arc<str>> {
        self.topics.read().expect("broker lock").get_key_value(topic).map(|(name, _)| name.clone())
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
    /// With a backplane it also goes to the other hubs, whose clients may watch the topic.
    pub fn publish_live(&self, topic: &str, event_type: &str, subject: &str, data: &serde_json::Value) {
        let watched = self.watched(topic);
        if watched.is_none() && self.backplane.is_none() {
            return; // nobody is watching
        }
        let envelope = Envelope { kind: event_type.to_owned(), topic: topic.to_owned(), seq: 0, ts: store::format_ts(chrono::Utc::now()), data: data.clone() };
        let json: Arc<str> = Arc::from(serde_json::to_string(&envelope).expect("envelopes serialise"));
        let key: Arc<str> = Arc::from(format!("{event_type}\u{0}{subject}"));
        if let Some(backplane) = &self.backplane {
            backplane.offer_live(topic, &key, &json);
        }
        if let Some(topic) = watched {
            self.gather_live(topic, key, json);
        }
    }

    /// Another hub's live-only update (from the backplane): `key` and `envelope` as that hub made
    /// them in [`Broker::publish_live`].
    pub(crate) fn publish_foreign_live(&self, topic: &str, key: &str, envelope: &str) {
        if let Some(topic) = self.watched(topic) {
            self.gather_live(topic, Arc::from(key), Arc::from(envelope));
        }
    }

    /// Adds an update to this tick's, replacing an older one with the same key.
    fn gather_live(&self, topic: Arc<str>, key: Arc<str>, json: Arc<str>) {
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

    /// Delivers committed events until `shutdown` turns true: from PostgreSQL's notifications, or
    /// with a backplane from Redis (and from PostgreSQL while Redis is away), plus the sweep.
    /// Reconnects on its own. Also ticks the live-only updates out (see [`Broker::run_live`]).
    pub async fn run(self: Arc<Self>, pool: PgPool, mut shutdown: watch::Receiver<bool>) {
        tokio::spawn(self.clone().run_live(shutdown.clone()));
        let (feed, mut feeds) = mpsc::channel(FEED_CAPACITY);
        // Without a backplane this hub always listens to PostgreSQL itself.
        let (_always, listen_directly) = watch::channel(true);
        let listen_directly = match &self.backplane {
            Some(backplane) => backplane.start(self.clone(), pool.clone(), feed.clone(), shutdown.clone()),
            None => listen_directly,
        };
        tokio::spawn(listen_for_events(pool.clone(), feed, listen_directly, shutdown.clone()));

        let mut last_seq: HashMap<Arc<str>, i64> = HashMap::new();
        let mut heads: HashMap<Arc<str>, i64> = HashMap::new();
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sweep_failing = false;
        loop {
            let swept = tokio::select! {
                fed = feeds.recv() => match fed {
                    Some(Feed::Notification(payload)) => {
                        self.handle(&pool, &payload, &mut last_seq).await;
                        continue;
                    }
                    Some(Feed::CatchUp) => self.sweep(&pool, &mut last_seq, &mut heads, Sweep::Everything).await,
                    None => return,
                },
                _ = sweep.tick() => self.sweep(&pool, &mut last_seq, &mut heads, Sweep::Overdue).await,
                _ = shutdown.changed() => return,
            };
            match swept {
                Ok(()) if sweep_failing => {
                    info!("reading topic heads for the sweep works again");
                    sweep_failing = false;
                }
                Ok(()) => {}
                Err(e) if !sweep_failing => {
                    warn!(error = %e, "cannot read topic heads to look for undelivered events; retrying");
                    sweep_failing = true;
                }
                Err(e) => debug!(error = %e, "still cannot read topic heads"),
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
        let Some(topic) = self.watched(&announced.topic) else {
            // Nobody here watches it: nothing to read or send. Forgetting the topic's seq means a
            // later subscriber starts from the sweep's view of it, not from a stale one.
            last_seq.remove(announced.topic.as_str());
            return;
        };
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

    /// Reads back, for every watched topic, the events committed but not delivered here: with
    /// [`Sweep::Overdue`] only if one committed by the previous sweep is still missing, with
    /// [`Sweep::Everything`] (notifications were surely lost) whatever is missing now. A topic
    /// nothing was delivered on yet gets its missing head event: subscribers started from the log
    /// or a snapshot, and fill their own gaps from the seq they hold when it arrives.
    async fn sweep(&self, pool: &PgPool, last_seq: &mut HashMap<Arc<str>, i64>, previous_heads: &mut HashMap<Arc<str>, i64>, sweep: Sweep) -> Result<(), sqlx::Error> {
        let watched: HashSet<Arc<str>> = self.watched_topics().into_iter().collect();
        last_seq.retain(|topic, _| watched.contains(topic));
        if watched.is_empty() {
            previous_heads.clear();
            return Ok(());
        }
        let names: Vec<&str> = watched.iter().map(|topic| &**topic).collect();
        let rows: Vec<(String, i64)> = sqlx::query_as("SELECT topic, seq FROM topic_seqs WHERE topic = ANY($1)").bind(&names).fetch_all(pool).await?;
        let mut heads = HashMap::with_capacity(rows.len());
        for (name, head) in rows {
            let Some(topic) = watched.get(name.as_str()).cloned() else { continue };
            let due = match sweep {
                Sweep::Everything => Some(head),
                Sweep::Overdue => previous_heads.get(&topic).copied(),
            };
            heads.insert(topic.clone(), head);
            let Some(due) = due else { continue };
            let last = last_seq.get(&topic).copied();
            if last.is_some_and(|last| last >= due) {
                continue;
            }
            if let Some(last) = last {
                debug!(topic = %topic, from = last + 1, to = due, "reading back events whose notification never came");
                self.metrics.gap_fills.inc();
            }
            self.replay(pool, &topic, last.unwrap_or(due - 1), None, last_seq).await;
        }
        *previous_heads = heads;
        Ok(())
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

/// How much a sweep reads back (see [`Broker::sweep`]).
#[derive(Clone, Copy)]
enum Sweep {
    Overdue,
    Everything,
}

/// Listens to PostgreSQL's event notifications and feeds them to the delivery loop while `wanted`
/// says so: always without a backplane; with one, while the hub is not subscribed to Redis.
async fn listen_for_events(pool: PgPool, feed: mpsc::Sender<Feed>, mut wanted: watch::Receiver<bool>, mut shutdown: watch::Receiver<bool>) {
    loop {
        while !*wanted.borrow_and_update() {
            tokio::select! {
                changed = wanted.changed() => if changed.is_err() { return },
                _ = shutdown.changed() => return,
            }
        }
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
        if feed.send(Feed::CatchUp).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                received = listener.try_recv() => match received {
                    Ok(Some(notification)) => {
                        if feed.send(Feed::Notification(notification.payload().to_owned())).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => {
                        warn!("event listener lost its connection; reconnected, reading back what was missed");
                        if feed.send(Feed::CatchUp).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        error!(error = %e, "event listener failed; reconnecting");
                        break;
                    }
                },
                changed = wanted.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if !*wanted.borrow_and_update() {
                        info!(channel = EVENTS_CHANNEL, "events come through the backplane again; stopped listening to PostgreSQL directly");
                        break;
                    }
                }
                _ = shutdown.changed() => return,
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
    fn with_a_backplane_every_update_goes_out_and_other_hubs_updates_join_the_tick() {
        let metrics = RealtimeMetrics::register(&prometheus::Registry::new()).unwrap();
        let config = BackplaneConfig { redis_url: "redis://127.0.0.1:1".to_owned(), node_id: "node-a".to_owned() };
        let broker = Broker::with_backplane(metrics, config).expect("a usable URL");
        let backplane = broker.backplane.clone().expect("a backplane");
        fix(&broker, "u1", 1); // nobody watches on this hub, but maybe on another
        assert_eq!(backplane.queued_live(), 1);
        let (map, _) = broker.connect(4);
        broker.subscribe(&map, "t/map");
        let from_node_b = r#"{"type":"unit.position","topic":"t/map","seq":0,"ts":"2026-11-25T10:15:00.000Z","data":{"unit":"u2","fix":7}}"#;
        broker.publish_foreign_live("t/map", "unit.position\u{0}u2", from_node_b);
        fix(&broker, "u1", 2);
        broker.flush_live();
        let (frames, _) = map.live.take();
        assert_eq!(positions(&frames[0].frame), [("u2".to_owned(), 7), ("u1".to_owned(), 2)]);
        assert_eq!(backplane.queued_live(), 2, "another hub's update is not sent back out");
        assert!(!broker.backplane_healthy(), "not subscribed to Redis (the broker is not even running)");
        assert!(Broker::new(RealtimeMetrics::register(&prometheus::Registry::new()).unwrap()).backplane_healthy(), "nothing to be unhealthy about");
    }

    #[test]
    fn a_redis_url_that_cannot_work_is_refused_at_start() {
        let metrics = RealtimeMetrics::register(&prometheus::Registry::new()).unwrap();
        let config = BackplaneConfig { redis_url: "http://cache:6379".to_owned(), node_id: "node-a".to_owned() };
        let refused = Broker::with_backplane(metrics, config).err().expect("refused");
        assert!(refused.to_string().contains("redis_url"), "{refused}");
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
