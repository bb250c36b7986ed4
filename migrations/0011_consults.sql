-- Video consults: one session per video appointment (opened by its doctor), who took part and for
-- how long, the chat, and the consult record the doctor writes at the end.
--
-- The read model of each VideoSession actor, kept in step with its events in the same transaction
-- (the actor's own state is rebuilt from its stream `consult/{id}`: snapshot + events). The record
-- is attached to the appointment through `appointment_id` (one consult per appointment), and the
-- appointment's `appointment.completed` event names the session.

CREATE TABLE consult_sessions (
    id              uuid PRIMARY KEY,
    tenant_id       uuid NOT NULL REFERENCES tenants (id),
    appointment_id  uuid NOT NULL UNIQUE REFERENCES appointments (id),
    doctor_id       uuid NOT NULL REFERENCES doctors (id),
    doctor_user_id  uuid NOT NULL REFERENCES users (id),
    patient_id      uuid NOT NULL REFERENCES patients (id),
    state           text NOT NULL CHECK (state IN ('waiting', 'in_progress', 'ended')),
    opened_by       uuid NOT NULL REFERENCES users (id),
    opened_at       timestamptz NOT NULL,
    started_at      timestamptz,
    ended_at        timestamptz,
    -- {"chief_complaint", "assessment", "plan", "follow_up"}, written by the doctor on ending.
    record          jsonb,
    message_count   bigint NOT NULL DEFAULT 0,
    version         bigint NOT NULL,
    CHECK ((state = 'ended') = (ended_at IS NOT NULL)),
    CHECK (state <> 'ended' OR record IS NOT NULL)
);
CREATE INDEX consult_sessions_tenant_state ON consult_sessions (tenant_id, state);
CREATE INDEX consult_sessions_doctor ON consult_sessions (doctor_id, opened_at);
CREATE INDEX consult_sessions_patient ON consult_sessions (patient_id, opened_at);

-- Everyone who was, or may be, in a consult's room: the doctor, the patient, invited guests.
CREATE TABLE consult_participants (
    session_id         uuid NOT NULL REFERENCES consult_sessions (id),
    user_id            uuid NOT NULL REFERENCES users (id),
    tenant_id          uuid NOT NULL REFERENCES tenants (id),
    role               text NOT NULL CHECK (role IN ('doctor', 'patient', 'guest')),
    display_name       text NOT NULL,
    connection         text NOT NULL CHECK (connection IN ('invited', 'connected', 'reconnecting', 'left')),
    invited_by         uuid REFERENCES users (id),
    invited_at         timestamptz,
    first_joined_at    timestamptz,
    last_joined_at     timestamptz,
    left_at            timestamptz,
    joins              integer NOT NULL DEFAULT 0,
    -- Time in the room over every finished stay (the current stay counts from last_joined_at).
    seconds_in_room    double precision NOT NULL DEFAULT 0,
    audio              boolean NOT NULL DEFAULT true,
    video              boolean NOT NULL DEFAULT true,
    PRIMARY KEY (session_id, user_id)
);
CREATE INDEX consult_participants_user ON consult_participants (user_id);

-- The chat, numbered per session in the order the actor committed it.
CREATE TABLE consult_messages (
    id              uuid PRIMARY KEY,
    tenant_id       uuid NOT NULL REFERENCES tenants (id),
    session_id      uuid NOT NULL REFERENCES consult_sessions (id),
    seq             bigint NOT NULL,
    sender_user_id  uuid NOT NULL REFERENCES users (id),
    sender_role     text NOT NULL CHECK (sender_role IN ('doctor', 'patient', 'guest')),
    sender_name     text NOT NULL,
    body            text NOT NULL CHECK (length(body) BETWEEN 1 AND 4000),
    sent_at         timestamptz NOT NULL,
    UNIQUE (session_id, seq)
);
