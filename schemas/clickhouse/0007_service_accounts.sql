-- The aggregator and the alerts service log in with accounts of their own
-- (trustlog/governance/roles.py service_grants), no longer as the admin. The aggregator may
-- insert into `events` and read only its bookkeeping columns (Kafka position, event id,
-- times). The rollups are filled by these materialized views, which by default run with the
-- inserting user's rights: they would need every column they aggregate, i.e. detail the
-- aggregator must not read. As DEFINER views they run as the account that applied the
-- migrations, and the aggregator needs no grant on `spend_daily` or on the detail columns.
ALTER TABLE {db}.spend_hourly_mv MODIFY DEFINER = CURRENT_USER SQL SECURITY DEFINER;
ALTER TABLE {db}.spend_daily_mv MODIFY DEFINER = CURRENT_USER SQL SECURITY DEFINER;
