-- Governance: who may read what, enforced by ClickHouse (docs/governance.md).
--
-- Role accounts (config/roles.yaml, trustlog/governance/roles.py) get SELECT on a few views
-- and, for detail, on some columns of `events` under a row policy. DEFINER views run as the
-- account that applied migrations, so a reader needs no grant on the tables under them;
-- inside them currentUser() is still the reader, which is how each narrows to that reader.
-- Tables created here are written by trustlog (as the admin account) and granted to nobody.

-- Settings the views read at query time, written by `trustlog roles sync` from
-- config/roles.yaml. Only min_group_size for now; without a row the views use 5.
CREATE TABLE IF NOT EXISTS {db}.governance_settings
(
    name LowCardinality(String),
    value UInt64,
    updated_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY name;

-- Time-boxed deeper reviews. One row per version of a case (ReplacingMergeTree keeps the
-- newest; read with FINAL). state: pending (waiting for the named approver), open, closed.
-- A case past expires_at stays 'open' here but grants nothing: the views compare with now()
-- at query time, so access ends on time without any job running.
-- reader: the security account the case lets read; approver: a different security account.
-- scope_kind pseudonym | team | tool, scope_value what it names; [period_start, period_end)
-- bounds the event times the case covers. Kept like incidents (a year) as the legal record
-- of who looked at what and why.
CREATE TABLE IF NOT EXISTS {db}.cases
(
    case_id String,
    state LowCardinality(String),
    reader String,
    approver String,
    reason String,
    scope_kind LowCardinality(String),
    scope_value String,
    period_start DateTime64(3, 'UTC'),
    period_end DateTime64(3, 'UTC'),
    opened_at DateTime64(3, 'UTC'),
    expires_at DateTime64(3, 'UTC'),
    approved_at Nullable(DateTime64(3, 'UTC')),
    closed_at Nullable(DateTime64(3, 'UTC')),
    closed_by String DEFAULT '',
    outcome LowCardinality(String) DEFAULT '',
    outcome_note String DEFAULT '',
    legal_hold UInt8 DEFAULT 0,
    legal_hold_reason String DEFAULT '',
    version UInt64,
    updated_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version)
ORDER BY case_id
TTL toDateTime(opened_at) + INTERVAL 365 DAY DELETE;

-- Notices to the people a case concerns (recipient_kind pseudonym: one person; team or tool:
-- everyone in it). Recorded here when a case opens and closes, unless it is under legal
-- hold; delivery (mail, Slack DM) is a later consumer that marks delivered_at. The message
-- says why, what period and until when, never any detail row.
CREATE TABLE IF NOT EXISTS {db}.notifications
(
    notification_id String,
    case_id String,
    kind LowCardinality(String),
    recipient_kind LowCardinality(String),
    recipient String,
    message String,
    created_at DateTime64(3, 'UTC'),
    delivered_at Nullable(DateTime64(3, 'UTC')),
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY notification_id
TTL toDateTime(created_at) + INTERVAL 365 DAY DELETE;

-- Which pseudonyms are an employee account's own: one row per key version still configured
-- (docs/identity.md), written by `trustlog roles sync`, which alone holds both the account's
-- user id (config/roles.yaml) and the pseudonym keys. Admin-only: it links a login to a
-- pseudonym. is_deleted = 1 retires a row (account removed, key retired).
CREATE TABLE IF NOT EXISTS {db}.employee_pseudonyms
(
    account String,
    pseudonym String,
    key_version LowCardinality(String),
    version UInt64,
    is_deleted UInt8 DEFAULT 0
)
ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY (account, pseudonym);

-- Reads of governed objects copied out of system.query_log by `trustlog audit`, so the record
-- survives query_log rotation and carries the cases active for the reader at that moment.
-- refused = 1 for a query ClickHouse rejected (e.g. ACCESS_DENIED): attempts are audited too.
CREATE TABLE IF NOT EXISTS {db}.read_audit
(
    query_id String,
    event_time DateTime64(3, 'UTC'),
    account String,
    objects Array(String),
    case_ids Array(String),
    result_rows UInt64,
    refused UInt8,
    error_code Int32,
    query String
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (account, event_time, query_id)
TTL toDateTime(event_time) + INTERVAL 365 DAY DELETE;

-- The reader's own open cases: approved, not closed, not expired. now() is evaluated at query
-- time, so access ends at expires_at by itself. Security accounts' row policy on `events`
-- (trustlog/governance/roles.py) reads this view: a detail row is visible only while one of
-- these cases covers its pseudonym, team or tool and its time lies in the case period.
CREATE OR REPLACE VIEW {db}.my_cases
DEFINER = CURRENT_USER SQL SECURITY DEFINER
AS SELECT case_id, scope_kind, scope_value, period_start, period_end, approved_at, expires_at, approver, reason
FROM {db}.cases FINAL
WHERE state = 'open' AND approved_at IS NOT NULL AND now64(3) < expires_at
    AND reader = currentUser();

-- The reader's own pseudonyms; employee accounts' row policy on `events` reads this view.
CREATE OR REPLACE VIEW {db}.my_pseudonyms
DEFINER = CURRENT_USER SQL SECURITY DEFINER
AS SELECT pseudonym, key_version
FROM {db}.employee_pseudonyms FINAL
WHERE account = currentUser();

-- Why detail access is a row policy on `events` and not a DEFINER view over it: ClickHouse
-- pushes a reader's WHERE below a view's own filter (checked on 26.9: through a DEFINER view
-- joining events with cases, `WHERE throwIf(team = 'x')` raised for rows the view hides, an
-- oracle for hidden rows). A row policy is applied when the table is read, before any
-- condition of the reader's. The two views below are conveniences over `events` that run
-- with the reader's own rights (SQL SECURITY INVOKER): the row policy and the column grants
-- of the reader apply, so they show exactly what `events` would.

-- Security: the security columns (schemas/fields.yaml roles) of the rows the reader's open
-- cases cover, with the ids of those cases.
CREATE OR REPLACE VIEW {db}.security_events
SQL SECURITY INVOKER
AS WITH (
    SELECT groupArray((case_id, period_start, period_end, scope_kind, scope_value)) FROM {db}.my_cases
) AS open_cases
SELECT
    arrayMap(c -> c.1, arrayFilter(c -> event_time >= c.2 AND event_time < c.3
        AND multiIf(c.4 = 'pseudonym', user_pseudonym = c.5, c.4 = 'team', team = c.5,
                    c.4 = 'tool', tool = c.5, 0), open_cases)) AS case_ids,
    event_id, event_time, producer, tool, model, provider, workspace, user_pseudonym,
    pseudonym_key_version, team, task_label, input_tokens, output_tokens, cached_tokens,
    reasoning_tokens, status, retry_count, policy_flags, sensitive_classes, content_chars,
    cost_usd, priced, ingested_at, kafka_topic, kafka_partition, kafka_offset
FROM {db}.events;

-- Employee: the employee columns of their own rows.
CREATE OR REPLACE VIEW {db}.employee_events
SQL SECURITY INVOKER
AS SELECT
    event_id, event_time, tool, model, provider, workspace, user_pseudonym, team, task_label,
    input_tokens, output_tokens, cached_tokens, reasoning_tokens, status, retry_count,
    policy_flags, sensitive_classes, content_chars, cost_usd, priced
FROM {db}.events;

-- Manager: weekly trend of a team by tool, never a group smaller than min_group_size people.
-- People are counted as distinct pseudonyms per key version, taking the largest version:
-- after a key rotation one person has two pseudonyms, and counting both would let a group of
-- 4 people pass as 5. The count is a lower bound, so rotation weeks err towards hiding.
-- A tool used by fewer people that week is merged into '(other)'; if '(other)' is still too
-- small it is left out, and there is no separate total row, so nothing suppressed can be
-- recovered by subtracting visible rows. One breakdown only (by tool) for the same reason: a
-- second breakdown of the same week would let a manager subtract one from the other.
-- Weeks are shown once settled: 7 days after they ended (the redactor accepts events up to
-- 7 days old, so a week shown earlier could still grow by one person's late events) and only
-- while the whole week is still inside the detail retention (a week that is partly deleted
-- would shrink day by day, and the difference is one day).
-- The team restriction is a row policy per manager account (config/roles.yaml).
CREATE OR REPLACE VIEW {db}.manager_team_weekly
DEFINER = CURRENT_USER SQL SECURITY DEFINER
AS SELECT
    week, team, tool_group AS tool,
    max(people_v) AS people,
    sum(requests) AS requests,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cost_usd) AS cost_usd,
    sum(errors) AS errors,
    sum(blocked) AS blocked,
    sum(unpriced) AS unpriced
FROM
(
    -- one row per (week, team, tool group, key version): people of the group under that key
    SELECT
        week, team, key_version,
        if(tool_people >= k, tool, '(other)') AS tool_group,
        uniqExactMerge(people_state) AS people_v,
        sum(requests) AS requests,
        sum(input_tokens) AS input_tokens,
        sum(output_tokens) AS output_tokens,
        sum(cost_usd) AS cost_usd,
        sum(errors) AS errors,
        sum(blocked) AS blocked,
        sum(unpriced) AS unpriced,
        any(k) AS min_people
    FROM
    (
        SELECT
            *,
            max(people_tv) OVER (PARTITION BY week, team, tool) AS tool_people
        FROM
        (
            SELECT
                toMonday(event_time) AS week,
                toString(team) AS team,
                toString(tool) AS tool,
                toString(pseudonym_key_version) AS key_version,
                uniqExactState(user_pseudonym) AS people_state,
                uniqExact(user_pseudonym) AS people_tv,
                count() AS requests,
                sum(input_tokens) AS input_tokens,
                sum(output_tokens) AS output_tokens,
                sum(cost_usd) AS cost_usd,
                countIf(status = 'error') AS errors,
                countIf(status = 'blocked') AS blocked,
                countIf(priced = 0) AS unpriced,
                greatest(3, (
                    SELECT if(count() = 0, 5, argMax(value, updated_at))
                    FROM {db}.governance_settings WHERE name = 'min_group_size'
                )) AS k
            FROM {db}.events
            WHERE event_time >= toMonday(toDate(now(), 'UTC') - {detail_ttl_days}) + 7
                AND event_time < toMonday(toDate(now(), 'UTC') - 7)
            GROUP BY week, team, tool, key_version
        )
    )
    GROUP BY week, team, tool_group, key_version
)
GROUP BY week, team, tool_group
HAVING people >= any(min_people);
