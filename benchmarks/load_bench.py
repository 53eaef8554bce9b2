"""ClickHouse at 10 million events: load time, bytes per event, finance view latency.

    .venv/bin/python -m benchmarks.load_bench [--rows 10000000] [--days 90] [--reps 30]
                                              [--resume] [--keep] [--database tl_bench]

Needs the local stack (``trustlog stack up``; set TRUSTLOG_STATE_DIR for another state dir).
Loads ``--rows`` synthetic priced events spanning ``--days`` days ending today into a fresh
database migrated with the real migrations (detail TTL 90 days so all of them stay), straight
into ``events`` so the materialized views fill spend_hourly and spend_daily as in production.
Rows are generated inside ClickHouse (INSERT ... SELECT FROM numbers()), one insert per day,
deterministic (hashes of the row number, no randomness): 40 teams with a skewed (power-law)
share of calls, each using a handful of 14 tools, 10 models at their genai-prices rates
(an internal flat-rate model at $0, an unknown model unpriced), log-normal token counts,
business-hours and weekday traffic, 2% errors, sensitive-data flags on ~2% of calls.
Each day's insert carries an insert_deduplication_token, so ``--resume`` after an interruption
skips complete days and re-running a day that did land is dropped by ClickHouse.

Then it times the finance views (2 warm-up rounds, then ``--reps`` rounds running every
query once, so load from other work on a shared machine hits all queries alike; wall time seen
by the client over HTTP, and the server's own elapsed time), compares the headline query
(monthly spend by team and tool, answered from spend_daily's by_month projection) against the
same question asked of spend_hourly and of the detail rows, records bytes per stored event
from system.parts, and writes benchmarks/results/clickhouse.md.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from clickhouse_connect.driver.client import Client

from benchmarks._machine import describe_machine
from services.aggregator.app import sync_credits
from services.aggregator.pricing import Credit, Pricer
from trustlog.migrate import apply_migrations
from trustlog.settings import ClickHouseSettings
from trustlog.storage import admin_client

RESULTS = Path(__file__).parent / "results" / "clickhouse.md"
TARGET_MS = 100.0

TEAMS = [
    "platform", "payments", "search", "mobile", "data-eng", "ml-research", "support", "sales",
    "marketing", "legal", "finance", "people", "security", "infra", "growth", "design", "docs",
    "qa", "ops", "analytics", "checkout", "identity", "billing", "risk", "fraud", "ads",
    "content", "localization", "partners", "devrel", "mlops", "sre", "crm", "web", "ios",
    "android", "research", "strategy", "procurement", "it-helpdesk",
]  # fmt: skip
TOOLS = [
    "chat-assistant", "code-helper", "support-drafts", "doc-summarizer", "sql-copilot",
    "meeting-notes", "translator", "review-bot", "search-answers", "email-drafts",
    "test-writer", "contract-review", "data-cleanup", "internal-search",
]  # fmt: skip
TASKS = ["coding", "drafting", "support", "research", "data_cleanup", "other"]
WORKSPACES = ["corp", "eng", "gtm", "ops", "sandbox"]
# (provider, model, share of calls, reasoning model)
MODELS = [
    ("openai", "gpt-4o-mini", 0.28, False),
    ("openai", "gpt-4.1", 0.10, False),
    ("openai", "o3", 0.05, True),
    ("anthropic", "claude-sonnet-4-5", 0.15, False),
    ("anthropic", "claude-haiku-4-5", 0.12, False),
    ("google", "gemini-2.5-flash", 0.12, False),
    ("google", "gemini-2.5-pro", 0.05, True),
    ("mistral", "mistral-large-latest", 0.06, False),
    ("", "llama-3.1-70b-internal", 0.05, False),  # flat-rate internal: $0 per call
    ("acme", "acme-unknown-1", 0.02, False),  # no price: unpriced, cost 0
]
FLAT = {"llama-3.1-70b-internal": "flat-rate:internal-gpu"}
U64 = "18446744073709551615."


@dataclass(frozen=True)
class ModelRow:
    provider: str
    model: str
    cum_share: float
    reasoning: bool
    rin: Decimal  # USD per million tokens
    rcached: Decimal
    rout: Decimal
    priced: bool
    source: str
    version: str


def model_rows() -> list[ModelRow]:
    """Per-token rates from genai-prices (the first tier for tiered models)."""
    p, out, cum = Pricer(), [], 0.0
    k = Decimal(1000)
    for provider, model, share, reasoning in MODELS:
        cum += share
        if model in FLAT:
            out.append(
                ModelRow(
                    provider,
                    model,
                    cum,
                    reasoning,
                    Decimal(0),
                    Decimal(0),
                    Decimal(0),
                    True,
                    FLAT[model],
                    "bench",
                )
            )
            continue
        inp = p.price(provider, model, 1000, 0, 0)
        cached = p.price(provider, model, 1000, 0, 1000)
        outp = p.price(provider, model, 0, 1000, 0)
        out.append(
            ModelRow(
                provider, model, cum, reasoning,
                inp.cost_usd * k, cached.cost_usd * k, outp.cost_usd * k,
                inp.priced, inp.source, inp.version,
            )
        )  # fmt: skip
    return out


def _arr(values: list[str]) -> str:
    return "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


def _dec_arr(values: list[Decimal]) -> str:
    return "[" + ", ".join(f"toDecimal128('{v}', 12)" for v in values) + "]"


def day_plan(rows: int, days: int, today: date) -> list[tuple[date, int, int]]:
    """(day, first row number, rows) with weekends at a quarter of a weekday's traffic."""
    ds = [today - timedelta(days=days - 1 - i) for i in range(days)]
    weights = [0.25 if d.weekday() >= 5 else 1.0 for d in ds]
    total = sum(weights)
    exact = [rows * w / total for w in weights]
    counts = [int(x) for x in exact]
    for i in sorted(range(days), key=lambda i: exact[i] - counts[i], reverse=True)[
        : rows - sum(counts)
    ]:
        counts[i] += 1
    plan, start = [], 0
    for d, n in zip(ds, counts, strict=True):
        plan.append((d, start, n))
        start += n
    return plan


def insert_sql(db: str, models: list[ModelRow], day: date, start: int, n: int) -> str:
    """One day of events, generated from hashes of the row number."""
    u = {k: f"(sipHash64(number, {k}) / {U64})" for k in range(1, 14)}
    cum = "[" + ", ".join(f"{m.cum_share:.6f}" for m in models) + "]"
    day_start = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
    # business hours: 12% of calls 00-08h, 78% 08-18h, 10% 18-24h (monotone in row number)
    return f"""
INSERT INTO {db}.events
(event_id, event_time, producer, tool, model, provider, workspace, user_pseudonym,
 pseudonym_key_version, team, task_label, input_tokens, output_tokens, cached_tokens,
 reasoning_tokens, status, retry_count, policy_flags, sensitive_classes, content_chars, cost_usd,
 priced, price_source, price_version, ingested_at, kafka_partition, kafka_topic, kafka_offset)
SELECT
    UUIDNumToString(sipHash128('bench', number)) AS event_id,
    toDateTime64({day_start} + sec + {u[1]} * 0.5, 3, 'UTC') AS event_time,
    concat('sdk-', tool) AS producer,
    {_arr(TOOLS)}[((team_i * 3 + toUInt32(floor(5 * pow({u[2]}, 1.6)))) % {len(TOOLS)}) + 1] AS tool,
    {_arr([m.model for m in models])}[m_i] AS model,
    {_arr([m.provider for m in models])}[m_i] AS provider,
    {_arr(WORKSPACES)}[(team_i % {len(WORKSPACES)}) + 1] AS workspace,
    concat('p_', lower(hex(sipHash128('bench-user', team_i * 64 + toUInt32(floor(64 * pow({u[3]}, 1.5))))))) AS user_pseudonym,
    '1' AS pseudonym_key_version,
    {_arr(TEAMS)}[team_i + 1] AS team,
    {_arr(TASKS)}[toUInt32(floor(6 * pow({u[4]}, 1.3))) + 1] AS task_label,
    inp AS input_tokens,
    outp AS output_tokens,
    cached AS cached_tokens,
    reasoning AS reasoning_tokens,
    multiIf({u[5]} < 0.02, 'error', {u[5]} < 0.024, 'blocked', 'ok') AS status,
    toUInt32(multiIf({u[5]} < 0.02, 1 + floor({u[6]} * 3), {u[6]} < 0.01, 1, 0)) AS retry_count,
    if({u[7]} < 0.002, ['unapproved_tool'], CAST([], 'Array(String)')) AS policy_flags,
    multiIf({u[7]} < 0.015, map('email', toUInt32(1)), {u[7]} < 0.02,
            map('payment_card', toUInt32(1)), CAST(map(), 'Map(String, UInt32)')) AS sensitive_classes,
    toUInt64(inp * 3.7) AS content_chars,
    ({_dec_arr([m.rin for m in models])}[m_i] * toDecimal128(inp - cached, 0)
     + {_dec_arr([m.rcached for m in models])}[m_i] * toDecimal128(cached, 0)
     + {_dec_arr([m.rout for m in models])}[m_i] * toDecimal128(outp, 0)) / 1000000 AS cost_usd,
    {"[" + ", ".join(str(int(m.priced)) for m in models) + "]"}[m_i] AS priced,
    {_arr([m.source for m in models])}[m_i] AS price_source,
    {_arr([m.version for m in models])}[m_i] AS price_version,
    event_time + toIntervalMillisecond(200 + toUInt32({u[8]} * 1800)) AS ingested_at,
    toUInt32(number % 3) AS kafka_partition,
    'ai-usage.redacted.v1' AS kafka_topic,
    intDiv(number, 3) AS kafka_offset
FROM
(
    SELECT
        number,
        (number - {start}) / {n} AS f,
        toUInt32(multiIf(f < 0.12, f / 0.12 * 28800, f < 0.90, 28800 + (f - 0.12) / 0.78 * 36000,
                         64800 + (f - 0.90) / 0.10 * 21599)) AS sec,
        toUInt32(least(floor(40 * pow({u[9]}, 2.2)), 39)) AS team_i,
        arrayFirstIndex(c -> c >= {u[10]} * {models[-1].cum_share:.6f}, {cum}) AS m_i,
        sqrt(-2 * log(greatest({u[11]}, 1e-12))) AS rad,
        toUInt64(least(exp(7.3 + 1.3 * rad * cos(6.283185307 * {u[12]})), 400000)) AS inp,
        toUInt64(least(exp(5.6 + 1.0 * rad * sin(6.283185307 * {u[12]})), 16000)) AS outp,
        if({u[13]} < 0.3, toUInt64(inp * {u[13]} * 2.4), 0) AS cached,
        if({"[" + ", ".join(str(int(m.reasoning)) for m in models) + "]"}[m_i] = 1,
           toUInt64(outp * {u[6]} * 0.7), 0) AS reasoning
    FROM numbers({start}, {n})
)
"""


@dataclass
class Timing:
    name: str
    rows: int
    wall_ms: list[float]
    server_ms: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.wall_ms)

    @property
    def p95(self) -> float:
        s = sorted(self.wall_ms)
        return s[max(0, math.ceil(0.95 * len(s)) - 1)]  # nearest rank

    @property
    def server_median(self) -> float:
        return statistics.median(self.server_ms) if self.server_ms else float("nan")


def time_queries(ch: Client, named: list[tuple[str, str]], reps: int) -> list[Timing]:
    """Round robin (every query once per round), so a burst of load from other work on the
    shared machine hits all queries alike instead of one query's whole series."""
    settings = {"use_query_cache": 0}
    out = [Timing(name, 0, [], []) for name, _ in named]
    for _ in range(2):
        for _, sql in named:
            ch.query(sql, settings=settings)
    for _ in range(reps):
        for t, (_, sql) in zip(out, named, strict=True):
            t0 = time.perf_counter()
            res = ch.query(sql, settings=settings)
            t.wall_ms.append((time.perf_counter() - t0) * 1000)
            t.rows = len(res.result_rows)
            elapsed_ns = (res.summary or {}).get("elapsed_ns")
            if elapsed_ns is not None:
                t.server_ms.append(int(elapsed_ns) / 1e6)
    return out


def machine() -> str:
    return describe_machine()


def wait_for_merges(ch: Client, db: str, timeout_s: float = 180.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        busy = int(
            str(
                ch.command(
                    f"SELECT (SELECT count() FROM system.merges WHERE database = '{db}') + "
                    f"(SELECT count() FROM system.mutations WHERE database = '{db}' AND NOT is_done)"
                )
            )
        )
        if busy == 0:
            break
        time.sleep(1.0)
    return time.monotonic() - t0


def storage(ch: Client, db: str) -> list[tuple[str, int, int, int, int]]:
    """(table, rows, compressed bytes, uncompressed bytes, parts) of active parts."""
    res = ch.query(
        "SELECT table, sum(rows), sum(data_compressed_bytes), sum(data_uncompressed_bytes), "
        "count() FROM system.parts WHERE database = {db:String} AND active "
        "AND table IN ('events', 'spend_hourly', 'spend_daily') GROUP BY table ORDER BY table",
        parameters={"db": db},
    )
    return [(str(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in res.result_rows]


def column_sizes(ch: Client, db: str) -> list[tuple[str, int, int]]:
    res = ch.query(
        "SELECT name, data_compressed_bytes, data_uncompressed_bytes FROM system.columns "
        "WHERE database = {db:String} AND table = 'events' ORDER BY data_compressed_bytes DESC",
        parameters={"db": db},
    )
    return [(str(r[0]), int(r[1]), int(r[2])) for r in res.result_rows]


def load(ch: Client, db: str, rows: int, days: int, resume: bool) -> tuple[float, int]:
    """Returns (seconds spent inserting, rows inserted by this run)."""
    today = datetime.now(UTC).date()
    plan = day_plan(rows, days, today)
    models = model_rows()
    done: dict[date, int] = {}
    if resume:
        res = ch.query(f"SELECT toDate(event_time), count() FROM {db}.events GROUP BY 1")
        done = {r[0]: int(r[1]) for r in res.result_rows}
    spent, inserted = 0.0, 0
    for i, (day, start, n) in enumerate(plan):
        if done.get(day) == n:
            continue
        t0 = time.perf_counter()
        ch.command(
            insert_sql(db, models, day, start, n),
            settings={
                "insert_deduplication_token": f"load-bench:{rows}:{days}:{day.isoformat()}",
                "deduplicate_blocks_in_dependent_materialized_views": 1,
            },
        )
        spent += time.perf_counter() - t0
        inserted += n
        if (i + 1) % 10 == 0 or i + 1 == len(plan):
            rate = inserted / spent if spent else 0.0
            print(f"  {i + 1}/{len(plan)} days, {inserted:,} rows in {spent:.1f}s ({rate:,.0f}/s)")
    return spent, inserted


def queries(db: str) -> list[tuple[str, str]]:
    month = "toStartOfMonth(today()) - toIntervalMonth(1)"
    return [
        (
            "monthly spend by team and tool (last full month)",
            f"SELECT team, tool, requests, cost_usd FROM {db}.finance_spend_by_month "
            f"WHERE month = {month} ORDER BY cost_usd DESC",
        ),
        (
            "monthly spend by team and tool (all months)",
            f"SELECT * FROM {db}.finance_spend_by_month ORDER BY month, cost_usd DESC",
        ),
        (
            "weekly spend by team and tool (last full week)",
            f"SELECT team, tool, requests, cost_usd FROM {db}.finance_spend_by_week "
            "WHERE week = toMonday(today()) - 7 ORDER BY cost_usd DESC",
        ),
        (
            "week-over-week change (last full week)",
            f"SELECT * FROM {db}.finance_week_over_week WHERE week = toMonday(today()) - 7 "
            "ORDER BY abs(change_usd) DESC",
        ),
        (
            "week-over-week change (all weeks)",
            f"SELECT * FROM {db}.finance_week_over_week ORDER BY week, team, tool",
        ),
        ("top movers", f"SELECT * FROM {db}.finance_top_movers"),
        ("credit drawdown (2 credits)", f"SELECT * FROM {db}.finance_credit_drawdown"),
        ("net spend by team and month", f"SELECT * FROM {db}.finance_net_spend_by_month"),
    ]


def baselines(db: str) -> list[tuple[str, str]]:
    """The headline question asked of the hourly rollup and of the detail rows."""
    month = "toStartOfMonth(today()) - toIntervalMonth(1)"
    return [
        (
            "same monthly question on spend_hourly",
            f"SELECT team, tool, sum(requests) AS requests, sum(cost_usd) AS cost_usd "
            f"FROM {db}.spend_hourly WHERE toStartOfMonth(hour) = {month} "
            "GROUP BY team, tool ORDER BY cost_usd DESC",
        ),
        (
            "same monthly question on events (detail)",
            f"SELECT team, tool, count() AS requests, sum(cost_usd) AS cost_usd "
            f"FROM {db}.events WHERE toStartOfMonth(event_time) = {month} "
            "GROUP BY team, tool ORDER BY cost_usd DESC",
        ),
    ]


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} GiB"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--database", default="tl_bench")
    ap.add_argument("--resume", action="store_true", help="keep the database, add missing days")
    ap.add_argument("--keep", action="store_true", help="do not drop the database at the end")
    ap.add_argument("--no-write", action="store_true", help="print only, no results file")
    args = ap.parse_args(argv)
    if not 1 <= args.days <= 90:
        ap.error("--days must be 1..90 (the detail TTL maximum)")

    s = ClickHouseSettings()
    ch = admin_client(s)  # 120 s per statement: one day per insert stays far below
    db = args.database
    version = str(ch.command("SELECT version()"))
    print(f"ClickHouse {version} at {s.ch_host}:{s.ch_port}, database {db}")
    if not args.resume:
        ch.command(f"DROP DATABASE IF EXISTS {db}")
    apply_migrations(ch, database=db, detail_ttl_days=90, rollup_ttl_days=400)

    print(f"loading {args.rows:,} events over {args.days} days ...")
    load_s, inserted = load(ch, db, args.rows, args.days, args.resume)
    merge_s = wait_for_merges(ch, db)
    total = int(str(ch.command(f"SELECT count() FROM {db}.events")))
    if total != args.rows:
        print(f"expected {args.rows:,} rows in events, found {total:,}", file=sys.stderr)
        return 1
    today = datetime.now(UTC).date()
    credits = (
        Credit("openai-prepaid", Decimal(25_000), today - timedelta(days=80), None, provider="openai"),
        Credit("ml-research-grant", Decimal(4_000), today - timedelta(days=60), today, team="ml-research", provider="anthropic"),
    )  # fmt: skip
    sync_credits(ch, db, credits, "load-bench")

    parts = storage(ch, db)
    cols = column_sizes(ch, db)
    print("timing views ...")
    views, other = queries(db), baselines(db)
    measured = time_queries(ch, views + other, args.reps)
    timings, base = measured[: len(views)], measured[len(views) :]
    load_avg = os.getloadavg()

    headline = timings[0]
    lines = report(
        args, version, load_s, inserted, merge_s, parts, cols, timings, base, headline, load_avg
    )
    print("\n".join(lines))
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text("\n".join(lines) + "\n")
        print(f"\nwrote {RESULTS}")
    if not args.keep:
        ch.command(f"DROP DATABASE IF EXISTS {db}")
    ch.close()
    return 0 if headline.median < TARGET_MS else 2


def report(
    args: argparse.Namespace,
    version: str,
    load_s: float,
    inserted: int,
    merge_s: float,
    parts: list[tuple[str, int, int, int, int]],
    cols: list[tuple[str, int, int]],
    timings: list[Timing],
    base: list[Timing],
    headline: Timing,
    load_avg: tuple[float, float, float],
) -> list[str]:
    events = next(p for p in parts if p[0] == "events")
    n = events[1]
    rollup_bytes = sum(p[2] for p in parts if p[0] != "events")
    out = [
        "# ClickHouse: 10 million events, finance views",
        "",
        f"- Machine: {machine()}; load average during the run {load_avg[0]:.2f} / "
        f"{load_avg[1]:.2f} / {load_avg[2]:.2f} (shared with other work)",
        f"- ClickHouse {version} (local stack, chdb-core server); date "
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Data: {n:,} events over {args.days} days ending today, generated in ClickHouse "
        "(`python -m benchmarks.load_bench`), inserted one day per INSERT ... SELECT straight "
        "into `events`; the materialized views filled `spend_hourly` and `spend_daily`.",
        f"- Timing: {args.reps} rounds after 2 warm-up rounds, every query once per round; wall "
        "time seen by the Python client over HTTP (what a finance tool sees) and the server's "
        "own elapsed time; query cache off. p95 is the nearest-rank 95th percentile.",
        "",
        "## Load",
        "",
        "| rows inserted | insert time | rows/s | merges settled after |",
        "|---:|---:|---:|---:|",
        f"| {inserted:,} | {load_s:.1f} s | {inserted / load_s if load_s else 0:,.0f} | "
        f"{merge_s:.1f} s |",
        "",
        "## Storage (active parts)",
        "",
        "| table | rows | compressed | uncompressed | ratio | parts | compressed bytes per event |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for table, rows, comp, uncomp, nparts in parts:
        out.append(
            f"| {table} | {rows:,} | {_fmt_bytes(comp)} | {_fmt_bytes(uncomp)} | "
            f"{uncomp / comp if comp else 0:.1f}x | {nparts} | {comp / n:.2f} |"
        )
    out += [
        "",
        f"**{events[2] / n:.1f} bytes per stored event** in `events` "
        f"({events[3] / n:.0f} uncompressed); the rollups add {rollup_bytes / n:.2f} bytes per "
        f"event ({_fmt_bytes(rollup_bytes)} in all).",
        "",
        "Largest `events` columns (compressed bytes per event):",
        "",
        "| column | bytes/event | ratio |",
        "|---|---:|---:|",
    ]
    for name, comp, uncomp in [c for c in cols if c[1]][:8]:  # compact parts report 0
        out.append(f"| {name} | {comp / n:.2f} | {uncomp / comp:.1f}x |")
    out += [
        "",
        "## Finance views",
        "",
        "| query | rows | median ms | p95 ms | server median ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for t in timings:
        out.append(
            f"| {t.name} | {t.rows:,} | {t.median:.1f} | {t.p95:.1f} | {t.server_median:.1f} |"
        )
    verdict = "meets" if headline.median < TARGET_MS else "MISSES"
    out += [
        "",
        f"Headline: monthly spend by team and tool answers in **{headline.median:.1f} ms median, "
        f"{headline.p95:.1f} ms p95** ({verdict} the {TARGET_MS:.0f} ms target).",
        "",
        "## Why spend_daily and its projections (same run, same question)",
        "",
        "The view reads the by_month aggregate projection of spend_daily; the same totals "
        "summed from the hourly rollup and from the detail rows:",
        "",
        "| source | rows | median ms | p95 ms | vs finance_spend_by_month |",
        "|---|---:|---:|---:|---:|",
        f"| finance_spend_by_month (by_month projection) | {headline.rows:,} | {headline.median:.1f} | "
        f"{headline.p95:.1f} | 1.0x |",
    ]
    for t in base:
        out.append(
            f"| {t.name.replace('same monthly question on ', '')} | {t.rows:,} | "
            f"{t.median:.1f} | {t.p95:.1f} | {t.median / headline.median:.1f}x |"
        )
    return out


if __name__ == "__main__":
    raise SystemExit(main())
