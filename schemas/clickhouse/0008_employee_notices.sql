-- Employees read their own notices (docs/governance.md, "Notices"): a notice nobody can read
-- is not a notice. Employees get SELECT on `notifications` under a row policy
-- (trustlog/governance/roles.py employee_notice_filter), not a DEFINER view: as for `events`
-- (0004_governance.sql), a reader's WHERE could be pushed below a view's filter and probe
-- other people's notices with throwIf, while a row policy is applied as the table is read.
--
-- Who a notice reaches, decided by ClickHouse from the row itself:
-- recipient_kind pseudonym: the employee owning that pseudonym (my_pseudonyms, any key
-- version); team or tool: every employee with a record of their own (their row policy on
-- `events`) in that team or tool whose event time lies in [period_start, period_end), i.e.
-- exactly the people whose records the case's reader could read under it.
--
-- The case's period, copied onto its notices: the policy cannot read `cases` (admin-only,
-- and a view of it for employees would show every team's cases). NULL on contest notices
-- (always to a pseudonym) and on case notices written before this migration, where team and
-- tool membership then falls back to any kept record in that team or tool.
ALTER TABLE {db}.notifications
    ADD COLUMN IF NOT EXISTS period_start Nullable(DateTime64(3, 'UTC'));
ALTER TABLE {db}.notifications
    ADD COLUMN IF NOT EXISTS period_end Nullable(DateTime64(3, 'UTC'));
