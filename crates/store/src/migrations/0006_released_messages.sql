-- A queued QoS 2 message its receiver has answered with PUBREC. After a restart the broker
-- resends only its PUBREL: resending the PUBLISH could deliver it twice.
ALTER TABLE session_messages ADD COLUMN released INTEGER NOT NULL DEFAULT 0;
