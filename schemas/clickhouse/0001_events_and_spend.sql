-- Detail rows: one per redacted call. Only fields from schemas/fields.yaml plus priced cost.
-- ORDER BY (team, tool, event_time): finance and security queries filter by team and tool
-- over a period, so those prefixes prune most granules.
-- PARTITION BY day so TTL drops whole parts instead of rewriting them (ttl_only_drop_parts).
-- kafka_partition/kafka_offset let the aggregator resume after a crash without double counting.
CREATE TABLE IF NOT EXISTS {db}.events
(
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
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3),
    kafka_partition UInt32,
    kafka_offset UInt64 CODEC(Delta, ZSTD)
)
ENGINE = MergeTree
PARTITION BY toYYYYMMDD(event_time)
ORDER BY (team, tool, event_time, event_id)
TTL toDateTime(event_time) + INTERVAL {detail_ttl_days} DAY DELETE
SETTINGS ttl_only_drop_parts = 1, non_replicated_deduplication_window = 1000;

-- Hourly spend: what finance and managers read. No pseudonyms, no event ids.
-- SummingMergeTree folds rows with the same key on merge; readers still sum() because
-- merges are eventual. Kept much longer than detail.
CREATE TABLE IF NOT EXISTS {db}.spend_hourly
(
    hour DateTime('UTC'),
    team LowCardinality(String),
    tool LowCardinality(String),
    model LowCardinality(String),
    task_label LowCardinality(String),
    workspace LowCardinality(String),
    requests UInt64,
    input_tokens UInt64,
    output_tokens UInt64,
    cached_tokens UInt64,
    reasoning_tokens UInt64,
    cost_usd Decimal(38, 12),
    errors UInt64,
    retries UInt64,
    blocked UInt64,
    unpriced UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (team, tool, model, task_label, workspace, hour)
TTL hour + INTERVAL {rollup_ttl_days} DAY DELETE;

-- Fed by every insert into events; a deduplicated (replayed) insert block does not reach it
-- because inserts set deduplicate_blocks_in_dependent_materialized_views.
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.spend_hourly_mv TO {db}.spend_hourly AS
SELECT
    toStartOfHour(event_time) AS hour,
    team, tool, model, task_label, workspace,
    count() AS requests,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cached_tokens) AS cached_tokens,
    sum(reasoning_tokens) AS reasoning_tokens,
    sum(cost_usd) AS cost_usd,
    countIf(status = 'error') AS errors,
    sum(retry_count) AS retries,
    countIf(status = 'blocked') AS blocked,
    countIf(priced = 0) AS unpriced
FROM {db}.events
GROUP BY hour, team, tool, model, task_label, workspace;

-- Incidents: one row per version of an incident (ReplacingMergeTree keeps the newest);
-- read with FINAL or argMax. Metadata only: no content, a pseudonym only on security rules.
CREATE TABLE IF NOT EXISTS {db}.incidents
(
    incident_id String,
    dedup_key String,
    rule LowCardinality(String),
    category LowCardinality(String),
    severity LowCardinality(String),
    state LowCardinality(String),
    team LowCardinality(String),
    tool LowCardinality(String),
    owner LowCardinality(String),
    channel LowCardinality(String),
    signal_count UInt64,
    first_seen DateTime64(3, 'UTC'),
    last_seen DateTime64(3, 'UTC'),
    summary String,
    user_pseudonym Nullable(String),
    evidence Map(String, String),
    version UInt64,
    updated_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version)
ORDER BY incident_id;

-- Every change to an incident: who, when, why. Append-only history.
CREATE TABLE IF NOT EXISTS {db}.incident_history
(
    incident_id String,
    at DateTime64(3, 'UTC'),
    action LowCardinality(String),
    actor String,
    reason String,
    state LowCardinality(String),
    signal_count UInt64
)
ENGINE = MergeTree
ORDER BY (incident_id, at);
