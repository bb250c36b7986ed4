-- The backbone: tenants, users and sessions, the event log with per-topic sequences,
-- actor snapshots, the hash-chained audit trail, and the first domain: facilities and beds.

CREATE TABLE tenants (
    id          uuid PRIMARY KEY,
    slug        text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9][a-z0-9-]{1,39}$'),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id             uuid PRIMARY KEY,
    tenant_id      uuid NOT NULL REFERENCES tenants (id),
    email          text NOT NULL,
    display_name   text NOT NULL,
    role           text NOT NULL CHECK (role IN ('admin', 'dispatcher', 'doctor', 'nurse', 'pharmacist', 'patient')),
    password_hash  text NOT NULL,
    active         boolean NOT NULL DEFAULT true,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_tenant_email ON users (tenant_id, lower(email));

-- A login session: the refresh token (stored only as its SHA-256) and the access tokens minted
-- from it (they carry the session id) live exactly as long as the session is not revoked.
CREATE TABLE sessions (
    id                  uuid PRIMARY KEY,
    tenant_id           uuid NOT NULL REFERENCES tenants (id),
    user_id             uuid NOT NULL REFERENCES users (id),
    refresh_token_hash  bytea NOT NULL UNIQUE,
    created_at          timestamptz NOT NULL DEFAULT now(),
    refreshed_at        timestamptz NOT NULL DEFAULT now(),
    expires_at          timestamptz NOT NULL,
    revoked_at          timestamptz,
    source_addr         text
);
CREATE INDEX sessions_user ON sessions (user_id);

-- Hub-wide settings generated once and shared by every node (e.g. the token signing key).
CREATE TABLE hub_settings (
    key    text PRIMARY KEY,
    value  text NOT NULL
);

-- The event log: every committed domain event, in its actor's stream order (stream_seq)
-- and in its live topic's order (topic_seq). It is the outbox the WebSocket fan-out reads.
CREATE TABLE events (
    id          bigserial PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    stream      text NOT NULL,
    stream_seq  bigint NOT NULL,
    topic       text NOT NULL,
    topic_seq   bigint NOT NULL,
    event_type  text NOT NULL,
    data        jsonb NOT NULL,
    created_at  timestamptz NOT NULL,
    UNIQUE (stream, stream_seq),
    UNIQUE (topic, topic_seq)
);

-- The last sequence handed out per topic. Its row lock orders the commits of one topic,
-- so topic order equals commit order and a live subscriber never sees a gap.
CREATE TABLE topic_seqs (
    topic  text PRIMARY KEY,
    seq    bigint NOT NULL
);

-- The latest snapshot of each actor's state and the stream sequence it covers.
CREATE TABLE snapshots (
    stream      text PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    stream_seq  bigint NOT NULL,
    state       jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- The audit trail: append-only and hash-chained per tenant. hash = SHA-256(prev_hash || canonical
-- content); the canonical content is defined in actors/src/audit.rs.
CREATE TABLE audit_log (
    tenant_id      uuid NOT NULL REFERENCES tenants (id),
    seq            bigint NOT NULL,
    at             timestamptz NOT NULL,
    actor_kind     text NOT NULL CHECK (actor_kind IN ('user', 'device', 'system')),
    actor_id       text NOT NULL,
    actor_role     text,
    action         text NOT NULL,
    resource_type  text NOT NULL,
    resource_id    text,
    patient_id     uuid,
    source_addr    text,
    outcome        text NOT NULL CHECK (outcome IN ('success', 'denied', 'failed')),
    detail         jsonb NOT NULL DEFAULT '{}'::jsonb,
    prev_hash      bytea NOT NULL,
    hash           bytea NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);
CREATE INDEX audit_log_actor ON audit_log (tenant_id, actor_id, seq);
CREATE INDEX audit_log_patient ON audit_log (tenant_id, patient_id, seq) WHERE patient_id IS NOT NULL;
CREATE INDEX audit_log_resource ON audit_log (tenant_id, resource_type, resource_id, seq);
CREATE INDEX audit_log_at ON audit_log (tenant_id, at);

-- The head of each tenant's chain; locked by every append so entries chain in commit order.
CREATE TABLE audit_heads (
    tenant_id  uuid PRIMARY KEY REFERENCES tenants (id),
    seq        bigint NOT NULL,
    hash       bytea NOT NULL
);

CREATE FUNCTION audit_log_is_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER audit_log_no_update_or_delete
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_is_append_only();
CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_is_append_only();

-- Facilities, wards and beds: the read model the Facility actor keeps in step with its events,
-- in the same transaction. The actor's own state is rebuilt from snapshot + events.
CREATE TABLE facilities (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    name        text NOT NULL,
    kind        text NOT NULL,
    latitude    double precision NOT NULL CHECK (latitude BETWEEN -90 AND 90),
    longitude   double precision NOT NULL CHECK (longitude BETWEEN -180 AND 180),
    timezone    text NOT NULL,
    version     bigint NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX facilities_tenant ON facilities (tenant_id);

CREATE TABLE wards (
    id           uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    facility_id  uuid NOT NULL REFERENCES facilities (id),
    name         text NOT NULL,
    kind         text NOT NULL,
    position     integer NOT NULL
);
CREATE INDEX wards_facility ON wards (facility_id);

CREATE TABLE beds (
    id           uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    facility_id  uuid NOT NULL REFERENCES facilities (id),
    ward_id      uuid NOT NULL REFERENCES wards (id),
    label        text NOT NULL,
    position     integer NOT NULL,
    status       text NOT NULL CHECK (status IN ('free', 'occupied', 'cleaning', 'out_of_service')),
    patient_id   uuid,
    updated_at   timestamptz NOT NULL,
    CHECK ((status = 'occupied') = (patient_id IS NOT NULL)),
    UNIQUE (ward_id, label)
);
CREATE INDEX beds_facility ON beds (facility_id);
