-- Placement by lease (scale-out): each tenant's actors live on exactly one hub node at a time.
-- The owner renews `expires_at` in the background; another node may take the row over only once it
-- has expired, and every takeover bumps `token` (the fencing token). Every commit an actor makes
-- reads its tenant's row FOR SHARE and compares the token with the one its node acquired, so a
-- node that lost the lease (paused, partitioned) can never commit for that tenant again.
CREATE TABLE tenant_leases (
    tenant_id   UUID PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    owner       TEXT NOT NULL,
    token       BIGINT NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    acquired_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX tenant_leases_owner ON tenant_leases (owner);

-- The hub nodes sharing this database, for routing: a request that reaches a node which does not
-- own the tenant is forwarded to the owner's `url`. Each node upserts its row as it starts and
-- refreshes `heartbeat_at` with its lease renewals; a node whose heartbeat is older than a lease
-- TTL is presumed dead (its leases are left to expire and be taken over). A node that stops
-- gracefully deletes its row.
CREATE TABLE hub_nodes (
    node_id      TEXT PRIMARY KEY,
    url          TEXT NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
