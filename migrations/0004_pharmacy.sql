-- Pharmacy: the formulary, medication batches per pharmacy (the read model of InventoryBatch
-- actors), prescriptions with their reservations and dispenses, stock alerts, and billing.
--
-- Stock is conserved by construction: a batch's units are on hand (some of them reserved for
-- prescriptions) until they are dispensed, adjusted with a reason, or removed; every change is an
-- event of the batch's stream, committed with its audit entry.

CREATE TABLE medications (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    name          text NOT NULL,
    generic_name  text NOT NULL,
    atc_code      text NOT NULL CHECK (atc_code ~ '^[A-Z][0-9]{2}[A-Z]{2}[0-9]{2}$'),
    form          text NOT NULL,
    strength      text NOT NULL,
    unit          text NOT NULL,
    manufacturer  text,
    unit_price    numeric(12, 2) NOT NULL CHECK (unit_price >= 0),
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name, form, strength)
);
CREATE INDEX medications_generic ON medications (tenant_id, lower(generic_name));
CREATE INDEX medications_atc ON medications (tenant_id, atc_code);

CREATE TABLE inventory_batches (
    id             uuid PRIMARY KEY,
    tenant_id      uuid NOT NULL REFERENCES tenants (id),
    pharmacy_id    uuid NOT NULL REFERENCES facilities (id),
    medication_id  uuid NOT NULL REFERENCES medications (id),
    batch_number   text NOT NULL,
    expiry_date    date NOT NULL,
    on_hand        integer NOT NULL CHECK (on_hand >= 0),
    reserved       integer NOT NULL CHECK (reserved >= 0 AND reserved <= on_hand),
    status         text NOT NULL CHECK (status IN ('active', 'recalled', 'removed')),
    location       text,
    version        bigint NOT NULL,
    received_at    timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    UNIQUE (tenant_id, pharmacy_id, batch_number, medication_id)
);
CREATE INDEX inventory_batches_stock ON inventory_batches (tenant_id, pharmacy_id, medication_id, expiry_date);

-- Below this many available units (on hand - reserved, unexpired) of a medication at a pharmacy,
-- a low-stock alert is raised.
CREATE TABLE reorder_points (
    tenant_id      uuid NOT NULL REFERENCES tenants (id),
    pharmacy_id    uuid NOT NULL REFERENCES facilities (id),
    medication_id  uuid NOT NULL REFERENCES medications (id),
    reorder_point  integer NOT NULL CHECK (reorder_point >= 0),
    PRIMARY KEY (tenant_id, pharmacy_id, medication_id)
);

CREATE TABLE prescriptions (
    id               uuid PRIMARY KEY,
    tenant_id        uuid NOT NULL REFERENCES tenants (id),
    patient_id       uuid NOT NULL REFERENCES patients (id),
    prescriber_id    uuid NOT NULL REFERENCES users (id),
    medication_id    uuid NOT NULL REFERENCES medications (id),
    pharmacy_id      uuid NOT NULL REFERENCES facilities (id),
    dose             text NOT NULL,
    frequency        text NOT NULL,
    duration_days    integer NOT NULL CHECK (duration_days BETWEEN 1 AND 3650),
    quantity         integer NOT NULL CHECK (quantity > 0),
    refills          integer NOT NULL CHECK (refills >= 0),
    refills_used     integer NOT NULL DEFAULT 0 CHECK (refills_used >= 0 AND refills_used <= refills),
    status           text NOT NULL CHECK (status IN ('active', 'partially_dispensed', 'dispensed', 'cancelled')),
    notes            text,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);
CREATE INDEX prescriptions_patient ON prescriptions (tenant_id, patient_id, created_at);
CREATE INDEX prescriptions_queue ON prescriptions (tenant_id, pharmacy_id, status, created_at);

-- Units of a batch held for a prescription (the batch actor is the writer).
CREATE TABLE reservations (
    prescription_id  uuid NOT NULL REFERENCES prescriptions (id),
    batch_id         uuid NOT NULL REFERENCES inventory_batches (id),
    tenant_id        uuid NOT NULL REFERENCES tenants (id),
    quantity         integer NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (prescription_id, batch_id)
);
CREATE INDEX reservations_batch ON reservations (batch_id);

-- Units that left a batch for a patient. Billing reads these (invoice_lines.dispense_id).
CREATE TABLE dispenses (
    id               uuid PRIMARY KEY,
    tenant_id        uuid NOT NULL REFERENCES tenants (id),
    prescription_id  uuid NOT NULL REFERENCES prescriptions (id),
    patient_id       uuid NOT NULL REFERENCES patients (id),
    batch_id         uuid NOT NULL REFERENCES inventory_batches (id),
    medication_id    uuid NOT NULL REFERENCES medications (id),
    quantity         integer NOT NULL CHECK (quantity > 0),
    unit_price       numeric(12, 2) NOT NULL CHECK (unit_price >= 0),
    dispensed_by     uuid NOT NULL REFERENCES users (id),
    dispensed_at     timestamptz NOT NULL
);
CREATE INDEX dispenses_prescription ON dispenses (prescription_id);
CREATE INDEX dispenses_patient ON dispenses (tenant_id, patient_id, dispensed_at);

CREATE TABLE stock_alerts (
    id               uuid PRIMARY KEY,
    tenant_id        uuid NOT NULL REFERENCES tenants (id),
    pharmacy_id      uuid NOT NULL REFERENCES facilities (id),
    medication_id    uuid NOT NULL REFERENCES medications (id),
    batch_id         uuid REFERENCES inventory_batches (id),
    kind             text NOT NULL CHECK (kind IN ('low_stock', 'expiry', 'recall')),
    -- For expiry alerts, the horizon crossed (days); one alert per batch and horizon.
    horizon_days     integer,
    detail           jsonb NOT NULL DEFAULT '{}'::jsonb,
    status           text NOT NULL CHECK (status IN ('open', 'acknowledged')),
    raised_at        timestamptz NOT NULL,
    acknowledged_by  uuid REFERENCES users (id),
    acknowledged_at  timestamptz
);
CREATE UNIQUE INDEX stock_alerts_one_open_low ON stock_alerts (tenant_id, pharmacy_id, medication_id)
    WHERE kind = 'low_stock' AND status = 'open';
CREATE UNIQUE INDEX stock_alerts_expiry_once ON stock_alerts (batch_id, horizon_days) WHERE kind = 'expiry';
CREATE INDEX stock_alerts_board ON stock_alerts (tenant_id, pharmacy_id, status, raised_at);

-- Billing: invoices per patient from dispensed items and consultation fees. Amounts are exact
-- decimals (numeric), never floats.
CREATE TABLE invoices (
    id           uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    patient_id   uuid NOT NULL REFERENCES patients (id),
    number       text NOT NULL,
    status       text NOT NULL CHECK (status IN ('draft', 'issued', 'partially_paid', 'paid', 'void')),
    currency     text NOT NULL DEFAULT 'KES' CHECK (currency ~ '^[A-Z]{3}$'),
    total        numeric(14, 2) NOT NULL CHECK (total >= 0),
    paid         numeric(14, 2) NOT NULL DEFAULT 0 CHECK (paid >= 0),
    version      bigint NOT NULL DEFAULT 1,
    created_by   uuid NOT NULL REFERENCES users (id),
    created_at   timestamptz NOT NULL,
    issued_at    timestamptz,
    updated_at   timestamptz NOT NULL,
    UNIQUE (tenant_id, number),
    CHECK (paid <= total)
);
CREATE INDEX invoices_patient ON invoices (tenant_id, patient_id, created_at);

CREATE TABLE invoice_lines (
    id              uuid PRIMARY KEY,
    invoice_id      uuid NOT NULL REFERENCES invoices (id),
    tenant_id       uuid NOT NULL REFERENCES tenants (id),
    kind            text NOT NULL CHECK (kind IN ('medication', 'consultation', 'other')),
    description     text NOT NULL,
    quantity        integer NOT NULL CHECK (quantity > 0),
    unit_price      numeric(12, 2) NOT NULL CHECK (unit_price >= 0),
    amount          numeric(14, 2) NOT NULL CHECK (amount = quantity * unit_price),
    dispense_id     uuid UNIQUE REFERENCES dispenses (id),
    appointment_id  uuid UNIQUE REFERENCES appointments (id)
);
CREATE INDEX invoice_lines_invoice ON invoice_lines (invoice_id);

CREATE TABLE payments (
    id           uuid PRIMARY KEY,
    invoice_id   uuid NOT NULL REFERENCES invoices (id),
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    kind         text NOT NULL CHECK (kind IN ('payment', 'refund')),
    method       text NOT NULL CHECK (method IN ('cash', 'card', 'mobile_money')),
    amount       numeric(14, 2) NOT NULL CHECK (amount > 0),
    reference    text NOT NULL,
    received_by  uuid NOT NULL REFERENCES users (id),
    received_at  timestamptz NOT NULL,
    UNIQUE (invoice_id, reference, kind)
);
CREATE INDEX payments_invoice ON payments (invoice_id);

-- Consultation fee per doctor (billing adds it for each completed appointment).
ALTER TABLE doctors ADD COLUMN consultation_fee numeric(12, 2) NOT NULL DEFAULT 0 CHECK (consultation_fee >= 0);
