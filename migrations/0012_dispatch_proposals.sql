-- A dispatcher may ask the hub to propose the best unit and confirm it (or pick another) before
-- anything is sent: the incident waits as `proposed`, naming the unit it would send.
ALTER TABLE incidents DROP CONSTRAINT incidents_status_check;
ALTER TABLE incidents ADD CONSTRAINT incidents_status_check
    CHECK (status IN ('open', 'proposed', 'dispatched', 'en_route', 'on_scene', 'transporting', 'at_hospital', 'closed', 'cancelled', 'unassigned'));
ALTER TABLE incidents ADD COLUMN proposed_unit_id uuid;
