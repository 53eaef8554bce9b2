"""Redactor service: raw topic -> redacted + dead-letter topics, exactly once.

A batched aiokafka consume-transform-produce loop rather than a faust agent: this is the
per-event hot path, and on this hardware faust's per-message machinery caps a process near
2k events/s while a batched aiokafka loop reaches ~19k (shared/notes/performance.md). Each
batch is one Kafka transaction that also commits the consumed offsets, so after a crash the
batch is either fully visible downstream (read_committed) or replayed, never half.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.partitioner import murmur2

from services.redactor import detect
from services.redactor.identity import pseudonymizer_from_settings
from services.redactor.redact import DeadLetter, Redacted, Redactor, load_directory
from trustlog.kafka import MAX_RAW_MESSAGE_BYTES, ensure_topics
from trustlog.runtime import Health, Metrics, run_service
from trustlog.settings import RedactorSettings

log = logging.getLogger("redactor")
GROUP_ID = "trustlog-redactor"


def build_redactor(s: RedactorSettings) -> Redactor:
    return Redactor(
        pseudonymizer_from_settings(s),
        directory=load_directory(s.directory_file),
        max_content_bytes=s.max_content_bytes,
        max_clock_skew_s=s.max_clock_skew_hours * 3600,
        max_event_age_s=s.max_event_age_days * 86400,
    )


class TeamPartitioner:
    """Key redacted events by team so one team's events stay ordered on one partition.

    Caches murmur2 per team: the pure-Python hash was ~21% of send cost per record.
    """

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self._cache: dict[str, int] = {}

    def __call__(self, team: str) -> int:
        p = self._cache.get(team)
        if p is None:
            p = (murmur2(team.encode()) & 0x7FFFFFFF) % self.partitions
            self._cache[team] = p
        return p


def dead_letter_value(dl: DeadLetter, topic: str, partition: int, offset: int) -> bytes:
    """Content-free description of a refused event: reason code, where it was, its id."""
    return orjson.dumps(
        {
            "reason": dl.reason,
            "field": dl.field,
            "event_id": dl.event_id,
            "detail": dl.detail,
            "source": {"topic": topic, "partition": partition, "offset": offset},
            "at_ms": int(time.time() * 1000),
        }
    )


class TransactionGate(ConsumerRebalanceListener):
    """Keeps rebalances and transactions apart.

    aiokafka restarts every partition from its committed offset after a rebalance. A
    transaction still open then would commit offsets the new assignment has already read
    past, and its records would be redacted twice. So revocation waits for the transaction
    in flight, and a batch fetched before a rebalance is dropped: the new assignment
    fetches it again from the committed offset.
    """

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.generation = 0

    async def on_partitions_revoked(self, revoked: object) -> None:
        async with self.lock:
            self.generation += 1

    async def on_partitions_assigned(self, assigned: object) -> None:
        return None


async def serve(stop: asyncio.Event, health: Health, metrics: Metrics, s: RedactorSettings) -> None:
    redactor = build_redactor(s)
    await ensure_topics(s)
    processed = metrics.counter("events_total", "Events handled", ("outcome",))
    dead = metrics.counter("deadletter_total", "Events dead-lettered", ("reason",))
    sensitive = metrics.counter("sensitive_classes_total", "Sensitive classes seen", ("cls",))
    batch_seconds = metrics.histogram("batch_seconds", "Time per transactional batch")
    stale = metrics.counter("stale_batches_total", "Batches dropped because of a rebalance")
    # Which detection engine runs (the native core, or Python if it is not built here), and
    # how many texts the core handed to the Python detector (a Unicode rule only it applies).
    engine = metrics.gauge("detect_engine", "Sensitive-data detection engine in use", ("engine",))
    engine.labels(detect.engine()).set(1)
    handed_back = metrics.gauge(
        "detect_handed_back_texts", "Texts the native detector handed to the Python one"
    )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=s.kafka_bootstrap,
        group_id=GROUP_ID,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_partition_fetch_bytes=MAX_RAW_MESSAGE_BYTES + 1024 * 1024,
        fetch_max_bytes=4 * MAX_RAW_MESSAGE_BYTES,
        session_timeout_ms=10_000,
        heartbeat_interval_ms=3_000,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=s.kafka_bootstrap,
        transactional_id=s.transactional_id,
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        max_batch_size=256 * 1024,
    )
    gate = TransactionGate()
    # The producer first: InitProducerId with our transactional id fences a previous
    # incarnation and completes or aborts its open transaction before we read the offsets
    # that transaction may have committed.
    await producer.start()
    await consumer.start()
    consumer.subscribe([s.topic_raw], listener=gate)
    partitions = await producer.partitions_for(s.topic_redacted)
    by_team = TeamPartitioner(len(partitions))
    health.set("kafka", True, "consuming")
    log.info(
        "redactor consuming",
        extra={
            "topic": s.topic_raw,
            "key_version": s.pseudonym_key_version,
            "detect_engine": detect.engine(),
        },
    )
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=500, max_records=s.batch_max_records)
            # Read right after getmany returns, with no await in between: getmany only hands
            # out records while no rebalance is in progress, so they belong to this generation.
            generation = gate.generation
            if not batch:
                continue
            async with gate.lock:
                if gate.generation != generation:
                    stale.inc()
                    continue
                t0 = time.perf_counter()
                done = await _transact(producer, redactor, batch, s, by_team)
            # Counted once per committed batch: an aborted one is read again and would count
            # twice, and a labelled increment per event and class cost more than the batch.
            for k, v in done.outcome.items():
                processed.labels(k).inc(v)
            for cls, v in done.classes.items():
                sensitive.labels(cls).inc(v)
            for reason, v in done.reasons.items():
                dead.labels(reason).inc(v)
            batch_seconds.observe(time.perf_counter() - t0)
            handed_back.set(detect.handed_back())
    except Exception as exc:
        health.set("kafka", False, type(exc).__name__)
        log.error("redactor loop failed", extra={"error": type(exc).__name__})
        raise
    finally:
        await consumer.stop()
        await producer.stop()


@dataclass
class BatchDone:
    """What one committed batch did: events per outcome, class counts, dead-letter reasons."""

    outcome: dict[str, int] = field(default_factory=lambda: {"redacted": 0, "deadletter": 0})
    classes: collections.Counter[str] = field(default_factory=collections.Counter)
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)


class _Outbox:
    """Output records appended to one batch per topic and partition, each sent when full
    and the rest at the end. Against a ``send`` per record: 2 instead of 6 us of CPU per
    record here (aiokafka's per-record future and bookkeeping), in the redactor's one thread.
    A partition's records keep their order: its batches are sent one after the other."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer
        self.open: dict[tuple[str, int], Any] = {}
        self.sent: list[asyncio.Future[Any]] = []

    async def add(self, topic: str, partition: int, key: bytes | None, value: bytes) -> None:
        batch = self.open.get((topic, partition))
        if batch is None:
            batch = self.open[(topic, partition)] = self.producer.create_batch()
        if batch.append(key=key, value=value, timestamp=None) is None:  # full
            await self._send(topic, partition, batch)
            batch = self.open[(topic, partition)] = self.producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:
                raise ValueError("a record larger than the producer's batch size")

    async def _send(self, topic: str, partition: int, batch: Any) -> None:
        self.sent.append(await self.producer.send_batch(batch, topic, partition=partition))

    async def close(self) -> list[asyncio.Future[Any]]:
        for (topic, partition), batch in self.open.items():
            if batch.record_count():
                await self._send(topic, partition, batch)
        self.open.clear()
        return self.sent


async def _transact(
    producer: AIOKafkaProducer,
    redactor: Redactor,
    batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
    s: RedactorSettings,
    by_team: TeamPartitioner,
) -> BatchDone:
    """One batch, one transaction: its output records and its input offsets, or nothing."""
    done = BatchDone()
    outcome, classes, reasons = done.outcome, done.classes, done.reasons
    async with producer.transaction():
        out = _Outbox(producer)
        offsets: dict[TopicPartition, int] = {}
        for tp, msgs in batch.items():
            for m in msgs:
                res = redactor(m.value) if m.value is not None else DeadLetter("empty_value")
                if isinstance(res, Redacted):
                    await out.add(s.topic_redacted, by_team(res.team), res.team.encode(), res.value)
                    outcome["redacted"] += 1
                    if res.sensitive:
                        classes.update(res.sensitive)
                else:
                    value = dead_letter_value(res, tp.topic, tp.partition, m.offset)
                    await out.add(s.topic_deadletter, 0, None, value)
                    outcome["deadletter"] += 1
                    reasons[res.reason] += 1
            offsets[tp] = msgs[-1].offset + 1
        # aiokafka commits a transaction even if one of its records failed to send; a
        # failure raised here aborts it instead, so no event can be skipped silently.
        await asyncio.gather(*await out.close())
        await producer.send_offsets_to_transaction(offsets, GROUP_ID)
    return done


def main() -> None:
    s = RedactorSettings()

    async def _main(stop: asyncio.Event, health: Health, metrics: Metrics) -> None:
        await serve(stop, health, metrics, s)

    asyncio.run(run_service("redactor", s, _main))
