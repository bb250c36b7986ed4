-- A patient lies in one bed at a time, across every facility of the tenant. The Facility actor
-- checks its own beds; this index is the guard across facilities (and processes).
CREATE UNIQUE INDEX beds_one_bed_per_patient ON beds (tenant_id, patient_id) WHERE patient_id IS NOT NULL;
