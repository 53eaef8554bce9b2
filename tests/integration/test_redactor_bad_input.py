"""Bad input on the real raw topic never stops the redactor: each kind becomes a dead letter.

A redactor process consumes the real raw topic. Malformed Avro, records of unknown or lying
schemas, missing fields, a 10 MB prompt, invalid UTF-8, negative token counts, timestamps far
in the future or the past, an empty value: each lands in the dead-letter topic with a reason
code, the event id where one exists, the offset it came from, and no content. A valid event
sent after all of them is still redacted, so the loop survived.
"""

from __future__ import annotations

import asyncio
import copy
import io
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fastavro
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from fastavro.schema import fingerprint, to_parsing_canonical_form

from trustlog import procs
from trustlog.avro import MARKER, raw_codec, redacted_codec
from trustlog.kafka import MAX_RAW_MESSAGE_BYTES, ensure_topics
from trustlog.registry import load_avsc
from trustlog.settings import KafkaSettings, default_state_dir

pytestmark = pytest.mark.integration

RUN = uuid.uuid4().hex[:8]
NAME = f"bad-redactor-{RUN}"
CANARY = f"BADCANARY{RUN}"
USER = f"bad.user.{RUN}@corp.example"
TEAM = f"bad-{RUN}"


def _id(kind: str) -> str:
    return f"bad-{RUN}-{kind}"


def _event(kind: str, **over: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "event_id": _id(kind),
        "event_time": datetime.now(UTC),
        "producer": "bad-input-test",
        "tool": "chat-assistant",
        "model": "gpt-4o-mini",
        "provider": "openai",
        "workspace": None,
        "user_id": USER,
        "user_email": USER,
        "team": TEAM,
        "task_label": "support",
        "input_tokens": 10,
        "output_tokens": 5,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "status": "ok",
        "retry_count": 0,
        "policy_flags": [],
        "latency_ms": 10,
        "client_ip": "192.0.2.44",
        "prompt": f"{CANARY} prompt",
        "reply": f"{CANARY} reply",
        "attributes": {"note": CANARY},
    }
    ev.update(over)
    return ev


def _with_schema(schema: dict[str, Any], record: dict[str, Any], *, own_header: bool) -> bytes:
    """Encode with a hand-made writer schema, under its own fingerprint or (lying) under ours."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
    if not own_header:
        return raw_codec().header + buf.getvalue()
    fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))[::-1]
    return MARKER + fp + buf.getvalue()


def _raw_schema(**types: Any) -> dict[str, Any]:
    schema = copy.deepcopy(load_avsc("raw_event.v1"))
    for f in schema["fields"]:
        if f["name"] in types:
            f["type"] = types[f["name"]]
            f.pop("default", None)
    return schema


def _without(schema: dict[str, Any], field: str) -> dict[str, Any]:
    schema = copy.deepcopy(schema)
    schema["fields"] = [f for f in schema["fields"] if f["name"] != field]
    return schema


@dataclass(frozen=True)
class Case:
    kind: str
    value: bytes | None
    reason: str
    event_id: str | None
    field: str | None = None


def _cases() -> list[Case]:
    codec = raw_codec()
    good = codec.encode(_event("truncated"))
    utf8 = codec.encode(_event("utf8", prompt=f"{CANARY}-XXXXXXXX"))
    raw = load_avsc("raw_event.v1")
    now = datetime.now(UTC)
    return [
        Case("not-avro", orjson.dumps(_event("not-avro", event_time=now.isoformat())),
             "not_avro_single_object", None),
        Case("truncated", good[: len(good) - 40], "malformed_avro", _id("truncated")),
        Case("garbage-body", codec.header + b"\xff" * 64 + CANARY.encode(), "malformed_avro", None),
        # a schema trustlog does not know (tokens as strings), under its own fingerprint
        Case("unknown-schema",
             _with_schema(_raw_schema(input_tokens="string"),
                          _event("unknown-schema", input_tokens="many"), own_header=True),
             "unknown_schema_fingerprint", None),
        # the same wrong types claiming to be ours: decoding misreads and fails
        Case("lying-types",
             _with_schema(_raw_schema(input_tokens="string"),
                          _event("lying-types", input_tokens="lots"), own_header=False),
             "malformed_avro", _id("lying-types")),
        # a required field missing: a schema without user_id, under our fingerprint
        Case("missing-user-field",
             _with_schema(_without(raw, "user_id"), _event("missing-user-field"), own_header=False),
             "malformed_avro", _id("missing-user-field")),
        Case("empty-user", codec.encode(_event("empty-user", user_id=" ")),
             "missing_user_id", _id("empty-user"), "user_id"),
        Case("empty-id", codec.encode(_event("empty-id", event_id="")),
             "invalid_event_id", None, "event_id"),
        Case("big-prompt", codec.encode(_event("big-prompt", prompt=CANARY * (10_000_000 // len(CANARY)))),
             "oversized_content", _id("big-prompt"), "prompt"),
        Case("big-label", codec.encode(_event("big-label", tool=CANARY * 10_000)),
             "invalid_label", _id("big-label"), "tool"),
        Case("utf8", utf8.replace(b"XXXXXXXX", b"\xff\xfe\xfd\xfc\xc3\x28\xa0\xa1", 1),
             "invalid_utf8", _id("utf8")),
        Case("negative-tokens", codec.encode(_event("negative-tokens", output_tokens=-7)),
             "negative_tokens", _id("negative-tokens"), "output_tokens"),
        Case("future", codec.encode(_event("future", event_time=now + timedelta(days=365))),
             "timestamp_in_future", _id("future"), "event_time"),
        Case("past", codec.encode(_event("past", event_time=datetime(1999, 1, 1, tzinfo=UTC))),
             "timestamp_too_old", _id("past"), "event_time"),
        Case("no-calendar",
             _with_schema(_raw_schema(event_time="long"), _event("no-calendar", event_time=2**62),
                          own_header=False),
             "timestamp_out_of_range", _id("no-calendar"), "event_time"),
        Case("empty-value", None, "empty_value", None),
    ]  # fmt: skip


@dataclass
class Sent:
    cases: list[Case]
    where: dict[tuple[int, int], Case]  # (partition, offset) on the raw topic -> case
    good_id: str
    dead: list[dict[str, Any]]  # dead letters that came from our offsets
    dead_blob: bytes
    redacted_ids: set[str]


async def _drain(k: KafkaSettings, topic: str, until: Any, timeout: float = 60) -> list[bytes]:
    """Read a topic (read_committed) from the start until ``until(values)`` holds."""
    c = AIOKafkaConsumer(
        topic,
        bootstrap_servers=k.kafka_bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        group_id=None,
    )
    await c.start()
    out: list[bytes] = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not until(out):
            for msgs in (await c.getmany(timeout_ms=500)).values():
                out += [m.value or b"" for m in msgs]
    finally:
        await c.stop()
    return out


async def _send(k: KafkaSettings, cases: list[Case]) -> tuple[dict[tuple[int, int], Case], str]:
    p = AIOKafkaProducer(
        bootstrap_servers=k.kafka_bootstrap,
        acks="all",
        # a 10 MB prompt must reach the redactor, not bounce at the producer
        max_request_size=MAX_RAW_MESSAGE_BYTES,
    )
    await p.start()
    where: dict[tuple[int, int], Case] = {}
    try:
        for case in cases:
            md = await p.send_and_wait(k.topic_raw, case.value, key=case.kind.encode())
            where[(md.partition, md.offset)] = case
        good = _event("good")
        await p.send_and_wait(k.topic_raw, raw_codec().encode(good))
    finally:
        await p.stop()
    return where, good["event_id"]


async def _scenario(k: KafkaSettings) -> Sent:
    cases = _cases()
    where, good_id = await _send(k, cases)

    def ours(values: list[bytes]) -> list[dict[str, Any]]:
        dead = [json.loads(v) for v in values]
        return [
            d
            for d in dead
            if d["source"]["topic"] == k.topic_raw
            and (d["source"]["partition"], d["source"]["offset"]) in where
        ]

    dead_values = await _drain(k, k.topic_deadletter, lambda vs: len(ours(vs)) >= len(cases))
    codec = redacted_codec()
    redacted = await _drain(
        k, k.topic_redacted, lambda vs: any(codec.decode(v)["event_id"] == good_id for v in vs)
    )
    return Sent(
        cases,
        where,
        good_id,
        ours(dead_values),
        b"\n".join(dead_values),
        {codec.decode(v)["event_id"] for v in redacted},
    )


def _healthy(state: Path, pid: int, timeout: float = 60.0) -> bool:
    """Not procs.wait_healthy: it gives up if it looks while /proc/<pid>/cmdline is still
    empty right after the fork."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        if procs.healthy(procs.health_url(state, NAME)):
            return True
        time.sleep(0.2)
    return False


@pytest.fixture(scope="module")
def sent(stack: object) -> Iterator[Sent]:
    state = default_state_dir()
    k = KafkaSettings()
    asyncio.run(ensure_topics(k))
    env = {
        "TRUSTLOG_PSEUDONYM_KEYS": json.dumps({"1": f"bad-input-key-{RUN}-padding"}),
        "TRUSTLOG_PSEUDONYM_KEY_VERSION": "1",
        "TRUSTLOG_TRANSACTIONAL_ID": f"bad-redactor-{RUN}",
    }
    pid = procs.start(state, NAME, "services.redactor", env)
    try:
        assert _healthy(state, pid), "redactor did not become healthy"
        yield asyncio.run(_scenario(k))
        assert procs.status(state, NAME).healthy, "the redactor did not survive the bad input"
    finally:
        procs.stop(state, NAME)


def test_each_kind_is_dead_lettered_with_its_reason_and_id(sent: Sent) -> None:
    by_source = {(d["source"]["partition"], d["source"]["offset"]): d for d in sent.dead}
    assert len(by_source) == len(sent.dead) == len(sent.cases), "a dead letter missing or doubled"
    for where, case in sent.where.items():
        d = by_source[where]
        assert (d["reason"], d["event_id"]) == (case.reason, case.event_id), case.kind
        if case.field is not None:
            assert d["field"] == case.field, case.kind


def test_dead_letters_hold_no_content(sent: Sent) -> None:
    assert sent.dead_blob
    for needle in (CANARY, USER, "bad.user", "192.0.2.44"):
        assert needle.encode() not in sent.dead_blob
    for d in sent.dead:
        assert set(d) == {"reason", "field", "event_id", "detail", "source", "at_ms"}


def test_the_redactor_keeps_going_and_redacts_none_of_them(sent: Sent) -> None:
    assert sent.good_id in sent.redacted_ids
    bad_ids = {_id(c.kind) for c in sent.cases}
    assert not bad_ids & sent.redacted_ids


def test_no_content_in_the_redactor_log(sent: Sent) -> None:
    log = (default_state_dir() / "logs" / f"{NAME}.log").read_bytes()
    assert log
    assert CANARY.encode() not in log and USER.encode() not in log
