-- Devices: the ambulance units' trackers and patient monitors that speak MQTT to the hub.
--
-- A device belongs to one tenant and one ambulance unit; its topic prefix is
-- medhub/{tenant slug}/ambulance/{unit_id}/ and it may publish and subscribe nowhere else.
-- It logs in with `username` (unique across tenants: MQTT's CONNECT names no tenant) and a
-- generated password, stored twice, never in clear:
--   password_hash         argon2id (PHC string), checked by the hub's embedded broker;
--   broker_password_hash  mosquitto's PBKDF2-SHA512 format ($7$...), written into an external
--                         mosquitto's password file, which cannot read argon2.
-- unit_id has no foreign key: the ambulances table comes with a later migration (0007); the API
-- checks at registration that the unit exists in the tenant.
-- A deactivated device keeps its row (the audit trail names it) but can no longer connect.

CREATE TABLE devices (
    id                    uuid PRIMARY KEY,
    tenant_id             uuid NOT NULL REFERENCES tenants (id),
    unit_id               uuid NOT NULL,
    kind                  text NOT NULL CHECK (kind IN ('ambulance', 'monitor')),
    name                  text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    username              text NOT NULL UNIQUE CHECK (username ~ '^[a-z0-9][a-z0-9.-]{2,79}$'),
    password_hash         text NOT NULL,
    broker_password_hash  text NOT NULL,
    active                boolean NOT NULL DEFAULT true,
    created_at            timestamptz NOT NULL DEFAULT now(),
    deactivated_at        timestamptz,
    CHECK (active = (deactivated_at IS NULL))
);
CREATE INDEX devices_tenant_unit ON devices (tenant_id, unit_id);
