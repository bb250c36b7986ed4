-- Billing, second part: the record of a void (when, by whom, why), the items the lines of a void
-- invoice had billed, and the order of an invoice's lines.
--
-- An item (a dispense, a completed appointment) is billed at most once: invoice_lines.dispense_id
-- and .appointment_id are UNIQUE. A void invoice keeps its lines for the record, but its items must
-- become billable again, so voiding moves those ids to released_dispense_id and
-- released_appointment_id (not unique: one item may be released by several void invoices in turn).

ALTER TABLE invoices
    ADD COLUMN voided_at    timestamptz,
    ADD COLUMN voided_by    uuid REFERENCES users (id),
    ADD COLUMN void_reason  text,
    ADD CONSTRAINT invoices_void_recorded
        CHECK ((status = 'void') = (voided_at IS NOT NULL AND voided_by IS NOT NULL AND void_reason IS NOT NULL));

ALTER TABLE invoice_lines
    ADD COLUMN line_no                  integer NOT NULL DEFAULT 0 CHECK (line_no >= 0),
    ADD COLUMN released_dispense_id     uuid REFERENCES dispenses (id),
    ADD COLUMN released_appointment_id  uuid REFERENCES appointments (id),
    -- A line bills an item, or (on a void invoice) records the item it billed; never both.
    ADD CONSTRAINT invoice_lines_released_once
        CHECK (NOT (dispense_id IS NOT NULL AND released_dispense_id IS NOT NULL)
           AND NOT (appointment_id IS NOT NULL AND released_appointment_id IS NOT NULL));

