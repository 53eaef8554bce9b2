"""Aggregator service: redacted topic -> priced rows in ClickHouse, plus signals.

A batched aiokafka loop (the ClickHouse sink is a per-event hot path; see the redactor's
module doc for the measured faust vs aiokafka numbers). Rows are buffered and inserted every
``batch_max_rows`` rows or ``batch_max_seconds``; consumer offsets are committed only after
ClickHouse acknowledged the insert. Each row stores its Kafka topic, partition and offset, so
after a crash the consumer seeks past what ClickHouse already holds: nothing is lost (offsets
are committed late) and nothing is counted twice (stored offsets are skipped). That needs each
batch to land whole or not at all, so a batch is sent as ONE native block (clickhouse-connect
would split it into ~2 MB blocks, each its own part: a client killed mid-send would leave a
prefix behind), and before reading the stored offsets the consumer waits for aggregator inserts
still running on the server (a killed client's last insert may still be finishing). Each
insert also carries an insert_deduplication_token so a retried insert is dropped by ClickHouse
itself, in events and in the hourly and daily rollups (materialized views fed by the inserts;
their tables keep a deduplication window, schemas/clickhouse/0002_*.sql).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.insert import InsertContext

from services.aggregator.baseline import history_rows, history_since
from services.aggregator.dedup import RecentIds
from services.aggregator.pricing import Credit, Pricer, load_overrides
from services.aggregator.signals import (
    BudgetTracker,
    OncePerWindow,
    SpikeConfig,
    SpikeDetector,
    load_budgets,
)
from trustlog.avro import redacted_codec, signal_codec
from trustlog.kafka import ensure_topics
from trustlog.runtime import Health, Metrics, run_service
from trustlog.settings import AggregatorSettings
from trustlog.storage import admin_client

log = logging.getLogger("aggregator")
# Every aggregator insert runs under a query id with this prefix (plus database and topic), so
# a restarted consumer can wait for a predecessor's insert that is still running.
QUERY_ID_PREFIX = "trustlog-aggregator"
NEVER_EXPIRES = date(2149, 6, 6)  # largest ClickHouse Date
# events.cost_usd is Decimal(38, 12): round once here so what is stored is what was computed.
COST_QUANTUM = Decimal("1e-12")

# The columns of the credits table, in the order its rows are written.
CREDIT_COLUMNS = [
    "name", "team", "provider", "amount_usd", "starts", "expires", "source", "version",
    "is_deleted",
]  # fmt: skip

EVENT_COLUMNS = [
    "event_id",
    "event_time",
    "producer",
    "tool",
    "model",
    "provider",
    "workspace",
    "user_pseudonym",
    "pseudonym_key_version",
    "team",
    "task_label",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "status",
    "retry_count",
    "policy_flags",
    "sensitive_classes",
    "content_chars",
    "cost_usd",
    "priced",
    "price_source",
    "price_version",
    "kafka_partition",
    "kafka_offset",
    "kafka_topic",  # appended by Sink.add, not by RowBuilder
]


class RowBuilder:
    """Turns one redacted record into an events row and feeds the signal rules. Pure."""

    def __init__(
        self,
        pricer: Pricer,
        spikes: SpikeDetector,
        once: OncePerWindow,
        budgets: BudgetTracker | None = None,
    ) -> None:
        self.pricer = pricer
        self.spikes = spikes
        self.once = once
        self.budgets = budgets or BudgetTracker()
        self.pending_signals: list[dict[str, Any]] = []

    def build(self, ev: dict[str, Any], partition: int, offset: int) -> list[Any]:
        t: datetime = ev["event_time"]
        price = self.pricer.price(
            ev["provider"],
            ev["model"],
            ev["input_tokens"],
            ev["output_tokens"],
            ev["cached_tokens"],
            ev["reasoning_tokens"],
            tool=ev["tool"],
            at=t,
        )
        t_ms = int(t.timestamp() * 1000)
        team, tool = ev["team"], ev["tool"]
        cost = float(price.cost_usd)  # detection needs no Decimal exactness; rows keep it
        self.spikes.observe(
            team, tool, ev["task_label"], t_ms, cost, ev["status"] == "error", ev["retry_count"]
        )
        self.budgets.observe(team, t_ms, cost)
        self._event_rules(ev, t_ms, price.priced)
        return [
            ev["event_id"],
            t,
            ev["producer"],
            tool,
            ev["model"],
            ev["provider"],
            ev["workspace"],
            ev["user_pseudonym"],
            ev["pseudonym_key_version"],
            team,
            ev["task_label"],
            ev["input_tokens"],
            ev["output_tokens"],
            ev["cached_tokens"],
            ev["reasoning_tokens"],
            ev["status"],
            ev["retry_count"],
            ev["policy_flags"],
            ev["sensitive_classes"],
            ev["content_chars"],
            price.cost_usd.quantize(COST_QUANTUM),
            1 if price.priced else 0,
            price.source,
            price.version,
            partition,
            offset,
        ]

    def _event_rules(self, ev: dict[str, Any], t_ms: int, priced: bool) -> None:
        team, tool = ev["team"], ev["tool"]
        hits: list[dict[str, Any] | None] = []
        if not priced:
            hits.append(
                self.once.hit(
                    "unknown_model",
                    team,
                    tool,
                    t_ms,
                    detail=ev["model"],
                    model=ev["model"],
                    evidence={"model": ev["model"], "provider": ev["provider"]},
                )
            )
        if ev["sensitive_classes"]:
            classes = ",".join(sorted(ev["sensitive_classes"]))
            hits.append(
                self.once.hit(
                    "sensitive_data",
                    team,
                    tool,
                    t_ms,
                    detail=classes,
                    user_pseudonym=ev["user_pseudonym"],
                    evidence={"classes": classes, "event_id": ev["event_id"]},
                )
            )
        if ev["status"] == "blocked":
            hits.append(self.once.hit("blocked_action", team, tool, t_ms))
        for flag in ev["policy_flags"]:
            hits.append(
                self.once.hit("policy_flag", team, tool, t_ms, detail=flag, evidence={"flag": flag})
            )
        self.pending_signals.extend(h for h in hits if h is not None)

    def take_signals(self) -> list[dict[str, Any]]:
        out = self.pending_signals + self.spikes.take() + self.budgets.take()
        self.pending_signals = []
        return out


def spike_config(s: AggregatorSettings) -> SpikeConfig:
    return SpikeConfig(
        window_s=s.spike_window_seconds,
        level_minutes=s.spike_baseline_windows,
        factor=s.spike_factor,
        z=s.spike_z,
        min_usd=s.spike_min_usd,
        seasonal_weeks=s.spike_seasonal_weeks,
        storm_min_count=s.storm_min_count,
        task_dimension=s.spike_task_labels,
        max_keys=s.signal_max_keys,
    )


def warm_start_signals(
    client: Client, s: AggregatorSettings, spikes: SpikeDetector, budgets: BudgetTracker
) -> int:
    """Rebuild the in-memory baselines and budget spend from the hourly rollup (no pseudonyms
    there). Returns the number of rows read. The arithmetic is pure and tested on its own."""
    now_ms = int(time.time() * 1000)
    starts = [datetime.fromtimestamp(ms / 1000, UTC) for ms in budgets.period_starts(now_ms)]
    since = history_since(datetime.now(UTC), s.spike_seasonal_weeks, starts)
    res = client.query(
        f"SELECT toUnixTimestamp(hour) AS h, team, tool, task_label, sum(cost_usd), "
        f"sum(requests), sum(errors), sum(retries) FROM {s.ch_database}.spend_hourly "
        "WHERE hour >= {since:DateTime} GROUP BY h, team, tool, task_label",
        parameters={"since": since.replace(tzinfo=None)},
    )
    rows = history_rows(res.result_rows)
    spikes.warm_start(rows, now_ms)
    budgets.warm_start(rows)
    return len(rows)


def _query_id_prefix(database: str, topic: str) -> str:
    return f"{QUERY_ID_PREFIX}:{database}:{topic}:"


def wait_for_running_inserts(
    client: Client, database: str, topic: str, timeout_s: float = 60.0
) -> int:
    """Block until no aggregator insert for this topic is running on the server.

    A SIGKILLed aggregator may have sent its whole last batch: the server then still
    completes that insert. Reading the stored offsets before it finished would resume in
    front of it and insert those rows again. Returns how many were seen running at first.
    """
    prefix = _query_id_prefix(database, topic)
    deadline = time.monotonic() + timeout_s
    first = -1
    while True:
        running = int(
            str(
                client.command(
                    "SELECT count() FROM system.processes WHERE startsWith(query_id, {p:String})",
                    parameters={"p": prefix},
                )
            )
        )
        first = running if first < 0 else first
        if running == 0:
            return first
        if time.monotonic() > deadline:
            raise TimeoutError(f"{running} aggregator inserts still running after {timeout_s}s")
        time.sleep(0.2)


def stored_offsets(
    client: Client, database: str, topic: str, partitions: list[int]
) -> dict[int, int]:
    """Highest Kafka offset per partition of ``topic`` that ClickHouse already holds."""
    if not partitions:
        return {}
    res = client.query(
        f"SELECT kafka_partition, max(kafka_offset) FROM {database}.events "
        "WHERE kafka_topic = {topic:String} AND kafka_partition IN {parts:Array(UInt32)} "
        "GROUP BY kafka_partition",
        parameters={"topic": topic, "parts": partitions},
    )
    return {int(p): int(o) for p, o in res.result_rows}


def recent_event_ids(
    client: Client, database: str, topic: str, partitions: list[int], hours: int, limit: int
) -> list[str]:
    """Event ids stored lately from these partitions, oldest first, at most ``limit``.

    The event_time bound prunes the day partitions of events; a retry carries its original's
    event_time, so a retry of an older event is caught only by the in-process memory.
    """
    if not partitions or limit <= 0:
        return []
    res = client.query(
        "SELECT event_id FROM ("
        f"SELECT event_id, ingested_at, kafka_offset FROM {database}.events "
        "WHERE kafka_topic = {topic:String} AND kafka_partition IN {parts:Array(UInt32)} "
        "AND event_time >= now() - toIntervalHour({hours:UInt32}) "
        "ORDER BY ingested_at DESC, kafka_offset DESC LIMIT {limit:UInt64}"
        ") ORDER BY ingested_at, kafka_offset",
        parameters={"topic": topic, "parts": partitions, "hours": hours, "limit": limit},
    )
    return [str(r[0]) for r in res.result_rows]


def sync_credits(client: Client, database: str, credits: tuple[Credit, ...], source: str) -> None:
    """Make the credits table match the overrides file (new versions, tombstones for removed).

    Idempotent and safe to race: every aggregator instance writes the same rows, and the
    newest version per credit wins (ReplacingMergeTree, read with FINAL).
    """
    version = time.time_ns()
    present = {
        str(r[0]) for r in client.query(f"SELECT name FROM {database}.credits FINAL").result_rows
    }
    names = {c.name for c in credits}
    rows: list[list[Any]] = [
        [
            c.name,
            c.team,
            c.provider,
            c.amount_usd,
            c.starts,
            c.expires or NEVER_EXPIRES,
            source,
            version,
            0,
        ]
        for c in credits
    ]
    rows += [
        [n, "", "", Decimal(0), NEVER_EXPIRES, NEVER_EXPIRES, source, version, 1]
        for n in sorted(present - names)
    ]
    if rows:
        client.insert(
            f"{database}.credits",
            rows,
            column_names=CREDIT_COLUMNS,
        )


class Sink:
    def __init__(self, s: AggregatorSettings, client: Client, metrics: Metrics) -> None:
        self.s = s
        self.client = client
        self.rows: list[list[Any]] = []
        self.last: dict[TopicPartition, int] = {}
        self.first: dict[TopicPartition, int] = {}
        self.skip_below: dict[int, int] = {}
        self.opened = time.monotonic()
        self._ctx: InsertContext | None = None
        self.inserted = metrics.counter("rows_inserted_total", "Rows inserted into ClickHouse")
        self.skipped = metrics.counter("rows_skipped_total", "Replayed rows already in ClickHouse")
        self.insert_seconds = metrics.histogram("insert_seconds", "ClickHouse insert latency")

    def due(self) -> bool:
        # Also due with no rows: offsets of skipped or undecodable records need committing.
        return bool(self.last) and (
            len(self.rows) >= self.s.batch_max_rows
            or time.monotonic() - self.opened >= self.s.batch_max_seconds
        )

    def add(self, tp: TopicPartition, offset: int, row: list[Any] | None) -> None:
        if not self.rows and not self.last:
            self.opened = time.monotonic()
        if row is not None:
            row.append(tp.topic)
            self.rows.append(row)
        self.first.setdefault(tp, offset)
        self.last[tp] = offset

    def token(self) -> str:
        return ";".join(
            f"{tp.topic}:{tp.partition}:{self.first[tp]}-{self.last[tp]}"
            for tp in sorted(self.last, key=lambda t: (t.topic, t.partition))
        )

    def insert(self) -> None:
        t0 = time.perf_counter()
        if self._ctx is None:
            # Column types are fetched from the server once, not on every insert.
            self._ctx = self.client.create_insert_context(
                f"{self.s.ch_database}.events", column_names=EVENT_COLUMNS
            )
        ctx = self._ctx
        # One native block for the whole batch: the server writes it whole or not at all.
        ctx.req_block_size = len(self.rows)
        ctx.data = self.rows
        ctx.settings = {
            "insert_deduplication_token": self.token(),
            "deduplicate_blocks_in_dependent_materialized_views": 1,
            # no squashing or splitting on the server either
            "max_insert_block_size": max(1_048_576, len(self.rows) + 1),
            "min_insert_block_size_rows": 0,
            "min_insert_block_size_bytes": 0,
            "query_id": _query_id_prefix(self.s.ch_database, self.s.topic_redacted)
            + uuid.uuid4().hex,
        }
        try:
            self.client.insert(context=ctx)
        finally:
            ctx.data = None
        self.insert_seconds.observe(time.perf_counter() - t0)

    def reset(self) -> dict[TopicPartition, int]:
        commit = {tp: off + 1 for tp, off in self.last.items()}
        self.inserted.inc(len(self.rows))
        self.rows, self.first, self.last = [], {}, {}
        self.opened = time.monotonic()
        return commit


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, agg: Aggregator) -> None:
        self.agg = agg

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.agg.ready.difference_update(revoked)
        await self.agg.flush()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.agg.seek_past_stored(assigned)
        # Only now may the loop use records of these partitions (see Aggregator.ready).
        self.agg.ready = set(assigned)


class Aggregator:
    def __init__(self, s: AggregatorSettings, health: Health, metrics: Metrics) -> None:
        self.s = s
        self.health = health
        self.metrics = metrics
        self.client = admin_client(s)
        self.sink = Sink(s, self.client, metrics)
        # One ClickHouse client (not thread-safe) and one Sink serve the consume loop and the
        # rebalance listener, which aiokafka runs in its coordinator task, concurrently with
        # the loop whenever the loop awaits an insert. Without the lock a revocation would
        # flush the same batch twice and an assignment would query mid-insert (the exactly-once
        # test caught clickhouse-connect refusing that: "concurrent queries within the same
        # session").
        self.ch_lock = asyncio.Lock()
        # Partitions whose assignment callback has finished. aiokafka sets a new assignment,
        # and may already fetch for it, BEFORE it awaits on_partitions_assigned; records used
        # before seek_past_stored has set the replay floor and loaded the recent event ids
        # would be inserted a second time. Such records are put back (seek) instead.
        self.ready: set[TopicPartition] = set()
        self.overrides = load_overrides(s.price_overrides_file)
        spikes = SpikeDetector(spike_config(s))
        budgets = BudgetTracker(load_budgets(s.budgets_file))
        if s.signal_warm_start:
            try:
                n = warm_start_signals(self.client, s, spikes, budgets)
                log.info("signal baselines rebuilt", extra={"rollup_rows": n})
            except Exception as exc:
                # Not fatal: the rules warm up from live traffic instead (signals.py doc).
                log.warning("signal warm start failed", extra={"error": type(exc).__name__})
        self.rows = RowBuilder(
            Pricer(self.overrides),
            spikes,
            OncePerWindow(s.spike_window_seconds),
            budgets,
        )
        self.codec = redacted_codec()
        self.signal_codec = signal_codec()
        self.signals_sent = metrics.counter("signals_total", "Signals emitted", ("rule",))
        self.decode_errors = metrics.counter("decode_errors_total", "Undecodable redacted records")
        self.recent = RecentIds(s.dedup_recent_ids)
        self.duplicates = metrics.counter(
            "duplicates_dropped_total", "Redacted records whose event_id was already stored"
        )
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap,
            group_id=s.consumer_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            session_timeout_ms=10_000,
            heartbeat_interval_ms=3_000,
            max_poll_interval_ms=300_000,
        )
        self.producer = AIOKafkaProducer(
            bootstrap_servers=s.kafka_bootstrap, acks="all", enable_idempotence=True, linger_ms=20
        )

    async def seek_past_stored(self, assigned: list[TopicPartition]) -> None:
        """Retried until it succeeds: the loop uses none of these partitions before (ready),
        so giving up would stall them, and going on without it could count rows twice."""

        async def step() -> None:
            async with self.ch_lock:
                await self._seek_past_stored(assigned)

        await self._until_done("reading stored offsets", step)

    async def _until_done(self, what: str, step: Callable[[], Awaitable[None]]) -> None:
        """Run ``step`` until it succeeds, backing off to 10 s: ClickHouse may be restarting,
        and neither a batch nor an assignment may be dropped."""
        delay = 0.5
        while True:
            try:
                await step()
                return
            except Exception as exc:
                self.health.set("clickhouse", False, type(exc).__name__)
                log.warning(
                    f"{what} failed, retrying",
                    extra={"error": type(exc).__name__, "retry_in_s": delay},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _seek_past_stored(self, assigned: list[TopicPartition]) -> None:
        db, topic = self.s.ch_database, self.s.topic_redacted
        parts = [tp.partition for tp in assigned if tp.topic == topic]
        running = await asyncio.to_thread(wait_for_running_inserts, self.client, db, topic)
        if running:
            log.info("waited for running inserts", extra={"inserts": running})
        stored = await asyncio.to_thread(stored_offsets, self.client, db, topic, parts)
        if self.recent.capacity:
            ids = await asyncio.to_thread(
                recent_event_ids,
                self.client,
                db,
                topic,
                parts,
                self.s.dedup_warm_hours,
                self.recent.capacity,
            )
            held = self.recent.remember(ids)
            log.info("recent event ids loaded", extra={"loaded": len(ids), "held": held})
        behind: dict[TopicPartition, int] = {}
        for tp in assigned:
            if tp.partition in stored:
                committed = await self.consumer.committed(tp)
                nxt = stored[tp.partition] + 1
                self.sink.skip_below[tp.partition] = nxt
                if committed is None or committed < nxt:
                    # ClickHouse acknowledged rows whose offsets were never committed (crash
                    # between insert and commit): resume after them instead of re-inserting.
                    self.consumer.seek(tp, nxt)
                    behind[tp] = nxt
                    log.info(
                        "resuming after stored rows",
                        extra={"partition": tp.partition, "offset": nxt, "committed": committed},
                    )
        if behind:
            # Commit the new position now: with no new record on a partition nothing else
            # would, and its consumer lag would show rows that are long stored.
            try:
                await self.consumer.commit(behind)
            except KafkaError as exc:
                log.warning("offset commit failed", extra={"error": type(exc).__name__})

    async def flush(self) -> None:
        async with self.ch_lock:
            await self._flush()

    async def _flush(self) -> None:
        if not self.sink.last:
            return
        if self.sink.rows:
            # Retried with the batch and its uncommitted offsets kept.
            await self._until_done("insert", lambda: asyncio.to_thread(self.sink.insert))
        self.health.set("clickhouse", True, "inserting")
        if self.s.test_pause_before_commit_seconds and self.sink.rows:
            # Test-only hook (0 = off): a window in which a kill lands between ClickHouse's
            # acknowledgement and the offset commit.
            log.warning(
                "TEST HOOK: batch inserted, pausing before commit",
                extra={"rows": len(self.sink.rows), "token": self.sink.token()},
            )
            await asyncio.sleep(self.s.test_pause_before_commit_seconds)
        commit = self.sink.reset()
        try:
            await self.consumer.commit(commit)
        except KafkaError as exc:
            # The rows are in ClickHouse; whoever owns these partitions next resumes after
            # them (seek_past_stored), so a lost commit costs a re-read, never a double count.
            log.warning("offset commit failed", extra={"error": type(exc).__name__})
        await self.send_signals()

    async def send_signals(self) -> None:
        for sig in self.rows.take_signals():
            await self.producer.send(
                self.s.topic_signals, self.signal_codec.encode(sig), key=sig["team"].encode()
            )
            self.signals_sent.labels(sig["rule"]).inc()

    async def run(self, stop: asyncio.Event) -> None:
        await ensure_topics(self.s)
        # TTLs are not set here: that is an ALTER, which the aggregator's own account may not
        # run; `trustlog migrate` (admin, before the services start) applies them.
        if self.s.price_overrides_file is not None:
            # The file is the source of truth for credits; an instance without one leaves
            # them alone (to drop every credit, keep the file with `credits: []`).
            await asyncio.to_thread(
                sync_credits,
                self.client,
                self.s.ch_database,
                self.overrides.credits,
                self.overrides.version,
            )
        await self.producer.start()
        self.consumer.subscribe([self.s.topic_redacted], listener=_Rebalance(self))
        await self.consumer.start()
        self.health.set("kafka", True, "consuming")
        self.health.set("clickhouse", True, "connected")
        log.info("aggregator consuming", extra={"topic": self.s.topic_redacted})
        try:
            while not stop.is_set():
                batch = await self.consumer.getmany(
                    timeout_ms=200, max_records=min(5000, self.s.batch_max_rows)
                )
                assigned = self.consumer.assignment()
                for tp, msgs in batch.items():
                    if tp not in assigned:
                        continue  # revoked while the loop awaited: its new owner reads these
                    if tp not in self.ready:
                        self.consumer.seek(tp, msgs[0].offset)  # read again once ready
                        continue
                    floor = self.sink.skip_below.get(tp.partition, -1)
                    for m in msgs:
                        if m.offset < floor:
                            self.sink.skipped.inc()
                            self.sink.add(tp, m.offset, None)
                            continue
                        try:
                            ev = self.codec.decode(m.value or b"")
                        except ValueError:
                            self.decode_errors.inc()
                            self.sink.add(tp, m.offset, None)
                            continue
                        if self.recent.seen(ev["event_id"]):
                            # a producer retry: stored (or about to be) under its first offset
                            self.duplicates.inc()
                            self.sink.add(tp, m.offset, None)
                            continue
                        self.sink.add(tp, m.offset, self.rows.build(ev, tp.partition, m.offset))
                if self.sink.due():
                    await self.flush()
            await self.flush()
        finally:
            await self.consumer.stop()
            await self.producer.stop()
            self.client.close()


def main() -> None:
    s = AggregatorSettings()

    async def _main(stop: asyncio.Event, health: Health, metrics: Metrics) -> None:
        await Aggregator(s, health, metrics).run(stop)

    asyncio.run(run_service("aggregator", s, _main))
