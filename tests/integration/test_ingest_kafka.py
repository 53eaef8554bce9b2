"""Ingest and the SDK against the real local Kafka: what is acknowledged is on the raw topic.

Each module run writes to its own raw topic so counts are exact and other tests' raw
events cannot interfere.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from services.ingest.app import create_app, make_producer
from services.ingest.sdk import Recorder
from trustlog.avro import raw_codec
from trustlog.kafka import topic_specs
from trustlog.settings import PROJECT_ROOT, IngestSettings

pytestmark = pytest.mark.integration

KEY = "it-key-" + uuid.uuid4().hex
PRODUCER = "it-producer"
CANARY = "CANARY-int-93be-do-not-leak"


@dataclass
class Ingest:
    settings: IngestSettings
    url: str


def event(**over: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "tool": "chat",
        "model": "gpt-4o-mini",
        "user_id": "u-42",
        "input_tokens": 120,
        "output_tokens": 30,
        "task_label": "research",
    }
    ev.update(over)
    return ev


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def create_topic(settings: IngestSettings) -> None:
    """Only this module's raw topic, with the retention trustlog gives raw topics.

    (serve() runs the full ensure_topics; the service test below covers that path.)
    """
    spec = next(t for t in topic_specs(settings) if t.name == settings.topic_raw)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(spec.name, spec.partitions, 1, topic_configs=spec.configs())]
        )
    finally:
        await admin.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def ingest(stack: object) -> AsyncIterator[Ingest]:
    settings = IngestSettings(
        api_keys={KEY: PRODUCER},
        topic_raw=f"it-ingest-raw-{uuid.uuid4().hex[:8]}",
        max_batch_events=1000,
    )
    await create_topic(settings)
    producer = make_producer(settings, settings.max_body_bytes)
    await producer.start()
    runner = web.AppRunner(await create_app(settings, producer), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Ingest(settings, f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()
        await producer.stop()


async def read_topic(settings: IngestSettings) -> list[dict[str, Any]]:
    """Every record on the raw topic up to its current end offsets, decoded."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        group_id=None,
    )
    await consumer.start()
    try:
        # the module's topic was created by ensure_topics with this many partitions
        tps = [TopicPartition(settings.topic_raw, p) for p in range(settings.topic_partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + 30
        while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
            assert time.monotonic() < deadline, "timed out reading the raw topic"
            batch = await consumer.getmany(timeout_ms=500)
            for msgs in batch.values():
                out.extend(raw_codec().decode(m.value) for m in msgs)
        return out
    finally:
        await consumer.stop()


def with_ids(records: Iterable[dict[str, Any]], ids: Iterable[str]) -> list[dict[str, Any]]:
    wanted = set(ids)
    return [r for r in records if r["event_id"] in wanted]


async def post(
    ingest: Ingest, body: Any, key: str | None = KEY, raw: bytes | None = None
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            ingest.url + "/v1/events",
            data=raw if raw is not None else orjson.dumps(body),
            headers=headers,
        ) as resp,
    ):
        return resp.status, await resp.json()


async def test_accepted_batch_is_on_the_raw_topic_with_stamped_producer(ingest: Ingest) -> None:
    events = [
        event(
            event_time="2024-05-01T12:00:00.250Z",
            prompt="Summarise this contract",
            reply="Here is a summary",
            user_email="someone@example.com",
            attributes={"app": "notes"},
            policy_flags=["pii.warn"],
        ),
        event(),
        event(event_id=None),
    ]
    del events[2]["event_id"]
    status, body = await post(ingest, {"events": events})
    assert status == 202 and body["accepted"] == 3
    assert body["event_ids"][:2] == [events[0]["event_id"], events[1]["event_id"]]

    got = {r["event_id"]: r for r in with_ids(await read_topic(ingest.settings), body["event_ids"])}
    assert len(got) == 3
    first = got[events[0]["event_id"]]
    assert first["producer"] == PRODUCER
    assert first["event_time"].isoformat() == "2024-05-01T12:00:00.250000+00:00"
    assert first["prompt"] == "Summarise this contract" and first["task_label"] == "research"
    assert first["attributes"] == {"app": "notes"} and first["policy_flags"] == ["pii.warn"]
    assert all(r["producer"] == PRODUCER for r in got.values())


async def test_refused_batches_publish_nothing(ingest: Ingest) -> None:
    good, bad = event(), event(input_tokens=-1, prompt=CANARY)
    attempts = [
        (await post(ingest, {"events": [good, bad]}), 422, "invalid_events"),
        (await post(ingest, [good], key="wrong"), 401, "unknown_api_key"),
        (await post(ingest, [good], key=None), 401, "missing_api_key"),
        (await post(ingest, [good] * 1001), 400, "too_many_events"),
        (
            await post(ingest, None, raw=b"[" + b" " * (16 * 1024 * 1024) + b"]"),
            413,
            "body_too_large",
        ),
        (await post(ingest, None, raw=b'{"events": [}'), 400, "invalid_json"),
        (await post(ingest, {"events": []}), 400, "empty_batch"),
        (await post(ingest, [event(producer="impostor")]), 422, "invalid_events"),
    ]
    for (status, body), want_status, want_reason in attempts:
        assert (status, body["error"]) == (want_status, want_reason)
        assert CANARY not in json.dumps(body)
    assert attempts[0][0][1]["errors"] == [
        {"index": 1, "field": "input_tokens", "reason": "greater_than_equal"}
    ]
    # Everything published before now is below the end offsets read_topic stops at.
    sentinel = event()
    assert (await post(ingest, [sentinel]))[0] == 202
    records = await read_topic(ingest.settings)
    assert with_ids(records, [sentinel["event_id"]])
    assert not with_ids(records, [good["event_id"], bad["event_id"]])


async def test_content_at_the_field_cap_round_trips(ingest: Ingest) -> None:
    """prompt and reply both at the 1 MiB cap: one ~2 MiB record, above Kafka's classic
    1 MiB default, which is why the producer's max_request_size follows max_body_bytes."""
    cap = ingest.settings.max_field_bytes
    ev = event(prompt="p" * cap, reply="é" * (cap // 2))
    status, body = await post(ingest, [ev])
    assert status == 202, body
    (rec,) = with_ids(await read_topic(ingest.settings), [ev["event_id"]])
    assert rec["prompt"] == "p" * cap and rec["reply"] == "é" * (cap // 2)
    over = event(prompt="p" * (cap + 1))
    status, body = await post(ingest, [over])
    assert status == 422 and body["errors"] == [
        {"index": 0, "field": "prompt", "reason": "string_too_long"}
    ]


def _sdk_fields(run: str, i: int) -> dict[str, Any]:
    return {
        "tool": "sdk-tool",
        "model": "gpt-4o",
        "user_id": f"user-{i % 7}",
        "input_tokens": i,
        "output_tokens": 1,
        "attributes": {"run": run},
    }


async def test_sdk_kafka_transport_delivers_exactly_n(ingest: Ingest) -> None:
    n, run = 2000, uuid.uuid4().hex
    rec = Recorder(producer="sdk-direct", settings=ingest.settings, batch_size=500)
    try:
        assert all(rec.record(**_sdk_fields(run, i)) for i in range(n))
        assert await asyncio.to_thread(rec.flush, 60.0) is True
        assert rec.stats()["delivered"] == n
    finally:
        assert await asyncio.to_thread(rec.close, 10.0) is True
    mine = [r for r in await read_topic(ingest.settings) if r["attributes"].get("run") == run]
    assert len(mine) == n and len({r["event_id"] for r in mine}) == n
    assert sorted(r["input_tokens"] for r in mine) == list(range(n))
    assert {r["producer"] for r in mine} == {"sdk-direct"}


async def test_sdk_http_transport_delivers_exactly_n_and_ingest_stamps_producer(
    ingest: Ingest,
) -> None:
    n, run = 1200, uuid.uuid4().hex
    rec = Recorder(
        producer="ignored-for-http",
        transport="http",
        http_url=ingest.url,
        api_key=KEY,
        batch_size=250,
    )
    try:
        for i in range(n):
            assert rec.record(**_sdk_fields(run, i))
        # flush blocks; run it off this loop, which also serves the ingest app
        assert await asyncio.to_thread(rec.flush, 60.0) is True
    finally:
        await asyncio.to_thread(rec.close, 10.0)
    mine = [r for r in await read_topic(ingest.settings) if r["attributes"].get("run") == run]
    assert len(mine) == n and len({r["event_id"] for r in mine}) == n
    assert {r["producer"] for r in mine} == {PRODUCER}


async def test_sdk_with_unreachable_bootstrap_never_blocks_and_counts_drops(
    ingest: Ingest,
) -> None:
    rec = Recorder(f"127.0.0.1:{free_port()}", producer="nowhere", max_buffer=50)
    t0 = time.perf_counter()
    results = [rec.record(**_sdk_fields("x", i)) for i in range(500)]
    elapsed = time.perf_counter() - t0
    assert elapsed < 0.5, elapsed
    assert results.count(True) == 50
    s = rec.stats()
    assert s["dropped_full"] == 450 and s["queued"] == 50 and s["delivered"] == 0
    t1 = time.perf_counter()
    assert await asyncio.to_thread(rec.close, 1.0) is False
    assert time.perf_counter() - t1 < 3.0
    assert rec.stats()["failed_attempts"] >= 1


async def test_service_main_serves_until_sigterm_and_logs_no_content(ingest: Ingest) -> None:
    port = free_port()
    env = {
        **os.environ,
        "TRUSTLOG_API_KEYS": json.dumps({KEY: "svc-producer"}),
        "TRUSTLOG_HTTP_PORT": str(port),
        "TRUSTLOG_TOPIC_RAW": ingest.settings.topic_raw,
        "TRUSTLOG_LOG_LEVEL": "DEBUG",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.ingest"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        svc = Ingest(ingest.settings, url)
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                async with aiohttp.ClientSession() as s, s.get(url + "/healthz") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, "ingest did not come up"
            await asyncio.sleep(0.2)
        planted = {"prompt": CANARY, "reply": CANARY, "user_id": CANARY, "user_email": CANARY}
        ok = event(**planted)
        assert (await post(svc, [ok]))[0] == 202
        assert (await post(svc, [event(**planted, status=CANARY)]))[0] == 422
        assert (await post(svc, [ok], key=CANARY))[0] == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.to_thread(proc.communicate, timeout=30)
    assert proc.returncode == 0, err.decode()[-2000:]
    logs = (out + err).decode()
    assert "ingest listening" in logs and "service stopped" in logs
    assert CANARY not in logs
    (rec,) = with_ids(await read_topic(ingest.settings), [ok["event_id"]])
    assert rec["producer"] == "svc-producer"
