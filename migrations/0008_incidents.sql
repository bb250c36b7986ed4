-- Incidents (emergency calls and SOS alerts) and their dispatch. The tenant's Dispatch actor is
-- the single writer; each change is an event on the tenant's map topic, audited.

CREATE TABLE incidents (
    id              uuid PRIMARY KEY,
    tenant_id       uuid NOT NULL REFERENCES tenants (id),
    status          text NOT NULL CHECK (status IN ('open', 'dispatched', 'en_route', 'on_scene', 'transporting', 'at_hospital', 'closed', 'cancelled', 'unassigned')),
    priority        text NOT NULL CHECK (priority IN ('critical', 'urgent', 'routine')),
    latitude        double precision NOT NULL CHECK (latitude BETWEEN -90 AND 90),
    longitude       double precision NOT NULL CHECK (longitude BETWEEN -180 AND 180),
    description     text NOT NULL,
    patient_id      uuid REFERENCES patients (id),
    unit_id         uuid REFERENCES ambulances (id),
    destination_id  uuid REFERENCES facilities (id),
    tried_units     uuid[] NOT NULL DEFAULT '{}',
    dispatched_at   timestamptz,
    created_by      text NOT NULL,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);
CREATE INDEX incidents_open ON incidents (tenant_id, status) WHERE status NOT IN ('closed', 'cancelled');
