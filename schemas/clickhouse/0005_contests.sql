-- Corrections and appeals (docs/governance.md, "Contesting a record"): an employee contests
-- one of their own records (an event or an incident), the security group decides, the
-- employee sees the outcome and reports show an annotation without any person in it.

-- Append-only history: one row per state change, each a full copy of the contest, so the
-- newest row (largest version) is the contest now and the older rows are its history.
-- state: open -> under_review -> upheld | rejected | corrected (open may be decided directly).
-- The employee is stored only as `pseudonym`: the record's own pseudonym, read through the
-- employee's row policy when they opened it (never their account or user id; the opening
-- row has an empty actor). context: the employee's own words about their own record;
-- note: the deciding security account's words to them. Both bounded here as well as in
-- trustlog.governance.contests, so no writer can store an essay. team, tool, record_day and
-- cost_usd are copied from the record at opening: the annotation outlives the detail row.
-- Readable by security accounts (all rows) and employees (their own pseudonyms' rows, row
-- policy in trustlog/governance/roles.py); nobody else. Kept a year, like cases.
CREATE TABLE IF NOT EXISTS {db}.contests
(
    contest_id String,
    version UInt64,
    at DateTime64(3, 'UTC'),
    state LowCardinality(String),
    from_state LowCardinality(String),
    actor String,
    note String,
    record_kind LowCardinality(String),
    record_id String,
    pseudonym String,
    kind LowCardinality(String),
    context String,
    team LowCardinality(String),
    tool LowCardinality(String),
    record_day Date,
    cost_usd Decimal(38, 12),
    opened_at DateTime64(3, 'UTC'),
    CONSTRAINT contest_state CHECK state IN ('open', 'under_review', 'upheld', 'rejected', 'corrected'),
    CONSTRAINT contest_kind CHECK kind IN ('not_me', 'shared_account', 'automation_misfired', 'other'),
    CONSTRAINT contest_record CHECK record_kind IN ('event', 'incident') AND length(record_id) BETWEEN 1 AND 200,
    CONSTRAINT contest_pseudonym CHECK match(pseudonym, '^p_[0-9a-f]{32}$'),
    CONSTRAINT contest_context_len CHECK lengthUTF8(context) <= 1000,
    CONSTRAINT contest_note_len CHECK lengthUTF8(note) <= 2000
)
ENGINE = MergeTree
ORDER BY (contest_id, version)
TTL toDateTime(opened_at) + INTERVAL 365 DAY DELETE;

-- Notices about a contest (its outcome, to the person who contested) go to the same table
-- as case notices; case_id stays empty on them.
ALTER TABLE {db}.notifications
    ADD COLUMN IF NOT EXISTS contest_id String DEFAULT '';

-- Each contest as it stands now. Runs as the reader (INVOKER): the row policy on `contests`
-- applies, so an employee sees only their own and a security account all of them.
-- attributed = 0: the owner upheld that the record is not this person's own use (not me,
-- a shared account, an automation), so no per-person reading may count it as theirs.
CREATE OR REPLACE VIEW {db}.contests_current
SQL SECURITY INVOKER
AS SELECT
    contest_id, state,
    if(state IN ('upheld', 'rejected', 'corrected'), toString(state), '') AS outcome,
    record_kind, record_id, pseudonym, kind, context, team, tool, record_day, cost_usd,
    opened_at, at AS updated_at, actor AS decided_by, note,
    toUInt8(NOT (state = 'upheld' AND kind IN ('not_me', 'shared_account', 'automation_misfired'))) AS attributed
FROM {db}.contests
ORDER BY contest_id, version DESC
LIMIT 1 BY contest_id;

-- Employee: incidents about their own pseudonyms (security rules name a pseudonym), so they
-- can see and contest them. Runs as the reader: the employee's row policy on `incidents` and
-- column grant apply (no owner, evidence map or lifecycle bookkeeping).
CREATE OR REPLACE VIEW {db}.employee_incidents
SQL SECURITY INVOKER
AS SELECT
    incident_id, rule, category, severity, state, team, tool, first_seen, last_seen,
    signal_count, summary, user_pseudonym
FROM {db}.incidents FINAL;

-- Annotations for finance and manager reports: what was contested and how it ended, by team,
-- tool and day, with NO pseudonym, record id, context or note. outcome_label is a fixed
-- phrase (trustlog.governance.contests.outcome_label says the same), never free text.
-- group_ok = 1 when at least min_group_size people (distinct pseudonyms per key version,
-- the larger count: a lower bound, as in manager_team_weekly) used that tool in that team
-- on that day; managers see only those rows (row policy), because a contest on a tool two
-- people used that day points at one of them. Computed from detail, so once the day's
-- detail has expired group_ok is 0 and managers no longer see it (errs towards hiding).
-- Finance sees every row (as it sees a one-person team's totals). DEFINER: readers need no
-- grant on contests or events; the aggregation by contest_id keeps a reader's filter on
-- team/tool/day above it, and the manager's team restriction is a row policy.
CREATE OR REPLACE VIEW {db}.contest_annotations
DEFINER = CURRENT_USER SQL SECURITY DEFINER
AS SELECT
    c.contest_id AS contest_id,
    c.record_kind AS record_kind,
    c.kind AS kind,
    c.status AS status,
    if(c.status IN ('upheld', 'rejected', 'corrected'), c.status, '') AS outcome,
    c.team AS team,
    c.tool AS tool,
    c.day AS day,
    c.cost_usd AS cost_usd,
    multiIf(
        c.status = 'open', 'contested, not yet reviewed',
        c.status = 'under_review', 'contested, under review',
        c.status = 'rejected', 'contest rejected',
        c.status = 'corrected', 'corrected after contest',
        c.kind = 'not_me', 'upheld: not this person''s use',
        c.kind = 'shared_account', 'upheld: shared account',
        c.kind = 'automation_misfired', 'upheld: automation misfired',
        'upheld'
    ) AS outcome_label,
    toUInt8(g.people >= greatest(3, (
        SELECT if(count() = 0, 5, argMax(value, updated_at))
        FROM {db}.governance_settings WHERE name = 'min_group_size'
    ))) AS group_ok
FROM
(
    SELECT
        contest_id,
        toString(argMax(state, version)) AS status,
        toString(any(record_kind)) AS record_kind,
        toString(any(kind)) AS kind,
        toString(any(team)) AS team,
        toString(any(tool)) AS tool,
        any(record_day) AS day,
        any(cost_usd) AS cost_usd
    FROM {db}.contests
    GROUP BY contest_id
) AS c
LEFT JOIN
(
    SELECT day, team, tool, max(people_v) AS people
    FROM
    (
        SELECT
            toDate(event_time) AS day, toString(team) AS team, toString(tool) AS tool,
            pseudonym_key_version, uniqExact(user_pseudonym) AS people_v
        FROM {db}.events
        WHERE (toDate(event_time), toString(team), toString(tool)) IN
            (SELECT record_day, toString(team), toString(tool) FROM {db}.contests)
        GROUP BY day, team, tool, pseudonym_key_version
    )
    GROUP BY day, team, tool
) AS g ON c.day = g.day AND c.team = g.team AND c.tool = g.tool;
