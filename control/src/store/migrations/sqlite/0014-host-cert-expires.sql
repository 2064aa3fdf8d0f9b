-- 14: when each node's host certificate ends, as it last reported or was renewed.
ALTER TABLE nodes ADD COLUMN host_cert_expires INTEGER;
