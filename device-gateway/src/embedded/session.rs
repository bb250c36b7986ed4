//! Sessions of the embedded endpoint: which connection speaks for which device, whether it
//! subscribed to its unit's command topic, and the commands on their way to it.
//!
//! A session is keyed by device and client id, so a device can take over only its own session
//! (a second connection with the same client id replaces the first, as MQTT says), never another
//! device's. A clean session ends with its connection; a persistent one (3.1.1 `clean_session =
//! false`, or an MQTT 5 session expiry) keeps its subscription and undelivered commands for up to
//! [`MAX_SESSION_EXPIRY`] in memory, and sends them (unacknowledged ones again, marked DUP) when
//! the device is back. Each session holds at most `max_queued` commands: a unit that never reads
//! its commands cannot make the hub hold more.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;
use uuid::Uuid;

use medhub_actors::devices::DeviceIdentity;

use super::wire::{CloseReason, Outbound};

/// The longest a persistent session outlives its connection.
pub(crate) const MAX_SESSION_EXPIRY: Duration = Duration::from_secs(3600);

/// Commands sent and not yet acknowledged, per connection.
const MAX_INFLIGHT: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SessionKey {
    device_id: Uuid,
    client_id: String,
}

/// Tenant slug and unit id: whose commands a session receives.
type UnitKey = (String, Uuid);

#[derive(Debug, Clone)]
struct Command {
    topic: Arc<str>,
    payload: Bytes,
}

/// One device session. Its state is behind a short lock; the connection that owns it is woken
/// through `wake` when a command arrives or when it must go.
pub(crate) struct Session {
    key: SessionKey,
    unit: UnitKey,
    state: Mutex<SessionState>,
}

struct SessionState {
    /// Which connection owns the session; a take-over or a revocation changes it.
    owner: u64,
    /// Why the last owner lost it.
    lost_because: CloseReason,
    wake: Arc<Notify>,
    connected: bool,
    expiry: Duration,
    disconnected_at: Option<Instant>,
    /// QoS granted on the command topic, if subscribed.
    command_qos: Option<u8>,
    queued: VecDeque<Command>,
    inflight: BTreeMap<u16, Command>,
    next_pkid: u16,
}

impl Session {
    /// Whether connection `owner` still owns the session.
    #[cfg(test)]
    pub fn owned_by(&self, owner: u64) -> bool {
        self.state.lock().expect("session lock").owner == owner
    }

    pub fn subscribe_commands(&self, qos: u8) {
        self.state.lock().expect("session lock").command_qos = Some(qos.min(1));
    }

    pub fn unsubscribe_commands(&self) {
        self.state.lock().expect("session lock").command_qos = None;
    }

    /// Commands to send now, if `owner` still owns the session: unacknowledged ones again (DUP)
    /// when `resend` is set, then queued ones while fewer than [`MAX_INFLIGHT`] are unacknowledged.
    /// Returns how many QoS 0 commands count as delivered now, or why the connection must go.
    pub fn outgoing(&self, owner: u64, resend: bool, out: &mut Vec<Outbound>) -> Result<usize, CloseReason> {
        let mut state = self.state.lock().expect("session lock");
        if state.owner != owner {
            return Err(state.lost_because);
        }
        if resend {
            for (&pkid, command) in &state.inflight {
                out.push(Outbound::Publish { topic: command.topic.to_string(), qos: 1, pkid, dup: true, payload: command.payload.clone() });
            }
        }
        let mut delivered_at_most_once = 0;
        let Some(qos) = state.command_qos else {
            return Ok(0);
        };
        while state.inflight.len() < MAX_INFLIGHT {
            let Some(command) = state.queued.pop_front() else { break };
            if qos == 0 {
                out.push(Outbound::Publish { topic: command.topic.to_string(), qos: 0, pkid: 0, dup: false, payload: command.payload });
                delivered_at_most_once += 1;
                continue;
            }
            let pkid = state.free_pkid();
            out.push(Outbound::Publish { topic: command.topic.to_string(), qos: 1, pkid, dup: false, payload: command.payload.clone() });
            state.inflight.insert(pkid, command);
        }
        Ok(delivered_at_most_once)
    }

    /// The device acknowledged command `pkid`; true if it was one awaiting that.
    pub fn acknowledged(&self, pkid: u16) -> bool {
        self.state.lock().expect("session lock").inflight.remove(&pkid).is_some()
    }
}

impl SessionState {
    fn free_pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            if !self.inflight.contains_key(&self.next_pkid) {
                return self.next_pkid;
            }
        }
    }
}

/// A connection's claim on its session.
pub(crate) struct Attached {
    pub session: Arc<Session>,
    pub owner: u64,
    pub wake: Arc<Notify>,
    pub session_present: bool,
}

/// What became of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Queued {
    /// Queued for this many sessions.
    To(usize),
    /// No session of the unit is subscribed to its command topic.
    NoSubscriber,
    /// Every subscribed session's queue is full.
    Full,
}

pub(crate) struct Sessions {
    inner: Mutex<Inner>,
    max_queued: usize,
}

#[derive(Default)]
struct Inner {
    next_owner: u64,
    by_key: HashMap<SessionKey, Arc<Session>>,
    by_unit: HashMap<UnitKey, HashSet<SessionKey>>,
}

impl Inner {
    fn remove(&mut self, key: &SessionKey) -> Option<Arc<Session>> {
        let session = self.by_key.remove(key)?;
        if let Some(keys) = self.by_unit.get_mut(&session.unit) {
            keys.remove(key);
            if keys.is_empty() {
                self.by_unit.remove(&session.unit);
            }
        }
        Some(session)
    }
}

/// Tells the connection that owns `session` to go, and why.
fn evict(session: &Session, because: CloseReason) {
    let mut state = session.state.lock().expect("session lock");
    state.owner = u64::MAX;
    state.lost_because = because;
    state.wake.notify_one();
}

impl Sessions {
    pub fn new(max_queued: usize) -> Sessions {
        Sessions { inner: Mutex::new(Inner::default()), max_queued }
    }

    /// Claims the device's session with `client_id` for a new connection, resuming it when the
    /// new connection does not ask for a clean start and both it and the old one want a persistent
    /// session (`expiry` > 0), replacing it otherwise. A connection still holding it is told to go.
    pub fn attach(&self, device: &DeviceIdentity, client_id: &str, clean_start: bool, expiry: Duration) -> Attached {
        let key = SessionKey { device_id: device.device_id, client_id: client_id.to_owned() };
        let expiry = expiry.min(MAX_SESSION_EXPIRY);
        let wake = Arc::new(Notify::new());
        let mut inner = self.inner.lock().expect("sessions lock");
        inner.next_owner += 1;
        let owner = inner.next_owner;
        if let Some(existing) = inner.by_key.get(&key).cloned() {
            let mut state = existing.state.lock().expect("session lock");
            state.lost_because = CloseReason::SessionTakenOver;
            state.wake.notify_one(); // the previous connection, if any, sees it lost the session
            let resumable = !clean_start && !state.expiry.is_zero() && !expiry.is_zero() && !state.expired();
            if resumable {
                state.owner = owner;
                state.wake = wake.clone();
                state.connected = true;
                state.expiry = expiry;
                state.disconnected_at = None;
                drop(state);
                return Attached { session: existing, owner, wake, session_present: true };
            }
            state.owner = u64::MAX;
            drop(state);
            inner.remove(&key);
        }
        let unit = (device.tenant.as_str().to_owned(), device.unit_id);
        let session = Arc::new(Session {
            key: key.clone(),
            unit: unit.clone(),
            state: Mutex::new(SessionState {
                owner,
                lost_because: CloseReason::SessionTakenOver,
                wake: wake.clone(),
                connected: true,
                expiry,
                disconnected_at: None,
                command_qos: None,
                queued: VecDeque::new(),
                inflight: BTreeMap::new(),
                next_pkid: 0,
            }),
        });
        inner.by_key.insert(key.clone(), session.clone());
        inner.by_unit.entry(unit).or_default().insert(key);
        Attached { session, owner, wake, session_present: false }
    }

    /// The connection `owner` ended: a clean session goes, a persistent one waits for its device.
    pub fn detach(&self, session: &Arc<Session>, owner: u64) {
        let mut inner = self.inner.lock().expect("sessions lock");
        let mut state = session.state.lock().expect("session lock");
        if state.owner != owner {
            return; // taken over or revoked: no longer this connection's to end
        }
        state.connected = false;
        state.disconnected_at = Some(Instant::now());
        if state.expiry.is_zero() {
            drop(state);
            inner.remove(&session.key);
        }
    }

    /// Queues a command for every session of the unit subscribed to its command topic (including
    /// persistent sessions whose device is away) and wakes their connections.
    pub fn send(&self, tenant: &str, unit_id: Uuid, topic: &str, payload: Bytes) -> Queued {
        let inner = self.inner.lock().expect("sessions lock");
        let Some(keys) = inner.by_unit.get(&(tenant.to_owned(), unit_id)) else {
            return Queued::NoSubscriber;
        };
        let topic: Arc<str> = Arc::from(topic);
        let (mut subscribed, mut queued) = (0, 0);
        for session in keys.iter().filter_map(|key| inner.by_key.get(key)) {
            let mut state = session.state.lock().expect("session lock");
            if state.command_qos.is_none() || state.expired() {
                continue;
            }
            subscribed += 1;
            if state.queued.len() + state.inflight.len() >= self.max_queued {
                continue;
            }
            state.queued.push_back(Command { topic: topic.clone(), payload: payload.clone() });
            state.wake.notify_one();
            queued += 1;
        }
        match (subscribed, queued) {
            (0, _) => Queued::NoSubscriber,
            (_, 0) => Queued::Full,
            (_, sessions) => Queued::To(sessions),
        }
    }

    /// Ends every session of a device (it was deactivated); their connections are told to go.
    pub fn revoke(&self, device_id: Uuid) -> usize {
        let mut inner = self.inner.lock().expect("sessions lock");
        let keys: Vec<SessionKey> = inner.by_key.keys().filter(|key| key.device_id == device_id).cloned().collect();
        for key in &keys {
            if let Some(session) = inner.remove(key) {
                evict(&session, CloseReason::NotAuthorized);
            }
        }
        keys.len()
    }

    /// Tells every connection to go (shutdown).
    pub fn evict_all(&self) {
        let inner = self.inner.lock().expect("sessions lock");
        for session in inner.by_key.values() {
            evict(session, CloseReason::ServerShuttingDown);
        }
    }

    /// Drops persistent sessions whose device stayed away longer than their expiry.
    pub fn sweep(&self) -> usize {
        let mut inner = self.inner.lock().expect("sessions lock");
        let expired: Vec<SessionKey> = inner
            .by_key
            .iter()
            .filter(|(_, session)| session.state.lock().expect("session lock").expired())
            .map(|(key, _)| key.clone())
            .collect();
        for key in &expired {
            inner.remove(key);
        }
        expired.len()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().expect("sessions lock").by_key.len()
    }
}

impl SessionState {
    fn expired(&self) -> bool {
        !self.connected && self.disconnected_at.is_some_and(|at| at.elapsed() >= self.expiry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use medhub_actors::TenantSlug;

    fn device(unit: Uuid) -> DeviceIdentity {
        DeviceIdentity { tenant_id: Uuid::new_v4(), tenant: TenantSlug::parse("alpha").unwrap(), device_id: Uuid::new_v4(), unit_id: unit }
    }

    fn publishes(session: &Session, owner: u64, resend: bool) -> Vec<(u16, bool)> {
        let mut out = Vec::new();
        session.outgoing(owner, resend, &mut out).expect("owner");
        out.into_iter()
            .map(|packet| match packet {
                Outbound::Publish { pkid, dup, .. } => (pkid, dup),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn commands_reach_only_subscribed_sessions_of_the_unit() {
        let sessions = Sessions::new(4);
        let (unit, other_unit) = (Uuid::new_v4(), Uuid::new_v4());
        let tracker = device(unit);
        let attached = sessions.attach(&tracker, "c1", true, Duration::ZERO);
        assert_eq!(sessions.send("alpha", unit, "t", Bytes::from_static(b"1")), Queued::NoSubscriber);
        attached.session.subscribe_commands(1);
        assert_eq!(sessions.send("alpha", unit, "t", Bytes::from_static(b"1")), Queued::To(1));
        assert_eq!(sessions.send("alpha", other_unit, "t", Bytes::from_static(b"1")), Queued::NoSubscriber);
        assert_eq!(sessions.send("beta", unit, "t", Bytes::from_static(b"1")), Queued::NoSubscriber);
        assert_eq!(publishes(&attached.session, attached.owner, false), vec![(1, false)]);
        for _ in 0..4 {
            sessions.send("alpha", unit, "t", Bytes::from_static(b"x"));
        }
        assert_eq!(sessions.send("alpha", unit, "t", Bytes::from_static(b"x")), Queued::Full);
        assert!(attached.session.acknowledged(1));
        assert!(!attached.session.acknowledged(1));
    }

    #[test]
    fn a_persistent_session_resends_what_was_not_acknowledged() {
        let sessions = Sessions::new(8);
        let unit = Uuid::new_v4();
        let tracker = device(unit);
        let first = sessions.attach(&tracker, "c1", false, Duration::from_secs(60));
        first.session.subscribe_commands(1);
        sessions.send("alpha", unit, "t", Bytes::from_static(b"1"));
        assert_eq!(publishes(&first.session, first.owner, false), vec![(1, false)]);
        sessions.detach(&first.session, first.owner);
        sessions.send("alpha", unit, "t", Bytes::from_static(b"2"));
        let second = sessions.attach(&tracker, "c1", false, Duration::from_secs(60));
        assert!(second.session_present);
        assert!(!first.session.owned_by(first.owner));
        assert_eq!(publishes(&second.session, second.owner, true), vec![(1, true), (2, false)]);
    }

    #[test]
    fn a_clean_session_ends_with_its_connection_and_a_takeover_evicts() {
        let sessions = Sessions::new(8);
        let tracker = device(Uuid::new_v4());
        let first = sessions.attach(&tracker, "c1", true, Duration::ZERO);
        let second = sessions.attach(&tracker, "c1", true, Duration::ZERO);
        assert!(!second.session_present);
        assert!(!first.session.owned_by(first.owner));
        sessions.detach(&first.session, first.owner); // the loser's goodbye changes nothing
        assert_eq!(sessions.len(), 1);
        sessions.detach(&second.session, second.owner);
        assert_eq!(sessions.len(), 0);
        // Another device with the same client id has a session of its own.
        let other = device(Uuid::new_v4());
        let mine = sessions.attach(&tracker, "same", true, Duration::ZERO);
        let theirs = sessions.attach(&other, "same", true, Duration::ZERO);
        assert!(mine.session.owned_by(mine.owner) && theirs.session.owned_by(theirs.owner));
        assert_eq!(sessions.revoke(tracker.device_id), 1);
        assert!(!mine.session.owned_by(mine.owner));
    }
}
