-- Emergency beds held for incoming ambulance patients. When dispatch sends a unit to a facility,
-- that facility's actor reserves one of its free emergency beds for the incident; the hold ends
-- when the patient is admitted into the bed, or when the incident is cancelled or closed without
-- that (the bed is free again). A reserved bed is neither free nor occupied: it names the
-- incident it is held for and, when the incident knows them, the patient.

ALTER TABLE beds DROP CONSTRAINT beds_status_check;
ALTER TABLE beds ADD CONSTRAINT beds_status_check
    CHECK (status IN ('free', 'occupied', 'reserved', 'cleaning', 'out_of_service'));

ALTER TABLE beds ADD COLUMN reserved_for uuid REFERENCES incidents (id);
ALTER TABLE beds ADD COLUMN reserved_patient_id uuid REFERENCES patients (id);
ALTER TABLE beds ADD CONSTRAINT beds_reserved_for_an_incident
    CHECK ((status = 'reserved') = (reserved_for IS NOT NULL) AND (reserved_patient_id IS NULL OR status = 'reserved'));

-- An incident holds one bed at a time, across every facility of the tenant. Each Facility actor
-- checks its own beds; this index is the guard across facilities.
CREATE UNIQUE INDEX beds_one_bed_per_incident ON beds (reserved_for) WHERE reserved_for IS NOT NULL;

-- The bed an incident holds at its destination (while it holds one).
ALTER TABLE incidents ADD COLUMN reserved_bed_id uuid REFERENCES beds (id);
