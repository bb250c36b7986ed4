-- Patients, doctor profiles and their schedules, appointments.
--
-- Appointments have two guards against double booking: the DoctorSchedule actor (the single writer
-- of a doctor's bookings) and, below it, exclusion constraints that hold even for two hub processes
-- on one database: no two active appointments of one doctor, or of one patient, overlap in time.

CREATE EXTENSION IF NOT EXISTS btree_gist;

CREATE TABLE patients (
    id                  uuid PRIMARY KEY,
    tenant_id           uuid NOT NULL REFERENCES tenants (id),
    mrn                 text NOT NULL,
    given_name          text NOT NULL,
    family_name         text NOT NULL,
    birth_date          date NOT NULL,
    sex                 text NOT NULL CHECK (sex IN ('female', 'male', 'other', 'unknown')),
    phone               text,
    address             jsonb,
    emergency_contacts  jsonb NOT NULL DEFAULT '[]'::jsonb,
    -- The patient-role user who is this patient (may read the record and book for themself).
    user_id             uuid UNIQUE REFERENCES users (id),
    version             bigint NOT NULL DEFAULT 1,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, mrn)
);
CREATE INDEX patients_family_name ON patients (tenant_id, lower(family_name) text_pattern_ops);
CREATE INDEX patients_given_name ON patients (tenant_id, lower(given_name) text_pattern_ops);
CREATE INDEX patients_phone ON patients (tenant_id, phone);

-- The read model of each DoctorSchedule actor's profile (the actor's own state is its stream).
CREATE TABLE doctors (
    id               uuid PRIMARY KEY,
    tenant_id        uuid NOT NULL REFERENCES tenants (id),
    user_id          uuid NOT NULL UNIQUE REFERENCES users (id),
    display_name     text NOT NULL,
    specialties      text[] NOT NULL,
    facility_id      uuid NOT NULL REFERENCES facilities (id),
    timezone         text NOT NULL,
    consult_minutes  integer NOT NULL CHECK (consult_minutes BETWEEN 5 AND 480),
    working_hours    jsonb NOT NULL,
    time_off         jsonb NOT NULL DEFAULT '[]'::jsonb,
    version          bigint NOT NULL
);
CREATE INDEX doctors_tenant ON doctors (tenant_id);
CREATE INDEX doctors_specialties ON doctors USING gin (specialties);

CREATE TABLE appointments (
    id                uuid PRIMARY KEY,
    tenant_id         uuid NOT NULL REFERENCES tenants (id),
    doctor_id         uuid NOT NULL REFERENCES doctors (id),
    patient_id        uuid NOT NULL REFERENCES patients (id),
    starts_at         timestamptz NOT NULL,
    ends_at           timestamptz NOT NULL,
    kind              text NOT NULL CHECK (kind IN ('in_person', 'video')),
    status            text NOT NULL CHECK (status IN ('booked', 'checked_in', 'completed', 'cancelled', 'no_show')),
    reason            text,
    cancel_reason     text,
    booked_by         uuid NOT NULL,
    reminder_sent_at  timestamptz,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    CHECK (ends_at > starts_at),
    CONSTRAINT appointments_doctor_no_overlap EXCLUDE USING gist (
        doctor_id WITH =, tstzrange(starts_at, ends_at) WITH &&
    ) WHERE (status IN ('booked', 'checked_in')),
    CONSTRAINT appointments_patient_no_overlap EXCLUDE USING gist (
        patient_id WITH =, tstzrange(starts_at, ends_at) WITH &&
    ) WHERE (status IN ('booked', 'checked_in'))
);
CREATE INDEX appointments_doctor_time ON appointments (doctor_id, starts_at);
CREATE INDEX appointments_patient_time ON appointments (patient_id, starts_at);
CREATE INDEX appointments_reminders ON appointments (starts_at) WHERE status = 'booked' AND reminder_sent_at IS NULL;
