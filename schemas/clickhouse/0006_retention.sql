-- Legal holds on records (`trustlog hold`, trustlog/governance/holds.py): named detail rows
-- kept past their normal retention, for a stated reason, readable by a short list of
-- security accounts, until the hold's expiry. Not the `legal_hold` flag of a case, which
-- only withholds the notice to the people a case concerns and preserves nothing.
--
-- TTLs of every table, these included, are set from schemas/retention.yaml by
-- `trustlog migrate` (trustlog/retention.py apply_ttls), so none is written here except
-- held_events', which is the hold's expiry itself and depends on no setting.

-- One row per version of a hold (ReplacingMergeTree keeps the newest; read with FINAL). The
-- newest version carries who placed and approved it and when, and who released it, when and
-- why: the audit record of the hold, kept a year past its expiry (audit class).
-- scope_kind events: event_ids lists the records; pseudonym: scope_value over
-- [period_start, period_end).
CREATE TABLE IF NOT EXISTS {db}.record_holds
(
    hold_id String,
    state LowCardinality(String),
    placed_by String,
    approver String,
    reason String,
    readers Array(String),
    scope_kind LowCardinality(String),
    scope_value String,
    event_ids Array(String),
    period_start Nullable(DateTime64(3, 'UTC')),
    period_end Nullable(DateTime64(3, 'UTC')),
    placed_at DateTime64(3, 'UTC'),
    expires_at DateTime64(3, 'UTC'),
    held_rows UInt64 DEFAULT 0,
    released_at Nullable(DateTime64(3, 'UTC')),
    released_by String DEFAULT '',
    release_reason String DEFAULT '',
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY hold_id;

-- Copies of the held detail rows: the columns of `events` plus which hold keeps them, until
-- when, and who may read them. The TTL is the hold's expiry, so ClickHouse deletes the copy
-- when the hold ends, like any other expired row; releasing a hold deletes its rows at once.
-- Security accounts read it under a row policy (trustlog/governance/roles.py): only rows of
-- holds that list them as reader, and only before the expiry.
CREATE TABLE IF NOT EXISTS {db}.held_events
(
    hold_id String,
    hold_expires_at DateTime('UTC'),
    hold_readers Array(String),
    held_at DateTime64(3, 'UTC') DEFAULT now64(3),
    event_id String,
    event_time DateTime64(3, 'UTC'),
    producer LowCardinality(String),
    tool LowCardinality(String),
    model LowCardinality(String),
    provider LowCardinality(String),
    workspace LowCardinality(String),
    user_pseudonym String,
    pseudonym_key_version LowCardinality(String),
    team LowCardinality(String),
    task_label LowCardinality(String),
    input_tokens UInt64,
    output_tokens UInt64,
    cached_tokens UInt64,
    reasoning_tokens UInt64,
    status LowCardinality(String),
    retry_count UInt32,
    policy_flags Array(LowCardinality(String)),
    sensitive_classes Map(LowCardinality(String), UInt32),
    content_chars UInt64,
    cost_usd Decimal(38, 12),
    priced UInt8,
    price_source LowCardinality(String),
    price_version LowCardinality(String),
    ingested_at DateTime64(3, 'UTC'),
    kafka_topic LowCardinality(String),
    kafka_partition UInt32,
    kafka_offset UInt64
)
ENGINE = MergeTree
ORDER BY (hold_id, event_time, event_id)
TTL hold_expires_at;
