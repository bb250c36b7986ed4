-- Vital-sign observations: every set of vitals a unit's monitor sends, with its NEWS2 score, linked
-- to the unit's incident at the time and that incident's patient (when known). Telemetry: written in
-- batches by the observation writer (with one audit entry per batch and incident), never through the
-- event log. Read by incident and by patient in time order; the map takes each unit's latest.

CREATE TABLE observations (
    tenant_id         uuid NOT NULL REFERENCES tenants (id),
    id                uuid PRIMARY KEY,
    incident_id       uuid REFERENCES incidents (id),
    patient_id        uuid REFERENCES patients (id),
    unit_id           uuid NOT NULL REFERENCES ambulances (id),
    measured_at       timestamptz NOT NULL,
    respiration_rate  double precision NOT NULL,
    spo2              double precision NOT NULL,
    on_oxygen         boolean NOT NULL,
    systolic_bp       double precision NOT NULL,
    pulse             double precision NOT NULL,
    consciousness     text NOT NULL CHECK (consciousness IN ('alert', 'confusion', 'voice', 'pain', 'unresponsive')),
    temperature       double precision NOT NULL,
    news2_score       smallint NOT NULL CHECK (news2_score BETWEEN 0 AND 20),
    news2_band        text NOT NULL CHECK (news2_band IN ('low', 'low_medium', 'medium', 'high')),
    spo2_scale        smallint NOT NULL CHECK (spo2_scale IN (1, 2)),
    -- Each parameter's sub-score, as scored when received (the chart may be revised; the record stays).
    news2_parameters  jsonb NOT NULL,
    received_at       timestamptz NOT NULL
);
CREATE INDEX observations_by_incident ON observations (tenant_id, incident_id, measured_at) WHERE incident_id IS NOT NULL;
CREATE INDEX observations_by_patient ON observations (tenant_id, patient_id, measured_at) WHERE patient_id IS NOT NULL;
-- The map's latest vitals per unit.
CREATE INDEX observations_by_unit ON observations (unit_id, measured_at);
