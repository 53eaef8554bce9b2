"""Aggregator service: redacted topic -> priced rows in ClickHouse, plus signals.

A batched aiokafka loop (the ClickHouse sink is a per-event hot path; see the redactor's
module doc for the measured faust vs aiokafka numbers). Rows are buffered and inserted every
``batch_max_rows`` rows or ``batch_max_seconds``; consumer offsets are committed only after
ClickHouse acknowledged the insert. Each row stores its Kafka partition and offset, so after a
crash the consumer seeks past what ClickHouse already holds: nothing is lost (offsets are
committed late) and nothing is counted twice (stored offsets are skipped). Each insert also
carries an insert_deduplication_token so a retried insert is dropped by ClickHouse itself.
Hourly spend per team, tool and model is a materialized view fed by those inserts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from decimal import Decimal
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from clickhouse_connect.driver.client import Client

from services.aggregator.pricing import Pricer, load_overrides
from services.aggregator.signals import OncePerWindow, SpikeDetector
from trustlog.avro import redacted_codec, signal_codec
from trustlog.kafka import ensure_topics
from trustlog.runtime import Health, Metrics, run_service
from trustlog.settings import AggregatorSettings
from trustlog.storage import admin_client

log = logging.getLogger("aggregator")
GROUP_ID = "trustlog-aggregator"
# events.cost_usd is Decimal(38, 12): round once here so what is stored is what was computed.
COST_QUANTUM = Decimal("1e-12")

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
]


class RowBuilder:
    """Turns one redacted record into an events row and feeds the signal rules. Pure."""

    def __init__(self, pricer: Pricer, spikes: SpikeDetector, once: OncePerWindow) -> None:
        self.pricer = pricer
        self.spikes = spikes
        self.once = once
        self.pending_signals: list[dict[str, Any]] = []

    def build(self, ev: dict[str, Any], partition: int, offset: int) -> list[Any]:
        price = self.pricer.price(
            ev["provider"],
            ev["model"],
            ev["input_tokens"],
            ev["output_tokens"],
            ev["cached_tokens"],
        )
        t: datetime = ev["event_time"]
        t_ms = int(t.timestamp() * 1000)
        team, tool = ev["team"], ev["tool"]
        self.spikes.observe(team, tool, t_ms, price.cost_usd)
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
        out = self.pending_signals + self.spikes.evaluate()
        self.pending_signals = []
        return out


def stored_offsets(client: Client, database: str, partitions: list[int]) -> dict[int, int]:
    """Highest Kafka offset per partition that ClickHouse already holds."""
    if not partitions:
        return {}
    res = client.query(
        f"SELECT kafka_partition, max(kafka_offset) FROM {database}.events "
        "WHERE kafka_partition IN {parts:Array(UInt32)} GROUP BY kafka_partition",
        parameters={"parts": partitions},
    )
    return {int(p): int(o) for p, o in res.result_rows}


class Sink:
    def __init__(self, s: AggregatorSettings, client: Client, metrics: Metrics) -> None:
        self.s = s
        self.client = client
        self.rows: list[list[Any]] = []
        self.last: dict[TopicPartition, int] = {}
        self.first: dict[TopicPartition, int] = {}
        self.skip_below: dict[int, int] = {}
        self.opened = time.monotonic()
        self.inserted = metrics.counter("rows_inserted_total", "Rows inserted into ClickHouse")
        self.skipped = metrics.counter("rows_skipped_total", "Replayed rows already in ClickHouse")
        self.insert_seconds = metrics.histogram("insert_seconds", "ClickHouse insert latency")

    def due(self) -> bool:
        return bool(self.rows) and (
            len(self.rows) >= self.s.batch_max_rows
            or time.monotonic() - self.opened >= self.s.batch_max_seconds
        )

    def add(self, tp: TopicPartition, offset: int, row: list[Any] | None) -> None:
        if not self.rows and not self.last:
            self.opened = time.monotonic()
        if row is not None:
            self.rows.append(row)
        self.first.setdefault(tp, offset)
        self.last[tp] = offset

    def token(self) -> str:
        return ";".join(
            f"{tp.topic}:{tp.partition}:{self.first[tp]}-{self.last[tp]}"
            for tp in sorted(self.last, key=lambda t: t.partition)
        )

    def insert(self) -> None:
        t0 = time.perf_counter()
        self.client.insert(
            f"{self.s.ch_database}.events",
            self.rows,
            column_names=EVENT_COLUMNS,
            settings={
                "insert_deduplication_token": self.token(),
                "deduplicate_blocks_in_dependent_materialized_views": 1,
                # one block per insert keeps the insert (and its dedup) all-or-nothing
                "max_insert_block_size": max(1_048_576, len(self.rows) + 1),
                "min_insert_block_size_rows": 0,
                "min_insert_block_size_bytes": 0,
            },
        )
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
        await self.agg.flush()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.agg.seek_past_stored(assigned)


class Aggregator:
    def __init__(self, s: AggregatorSettings, health: Health, metrics: Metrics) -> None:
        self.s = s
        self.health = health
        self.metrics = metrics
        self.client = admin_client(s)
        self.sink = Sink(s, self.client, metrics)
        self.rows = RowBuilder(
            Pricer(load_overrides(s.price_overrides_file)),
            SpikeDetector(
                s.spike_window_seconds, s.spike_baseline_windows, s.spike_factor, s.spike_min_usd
            ),
            OncePerWindow(s.spike_window_seconds),
        )
        self.codec = redacted_codec()
        self.signal_codec = signal_codec()
        self.signals_sent = metrics.counter("signals_total", "Signals emitted", ("rule",))
        self.decode_errors = metrics.counter("decode_errors_total", "Undecodable redacted records")
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap,
            group_id=GROUP_ID,
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
        parts = [tp.partition for tp in assigned]
        stored = await asyncio.to_thread(stored_offsets, self.client, self.s.ch_database, parts)
        for tp in assigned:
            if tp.partition in stored:
                committed = await self.consumer.committed(tp)
                nxt = stored[tp.partition] + 1
                self.sink.skip_below[tp.partition] = nxt
                if committed is None or committed < nxt:
                    # ClickHouse acknowledged rows whose offsets were never committed (crash
                    # between insert and commit): resume after them instead of re-inserting.
                    self.consumer.seek(tp, nxt)
                    log.info(
                        "resuming after stored rows",
                        extra={"partition": tp.partition, "offset": nxt, "committed": committed},
                    )

    async def flush(self) -> None:
        if not self.sink.last:
            return
        delay = 0.5
        while True:
            try:
                if self.sink.rows:
                    await asyncio.to_thread(self.sink.insert)
                break
            except Exception as exc:
                # Keep the batch and the uncommitted offsets; ClickHouse may be restarting.
                self.health.set("clickhouse", False, type(exc).__name__)
                log.warning(
                    "insert failed, retrying",
                    extra={"error": type(exc).__name__, "retry_in_s": delay},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        self.health.set("clickhouse", True, "inserting")
        commit = self.sink.reset()
        await self.consumer.commit(commit)
        await self.send_signals()

    async def send_signals(self) -> None:
        for sig in self.rows.take_signals():
            await self.producer.send(
                self.s.topic_signals, self.signal_codec.encode(sig), key=sig["team"].encode()
            )
            self.signals_sent.labels(sig["rule"]).inc()

    async def run(self, stop: asyncio.Event) -> None:
        await ensure_topics(self.s)
        await self.producer.start()
        self.consumer.subscribe([self.s.topic_redacted], listener=_Rebalance(self))
        await self.consumer.start()
        self.health.set("kafka", True, "consuming")
        self.health.set("clickhouse", True, "connected")
        log.info("aggregator consuming", extra={"topic": self.s.topic_redacted})
        try:
            while not stop.is_set():
                batch = await self.consumer.getmany(timeout_ms=200, max_records=5000)
                for tp, msgs in batch.items():
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
