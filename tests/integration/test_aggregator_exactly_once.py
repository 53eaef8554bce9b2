"""The aggregator survives SIGKILL without losing or double counting a single event.

20,000 redacted events go to a topic of this test's own; the aggregator runs as a real process
(its own consumer group) with small batches and the test-only pause between ClickHouse's
acknowledgement and the offset commit. It is SIGKILLed twice: once inside that pause (the
test proves the state at the kill: more rows in ClickHouse than committed offsets), once at a
random moment. After the last restart, events, spend_hourly and spend_daily must hold exactly
20,000 calls and exactly the spend computed here independently (genai-prices called directly,
hand rates for the override), to the 1e-12 USD.

A retried insert (same batch, same token: what the sink's retry loop and clickhouse-connect
do after a timeout whose insert did land) is checked separately: once in events and in both
rollups.

The stream also carries producer retries: 1,000 extra copies of earlier events (same
event_id, each at a random later position, so many straddle a kill and restart). They must be
dropped, not counted: delivery into trustlog is at-least-once, and finance must not pay twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from clickhouse_connect.driver.client import Client
from genai_prices import Usage, calc_price

from services.aggregator.app import QUERY_ID_PREFIX
from trustlog import procs
from trustlog.avro import redacted_codec
from trustlog.governance.roles import SERVICE_ACCOUNTS
from trustlog.kafka import ensure_topics
from trustlog.settings import AggregatorSettings, KafkaSettings, default_state_dir
from trustlog.storage import admin_client

pytestmark = pytest.mark.integration

RUN = uuid.uuid4().hex[:8]
TOPIC = f"tl-eo-{RUN}.redacted"
SIGNALS = f"tl-eo-{RUN}.signals"
GROUP = f"tl-eo-{RUN}"
TEAM = f"eo-{RUN}"
N_EVENTS = 20_000
N_RETRIES = 1_000
Q12 = Decimal("1e-12")
OVERRIDE_MODEL = "tl-eo-model"  # $1 in, $0.25 cached, $2 out, $1.5 reasoning per million
FLAT_TOOL = "tl-eo-flat"  # $0.0005 per call, whatever the model
UNKNOWN_MODEL = "tl-eo-no-such-model"
PAUSE_S = 0.6
HOOK = "TEST HOOK: batch inserted, pausing before commit"


def _event(rng: random.Random, i: int, now: datetime) -> dict[str, Any]:
    provider, model = rng.choice(
        [
            ("openai", "gpt-4o-mini"),
            ("openai", "gpt-4o-mini"),
            ("anthropic", "claude-sonnet-4-5"),  # tiered: priced through genai-prices per call
            ("", OVERRIDE_MODEL),
            ("acme", UNKNOWN_MODEL),
        ]
    )
    inp = rng.randint(50, 300_000)
    out = rng.randint(0, 8_000)
    # event time in ms (what Avro timestamp-millis keeps), spread over three UTC days
    ms = int(now.timestamp() * 1000) - rng.randint(0, 2 * 86_400_000)
    return {
        "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
        "event_time": datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms),
        "producer": "eo-test",
        "tool": FLAT_TOOL if i % 11 == 0 else rng.choice(["chat", "code-helper", "drafts"]),
        "model": model,
        "provider": provider,
        "workspace": f"ws-{RUN}",
        "user_pseudonym": f"p_{i % 97:04x}",
        "pseudonym_key_version": "1",
        "team": TEAM,
        "task_label": rng.choice(["drafting", "coding", "support", "research"]),
        "input_tokens": inp,
        "output_tokens": out,
        "cached_tokens": rng.randint(0, inp) if i % 3 == 0 else 0,
        "reasoning_tokens": rng.randint(0, out) if i % 4 == 0 else 0,
        "status": "error" if i % 53 == 0 else "ok",
        "retry_count": 1 if i % 53 == 0 else 0,
        "policy_flags": [],
        "sensitive_classes": {},
        "content_chars": rng.randint(0, 5000),
    }


def _expected_cost(ev: dict[str, Any]) -> Decimal:
    """Independent of services.aggregator.pricing: genai-prices directly, or the hand rates."""
    inp, out = ev["input_tokens"], ev["output_tokens"]
    cached, reasoning = ev["cached_tokens"], ev["reasoning_tokens"]
    if ev["tool"] == FLAT_TOOL:
        cost = Decimal("0.0005")
    elif ev["model"] == OVERRIDE_MODEL:
        cost = (
            Decimal(inp - cached)
            + Decimal(cached) * Decimal("0.25")
            + Decimal(out - reasoning) * 2
            + Decimal(reasoning) * Decimal("1.5")
        ) / Decimal(1_000_000)
    elif ev["model"] == UNKNOWN_MODEL:
        cost = Decimal(0)
    else:
        cost = calc_price(
            Usage(
                input_tokens=inp,
                output_tokens=out,
                cache_read_tokens=cached or None,
                output_reasoning_tokens=reasoning or None,
            ),
            model_ref=ev["model"],
            provider_id=ev["provider"],
            genai_request_timestamp=ev["event_time"],
        ).total_price
    return cost.quantize(Q12)


@dataclass
class World:
    state: Path
    env: dict[str, str]
    events: list[dict[str, Any]]
    client: Client
    db: str


async def _produce(bootstrap: str, events: list[dict[str, Any]]) -> None:
    codec = redacted_codec()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=20
    )
    await producer.start()
    try:
        futures = [await producer.send(TOPIC, codec.encode(ev)) for ev in events]
        await producer.flush()
        for fut in futures:
            await fut
    finally:
        await producer.stop()


async def _committed(bootstrap: str) -> int:
    """Sum of the group's committed offsets on the test topic (= records committed)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(GROUP)
    finally:
        await admin.close()
    return sum(max(o.offset, 0) for tp, o in offsets.items() if tp.topic == TOPIC)


@pytest.fixture(scope="module")
def world(stack: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    overrides = tmp_path_factory.mktemp("eo") / "prices.yaml"
    overrides.write_text(
        "version: eo-test\n"
        f"tools:\n  {FLAT_TOOL}: {{per_request_usd: 0.0005, source: eo-flat}}\n"
        f"models:\n  {OVERRIDE_MODEL}: {{input_per_mtok: 1, output_per_mtok: 2, "
        "cached_per_mtok: 0.25, reasoning_per_mtok: 1.5, source: eo-contract}\n"
    )
    env = {
        "TRUSTLOG_TOPIC_REDACTED": TOPIC,
        "TRUSTLOG_TOPIC_SIGNALS": SIGNALS,
        "TRUSTLOG_CONSUMER_GROUP": GROUP,
        "TRUSTLOG_PRICE_OVERRIDES_FILE": str(overrides),
        "TRUSTLOG_BATCH_MAX_ROWS": "1000",
        "TRUSTLOG_BATCH_MAX_SECONDS": "0.3",
        "TRUSTLOG_TEST_PAUSE_BEFORE_COMMIT_SECONDS": str(PAUSE_S),
    }
    k = KafkaSettings(topic_redacted=TOPIC, topic_signals=SIGNALS)
    asyncio.run(ensure_topics(k))
    rng = random.Random(RUN)
    now = datetime.now(UTC)
    events = [_event(rng, i, now) for i in range(N_EVENTS)]
    stream = list(events)
    for _ in range(N_RETRIES):
        original = rng.randrange(N_EVENTS)
        stream.insert(
            rng.randint(stream.index(events[original]) + 1, len(stream)), events[original]
        )
    asyncio.run(_produce(k.kafka_bootstrap, stream))
    s = AggregatorSettings()
    client = admin_client(s)
    yield World(default_state_dir(), env, events, client, s.ch_database)
    client.close()


def _stored(w: World) -> int:
    return int(
        str(
            w.client.command(
                f"SELECT count() FROM {w.db}.events WHERE kafka_topic = {{t:String}}",
                parameters={"t": TOPIC},
            )
        )
    )


def _log(w: World, name: str) -> str:
    path = w.state / "logs" / f"{name}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def _wait(cond: Callable[[], bool], timeout: float, what: str, poll: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)


def _sigkill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)  # procs.start made it our child: reap it


def _start(w: World, name: str, started: list[str]) -> int:
    started.append(name)
    pid = procs.start(w.state, name, "services.aggregator", w.env)
    # Right after the fork /proc/<pid>/cmdline can still be empty, and procs.wait_healthy
    # takes that for a dead process: give the exec a moment first.
    _wait(lambda: procs.status(w.state, name).running, 5, f"{name} to exec")
    assert procs.wait_healthy(w.state, name, 60), f"{name} unhealthy:\n{_log(w, name)[-3000:]}"
    return pid


def test_sigkill_loses_nothing_and_counts_nothing_twice(world: World) -> None:
    w = world
    started: list[str] = []
    t0 = time.monotonic()
    try:
        # 1) SIGKILL inside the window between ClickHouse's acknowledgement and the commit.
        name = f"eo-{RUN}-agg1"
        pid = _start(w, name, started)
        _wait(lambda: _stored(w) >= 3_000, 60, "3,000 rows stored")
        hooks = _log(w, name).count(HOOK)
        _wait(lambda: _log(w, name).count(HOOK) > hooks, 30, "the next inserted batch")
        _sigkill(pid)
        stored_at_kill = _stored(w)
        committed_at_kill = asyncio.run(_committed(KafkaSettings().kafka_bootstrap))
        assert 0 < stored_at_kill < N_EVENTS
        assert committed_at_kill < stored_at_kill, (
            "the kill did not land between insert and commit "
            f"(stored {stored_at_kill}, committed {committed_at_kill})"
        )

        # 2) Restart; it must resume after the stored rows. SIGKILL again at a random moment.
        name = f"eo-{RUN}-agg2"
        pid = _start(w, name, started)
        _wait(lambda: _stored(w) >= stored_at_kill + 4_000, 60, "progress after restart")
        time.sleep(random.uniform(0, PAUSE_S + 0.3))
        _sigkill(pid)
        resumed = "resuming after stored rows" in _log(w, name)

        # 3) Restart and drain.
        name = f"eo-{RUN}-agg3"
        _start(w, name, started)
        _wait(lambda: _stored(w) >= N_EVENTS, 90, "all rows", poll=0.2)
        _wait(
            lambda: (
                asyncio.run(_committed(KafkaSettings().kafka_bootstrap)) >= N_EVENTS + N_RETRIES
            ),
            60,
            "every record, retries included, committed",
            poll=0.2,
        )
        time.sleep(1.0)  # anything counted twice would have been inserted before its commit
    finally:
        for n in started:
            procs.stop(w.state, n)
    elapsed = time.monotonic() - t0

    expected = sum((_expected_cost(ev) for ev in w.events), Decimal(0))
    unpriced = sum(1 for ev in w.events if ev["model"] == UNKNOWN_MODEL and ev["tool"] != FLAT_TOOL)
    input_tokens = sum(ev["input_tokens"] for ev in w.events)
    params = {"t": TEAM}
    detail = w.client.query(
        f"SELECT count(), uniqExact(event_id), uniqExact(kafka_partition, kafka_offset), "
        f"sum(cost_usd), countIf(priced = 0), sum(input_tokens) FROM {w.db}.events "
        "WHERE team = {t:String}",
        parameters=params,
    ).result_rows[0]
    assert detail[0] == N_EVENTS and detail[1] == N_EVENTS and detail[2] == N_EVENTS
    assert Decimal(detail[3]) == expected
    assert detail[4] == unpriced and detail[5] == input_tokens
    assert {
        r[0]
        for r in w.client.query(
            f"SELECT event_id FROM {w.db}.events WHERE team = {{t:String}}", parameters=params
        ).result_rows
    } == {ev["event_id"] for ev in w.events}
    for rollup in ("spend_hourly", "spend_daily"):
        requests, cost, unp, tokens = w.client.query(
            f"SELECT sum(requests), sum(cost_usd), sum(unpriced), sum(input_tokens) "
            f"FROM {w.db}.{rollup} WHERE team = {{t:String}}",
            parameters=params,
        ).result_rows[0]
        assert requests == N_EVENTS, rollup
        assert Decimal(cost) == expected, rollup
        assert unp == unpriced and tokens == input_tokens, rollup
    # The restart after the first kill found rows beyond the committed offsets and skipped them.
    assert resumed, "the second aggregator did not resume after the stored rows"
    # Every insert and read of the three aggregators ran as the aggregator's own account.
    w.client.command("SYSTEM FLUSH LOGS")
    users = w.client.query(
        "SELECT DISTINCT user FROM system.query_log WHERE startsWith(query_id, {p:String})",
        parameters={"p": f"{QUERY_ID_PREFIX}:{w.db}:{TOPIC}:"},
    ).result_rows
    assert users == [(SERVICE_ACCOUNTS["aggregator"],)]
    bookkeeping = w.client.query(
        "SELECT count() FROM system.query_log WHERE user = {u:String} AND type = 'QueryFinish' "
        "AND query_kind = 'Select' AND has(tables, {t:String})",
        parameters={"u": SERVICE_ACCOUNTS["aggregator"], "t": f"{w.db}.events"},
    ).result_rows[0][0]
    assert bookkeeping >= 3  # resume offsets and recent ids at each start, as itself
    print(
        f"\nSIGKILL x2, {N_EVENTS} events: exact in events/spend_hourly/spend_daily in {elapsed:.1f}s"
    )


def test_a_retried_insert_counts_once_in_events_and_rollups(world: World) -> None:
    """The sink's retry path: the same batch (same token) inserted twice lands once."""
    from aiokafka import TopicPartition

    from services.aggregator.app import Sink
    from trustlog.runtime import Metrics

    team = f"eo-retry-{RUN}"
    topic = f"tl-eo-retry-{RUN}"
    s = AggregatorSettings(topic_redacted=topic)
    sink = Sink(s, w_client := world.client, Metrics("eo-retry"))
    now = datetime.now(UTC)
    tp = TopicPartition(topic, 0)
    for i in range(300):
        row: list[Any] = [
            f"{team}-{i}",
            now - timedelta(days=i % 2),
            "eo",
            "chat",
            "m",
            "p",
            "ws",
            "p_1",
            "1",
            team,
            "other",
            10,
            5,
            0,
            0,
            "ok",
            0,
            [],
            {},
            0,
            Decimal("0.001"),
            1,
            "t",
            "v",
            0,
            i,
        ]
        sink.add(tp, i, row)
    sink.insert()
    sink.insert()  # e.g. the first attempt timed out on the client but landed
    for table, col in (
        ("events", "count()"),
        ("spend_hourly", "sum(requests)"),
        ("spend_daily", "sum(requests)"),
    ):
        got = w_client.query(
            f"SELECT {col}, sum(cost_usd) FROM {world.db}.{table} WHERE team = {{t:String}}",
            parameters={"t": team},
        ).result_rows[0]
        assert got[0] == 300 and Decimal(got[1]) == Decimal("0.3"), table
