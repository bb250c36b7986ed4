-- Ambulance units (the read model of their actors) and their tracks. Positions are telemetry:
-- written in batches by the track writer, never through the event log.

CREATE TABLE ambulances (
    id              uuid PRIMARY KEY,
    tenant_id       uuid NOT NULL REFERENCES tenants (id),
    call_sign       text NOT NULL,
    status          text NOT NULL CHECK (status IN ('available', 'dispatched', 'en_route', 'on_scene', 'transporting', 'at_hospital', 'out_of_service')),
    incident_id     uuid,
    destination_id  uuid REFERENCES facilities (id),
    version         bigint NOT NULL,
    UNIQUE (tenant_id, call_sign)
);

CREATE TABLE ambulance_positions (
    tenant_id  uuid NOT NULL REFERENCES tenants (id),
    unit_id    uuid NOT NULL REFERENCES ambulances (id),
    fix_time   timestamptz NOT NULL,
    lat        double precision NOT NULL CHECK (lat BETWEEN -90 AND 90),
    lon        double precision NOT NULL CHECK (lon BETWEEN -180 AND 180),
    speed      double precision NOT NULL,
    heading    double precision NOT NULL,
    accuracy   double precision NOT NULL
);
CREATE INDEX ambulance_positions_track ON ambulance_positions (unit_id, fix_time);
