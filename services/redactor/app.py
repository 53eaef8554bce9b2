"""Redactor service: raw topic -> redacted + dead-letter topics, exactly once.

A batched aiokafka consume-transform-produce loop rather than a faust agent: this is the
per-event hot path, and on this hardware faust's per-message machinery caps a process near
2k events/s while a batched aiokafka loop reaches ~19k (shared/notes/performance.md). Each
batch is one Kafka transaction that also commits the consumed offsets, so after a crash the
batch is either fully visible downstream (read_committed) or replayed, never half.
"""

from __future__ import annotations

import asyncio
import logging
import time
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
from prometheus_client import Counter

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
        "redactor consuming", extra={"topic": s.topic_raw, "key_version": s.pseudonym_key_version}
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
                outcome = await _transact(producer, redactor, batch, s, by_team, sensitive, dead)
            for k, v in outcome.items():
                processed.labels(k).inc(v)
            batch_seconds.observe(time.perf_counter() - t0)
    except Exception as exc:
        health.set("kafka", False, type(exc).__name__)
        log.error("redactor loop failed", extra={"error": type(exc).__name__})
        raise
    finally:
        await consumer.stop()
        await producer.stop()


async def _transact(
    producer: AIOKafkaProducer,
    redactor: Redactor,
    batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
    s: RedactorSettings,
    by_team: TeamPartitioner,
    sensitive: Counter,
    dead: Counter,
) -> dict[str, int]:
    """One batch, one transaction: its output records and its input offsets, or nothing."""
    outcome = {"redacted": 0, "deadletter": 0}
    async with producer.transaction():
        sent: list[asyncio.Future[Any]] = []
        offsets: dict[TopicPartition, int] = {}
        for tp, msgs in batch.items():
            for m in msgs:
                res = redactor(m.value) if m.value is not None else DeadLetter("empty_value")
                if isinstance(res, Redacted):
                    sent.append(
                        await producer.send(
                            s.topic_redacted,
                            res.value,
                            key=res.team.encode(),
                            partition=by_team(res.team),
                        )
                    )
                    outcome["redacted"] += 1
                    for cls, n in res.sensitive.items():
                        sensitive.labels(cls).inc(n)
                else:
                    value = dead_letter_value(res, tp.topic, tp.partition, m.offset)
                    sent.append(await producer.send(s.topic_deadletter, value, partition=0))
                    outcome["deadletter"] += 1
                    dead.labels(res.reason).inc()
            offsets[tp] = msgs[-1].offset + 1
        # aiokafka commits a transaction even if one of its records failed to send; a
        # failure raised here aborts it instead, so no event can be skipped silently.
        await asyncio.gather(*sent)
        await producer.send_offsets_to_transaction(offsets, GROUP_ID)
    return outcome


def main() -> None:
    s = RedactorSettings()

    async def _main(stop: asyncio.Event, health: Health, metrics: Metrics) -> None:
        await serve(stop, health, metrics, s)

    asyncio.run(run_service("redactor", s, _main))
