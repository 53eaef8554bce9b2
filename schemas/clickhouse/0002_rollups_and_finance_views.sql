-- Daily rollup, exactly-once fixes for the rollups, prepaid credits and the finance views.
--
-- Periods are UTC days (toDate of the UTC event time); weeks start on Monday.

-- A retried insert (same insert_deduplication_token, e.g. after a timeout whose insert did
-- land) is dropped by events, but a materialized view's target only drops its copy of the
-- block if the target keeps its own deduplication log. Without this, ClickHouse 26.9 counts a
-- retried batch twice in spend_hourly (measured: 10,000 rows in events, 20,000 requests in
-- the rollup). The window counts inserted blocks; retries come within seconds.
ALTER TABLE {db}.spend_hourly MODIFY SETTING non_replicated_deduplication_window = 1000;

-- Which Kafka topic a row came from. The aggregator resumes after the highest stored offset
-- per partition; without the topic, a renamed or recreated topic (or a test topic) would
-- inherit another topic's offsets and skip its first records.
ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS kafka_topic LowCardinality(String) DEFAULT '' AFTER kafka_partition;

-- Compression of the detail rows. LZ4 (the default) leaves a random event id at ~33 bytes a
-- row; ZSTD stores it in ~17, and Delta turns the times, sorted within each team and tool,
-- into small steps. Measured by benchmarks/load_bench.py on 10 million events: 77 -> 44
-- bytes per event (benchmarks/results/clickhouse.md). Low-cardinality columns stay LZ4:
-- their dictionaries are already tiny. A codec change rewrites nothing: parts written
-- before it keep LZ4 until their next merge, and detail rows are gone within the TTL anyway.
ALTER TABLE {db}.events
    MODIFY COLUMN event_id CODEC(ZSTD(1)),
    MODIFY COLUMN event_time CODEC(Delta, ZSTD(1)),
    MODIFY COLUMN ingested_at CODEC(Delta, ZSTD(1)),
    MODIFY COLUMN user_pseudonym CODEC(ZSTD(1)),
    MODIFY COLUMN input_tokens CODEC(ZSTD(1)),
    MODIFY COLUMN output_tokens CODEC(ZSTD(1)),
    MODIFY COLUMN cached_tokens CODEC(ZSTD(1)),
    MODIFY COLUMN reasoning_tokens CODEC(ZSTD(1)),
    MODIFY COLUMN content_chars CODEC(ZSTD(1)),
    MODIFY COLUMN cost_usd CODEC(ZSTD(1)),
    MODIFY COLUMN kafka_partition CODEC(ZSTD(1));

-- The hourly rollup has nearly one row per call at high cardinality (many teams x tools x
-- models x labels per hour), so its totals get the same treatment.
ALTER TABLE {db}.spend_hourly
    MODIFY COLUMN input_tokens CODEC(ZSTD(1)),
    MODIFY COLUMN output_tokens CODEC(ZSTD(1)),
    MODIFY COLUMN cached_tokens CODEC(ZSTD(1)),
    MODIFY COLUMN reasoning_tokens CODEC(ZSTD(1)),
    MODIFY COLUMN cost_usd CODEC(ZSTD(1));

-- Daily spend: what finance reads for months and weeks (6x fewer rows than spend_hourly in
-- the 10M-event benchmark, up to 24x when traffic is dense). Same dimensions as spend_hourly
-- plus provider, which prepaid credits are scoped by. No pseudonyms, no event ids. ORDER BY
-- starts with day: finance asks for one period across all teams, so a date range prunes
-- granules inside the month partition. SummingMergeTree folds equal keys on merge; readers
-- still sum() because merges are eventual. Kept as long as spend_hourly ({rollup_ttl_days}
-- days), far beyond the detail rows.
CREATE TABLE IF NOT EXISTS {db}.spend_daily
(
    day Date,
    team LowCardinality(String),
    tool LowCardinality(String),
    model LowCardinality(String),
    provider LowCardinality(String),
    task_label LowCardinality(String),
    workspace LowCardinality(String),
    requests UInt64,
    input_tokens UInt64 CODEC(ZSTD(1)),
    output_tokens UInt64 CODEC(ZSTD(1)),
    cached_tokens UInt64 CODEC(ZSTD(1)),
    reasoning_tokens UInt64 CODEC(ZSTD(1)),
    cost_usd Decimal(38, 12) CODEC(ZSTD(1)),
    errors UInt64,
    retries UInt64,
    blocked UInt64,
    unpriced UInt64,
    -- Aggregate projections, used by ClickHouse automatically for queries that group the
    -- same way: at 10M events spend_daily holds ~1M rows (teams x tools x models x labels per
    -- day), while finance asks for ~200 team x tool totals a month. The projections hold those
    -- totals (a few thousand rows), so the monthly and weekly views and the credit views read
    -- them instead of the rollup (benchmarks/results/clickhouse.md).
    PROJECTION by_month
    (
        SELECT toStartOfMonth(day), team, tool,
            sum(requests), sum(input_tokens), sum(output_tokens), sum(cached_tokens),
            sum(reasoning_tokens), sum(errors), sum(retries), sum(blocked), sum(unpriced),
            sum(cost_usd)
        GROUP BY toStartOfMonth(day), team, tool
    ),
    PROJECTION by_week
    (
        SELECT toMonday(day), team, tool,
            sum(requests), sum(input_tokens), sum(output_tokens), sum(cached_tokens),
            sum(reasoning_tokens), sum(errors), sum(retries), sum(blocked), sum(unpriced),
            sum(cost_usd)
        GROUP BY toMonday(day), team, tool
    ),
    PROJECTION by_day_team_provider
    (
        SELECT day, team, provider, sum(cost_usd)
        GROUP BY day, team, provider
    )
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (day, team, tool, model, provider, task_label, workspace)
TTL day + INTERVAL {rollup_ttl_days} DAY DELETE
-- deduplication window: same reason as for spend_hourly above. Projections on a
-- SummingMergeTree are rebuilt when a merge folds rows (ClickHouse refuses them otherwise).
SETTINGS non_replicated_deduplication_window = 1000, deduplicate_merge_projection_mode = 'rebuild';

-- Fed by every insert into events, like spend_hourly_mv. A replayed block (same token) is
-- dropped here too thanks to the deduplication window above.
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.spend_daily_mv TO {db}.spend_daily AS
SELECT
    toDate(event_time) AS day,
    team, tool, model, provider, task_label, workspace,
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
GROUP BY day, team, tool, model, provider, task_label, workspace;

-- Prepaid credits from the price overrides file (services/aggregator/pricing.py), written by
-- the aggregator at start. They are applied here, by day, rather than per call: a balance
-- drawn down call by call would depend on processing order and on every aggregator instance
-- agreeing on what is left. One row version per credit; a credit removed from the file gets
-- a tombstone (is_deleted = 1); read with FINAL. team / provider '' means any.
CREATE TABLE IF NOT EXISTS {db}.credits
(
    name String,
    team LowCardinality(String),
    provider LowCardinality(String),
    amount_usd Decimal(38, 12),
    starts Date,
    -- last day the balance can be drawn (inclusive); the largest Date means never expires
    expires Date,
    source LowCardinality(String),
    version UInt64,
    is_deleted UInt8
)
ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY name;

-- Spend by team, tool and period. Filter on the period column (month / week): the filter is
-- pushed into the view and prunes spend_daily's month partitions.
CREATE OR REPLACE VIEW {db}.finance_spend_by_month AS
SELECT
    toStartOfMonth(day) AS month,
    team, tool,
    sum(requests) AS requests,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cached_tokens) AS cached_tokens,
    sum(reasoning_tokens) AS reasoning_tokens,
    sum(errors) AS errors,
    sum(retries) AS retries,
    sum(blocked) AS blocked,
    sum(unpriced) AS unpriced,
    sum(cost_usd) AS cost_usd
FROM {db}.spend_daily
GROUP BY month, team, tool;

CREATE OR REPLACE VIEW {db}.finance_spend_by_week AS
SELECT
    toMonday(day) AS week,
    team, tool,
    sum(requests) AS requests,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cached_tokens) AS cached_tokens,
    sum(reasoning_tokens) AS reasoning_tokens,
    sum(errors) AS errors,
    sum(retries) AS retries,
    sum(blocked) AS blocked,
    sum(unpriced) AS unpriced,
    sum(cost_usd) AS cost_usd
FROM {db}.spend_daily
GROUP BY week, team, tool;

-- Week-over-week change per team and tool. Weekly totals first (read from the by_week
-- projection), then every week counts towards itself (k = 0) and, as "previous week",
-- towards the next one (k = 7): so a tool that stopped (this week 0) and a new tool (last
-- week 0) both show. change_ratio is NULL when last week was 0. Weeks after the current one
-- are cut off.
CREATE OR REPLACE VIEW {db}.finance_week_over_week AS
SELECT
    week, team, tool,
    cur_usd AS cost_usd,
    prev_usd AS prev_week_cost_usd,
    cur_usd - prev_usd AS change_usd,
    if(prev_usd = 0, NULL, toFloat64(cur_usd - prev_usd) / toFloat64(prev_usd)) AS change_ratio,
    cur_requests AS requests,
    prev_requests AS prev_week_requests
FROM
(
    SELECT
        wk + k AS week, team, tool,
        sumIf(week_usd, k = 0) AS cur_usd,
        sumIf(week_usd, k = 7) AS prev_usd,
        sumIf(week_requests, k = 0) AS cur_requests,
        sumIf(week_requests, k = 7) AS prev_requests
    FROM
    (
        SELECT toMonday(day) AS wk, team, tool, sum(cost_usd) AS week_usd, sum(requests) AS week_requests
        FROM {db}.spend_daily
        GROUP BY wk, team, tool
    )
    ARRAY JOIN [0, 7] AS k
    GROUP BY week, team, tool
)
WHERE week <= toMonday(today());

-- Top movers: the last complete week against the week before, largest absolute change
-- first, one row per team and tool. Reads only those 14 days of spend_daily.
CREATE OR REPLACE VIEW {db}.finance_top_movers AS
SELECT
    toMonday(today()) - 7 AS week,
    team, tool,
    last_usd AS cost_usd,
    before_usd AS prev_week_cost_usd,
    last_usd - before_usd AS change_usd,
    if(before_usd = 0, NULL, toFloat64(last_usd - before_usd) / toFloat64(before_usd)) AS change_ratio
FROM
(
    SELECT
        team, tool,
        sumIf(cost_usd, day >= toMonday(today()) - 7) AS last_usd,
        sumIf(cost_usd, day < toMonday(today()) - 7) AS before_usd
    FROM {db}.spend_daily
    WHERE day >= toMonday(today()) - 14 AND day < toMonday(today())
    GROUP BY team, tool
)
ORDER BY abs(change_usd) DESC, team, tool
LIMIT 20;

-- Building block of the two credit views: each credit's in-scope spend per day and team.
-- spend_daily is first summed to (day, team, provider) -- the credits' scope dimensions, read
-- from the by_day_team_provider projection -- and only from the first credit's start, so the
-- join sees a few hundred rows per day instead of every rollup row (none without credits).
CREATE OR REPLACE VIEW {db}.credit_spend_by_day AS
SELECT
    c.name AS credit, c.team AS credit_team, c.provider AS credit_provider,
    c.amount_usd AS amount_usd, d.day AS day, d.team AS team, d.cost_usd AS cost_usd
FROM
(
    SELECT day, team, provider, sum(cost_usd) AS cost_usd
    FROM {db}.spend_daily
    WHERE day >= (SELECT if(count() = 0, toDate('2149-06-06'), min(starts)) FROM {db}.credits FINAL)
    GROUP BY day, team, provider
) AS d
CROSS JOIN (SELECT name, team, provider, amount_usd, starts, expires FROM {db}.credits FINAL) AS c
WHERE d.day >= c.starts AND d.day <= c.expires
    AND (c.team = '' OR d.team = c.team)
    AND (c.provider = '' OR d.provider = c.provider);

-- Credit drawdown by day: each credit pays for the in-scope spend of each day from its start
-- until the balance is gone or it expires. applied = least(amount, spend to date) minus the
-- same up to the day before, so the days' applied amounts add up to exactly
-- least(amount, in-scope spend). Credits never overlap in scope (the loader refuses it), so a
-- cost is never reduced twice.
CREATE OR REPLACE VIEW {db}.finance_credit_drawdown AS
SELECT
    credit, credit_team AS team, credit_provider AS provider, day, amount_usd, scope_cost_usd,
    least(amount_usd, scope_to_date_usd) - least(amount_usd, scope_to_date_usd - scope_cost_usd) AS applied_usd,
    least(amount_usd, scope_to_date_usd) AS applied_to_date_usd,
    amount_usd - least(amount_usd, scope_to_date_usd) AS remaining_usd
FROM
(
    SELECT
        credit, credit_team, credit_provider, day, amount_usd, scope_cost_usd,
        sum(scope_cost_usd) OVER (PARTITION BY credit ORDER BY day ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS scope_to_date_usd
    FROM
    (
        SELECT
            credit, any(credit_team) AS credit_team, any(credit_provider) AS credit_provider,
            day, any(amount_usd) AS amount_usd, sum(cost_usd) AS scope_cost_usd
        FROM {db}.credit_spend_by_day
        GROUP BY credit, day
    )
);

-- Billed spend per team and month: gross cost, credits and net. A credit scoped to one team
-- is that team's; a provider-wide or org-wide credit is shared among the teams in its scope
-- in proportion to their in-scope spend that day. One pass: per credit, day and team, the
-- day's in-scope spend (window over the day) and the spend to date (RANGE frame: the whole
-- day included) give the day's applied amount exactly as finance_credit_drawdown computes
-- it. Shares are truncated to 1e-12 USD, so a shared credit's shares may add up to a few
-- 1e-12 USD less than it applied.
CREATE OR REPLACE VIEW {db}.finance_net_spend_by_month AS
SELECT
    month, team,
    sum(gross_usd) AS cost_usd,
    sum(share_usd) AS credit_usd,
    sum(gross_usd) - sum(share_usd) AS net_cost_usd
FROM
(
    SELECT toStartOfMonth(day) AS month, team, sum(cost_usd) AS gross_usd, toDecimal128(0, 12) AS share_usd
    FROM {db}.spend_daily
    GROUP BY month, team
    UNION ALL
    SELECT
        toStartOfMonth(day) AS month, team, toDecimal128(0, 12) AS gross_usd,
        toDecimal128(
            toDecimal256(least(amount_usd, to_date_usd) - least(amount_usd, to_date_usd - day_usd), 12)
            * toDecimal256(team_usd, 12) / toDecimal256(day_usd, 12),
            12
        ) AS share_usd
    FROM
    (
        SELECT
            credit, day, team, amount_usd, team_usd,
            sum(team_usd) OVER (PARTITION BY credit, day) AS day_usd,
            sum(team_usd) OVER (PARTITION BY credit ORDER BY day RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS to_date_usd
        FROM
        (
            SELECT credit, day, team, any(amount_usd) AS amount_usd, sum(cost_usd) AS team_usd
            FROM {db}.credit_spend_by_day
            GROUP BY credit, day, team
        )
    )
    WHERE day_usd > 0
)
GROUP BY month, team;

-- Upgrades only (a fresh install has no events yet): fill spend_daily from the detail rows
-- stored before spend_daily_mv existed. Rows inserted from then on reach it through the
-- view. Detail older than the detail TTL is gone, so daily history of an upgraded install
-- starts there (spend_hourly still has it, without provider). Last statement on purpose: a
-- failure earlier re-runs the migration without having backfilled twice.
INSERT INTO {db}.spend_daily
SELECT
    toDate(event_time) AS day,
    team, tool, model, provider, task_label, workspace,
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
WHERE ingested_at < (
    SELECT min(metadata_modification_time) FROM system.tables
    WHERE database = '{db}' AND name = 'spend_daily_mv'
)
GROUP BY day, team, tool, model, provider, task_label, workspace;
