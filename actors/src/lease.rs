//! Placement by lease: which hub node owns a tenant's actors, and the fencing that keeps a node that
//! lost a tenant from ever committing for it again.
//!
//! Each tenant has at most one row in `tenant_leases` (owner node, expiry, fencing token). A node
//! acquires the row when it starts the tenant's supervisor: it takes it when the row is new, is its
//! own, or has expired, and every acquisition bumps the token. The node renews all its rows in the
//! background ([`LeaseNode::renew_all`], every third of the TTL); a row that no longer carries the
//! token this node holds was taken over, and the node stops serving that tenant.
//!
//! Renewal alone cannot make a paused node safe (it may wake up after its lease expired and commit
//! before it notices), so every commit checks the token inside its own transaction
//! ([`check_fence`], called by `store::append_event`): it reads the tenant's row `FOR SHARE` and
//! compares the token with the one the committing actor was started under. A takeover's `UPDATE`
//! waits for commits in flight and bumps the token, so after it no commit of the previous owner
//! can succeed.
//!
//! The node's own view (which tenants it holds under which token) is process-wide state: the hub
//! runs one actor runtime per process, which is one node. Durable actors carry the token they were
//! started under and commit inside [`with_fence`], so an actor of an earlier incarnation can never
//! commit under a later one's token; writers that are not actors fall back to the node's current
//! token for the tenant, and write unfenced for tenants this node never placed (as a single hub
//! always did).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus::{IntCounter, IntGauge, Opts, Registry};
use sqlx::{PgConnection, PgPool, Row};
use tracing::{info, warn};
use uuid::Uuid;

use crate::domain::TenantSlug;
use crate::error::ActorError;

/// Who this node is and how long its leases last.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// This node's identity in `tenant_leases.owner` (unique per running process).
    pub node_id: String,
    /// How long a lease lasts without renewal; the owner renews every third of it.
    pub ttl: Duration,
}

impl LeaseConfig {
    pub fn renew_every(&self) -> Duration {
        (self.ttl / 3).max(Duration::from_millis(100))
    }
}

/// A tenant's lease as the database has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub tenant_id: Uuid,
    pub owner: String,
    pub token: i64,
    pub expires_at: DateTime<Utc>,
}

/// Every lease row, live or not, by tenant (for operations).
pub async fn all_leases(pool: &PgPool) -> Result<Vec<Lease>, sqlx::Error> {
    let rows = sqlx::query("SELECT tenant_id, owner, token, expires_at FROM tenant_leases ORDER BY tenant_id").fetch_all(pool).await?;
    Ok(rows.into_iter().map(|row| Lease { tenant_id: row.get(0), owner: row.get(1), token: row.get(2), expires_at: row.get(3) }).collect())
}

/// A hub node as the cluster sees it (for routing and `hub cluster status`).
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub node_id: String,
    pub url: String,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    /// Seconds since its last heartbeat, by the database's clock.
    pub silent_secs: f64,
}

/// Every node that announced itself and has not left, oldest first.
pub async fn nodes(pool: &PgPool) -> Result<Vec<NodeInfo>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT node_id, url, started_at, heartbeat_at, EXTRACT(EPOCH FROM now() - heartbeat_at)::float8 FROM hub_nodes ORDER BY started_at, node_id",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| NodeInfo { node_id: row.get(0), url: row.get(1), started_at: row.get(2), heartbeat_at: row.get(3), silent_secs: row.get(4) })
        .collect())
}

/// True when `node` announced itself and its heartbeat is younger than `ttl`.
pub async fn node_alive(pool: &PgPool, node: &str, ttl: Duration) -> Result<bool, sqlx::Error> {
    let alive: Option<bool> = sqlx::query_scalar("SELECT heartbeat_at > now() - make_interval(secs => $2) FROM hub_nodes WHERE node_id = $1")
        .bind(node)
        .bind(ttl.as_secs_f64())
        .fetch_optional(pool)
        .await?;
    Ok(alive.unwrap_or(false))
}

/// Who serves a tenant right now, for routing a request to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// Nobody holds a live lease: the first node to need the tenant takes it.
    Nobody,
    /// A live node holds the lease; it answers at `url`.
    Node { node_id: String, url: String },
    /// The lease is live but its holder stopped heartbeating (dead, paused or cut off): the lease
    /// expires within a TTL and is then taken over.
    Silent { node_id: String },
}

/// Who serves the tenant (one query: the lease and its holder's heartbeat).
pub async fn holder(pool: &PgPool, tenant_id: Uuid, ttl: Duration) -> Result<Holder, sqlx::Error> {
    let row = sqlx::query(
        "SELECT l.owner, n.url, COALESCE(n.heartbeat_at > now() - make_interval(secs => $2), false)
         FROM tenant_leases l LEFT JOIN hub_nodes n ON n.node_id = l.owner
         WHERE l.tenant_id = $1 AND l.expires_at > now()",
    )
    .bind(tenant_id)
    .bind(ttl.as_secs_f64())
    .fetch_optional(pool)
    .await?;
    Ok(match row {
        None => Holder::Nobody,
        Some(row) => {
            let (node_id, url, alive): (String, Option<String>, bool) = (row.get(0), row.get(1), row.get(2));
            match url {
                Some(url) if alive => Holder::Node { node_id, url },
                _ => Holder::Silent { node_id },
            }
        }
    })
}

/// The outcome of one attempt to acquire a tenant's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquisition {
    /// This node holds the lease under `token`; `taken_from` names the previous owner when it was
    /// another node (a takeover of an expired lease).
    Granted { token: i64, taken_from: Option<String> },
    /// Another node holds a live lease, for `remaining` more.
    HeldElsewhere { owner: String, remaining: Duration },
}

/// One attempt: takes the tenant's lease when it is new, this node's own, or expired; bumps the
/// fencing token either way. Uses the database's clock only, so nodes' clocks may differ.
pub async fn try_acquire(pool: &PgPool, tenant_id: Uuid, config: &LeaseConfig) -> Result<Acquisition, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Makes sure the row exists, so that the row lock below serialises competing nodes.
    sqlx::query("INSERT INTO tenant_leases (tenant_id, owner, token, expires_at) VALUES ($1, '', 0, 'epoch') ON CONFLICT (tenant_id) DO NOTHING")
        .bind(tenant_id)
        .execute(&mut *tx)
        .await?;
    let row = sqlx::query(
        "SELECT owner, expires_at > now() AS live, GREATEST(EXTRACT(EPOCH FROM expires_at - now()), 0)::float8 AS remaining
         FROM tenant_leases WHERE tenant_id = $1 FOR UPDATE",
    )
    .bind(tenant_id)
    .fetch_one(&mut *tx)
    .await?;
    let (owner, live, remaining): (String, bool, f64) = (row.get(0), row.get(1), row.get(2));
    if live && owner != config.node_id {
        tx.rollback().await?;
        return Ok(Acquisition::HeldElsewhere { owner, remaining: Duration::from_secs_f64(remaining) });
    }
    let token: i64 = sqlx::query_scalar(
        "UPDATE tenant_leases SET owner = $2, token = token + 1, expires_at = now() + make_interval(secs => $3), acquired_at = now()
         WHERE tenant_id = $1 RETURNING token",
    )
    .bind(tenant_id)
    .bind(&config.node_id)
    .bind(config.ttl.as_secs_f64())
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    let taken_from = Some(owner).filter(|owner| !owner.is_empty() && *owner != config.node_id);
    Ok(Acquisition::Granted { token, taken_from })
}

/// The lease metrics: tenants owned, renewals, losses and takeovers.
#[derive(Clone)]
pub struct LeaseMetrics {
    pub owned_tenants: IntGauge,
    pub renewals: IntCounter,
    pub losses: IntCounter,
    pub takeovers: IntCounter,
    pub refusals: IntCounter,
}

impl LeaseMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<LeaseMetrics> {
        let metrics = LeaseMetrics {
            owned_tenants: IntGauge::with_opts(Opts::new("medhub_lease_owned_tenants", "Tenants whose lease this node holds"))?,
            renewals: IntCounter::with_opts(Opts::new("medhub_lease_renewals_total", "Lease renewals this node made (one per tenant per round)"))?,
            losses: IntCounter::with_opts(Opts::new("medhub_lease_losses_total", "Tenant leases this node lost to another node"))?,
            takeovers: IntCounter::with_opts(Opts::new("medhub_lease_takeovers_total", "Expired tenant leases of another node this node took over"))?,
            refusals: IntCounter::with_opts(Opts::new(
                "medhub_lease_fenced_commits_total",
                "Commits refused because this node no longer held the tenant's lease",
            ))?,
        };
        registry.register(Box::new(metrics.owned_tenants.clone()))?;
        registry.register(Box::new(metrics.renewals.clone()))?;
        registry.register(Box::new(metrics.losses.clone()))?;
        registry.register(Box::new(metrics.takeovers.clone()))?;
        registry.register(Box::new(metrics.refusals.clone()))?;
        Ok(metrics)
    }

    /// Metrics that go nowhere, for tools and tests that run no server.
    pub fn unregistered() -> LeaseMetrics {
        LeaseMetrics::register(&Registry::new()).expect("fresh registry accepts metrics")
    }
}

/// This node's side of the leases: acquiring, renewing and releasing them.
#[derive(Clone)]
pub struct LeaseNode {
    pool: PgPool,
    config: LeaseConfig,
    metrics: LeaseMetrics,
    /// Set once the node announced itself in `hub_nodes` (tools that serve nothing never do).
    registered: Arc<AtomicBool>,
    /// When the last renewal round succeeded.
    last_renewal: Arc<Mutex<Option<std::time::Instant>>>,
}

impl LeaseNode {
    pub fn new(pool: PgPool, config: LeaseConfig, metrics: LeaseMetrics) -> LeaseNode {
        let _ = NODE_ID.set(config.node_id.clone());
        LeaseNode { pool, config, metrics, registered: Default::default(), last_renewal: Default::default() }
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// Acquires the tenant's lease for this node, waiting (at most one TTL and a second) for a
    /// lease of another node to expire: a node that was just restarted under a new identity
    /// finds its predecessor's lease, which nobody renews any more. A lease another node keeps
    /// renewing is refused as unavailable, naming that node.
    pub async fn acquire(&self, tenant_id: Uuid, tenant: &TenantSlug) -> Result<i64, ActorError> {
        let deadline = tokio::time::Instant::now() + self.config.ttl + Duration::from_secs(1);
        loop {
            match try_acquire(&self.pool, tenant_id, &self.config).await? {
                Acquisition::Granted { token, taken_from } => {
                    record_held(tenant_id, token);
                    self.metrics.owned_tenants.set(held_count() as i64);
                    match taken_from {
                        Some(previous) => {
                            self.metrics.takeovers.inc();
                            info!(tenant = %tenant, node = %self.config.node_id, token, previous_owner = %previous, "took over the expired lease of the tenant");
                        }
                        None => info!(tenant = %tenant, node = %self.config.node_id, token, "acquired the lease of the tenant"),
                    }
                    return Ok(token);
                }
                Acquisition::HeldElsewhere { owner, remaining } => {
                    let now = tokio::time::Instant::now();
                    // A holder that is alive keeps renewing: waiting would only delay the answer
                    // (the request is routed to it instead). A dead or restarted holder's lease
                    // expires within the TTL, and this node takes it over then.
                    if now >= deadline || node_alive(&self.pool, &owner, self.config.ttl).await? {
                        warn!(tenant = %tenant, node = %self.config.node_id, owner = %owner, "the tenant's lease is held by another node; not serving it here");
                        return Err(ActorError::NotOwner(format!(
                            "tenant {tenant} is served by hub node {owner}, not by this node ({}); nothing was done here, retry",
                            self.config.node_id
                        )));
                    }
                    let wait = (remaining + Duration::from_millis(50)).min(deadline - now).max(Duration::from_millis(50));
                    info!(tenant = %tenant, node = %self.config.node_id, owner = %owner, wait_ms = wait.as_millis() as u64, "the tenant's lease is held by another node; waiting for it to expire");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// One renewal round: extends every lease this node holds under the token it holds. Returns
    /// the tenants whose lease was taken over meanwhile (their token changed); they are recorded
    /// as lost, and the caller stops serving them.
    pub async fn renew_all(&self) -> Result<Vec<Uuid>, sqlx::Error> {
        self.heartbeat().await?;
        let held = held_leases();
        if held.is_empty() {
            self.renewed();
            return Ok(Vec::new());
        }
        let renewed: Vec<Uuid> = sqlx::query_scalar(
            "UPDATE tenant_leases AS l SET expires_at = now() + make_interval(secs => $4)
             FROM UNNEST($1::uuid[], $2::bigint[]) AS h (tenant_id, token)
             WHERE l.tenant_id = h.tenant_id AND l.token = h.token AND l.owner = $3
             RETURNING l.tenant_id",
        )
        .bind(held.iter().map(|(tenant, _)| *tenant).collect::<Vec<_>>())
        .bind(held.iter().map(|(_, token)| *token).collect::<Vec<_>>())
        .bind(&self.config.node_id)
        .bind(self.config.ttl.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        self.renewed();
        self.metrics.renewals.inc_by(renewed.len() as u64);
        let lost: Vec<Uuid> = held.iter().map(|(tenant, _)| *tenant).filter(|tenant| !renewed.contains(tenant)).collect();
        for (tenant_id, token) in held.iter().filter(|(tenant, _)| lost.contains(tenant)) {
            if record_lost(*tenant_id, *token) {
                self.metrics.losses.inc();
                warn!(tenant_id = %tenant_id, node = %self.config.node_id, token, "lost the tenant's lease to another node; stopping its actors here");
            }
        }
        self.metrics.owned_tenants.set(held_count() as i64);
        Ok(lost)
    }

    /// Gives up every lease this node holds (graceful shutdown), so that another node or this
    /// node's successor takes them over at once instead of after the TTL.
    pub async fn release_all(&self) -> Result<(), sqlx::Error> {
        let held = held_leases();
        sqlx::query(
            "UPDATE tenant_leases AS l SET expires_at = now()
             FROM UNNEST($1::uuid[], $2::bigint[]) AS h (tenant_id, token)
             WHERE l.tenant_id = h.tenant_id AND l.token = h.token AND l.owner = $3",
        )
        .bind(held.iter().map(|(tenant, _)| *tenant).collect::<Vec<_>>())
        .bind(held.iter().map(|(_, token)| *token).collect::<Vec<_>>())
        .bind(&self.config.node_id)
        .execute(&self.pool)
        .await?;
        for (tenant_id, token) in held {
            record_lost(tenant_id, token);
        }
        sqlx::query("DELETE FROM hub_nodes WHERE node_id = $1").bind(&self.config.node_id).execute(&self.pool).await?;
        self.metrics.owned_tenants.set(0);
        info!(node = %self.config.node_id, "released this node's tenant leases");
        Ok(())
    }

    /// Announces this node and where other nodes reach it (`url`), so that requests for the
    /// tenants it serves can be forwarded to it. Called once as the node starts listening.
    ///
    /// A node that announced the same address before is an earlier incarnation of this one (this
    /// process holds that address now, so it is dead): its entry goes, and its leases are
    /// expired at once, so that a restarted node serves its tenants again without waiting out
    /// the TTL. Its commits stay fenced by the tokens either way.
    pub async fn register(&self, url: &str) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let predecessors: Vec<String> = sqlx::query_scalar("DELETE FROM hub_nodes WHERE url = $1 AND node_id <> $2 RETURNING node_id")
            .bind(url)
            .bind(&self.config.node_id)
            .fetch_all(&mut *tx)
            .await?;
        if !predecessors.is_empty() {
            let expired = sqlx::query("UPDATE tenant_leases SET expires_at = now() WHERE owner = ANY($1) AND expires_at > now()")
                .bind(&predecessors)
                .execute(&mut *tx)
                .await?;
            info!(node = %self.config.node_id, url, previous = ?predecessors, leases = expired.rows_affected(), "replaced an earlier node at this address; its leases are free");
        }
        tx.commit().await?;
        sqlx::query(
            "INSERT INTO hub_nodes (node_id, url) VALUES ($1, $2)
             ON CONFLICT (node_id) DO UPDATE SET url = EXCLUDED.url, started_at = now(), heartbeat_at = now()",
        )
        .bind(&self.config.node_id)
        .bind(url)
        .execute(&self.pool)
        .await?;
        self.registered.store(true, std::sync::atomic::Ordering::SeqCst);
        info!(node = %self.config.node_id, url, "joined the hub cluster");
        Ok(())
    }

    /// Tells the other nodes this one is alive (with every renewal round).
    async fn heartbeat(&self) -> Result<(), sqlx::Error> {
        if self.registered.load(std::sync::atomic::Ordering::SeqCst) {
            sqlx::query("UPDATE hub_nodes SET heartbeat_at = now() WHERE node_id = $1").bind(&self.config.node_id).execute(&self.pool).await?;
        }
        Ok(())
    }

    /// True once a renewal round has succeeded within the last TTL: this node's leases are
    /// current (for `/readyz`).
    pub fn leases_current(&self) -> bool {
        let last = *self.last_renewal.lock().expect("renewal time lock");
        last.is_some_and(|at| at.elapsed() < self.config.ttl)
    }

    fn renewed(&self) {
        *self.last_renewal.lock().expect("renewal time lock") = Some(std::time::Instant::now());
    }

    pub(crate) fn fenced_commit(&self) {
        self.metrics.refusals.inc();
    }
}

// ---------------------------------------------------------------------------------------------
// This node's holdings and the fence every commit passes

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holding {
    Held(i64),
    /// Held under this token once; taken over (or released) since.
    Lost(i64),
}

static NODE_ID: OnceLock<String> = OnceLock::new();

fn holdings() -> &'static Mutex<HashMap<Uuid, Holding>> {
    static HOLDINGS: OnceLock<Mutex<HashMap<Uuid, Holding>>> = OnceLock::new();
    HOLDINGS.get_or_init(Default::default)
}

fn record_held(tenant_id: Uuid, token: i64) {
    holdings().lock().expect("lease holdings lock").insert(tenant_id, Holding::Held(token));
}

/// Records that the lease held under `token` is gone; false when it was already recorded (or a
/// newer token is held).
pub(crate) fn record_lost(tenant_id: Uuid, token: i64) -> bool {
    let mut holdings = holdings().lock().expect("lease holdings lock");
    match holdings.get(&tenant_id) {
        Some(Holding::Held(held)) if *held == token => {
            holdings.insert(tenant_id, Holding::Lost(token));
            true
        }
        _ => false,
    }
}

fn held_leases() -> Vec<(Uuid, i64)> {
    let holdings = holdings().lock().expect("lease holdings lock");
    holdings.iter().filter_map(|(tenant, holding)| match holding {
        Holding::Held(token) => Some((*tenant, *token)),
        Holding::Lost(_) => None,
    })
    .collect()
}

fn held_count() -> usize {
    held_leases().len()
}

/// The token this node holds the tenant's lease under, if it holds it.
pub fn held_token(tenant_id: Uuid) -> Option<i64> {
    match holdings().lock().expect("lease holdings lock").get(&tenant_id) {
        Some(Holding::Held(token)) => Some(*token),
        _ => None,
    }
}

/// True when this node held the tenant's lease and lost it (and has not acquired it again).
pub fn is_lost(tenant_id: Uuid) -> bool {
    matches!(holdings().lock().expect("lease holdings lock").get(&tenant_id), Some(Holding::Lost(_)))
}

tokio::task_local! {
    /// The token the committing actor was started under (see [`with_fence`]).
    static ACTOR_FENCE: i64;
}

/// Runs a commit under the token the actor was started under: [`check_fence`] compares the
/// lease with that token rather than with the node's current one.
pub(crate) async fn with_fence<F: Future>(token: Option<i64>, commit: F) -> F::Output {
    match token {
        Some(token) => ACTOR_FENCE.scope(token, commit).await,
        None => commit.await,
    }
}

/// The fence every commit passes, inside its transaction: the tenant's lease must still carry the
/// token this writer holds. The row is read `FOR SHARE`, so a takeover waits for this commit and
/// cannot slip in between the check and the commit.
pub async fn check_fence(conn: &mut PgConnection, tenant_id: Uuid) -> Result<(), ActorError> {
    let expected = match ACTOR_FENCE.try_with(|token| *token) {
        Ok(token) => token,
        Err(_) => match holdings().lock().expect("lease holdings lock").get(&tenant_id) {
            Some(Holding::Held(token)) => *token,
            Some(Holding::Lost(_)) => return Err(not_owner(tenant_id, None)),
            // Never placed on this node: a writer outside the actors (as a single hub always ran).
            None => return Ok(()),
        },
    };
    let current: Option<(i64, String)> = sqlx::query_as("SELECT token, owner FROM tenant_leases WHERE tenant_id = $1 FOR SHARE")
        .bind(tenant_id)
        .fetch_optional(&mut *conn)
        .await?;
    match current {
        Some((token, _)) if token == expected => Ok(()),
        other => {
            if record_lost(tenant_id, expected) {
                warn!(tenant_id = %tenant_id, node = node_id(), token = expected, "a commit found the tenant's lease taken over; stopping its actors here");
            }
            if let Some(node) = FENCED.get() {
                node.fenced_commit();
            }
            Err(not_owner(tenant_id, other.map(|(_, owner)| owner)))
        }
    }
}

static FENCED: OnceLock<LeaseNode> = OnceLock::new();

/// Lets [`check_fence`] count refused commits in this node's metrics.
pub(crate) fn install(node: &LeaseNode) {
    let _ = FENCED.set(node.clone());
}

fn node_id() -> &'static str {
    NODE_ID.get().map_or("unnamed", String::as_str)
}

fn not_owner(tenant_id: Uuid, owner: Option<String>) -> ActorError {
    let by = owner.filter(|owner| !owner.is_empty()).map(|owner| format!(" (hub node {owner} serves it now)")).unwrap_or_default();
    ActorError::NotOwner(format!(
        "this node ({}) no longer owns tenant {tenant_id}{by}; nothing was committed, retry",
        node_id()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holdings_forget_a_lost_token_but_not_a_newer_one() {
        let tenant = Uuid::new_v4();
        record_held(tenant, 3);
        assert_eq!(held_token(tenant), Some(3));
        assert!(!record_lost(tenant, 2), "an older incarnation's loss does not touch the current one");
        assert!(record_lost(tenant, 3));
        assert!(is_lost(tenant));
        assert_eq!(held_token(tenant), None);
        record_held(tenant, 5);
        assert!(!is_lost(tenant));
    }

    #[test]
    fn renewal_runs_three_times_per_ttl() {
        let config = LeaseConfig { node_id: "n".into(), ttl: Duration::from_secs(6) };
        assert_eq!(config.renew_every(), Duration::from_secs(2));
    }
}
