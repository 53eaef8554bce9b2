"""End to end on the real stack: SDK + HTTP -> ingest -> redactor -> aggregator -> alerts -> Slack.

The four services run as separate processes, exactly as `trustlog up` starts them. 1,000
events carry canary strings in every content and identity field; the test proves they end
as exactly 1,000 ClickHouse rows whose spend equals an independent computation, that no
canary appears anywhere after the redactor (topics, tables, service logs, Slack), and that a
burst of spend becomes exactly one incident delivered to the webhook receiver.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from genai_prices import Usage, calc_price

from services.ingest.sdk import Recorder
from tests.slack_receiver import SlackReceiver
from trustlog import procs
from trustlog.avro import raw_codec
from trustlog.settings import ClickHouseSettings, KafkaSettings, default_state_dir
from trustlog.storage import admin_client

pytestmark = pytest.mark.integration

RUN = uuid.uuid4().hex[:8]
WORKSPACE = f"e2e-{RUN}"
CANARY = f"CANARY{RUN}"
CANARY_USER_PREFIX = f"canary-user-{RUN}"
API_KEY = f"tl_e2e_{RUN}"
TEST_MODEL = "tl-e2e-model"  # priced by a settings override: $1 / $2 per million tokens
Q12 = Decimal("1e-12")
N_EVENTS = 1000
N_BURST = 40
BURST_TEAM = f"burst-{RUN}"
TEAMS = [f"team-a-{RUN}", f"team-b-{RUN}", BURST_TEAM]


@dataclass
class Pipeline:
    state: Path
    ingest_url: str
    receiver: SlackReceiver
    kafka: KafkaSettings
    ch: ClickHouseSettings


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def pipeline(
    stack: object, slack_receiver_server: SlackReceiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    state = default_state_dir()
    overrides = tmp_path_factory.mktemp("prices") / "prices.yaml"
    overrides.write_text(
        "version: e2e\nmodels:\n"
        f"  {TEST_MODEL}: {{input_per_mtok: 1, output_per_mtok: 2, cached_per_mtok: 0.5, source: e2e}}\n"
    )
    port = _free_port()
    env = {
        "TRUSTLOG_PSEUDONYM_KEYS": json.dumps({"1": "e2e-key-" + "x" * 24}),
        "TRUSTLOG_PSEUDONYM_KEY_VERSION": "1",
        "TRUSTLOG_API_KEYS": json.dumps({API_KEY: "e2e-http"}),
        "TRUSTLOG_HTTP_PORT": str(port),
        "TRUSTLOG_SLACK_WEBHOOK_URL": slack_receiver_server.url,
        "TRUSTLOG_PRICE_OVERRIDES_FILE": str(overrides),
        "TRUSTLOG_SPIKE_MIN_USD": "5",
        "TRUSTLOG_BATCH_MAX_SECONDS": "0.5",
        "TRUSTLOG_LOG_LEVEL": "DEBUG",  # the canary check reads these logs: be as chatty as possible
    }
    started = []
    for name in procs.SERVICES:
        procs.start(state, f"e2e-{name}", f"services.{name}", env)
        started.append(f"e2e-{name}")
    try:
        for name in procs.SERVICES:
            assert procs.wait_healthy(state, f"e2e-{name}", 120), (
                f"{name} not healthy; log tail:\n{_tail(state / 'logs' / f'e2e-{name}.log')}"
            )
        yield Pipeline(
            state,
            f"http://127.0.0.1:{port}",
            slack_receiver_server,
            KafkaSettings(),
            ClickHouseSettings(),
        )
    finally:
        for name in reversed(started):
            procs.stop(state, name)


def _tail(path: Path, n: int = 40) -> str:
    return (
        "\n".join(path.read_text(errors="replace").splitlines()[-n:])
        if path.exists()
        else "(no log)"
    )


def _event(rng: random.Random, i: int, team: str, when: datetime, burst: bool) -> dict[str, Any]:
    model = TEST_MODEL if (burst or i % 3) else "gpt-4o-mini"
    user = f"{CANARY_USER_PREFIX}-{i % 17}@corp.example"
    prompt = f"{CANARY} prompt {i}: summarise the attached notes"
    if i % 50 == 0:
        prompt += " and refund card 4111 1111 1111 1111"
    return {
        "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
        "event_time": when.isoformat(),
        # a burst is one workflow going wild: one team, one tool
        "tool": "code-helper" if burst or i % 2 == 0 else "chat-assistant",
        "model": model,
        "provider": "openai" if model == "gpt-4o-mini" else None,
        "workspace": WORKSPACE,
        "user_id": user,
        "user_email": user,
        "team": team,
        "task_label": ["drafting", "coding", "support", "research"][i % 4],
        "input_tokens": 1_000_000 if burst else 800 + i,
        "output_tokens": 200 + i % 100,
        "cached_tokens": (i % 5) * 10,
        "status": "error" if i % 97 == 0 else "ok",
        "retry_count": 1 if i % 97 == 0 else 0,
        "prompt": prompt,
        "reply": f"{CANARY} reply {i}",
        "client_ip": "198.51.100.23",
        "attributes": {"note": f"{CANARY} attribute"},
    }


def _expected_cost(ev: dict[str, Any]) -> Decimal:
    """Independent of the aggregator's pricer: hand rates for the override, genai-prices for the rest."""
    inp, out, cached = ev["input_tokens"], ev["output_tokens"], ev["cached_tokens"]
    if ev["model"] == TEST_MODEL:
        cost = (
            Decimal(inp - cached) * 1 + Decimal(cached) * Decimal("0.5") + Decimal(out) * 2
        ) / Decimal(1_000_000)
    else:
        cost = calc_price(
            Usage(input_tokens=inp, output_tokens=out, cache_read_tokens=cached or None),
            model_ref=ev["model"],
            provider_id=ev["provider"],
        ).total_price
    return cost.quantize(Q12)


def _make_events() -> list[dict[str, Any]]:
    rng = random.Random(RUN)
    now = datetime.now(UTC)
    events = []
    normal = N_EVENTS - N_BURST
    for i in range(normal):
        # Spread over the last 30 minutes: cents per minute, far below the $5 spike minimum.
        when = now - timedelta(seconds=60 + 1800 * i / normal)
        events.append(_event(rng, i, TEAMS[i % 3], when, burst=False))
    for j in range(N_BURST):
        events.append(
            _event(rng, normal + j, BURST_TEAM, now - timedelta(seconds=j % 5), burst=True)
        )
    return events


async def _drain(bootstrap: str, topic: str, idle_s: float = 3.0) -> list[bytes]:
    """Every committed record of a topic, keys and values."""
    c = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
        group_id=None,
    )
    await c.start()
    out: list[bytes] = []
    try:
        last = time.monotonic()
        while time.monotonic() - last < idle_s:
            batch = await c.getmany(timeout_ms=500)
            for msgs in batch.values():
                for m in msgs:
                    out.append((m.key or b"") + b"\x00" + (m.value or b""))
                    last = time.monotonic()
    finally:
        await c.stop()
    return out


def _is_burst_spike(payload: dict[str, Any]) -> bool:
    text = json.dumps(payload)
    return BURST_TEAM in text and "cost_spike" in text


def _wait_rows(client: Any, db: str, n: int, timeout: float = 120.0) -> int:
    deadline = time.monotonic() + timeout
    got = -1
    while time.monotonic() < deadline:
        got = int(
            client.query(
                f"SELECT count() FROM {db}.events WHERE workspace = {{w:String}}",
                parameters={"w": WORKSPACE},
            ).result_rows[0][0]
        )
        if got >= n:
            time.sleep(2.0)  # let anything extra (a double count) arrive before asserting
            return int(
                client.query(
                    f"SELECT count() FROM {db}.events WHERE workspace = {{w:String}}",
                    parameters={"w": WORKSPACE},
                ).result_rows[0][0]
            )
        time.sleep(0.5)
    return got


@pytest.fixture(scope="module")
def sent(pipeline: Pipeline) -> list[dict[str, Any]]:
    events = _make_events()
    half = len(events) // 2
    # SDK half, straight to Kafka
    with Recorder(pipeline.kafka.kafka_bootstrap, producer="e2e-sdk") as rec:
        for ev in events[:half]:
            assert rec.record(**ev)
        assert rec.flush(60)
        assert rec.stats()["dropped_full"] == 0 and rec.stats()["dropped_invalid"] == 0
    # HTTP half, batches of 100
    import urllib.request

    for k in range(half, len(events), 100):
        req = urllib.request.Request(
            pipeline.ingest_url + "/v1/events",
            data=orjson.dumps({"events": events[k : k + 100]}),
            headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 202
    # Poison straight onto the raw topic: must be dead-lettered without content.
    asyncio.run(_send_poison(pipeline.kafka))
    return events


POISON_IDS = [f"poison-{RUN}-{i}" for i in range(3)]


async def _send_poison(k: KafkaSettings) -> None:
    p = AIOKafkaProducer(bootstrap_servers=k.kafka_bootstrap)
    await p.start()
    try:
        base = _event(random.Random(1), 1, TEAMS[0], datetime.now(UTC), False)
        base["event_time"] = datetime.now(UTC)
        base.update(
            cached_tokens=0, reasoning_tokens=0, policy_flags=[], latency_ms=None, producer="e2e"
        )
        bad = dict(base, event_id=POISON_IDS[0], input_tokens=-5)
        future = dict(
            base, event_id=POISON_IDS[1], event_time=datetime.now(UTC) + timedelta(days=40)
        )
        await p.send_and_wait(k.topic_raw, raw_codec().encode(bad))
        await p.send_and_wait(k.topic_raw, raw_codec().encode(future))
        await p.send_and_wait(k.topic_raw, b"garbage " + CANARY.encode())
    finally:
        await p.stop()


def test_every_event_lands_once_with_exact_spend(
    pipeline: Pipeline, sent: list[dict[str, Any]]
) -> None:
    client = admin_client()
    db = pipeline.ch.ch_database
    assert _wait_rows(client, db, N_EVENTS) == N_EVENTS
    ids = {
        r[0]
        for r in client.query(
            f"SELECT event_id FROM {db}.events WHERE workspace = {{w:String}}",
            parameters={"w": WORKSPACE},
        ).result_rows
    }
    assert ids == {e["event_id"] for e in sent}

    expected_total = sum((_expected_cost(e) for e in sent), Decimal(0))
    detail_total = client.query(
        f"SELECT sum(cost_usd) FROM {db}.events WHERE workspace = {{w:String}}",
        parameters={"w": WORKSPACE},
    ).result_rows[0][0]
    rollup_total = client.query(
        f"SELECT sum(cost_usd), sum(requests) FROM {db}.spend_hourly WHERE workspace = {{w:String}}",
        parameters={"w": WORKSPACE},
    ).result_rows[0]
    assert Decimal(detail_total) == expected_total
    assert Decimal(rollup_total[0]) == expected_total and rollup_total[1] == N_EVENTS

    per_team = dict(
        client.query(
            f"SELECT team, sum(cost_usd) FROM {db}.spend_hourly WHERE workspace = {{w:String}} GROUP BY team",
            parameters={"w": WORKSPACE},
        ).result_rows
    )
    for team in TEAMS:
        want = sum((_expected_cost(e) for e in sent if e["team"] == team), Decimal(0))
        assert Decimal(per_team[team]) == want

    flagged = client.query(
        f"SELECT count() FROM {db}.events WHERE workspace = {{w:String}} "
        "AND sensitive_classes['payment_card'] > 0",
        parameters={"w": WORKSPACE},
    ).result_rows[0][0]
    assert flagged == sum(1 for e in sent if "4111" in e["prompt"])


def test_poison_is_dead_lettered_with_reason_and_no_content(
    pipeline: Pipeline, sent: list[dict[str, Any]]
) -> None:
    records = asyncio.run(_drain(pipeline.kafka.kafka_bootstrap, pipeline.kafka.topic_deadletter))
    dead = [json.loads(r.split(b"\x00", 1)[1]) for r in records]
    reasons = {d["event_id"]: d["reason"] for d in dead if d["event_id"] in POISON_IDS}
    assert reasons == {POISON_IDS[0]: "negative_tokens", POISON_IDS[1]: "timestamp_in_future"}
    assert any(d["reason"] == "not_avro_single_object" for d in dead)


def test_burst_becomes_exactly_one_incident_in_slack(
    pipeline: Pipeline, sent: list[dict[str, Any]]
) -> None:
    client = admin_client()
    db = pipeline.ch.ch_database
    _wait_rows(client, db, N_EVENTS)
    payloads = pipeline.receiver.wait_for(_is_burst_spike, count=1, timeout=60)
    assert payloads, "no Slack message for the burst"
    time.sleep(3)  # anything duplicated would arrive now
    burst_msgs = pipeline.receiver.payloads(_is_burst_spike)
    assert len(burst_msgs) == 1
    rows = client.query(
        f"SELECT incident_id, rule, owner, signal_count FROM {db}.incidents FINAL WHERE team = {{t:String}}",
        parameters={"t": BURST_TEAM},
    ).result_rows
    spikes = [r for r in rows if r[1] == "cost_spike"]
    assert len(spikes) == 1 and spikes[0][2] == "finops"
    # the normal teams spent cents per minute: no spike incident for them
    normal = client.query(
        f"SELECT count() FROM {db}.incidents FINAL WHERE rule = 'cost_spike' AND team IN {{t:Array(String)}}",
        parameters={"t": TEAMS[:2]},
    ).result_rows[0][0]
    assert normal == 0


def test_no_canary_after_the_redactor(pipeline: Pipeline, sent: list[dict[str, Any]]) -> None:
    client = admin_client()
    db = pipeline.ch.ch_database
    _wait_rows(client, db, N_EVENTS)
    pipeline.receiver.wait_for(_is_burst_spike, count=1, timeout=60)
    needles = [CANARY.encode(), CANARY_USER_PREFIX.encode(), b"198.51.100.23", b"4111 1111"]

    def leaks(blob: bytes) -> list[bytes]:
        return [n for n in needles if n in blob]

    k = pipeline.kafka
    for topic in (k.topic_redacted, k.topic_deadletter, k.topic_signals, k.topic_incidents):
        blob = b"\n".join(asyncio.run(_drain(k.kafka_bootstrap, topic)))
        assert blob, f"{topic} is empty: the check would prove nothing"
        assert not leaks(blob), f"canary in topic {topic}"

    tables = [r[0] for r in client.query(f"SHOW TABLES FROM {db}").result_rows]
    assert "events" in tables and "incidents" in tables
    for table in tables:
        blob = client.raw_query(f"SELECT * FROM {db}.`{table}` FORMAT TSV")
        assert not leaks(blob), f"canary in ClickHouse table {table}"

    for name in procs.SERVICES:
        log = (pipeline.state / "logs" / f"e2e-{name}.log").read_bytes()
        assert log, f"{name} wrote no log at all"
        assert not leaks(log), f"canary in {name} log"

    slack = orjson.dumps([r.payload for r in pipeline.receiver.attempts()])
    assert b"blocks" in slack
    assert not leaks(slack), "canary in a Slack payload"
