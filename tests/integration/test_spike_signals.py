"""A doubling of a team's spend rate becomes a cost_spike signal within 60 s of event time.

The aggregator runs as a real process against the real Kafka and ClickHouse, on topics and a
consumer group of this test's own. Twenty minutes of one team's calls at about $6 a minute
(Poisson arrivals, log-normal prices) are followed by two minutes at twice the rate. The test
reads the signals topic: exactly the doubling is signalled, no earlier than it started and at
most 60 s of event time after, with evidence and without a pseudonym; its echo on the task
label is suppressed. Before the start, an hourly rollup row says the team already spent $50
this month (as if from before a restart): the aggregator rebuilds that from ClickHouse, so its
budget thresholds fire once each, exactly at the calls where an independent running sum from
$50 crosses them.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from services.aggregator.signals import period_bounds
from trustlog import procs
from trustlog.avro import redacted_codec, signal_codec
from trustlog.kafka import ensure_topics
from trustlog.settings import AggregatorSettings, KafkaSettings, default_state_dir
from trustlog.storage import admin_client

pytestmark = pytest.mark.integration

RUN = uuid.uuid4().hex[:8]
TOPIC = f"tl-spike-{RUN}.redacted"
SIGNALS = f"tl-spike-{RUN}.signals"
GROUP = f"tl-spike-{RUN}"
TEAM = f"spike-{RUN}"
TOOL = "code-helper"
MODEL = "tl-spike-model"  # $1 per million input tokens, output free: cost = input / 1e6
BASE_PER_MIN, MINUTES = 300, 20  # ~$6 a minute: above the $5 minimum
BUDGET_USD = 100.0
PRE_SPENT_USD = 50.0  # in spend_hourly before the aggregator starts


def _events(t0_ms: int) -> list[dict[str, Any]]:
    rng = random.Random(RUN)

    def call(ms: float) -> dict[str, Any]:
        tokens = round(20_000 * math.exp(rng.gauss(0.0, 0.5) - 0.125))  # mean $0.02
        return {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "event_time": datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=int(ms)),
            "producer": "spike-test",
            "tool": TOOL,
            "model": MODEL,
            "provider": "",
            "workspace": f"ws-{RUN}",
            "user_pseudonym": f"p_{rng.randrange(40):04x}",
            "pseudonym_key_version": "1",
            "team": TEAM,
            "task_label": "coding",
            "input_tokens": tokens,
            "output_tokens": 300,
            "cached_tokens": 0,
            "reasoning_tokens": 0,
            "status": "ok",
            "retry_count": 0,
            "policy_flags": [],
            "sensitive_classes": {},
            "content_chars": 0,
        }

    out = []
    t = t0_ms - MINUTES * 60_000.0
    while t < t0_ms + 120_000:
        rate = BASE_PER_MIN * (2 if t >= t0_ms else 1)  # calls per minute
        t += rng.expovariate(rate / 60_000.0)
        out.append(call(t))
    return out


async def _produce(bootstrap: str, events: list[dict[str, Any]]) -> None:
    codec = redacted_codec()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    await producer.start()
    try:
        for ev in events:  # keyed by team like the redactor: one partition, in order
            await producer.send(TOPIC, codec.encode(ev), key=TEAM.encode())
        await producer.flush()
    finally:
        await producer.stop()


async def _signals_until(
    bootstrap: str, done: Callable[[list[dict[str, Any]]], bool], timeout: float
) -> list[dict[str, Any]]:
    codec = signal_codec()
    consumer = AIOKafkaConsumer(
        SIGNALS, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    got: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not done(got):
            batch = await consumer.getmany(timeout_ms=500)
            for msgs in batch.values():
                got += [codec.decode(m.value or b"") for m in msgs]
    finally:
        await consumer.stop()
    return [s for s in got if s["team"] == TEAM]


def _ms(v: Any) -> int:
    return int(v.timestamp() * 1000) if isinstance(v, datetime) else int(v)


def _budget_crossings(events: list[dict[str, Any]], pre_hour_ms: int) -> list[tuple[float, int]]:
    """Independent of BudgetTracker: a running sum per month from what the rollup already
    holds, and every crossing it makes."""
    spent: dict[int, float] = {period_bounds("month", pre_hour_ms)[0]: PRE_SPENT_USD}
    out = []
    for ev in events:
        t = _ms(ev["event_time"])
        start = period_bounds("month", t)[0]
        before = spent.get(start, 0.0)
        spent[start] = after = before + ev["input_tokens"] / 1e6
        out += [(p, t) for p in (80.0, 90.0, 100.0) if before < BUDGET_USD * p / 100 <= after]
    return out


def test_doubling_signalled_within_60s_of_event_time(stack: object, tmp_path: Path) -> None:
    prices = tmp_path / "prices.yaml"
    prices.write_text(
        "version: spike-test\nmodels:\n"
        f"  {MODEL}: {{input_per_mtok: 1, output_per_mtok: 0, source: spike-test}}\n"
    )
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text(f"budgets:\n  - {{team: {TEAM}, period: month, usd: {BUDGET_USD}}}\n")
    env = {
        "TRUSTLOG_TOPIC_REDACTED": TOPIC,
        "TRUSTLOG_TOPIC_SIGNALS": SIGNALS,
        "TRUSTLOG_CONSUMER_GROUP": GROUP,
        "TRUSTLOG_PRICE_OVERRIDES_FILE": str(prices),
        "TRUSTLOG_BUDGETS_FILE": str(budgets),
        "TRUSTLOG_SPIKE_MIN_USD": "5",
        "TRUSTLOG_BATCH_MAX_SECONDS": "0.3",
    }
    k = KafkaSettings(topic_redacted=TOPIC, topic_signals=SIGNALS)
    asyncio.run(ensure_topics(k))
    # The doubling starts two minutes ago: every call is in the past, as after any backlog.
    t0 = (int(time.time() * 1000) - 120_000) // 1000 * 1000
    events = _events(t0)
    # the rollup of an earlier run: $50 four hours ago (columns the materialized view fills)
    pre_hour = datetime.fromtimestamp(t0 / 1000 - 4 * 3600, UTC).replace(
        minute=0, second=0, microsecond=0
    )
    s = AggregatorSettings()
    client = admin_client(s)
    client.insert(
        f"{s.ch_database}.spend_hourly",
        [
            [
                pre_hour.replace(tzinfo=None),
                TEAM,
                TOOL,
                MODEL,
                "coding",
                f"ws-{RUN}",
                2500,
                Decimal(str(PRE_SPENT_USD)),
                0,
                0,
            ]
        ],
        column_names=[
            "hour",
            "team",
            "tool",
            "model",
            "task_label",
            "workspace",
            "requests",
            "cost_usd",
            "errors",
            "retries",
        ],
    )
    client.close()
    expected_budget = _budget_crossings(events, int(pre_hour.timestamp() * 1000))
    state, name = default_state_dir(), f"spike-{RUN}-aggregator"
    procs.start(state, name, "services.aggregator", env)
    try:
        deadline = time.monotonic() + 10
        while not procs.status(state, name).running and time.monotonic() < deadline:
            time.sleep(0.05)  # the exec: /proc/<pid>/cmdline is empty for a moment
        log = state / "logs" / f"{name}.log"
        assert procs.wait_healthy(state, name, 60), log.read_text(errors="replace")[-3000:]
        sent = time.monotonic()
        asyncio.run(_produce(k.kafka_bootstrap, events))

        def complete(got: list[dict[str, Any]]) -> bool:
            mine = [s for s in got if s["team"] == TEAM]
            return any(s["rule"] == "cost_spike" for s in mine) and sum(
                s["rule"] == "budget_threshold" for s in mine
            ) >= len(expected_budget)

        sigs = asyncio.run(_signals_until(k.kafka_bootstrap, complete, 60))
        waited = time.monotonic() - sent
        time.sleep(2)  # anything extra (a false or repeated signal) would arrive now
        sigs = asyncio.run(_signals_until(k.kafka_bootstrap, lambda _: False, 3))
    finally:
        procs.stop(state, name)

    spikes = [s for s in sigs if s["rule"] == "cost_spike"]
    assert spikes, f"no cost_spike within 60 s wall time; signals: {sigs}"
    first = min(spikes, key=lambda s: _ms(s["window_end"]))
    delay_ms = _ms(first["window_end"]) - t0
    assert 0 <= delay_ms <= 60_000, f"signalled {delay_ms} ms of event time after the doubling"
    # nothing fired during the twenty steady minutes, and at most one per minute after
    assert len(spikes) <= 2
    assert first["tool"] == TOOL and first["user_pseudonym"] is None
    assert first["baseline"] == pytest.approx(6.0, rel=0.25)  # the expected 60-s spend
    assert first["observed"] >= first["threshold"] >= 1.3 * first["baseline"] - 1e-6
    ev = first["evidence"]
    for key in ("spend_usd", "expected_usd", "threshold_usd", "window_seconds", "calls"):
        assert key in ev, ev
    assert ev["trigger"] in ("calls", "spend", "cost_per_call")
    assert not any(s["rule"] == "task_spend_spike" for s in sigs)  # the same calls: suppressed
    assert all(s["user_pseudonym"] is None for s in sigs)
    assert not any(p in repr(sigs) for p in {e["user_pseudonym"] for e in events})

    budget = sorted(
        (float(s["evidence"]["threshold_percent"]), _ms(s["window_end"]))
        for s in sigs
        if s["rule"] == "budget_threshold"
    )
    assert budget == sorted(expected_budget)  # each threshold once, at the crossing call
    print(f"signal {delay_ms / 1000:.1f} s of event time after the doubling; {waited:.1f} s wall")
