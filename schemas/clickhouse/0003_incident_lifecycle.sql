-- Incident lifecycle: who acknowledged and resolved an incident and when, escalation to a
-- second owner, reopen count; the state change each history row records; a log of every
-- acknowledge/resolve/escalate command with its outcome (refused ones included, so the
-- CLI and API can answer "why not").
ALTER TABLE {db}.incidents
    ADD COLUMN IF NOT EXISTS primary_owner LowCardinality(String) DEFAULT owner,
    ADD COLUMN IF NOT EXISTS opened_at Nullable(DateTime64(3, 'UTC')),
    ADD COLUMN IF NOT EXISTS escalated_at Nullable(DateTime64(3, 'UTC')),
    ADD COLUMN IF NOT EXISTS acknowledged_by String DEFAULT '',
    ADD COLUMN IF NOT EXISTS acknowledged_at Nullable(DateTime64(3, 'UTC')),
    ADD COLUMN IF NOT EXISTS resolved_by String DEFAULT '',
    ADD COLUMN IF NOT EXISTS resolved_at Nullable(DateTime64(3, 'UTC')),
    ADD COLUMN IF NOT EXISTS reopen_count UInt32 DEFAULT 0;

-- A security incident's pseudonym lives no longer than the detail rows it points to.
ALTER TABLE {db}.incidents
    MODIFY COLUMN user_pseudonym Nullable(String)
    TTL toDateTime(last_seen) + INTERVAL {detail_ttl_days} DAY;

-- version: the incident version the change produced, so changes within one millisecond
-- still sort in the order they happened.
ALTER TABLE {db}.incident_history
    ADD COLUMN IF NOT EXISTS from_state LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS owner LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS command_id String DEFAULT '',
    ADD COLUMN IF NOT EXISTS version UInt64 DEFAULT 0;

-- One row per command id (a replayed command collapses into the same row).
CREATE TABLE IF NOT EXISTS {db}.incident_commands
(
    command_id String,
    incident_id String,
    action LowCardinality(String),
    actor String,
    reason String,
    source LowCardinality(String),
    requested_at DateTime64(3, 'UTC'),
    processed_at DateTime64(3, 'UTC'),
    outcome LowCardinality(String),
    detail String
)
ENGINE = ReplacingMergeTree(processed_at)
ORDER BY command_id;
