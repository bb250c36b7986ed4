//! The Redis backplane: how several hubs on one PostgreSQL share live updates.
//!
//! Committed events: without a backplane every hub LISTENs on PostgreSQL, so PostgreSQL sends each
//! notification to every hub. With one, exactly one hub at a time is the *relay*: it holds a
//! PostgreSQL session advisory lock ([`RELAY_LOCK_KEY`]) on the very connection it LISTENs on,
//! and PUBLISHes each notification, in order, on Redis ([`EVENTS_CHANNEL`]); every hub subscribes
//! there and hands the payload to the broker's delivery loop exactly as if PostgreSQL had sent it
//! (dedupe by seq, gap fill and by-reference reads from the event log). If the relay dies, its
//! connection drops, PostgreSQL frees the lock and another hub, retrying every
//! [`RELAY_RETRY`], takes over: no consensus of our own. Notifications lost meanwhile (a relay that
//! died between a commit and its publish, a message Redis dropped) are read back from the event log
//! by the broker's sweep, which every hub runs whether or not it has a backplane.
//!
//! Live-only telemetry (unit positions): each hub publishes its own on [`LIVE_CHANNEL`], tagged
//! with its node id, from a bounded queue drained by one task, so an actor never waits for Redis;
//! every hub feeds the other hubs' updates into its own live batching and skips its own.
//!
//! Redis is an accelerator, never the source of truth: while it is away a hub logs it once, listens
//! to PostgreSQL itself again (so its own clients keep getting every event at once), keeps
//! delivering its own telemetry, and reconnects with backoff; on reconnect the broker catches up
//! from the event log. Redis pub/sub is not scoped by database number: one Redis (or one set of
//! channels) per hub cluster.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use medhub_actors::store::EVENTS_CHANNEL as PG_EVENTS_CHANNEL;

use crate::broker::{Broker, Feed};
use crate::metrics::BackplaneMetrics;

/// The Redis channel the relay publishes PostgreSQL's event notifications on, payloads unchanged.
pub const EVENTS_CHANNEL: &str = "medhub:events";
/// The Redis channel hubs publish their live-only updates on (see [`LiveMessage`]).
pub const LIVE_CHANNEL: &str = "medhub:live";

/// The PostgreSQL advisory lock whose holder is the relay ("medhub" in ASCII, then 1). Session
/// level: held for as long as the holder's connection lives, freed by PostgreSQL when it drops.
pub const RELAY_LOCK_KEY: i64 = 0x6d65_6468_7562_0001;
/// How often a hub that is not the relay tries to become it.
pub const RELAY_RETRY: Duration = Duration::from_secs(1);

/// Live-only updates a hub may have waiting for Redis; beyond it they are dropped (and counted):
/// a newer position of the same unit follows within seconds, while a blocked actor would not.
const LIVE_QUEUE: usize = 16_384;
/// Most messages sent to Redis in one pipeline (one round trip).
const PUBLISH_BATCH: usize = 512;
/// A Redis connection attempt, a PUBLISH or a PING that takes longer has failed.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the subscriber checks that its connection still answers: a connection that broke
/// without a FIN (a partition, a host that vanished) would otherwise look quiet, not dead.
const SUBSCRIBER_HEARTBEAT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Where the backplane is and who this hub is on it.
#[derive(Debug, Clone)]
pub struct BackplaneConfig {
    /// `redis://[user:password@]host[:port][/db]`.
    pub redis_url: String,
    /// This hub's node id: tags its live updates, so that it skips its own when they come back.
    pub node_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BackplaneError {
    #[error("redis_url is not a usable Redis URL ({0}); expected redis://[user:password@]host[:port][/db]")]
    InvalidUrl(#[source] redis::RedisError),
}

/// One live-only update on its way to Redis: its topic, the key it replaces updates by (kind and
/// subject), and its envelope, serialised once.
pub(crate) struct LiveUpdate {
    topic: Arc<str>,
    key: Arc<str>,
    envelope: Arc<str>,
}

/// The header of a message on [`LIVE_CHANNEL`]: one JSON line (serde_json escapes newlines inside
/// strings, so the first `\n` ends it), then the envelope exactly as the publishing hub serialised
/// it, so that no hub parses and re-serialises thousands of positions a second.
#[derive(Serialize, Deserialize)]
struct LiveHeader {
    node: String,
    topic: String,
    key: String,
}

/// A [`LIVE_CHANNEL`] message as received.
struct LiveMessage<'a> {
    header: LiveHeader,
    envelope: &'a str,
}

impl LiveMessage<'_> {
    fn encode(node: &str, update: &LiveUpdate) -> String {
        let header = LiveHeader { node: node.to_owned(), topic: update.topic.to_string(), key: update.key.to_string() };
        let header = serde_json::to_string(&header).expect("a live header serialises");
        format!("{header}\n{}", update.envelope)
    }

    /// `None` for anything that is not a header line and a JSON envelope: the envelope goes into
    /// clients' frames verbatim, so it is checked to be JSON (without building it).
    fn decode(payload: &[u8]) -> Option<LiveMessage<'_>> {
        let text = std::str::from_utf8(payload).ok()?;
        let (header, envelope) = text.split_once('\n')?;
        let header: LiveHeader = serde_json::from_str(header).ok()?;
        serde_json::from_str::<serde::de::IgnoredAny>(envelope).ok()?;
        Some(LiveMessage { header, envelope })
    }
}

/// A hub's side of the backplane; owned by its [`Broker`].
pub(crate) struct Backplane {
    node_id: Arc<str>,
    client: redis::Client,
    /// host:port of Redis for logs (the URL may hold a password).
    address: String,
    live_queue: mpsc::Sender<LiveUpdate>,
    /// Taken by the task that publishes live updates, once the broker runs.
    live_outbox: Mutex<Option<mpsc::Receiver<LiveUpdate>>>,
    /// Subscribed to Redis right now.
    connected: AtomicBool,
    metrics: BackplaneMetrics,
}

impl Backplane {
    pub(crate) fn new(config: BackplaneConfig, metrics: BackplaneMetrics) -> Result<Backplane, BackplaneError> {
        let client = redis::Client::open(config.redis_url.as_str()).map_err(BackplaneError::InvalidUrl)?;
        let address = client.get_connection_info().addr().to_string();
        let (live_queue, live_outbox) = mpsc::channel(LIVE_QUEUE);
        Ok(Backplane {
            node_id: Arc::from(config.node_id),
            client,
            address,
            live_queue,
            live_outbox: Mutex::new(Some(live_outbox)),
            connected: AtomicBool::new(false),
            metrics,
        })
    }

    /// Subscribed to Redis, so this hub hears the other hubs.
    pub(crate) fn healthy(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// Live-only updates waiting for Redis.
    #[cfg(test)]
    pub(crate) fn queued_live(&self) -> usize {
        LIVE_QUEUE - self.live_queue.capacity()
    }

    /// Queues a live-only update for the other hubs; never waits.
    pub(crate) fn offer_live(&self, topic: &str, key: &Arc<str>, envelope: &Arc<str>) {
        let update = LiveUpdate { topic: Arc::from(topic), key: key.clone(), envelope: envelope.clone() };
        match self.live_queue.try_send(update) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.metrics.dropped.with_label_values(&["live", "queue_full"]).inc(),
            Err(mpsc::error::TrySendError::Closed(_)) => self.metrics.dropped.with_label_values(&["live", "redis_down"]).inc(),
        }
    }

    /// Starts the subscriber, the relay and the live publisher. Returns whether the broker should
    /// listen to PostgreSQL itself: true until, and whenever, this hub is not subscribed to Redis.
    pub(crate) fn start(self: &Arc<Self>, broker: Arc<Broker>, pool: PgPool, feed: mpsc::Sender<Feed>, shutdown: watch::Receiver<bool>) -> watch::Receiver<bool> {
        info!(redis = %self.address, node = %self.node_id, "live updates go through the Redis backplane");
        let (listen_directly, wanted) = watch::channel(true);
        tokio::spawn(self.clone().receive(broker, feed, listen_directly, shutdown.clone()));
        tokio::spawn(self.clone().relay_events(pool, shutdown.clone()));
        match self.live_outbox.lock().expect("live outbox lock").take() {
            Some(outbox) => {
                tokio::spawn(self.clone().publish_live_updates(outbox, shutdown));
            }
            None => warn!("the backplane's live publisher is already running; not starting another"),
        }
        wanted
    }

    async fn connect(&self) -> Result<redis::aio::MultiplexedConnection, redis::RedisError> {
        let config = redis::AsyncConnectionConfig::new().set_connection_timeout(Some(REDIS_TIMEOUT)).set_response_timeout(Some(REDIS_TIMEOUT));
        self.client.get_multiplexed_async_connection_with_config(&config).await
    }

    async fn subscribe(&self) -> Result<redis::aio::PubSub, redis::RedisError> {
        let mut pubsub = within(REDIS_TIMEOUT, self.client.get_async_pubsub()).await?;
        within(REDIS_TIMEOUT, pubsub.subscribe(&[EVENTS_CHANNEL, LIVE_CHANNEL])).await?;
        Ok(pubsub)
    }

    fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::SeqCst);
        self.metrics.connected.set(i64::from(connected));
    }

    // -----------------------------------------------------------------------------------------
    // Every hub: the subscriber

    /// Stays subscribed to both channels, reconnecting with backoff; while it is not, the broker
    /// listens to PostgreSQL itself (`listen_directly`).
    async fn receive(self: Arc<Self>, broker: Arc<Broker>, feed: mpsc::Sender<Feed>, listen_directly: watch::Sender<bool>, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::default();
        let mut outage = Outage::default();
        loop {
            let subscribed = tokio::select! {
                subscribed = self.subscribe() => subscribed,
                _ = shutdown.changed() => return,
            };
            let (mut sink, mut messages) = match subscribed {
                Ok(pubsub) => pubsub.split(),
                Err(e) => {
                    if outage.begins() {
                        error!(redis = %self.address, error = %e,
                            "cannot subscribe to the Redis backplane: this hub listens to PostgreSQL itself and does not see other hubs' live positions until it can; retrying");
                    } else {
                        debug!(redis = %self.address, error = %e, "Redis backplane still unreachable");
                    }
                    if !backoff.wait(&mut shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            match outage.ends() {
                Some(down) => info!(redis = %self.address, down_secs = down.as_secs(), "subscribed to the Redis backplane again"),
                None => info!(redis = %self.address, "subscribed to the Redis backplane"),
            }
            backoff.reset();
            self.set_connected(true);
            listen_directly.send_replace(false);
            // What was committed while this hub was not subscribed (or was switching over). If the
            // loop is busy, its next sweep does the same.
            let _ = feed.try_send(Feed::CatchUp);

            let mut heartbeat = tokio::time::interval(SUBSCRIBER_HEARTBEAT);
            heartbeat.tick().await;
            let lost = loop {
                tokio::select! {
                    message = messages.next() => match message {
                        Some(message) => self.on_message(&broker, &feed, &message),
                        None => break "the connection closed".to_owned(),
                    },
                    _ = heartbeat.tick() => match within(REDIS_TIMEOUT, sink.ping::<redis::Value>()).await {
                        Ok(_) => {}
                        Err(e) => break format!("it did not answer PING: {e}"),
                    },
                    _ = shutdown.changed() => {
                        self.set_connected(false);
                        return;
                    }
                }
            };
            self.set_connected(false);
            listen_directly.send_replace(true);
            if outage.begins() {
                error!(redis = %self.address, reason = %lost,
                    "lost the Redis backplane: this hub listens to PostgreSQL itself and does not see other hubs' live positions until it is back; reconnecting");
            }
            if !backoff.wait(&mut shutdown).await {
                return;
            }
        }
    }

    fn on_message(&self, broker: &Broker, feed: &mpsc::Sender<Feed>, message: &redis::Msg) {
        match message.get_channel_name() {
            EVENTS_CHANNEL => {
                self.metrics.received.with_label_values(&["event"]).inc();
                let Ok(payload) = std::str::from_utf8(message.get_payload_bytes()) else {
                    return warn!(channel = EVENTS_CHANNEL, "ignored a backplane event that is not UTF-8");
                };
                // Never wait here: a busy delivery loop reads what it missed back from the event
                // log (the next event's gap fill, or the sweep), while a blocked subscriber would
                // pile messages up in memory.
                if let Err(mpsc::error::TrySendError::Full(_)) = feed.try_send(Feed::Notification(payload.to_owned())) {
                    self.metrics.dropped.with_label_values(&["event", "busy"]).inc();
                }
            }
            LIVE_CHANNEL => {
                self.metrics.received.with_label_values(&["live"]).inc();
                match LiveMessage::decode(message.get_payload_bytes()) {
                    Some(live) if live.header.node == *self.node_id => {} // our own, delivered locally already
                    Some(live) => broker.publish_foreign_live(&live.header.topic, &live.header.key, live.envelope),
                    None => warn!(channel = LIVE_CHANNEL, "ignored an unreadable live update from the backplane"),
                }
            }
            other => debug!(channel = other, "ignored a message on a channel this hub did not subscribe to"),
        }
    }

    // -----------------------------------------------------------------------------------------
    // One hub at a time: the relay

    /// Competes for the relay role, and while holding it publishes every event notification on
    /// Redis in the order PostgreSQL sent them.
    async fn relay_events(self: Arc<Self>, pool: PgPool, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::default();
        let mut outage = Outage::default();
        loop {
            // Connect to Redis first: a hub that cannot publish must not take the role from one
            // that can.
            let connected = tokio::select! {
                connected = self.connect() => connected,
                _ = shutdown.changed() => return,
            };
            let mut publisher = match connected {
                Ok(publisher) => publisher,
                Err(e) => {
                    if outage.begins() {
                        warn!(redis = %self.address, error = %e, "cannot connect to Redis to relay events; this hub will not be the relay until it can");
                    }
                    if !backoff.wait(&mut shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            outage.ends();
            let Some(mut session) = RelaySession::take(&pool, &mut shutdown).await else { return };
            // The wait for the lock may have been long: the connection must still work before this
            // hub holds the role (one that cannot publish would hold it for nothing).
            if let Err(e) = within(REDIS_TIMEOUT, redis::cmd("PING").query_async::<()>(&mut publisher)).await {
                session.release().await;
                debug!(redis = %self.address, error = %e, "took the relay lock but Redis does not answer; gave the lock back");
                outage.begins();
                if !backoff.wait(&mut shutdown).await {
                    return;
                }
                continue;
            }
            self.metrics.relay.set(1);
            info!(lock = RELAY_LOCK_KEY, "this hub is now the relay: it publishes committed events to the Redis backplane");
            let ended = loop {
                tokio::select! {
                    received = session.listener.try_recv() => match received {
                        Ok(Some(notification)) => {
                            let mut payloads = vec![notification.payload().to_owned()];
                            while payloads.len() < PUBLISH_BATCH {
                                match session.listener.next_buffered() {
                                    Some(notification) => payloads.push(notification.payload().to_owned()),
                                    None => break,
                                }
                            }
                            match self.publish_events(&mut publisher, &payloads).await {
                                Ok(()) => self.metrics.published.with_label_values(&["event"]).inc_by(payloads.len() as u64),
                                Err(e) => break RelayEnd::Redis(e, payloads.len()),
                            }
                        }
                        Ok(None) => break RelayEnd::Postgres("the connection closed".to_owned()),
                        Err(e) => break RelayEnd::Postgres(e.to_string()),
                    },
                    _ = shutdown.changed() => break RelayEnd::Shutdown,
                }
            };
            self.metrics.relay.set(0);
            session.release().await;
            match ended {
                RelayEnd::Shutdown => {
                    info!("relay stopped: shutting down");
                    return;
                }
                RelayEnd::Redis(e, unsent) => {
                    // The unsent events are in the log: every hub's sweep reads them back.
                    warn!(redis = %self.address, error = %e, unsent,
                        "cannot publish events to the Redis backplane; gave up the relay role so that another hub can take it");
                    outage.begins();
                    if !backoff.wait(&mut shutdown).await {
                        return;
                    }
                }
                RelayEnd::Postgres(reason) => {
                    warn!(reason = %reason, "the relay lost its PostgreSQL connection (and with it the relay lock); competing for it again");
                    if !sleep_unless_shutdown(RELAY_RETRY, &mut shutdown).await {
                        return;
                    }
                }
            }
        }
    }

    /// Publishes a batch of notifications; if the connection went stale (Redis restarted since),
    /// once more on a fresh one before giving up, so that a restart loses nothing. Only this
    /// task publishes events and the batch goes before any later notification: order is kept (a
    /// batch Redis took before the failure arrives twice, and the second copy is dropped by seq).
    async fn publish_events(&self, publisher: &mut redis::aio::MultiplexedConnection, payloads: &[String]) -> Result<(), redis::RedisError> {
        let Err(first) = publish(publisher, EVENTS_CHANNEL, payloads).await else { return Ok(()) };
        debug!(redis = %self.address, error = %first, "publishing events failed; retrying once on a new connection");
        *publisher = self.connect().await?;
        publish(publisher, EVENTS_CHANNEL, payloads).await
    }

    // -----------------------------------------------------------------------------------------
    // Every hub: its own live updates out

    /// Drains the live queue into Redis, a pipeline at a time. While Redis is away the updates are
    /// dropped (and counted): telemetry is only worth its newest value.
    async fn publish_live_updates(self: Arc<Self>, mut outbox: mpsc::Receiver<LiveUpdate>, mut shutdown: watch::Receiver<bool>) {
        let mut connection: Option<redis::aio::MultiplexedConnection> = None;
        let mut backoff = Backoff::default();
        let mut retry_at = Instant::now();
        let mut outage = Outage::default();
        let mut batch = Vec::with_capacity(PUBLISH_BATCH);
        loop {
            let first = tokio::select! {
                update = outbox.recv() => match update {
                    Some(update) => update,
                    None => return,
                },
                _ = shutdown.changed() => return,
            };
            batch.clear();
            batch.push(LiveMessage::encode(&self.node_id, &first));
            while batch.len() < PUBLISH_BATCH {
                match outbox.try_recv() {
                    Ok(update) => batch.push(LiveMessage::encode(&self.node_id, &update)),
                    Err(_) => break,
                }
            }
            if connection.is_none() && Instant::now() >= retry_at {
                match self.connect().await {
                    Ok(connected) => {
                        if let Some(down) = outage.ends() {
                            info!(redis = %self.address, down_secs = down.as_secs(), "publishing live updates to the Redis backplane again");
                        }
                        backoff.reset();
                        connection = Some(connected);
                    }
                    Err(e) => {
                        if outage.begins() {
                            warn!(redis = %self.address, error = %e, "cannot connect to Redis to publish live updates: other hubs do not see this hub's positions until it can");
                        }
                        retry_at = Instant::now() + backoff.next();
                    }
                }
            }
            let Some(publisher) = connection.as_mut() else {
                self.metrics.dropped.with_label_values(&["live", "redis_down"]).inc_by(batch.len() as u64);
                continue;
            };
            match publish(publisher, LIVE_CHANNEL, &batch).await {
                Ok(()) => self.metrics.published.with_label_values(&["live"]).inc_by(batch.len() as u64),
                Err(e) => {
                    self.metrics.dropped.with_label_values(&["live", "redis_down"]).inc_by(batch.len() as u64);
                    if outage.begins() {
                        warn!(redis = %self.address, error = %e, "cannot publish live updates to the Redis backplane: other hubs do not see this hub's positions until it can; reconnecting");
                    }
                    connection = None;
                    retry_at = Instant::now() + backoff.next();
                }
            }
        }
    }
}

/// PUBLISHes `messages` on `channel` in one pipeline, in order.
async fn publish(publisher: &mut redis::aio::MultiplexedConnection, channel: &str, messages: &[String]) -> Result<(), redis::RedisError> {
    let mut pipeline = redis::pipe();
    for message in messages {
        pipeline.cmd("PUBLISH").arg(channel).arg(message.as_str()).ignore();
    }
    pipeline.query_async::<()>(publisher).await
}

/// `future`, or a timeout error after `limit`.
async fn within<T>(limit: Duration, future: impl std::future::Future<Output = Result<T, redis::RedisError>>) -> Result<T, redis::RedisError> {
    match tokio::time::timeout(limit, future).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("Redis did not answer within {limit:?}")).into()),
    }
}

/// Why a hub stopped relaying.
enum RelayEnd {
    Shutdown,
    /// Publishing failed; how many notifications were not sent.
    Redis(redis::RedisError, usize),
    Postgres(String),
}

/// The relay's PostgreSQL session: one connection of its own (never the request pool's: a pooled
/// connection handed back would keep the lock for whoever borrows it next), holding the relay lock
/// and LISTENing on the events channel.
struct RelaySession {
    pool: PgPool,
    listener: PgListener,
}

impl RelaySession {
    /// Waits until this hub holds the relay lock, trying every [`RELAY_RETRY`] on one connection
    /// kept for the purpose; `None` on shutdown.
    async fn take(pool: &PgPool, shutdown: &mut watch::Receiver<bool>) -> Option<RelaySession> {
        let mut session = None;
        let mut warned = false;
        loop {
            let attempt = tokio::select! {
                attempt = RelaySession::try_lock(pool, &mut session) => Some(attempt),
                _ = shutdown.changed() => None,
            };
            match attempt {
                None => {
                    if let Some(session) = session.take() {
                        session.close().await;
                    }
                    return None;
                }
                Some(Ok(true)) => return session,
                Some(Ok(false)) => warned = false,
                Some(Err(e)) => {
                    if !warned {
                        warn!(error = %e, "cannot compete for the relay role (PostgreSQL); retrying");
                        warned = true;
                    } else {
                        debug!(error = %e, "still cannot compete for the relay role");
                    }
                    // Closing the connection also frees the lock if it was taken just before the failure.
                    if let Some(session) = session.take() {
                        session.close().await;
                    }
                }
            }
            if !sleep_unless_shutdown(RELAY_RETRY, shutdown).await {
                if let Some(session) = session.take() {
                    session.close().await;
                }
                return None;
            }
        }
    }

    /// One attempt at the lock on `session`'s connection (opened first if need be); once it is
    /// taken the connection LISTENs, so that the lock and the notifications live and die together.
    async fn try_lock(pool: &PgPool, session: &mut Option<RelaySession>) -> Result<bool, sqlx::Error> {
        let session = match session {
            Some(session) => session,
            None => session.insert(RelaySession::open(pool).await?),
        };
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(RELAY_LOCK_KEY).fetch_one(&mut session.listener).await?;
        if locked {
            session.listener.listen(PG_EVENTS_CHANNEL).await?;
        }
        Ok(locked)
    }

    async fn open(pool: &PgPool) -> Result<RelaySession, sqlx::Error> {
        let options = (*pool.connect_options()).clone();
        let own = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .max_lifetime(None)
            .idle_timeout(None)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(options);
        let mut listener = match PgListener::connect_with(&own).await {
            Ok(listener) => listener,
            Err(e) => {
                own.close().await;
                return Err(e);
            }
        };
        // A connection lost while relaying took the lock with it: try_recv must say so rather than
        // quietly reconnect without the lock.
        listener.eager_reconnect(false);
        listener.ignore_pool_close_event(true);
        Ok(RelaySession { pool: own, listener })
    }

    /// Gives the lock up at once (rather than when the connection is gone) and closes the
    /// connection.
    async fn release(mut self) {
        let unlocked = tokio::time::timeout(Duration::from_secs(2), sqlx::query("SELECT pg_advisory_unlock($1)").bind(RELAY_LOCK_KEY).execute(&mut self.listener)).await;
        if !matches!(unlocked, Ok(Ok(_))) {
            debug!("could not unlock the relay lock explicitly; closing its connection frees it");
        }
        self.close().await;
    }

    async fn close(self) {
        let RelaySession { pool, listener } = self;
        drop(listener);
        if tokio::time::timeout(Duration::from_secs(5), pool.close()).await.is_err() {
            warn!("the relay's PostgreSQL connection did not close within 5 s");
        }
    }
}

/// Sleeps `duration`; false if shutdown came first.
async fn sleep_unless_shutdown(duration: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(duration) => true,
        _ = shutdown.changed() => false,
    }
}

/// Exponential backoff between reconnection attempts, from [`BACKOFF_MIN`] to [`BACKOFF_MAX`].
#[derive(Default)]
struct Backoff {
    current: Option<Duration>,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let next = self.current.map_or(BACKOFF_MIN, |current| (current * 2).min(BACKOFF_MAX));
        self.current = Some(next);
        next
    }

    fn reset(&mut self) {
        self.current = None;
    }

    /// Waits the next delay; false if shutdown came first.
    async fn wait(&mut self, shutdown: &mut watch::Receiver<bool>) -> bool {
        let delay = self.next();
        sleep_unless_shutdown(delay, shutdown).await
    }
}

/// When a connection's outage began, so that it is logged once when it begins and once when it
/// ends, not at every retry.
#[derive(Default)]
struct Outage {
    since: Option<Instant>,
}

impl Outage {
    /// Records a failure; true if it is the first of an outage (the one to log).
    fn begins(&mut self) -> bool {
        if self.since.is_some() {
            return false;
        }
        self.since = Some(Instant::now());
        true
    }

    /// Records a success; how long the outage lasted if there was one.
    fn ends(&mut self) -> Option<Duration> {
        self.since.take().map(|since| since.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_message_carries_the_envelope_verbatim_after_a_one_line_header() {
        let update = LiveUpdate {
            topic: Arc::from("tenant/alpha/map"),
            key: Arc::from("unit.position\u{0}u1"),
            envelope: Arc::from(r#"{"type":"unit.position","topic":"tenant/alpha/map","seq":0,"data":{"note":"line\nbreak"}}"#),
        };
        let encoded = LiveMessage::encode("node\na", &update);
        let decoded = LiveMessage::decode(encoded.as_bytes()).expect("decodes");
        assert_eq!(decoded.header.node, "node\na");
        assert_eq!(decoded.header.topic, "tenant/alpha/map");
        assert_eq!(decoded.header.key, "unit.position\u{0}u1");
        assert_eq!(decoded.envelope, &*update.envelope);
        assert!(LiveMessage::decode(b"{\"node\":\"a\",\"topic\":\"t\",\"key\":\"k\"}\n{not json").is_none());
        assert!(LiveMessage::decode(b"no header").is_none());
    }

    #[test]
    fn backoff_doubles_up_to_its_ceiling_and_starts_over_after_a_success() {
        let mut backoff = Backoff::default();
        let delays: Vec<Duration> = (0..10).map(|_| backoff.next()).collect();
        assert_eq!(delays[0], BACKOFF_MIN);
        assert_eq!(delays[1], BACKOFF_MIN * 2);
        assert_eq!(*delays.last().expect("delays"), BACKOFF_MAX);
        backoff.reset();
        assert_eq!(backoff.next(), BACKOFF_MIN);
    }

    #[test]
    fn an_outage_is_reported_once_when_it_begins_and_once_when_it_ends() {
        let mut outage = Outage::default();
        assert!(outage.ends().is_none(), "no outage yet");
        assert!(outage.begins());
        assert!(!outage.begins(), "the retries of one outage are not new outages");
        assert!(outage.ends().is_some());
        assert!(outage.begins(), "the next failure starts a new outage");
    }
}
