"""Exactly once across a crash: SIGKILL the redactor mid-stream, restart it, count every event.

The redactor runs as a real process. 20,000 raw events (unique ids) are produced at a steady
pace; once part of them is committed to the redacted topic the process gets SIGKILL, then
starts again. Read with isolation_level=read_committed, every event is in the redacted topic
exactly once. The restart also rotates the pseudonym key (version 1 -> 2), so the same run
shows what a rotation does: what was committed before keeps version 1, what comes after gets
version 2, and `pseudonyms_for` finds both. Some events carry no team: a directory user gets
the directory's team, an unknown user lands in "unassigned" and is not dropped.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pydantic import SecretStr

from services.redactor.identity import pseudonyms_for
from trustlog import procs
from trustlog.avro import raw_codec, redacted_codec
from trustlog.kafka import ensure_topics
from trustlog.settings import KafkaSettings, RedactorSettings, default_state_dir

pytestmark = pytest.mark.integration

RUN = uuid.uuid4().hex[:8]
N = 20_000
KILL_AT = 6_000  # committed output events seen before the SIGKILL
CHUNK, PAUSE_S = 500, 0.1  # ~4-5k events/s offered: the stream still runs at the kill
TEAM = f"eo-{RUN}"
DIR_TEAM = f"eo-dir-{RUN}"
UNASSIGNED = "unassigned"
CANARY = f"EOCANARY{RUN}"
KEYS = {"1": f"eo-first-key-{RUN}-padding", "2": f"eo-second-key-{RUN}-padding"}
NAME = f"eo-redactor-{RUN}"


@dataclass
class Event:
    event_id: str
    user: str
    team: str  # the team the redactor must assign


@dataclass
class Outcome:
    events: dict[str, Event]
    seen_before_kill: set[str]
    records: list[dict[str, Any]] = field(default_factory=list)  # committed, ours, decoded
    blob: bytes = b""  # every committed byte of ours, for the leak check
    uncommitted: int = 0  # ours under read_uncommitted: includes aborted transactions
    numbers: dict[str, float] = field(default_factory=dict)
    metrics: str = ""  # the restarted redactor's /metrics at the end


def _user(i: int) -> str:
    return f"eo.user.{RUN}.{i % 97}@corp.example"


def _raw(i: int, now: datetime) -> tuple[dict[str, Any], Event]:
    user, expected = _user(i), TEAM
    team: str | None = TEAM
    if i % 20 == 0:  # no team, but the directory knows the user
        user, team, expected = f"eo.dir.{RUN}.{i % 7}@corp.example", None, DIR_TEAM
    elif i % 20 == 10:  # no team, unknown user
        user, team, expected = f"eo.nobody.{RUN}.{i % 5}@corp.example", None, UNASSIGNED
    ev = {
        "event_id": str(uuid.uuid4()),
        "event_time": now,
        "producer": "eo-test",
        "tool": "chat-assistant",
        "model": "gpt-4o-mini",
        "provider": "openai",
        "workspace": None,
        "user_id": user,
        "user_email": user,
        "team": team,
        "task_label": "coding",
        "input_tokens": 100 + i % 50,
        "output_tokens": 20,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "status": "ok",
        "retry_count": 0,
        "policy_flags": [],
        "latency_ms": 900,
        "client_ip": "198.51.100.77",
        "prompt": f"{CANARY} prompt {i}" + (" card 4111 1111 1111 1111" if i % 100 == 0 else ""),
        "reply": f"{CANARY} reply {i}",
        "attributes": {"note": CANARY},
    }
    return ev, Event(str(ev["event_id"]), user, expected)


class Stream:
    """Produces the raw events at a steady pace; ``sent`` says how far it got."""

    def __init__(self, k: KafkaSettings, events: list[dict[str, Any]]) -> None:
        self.k, self.events, self.sent = k, events, 0

    async def run(self) -> None:
        codec = raw_codec()
        p = AIOKafkaProducer(
            bootstrap_servers=self.k.kafka_bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
        )
        await p.start()
        try:
            for start in range(0, len(self.events), CHUNK):
                for ev in self.events[start : start + CHUNK]:
                    await p.send(self.k.topic_raw, codec.encode(ev))
                self.sent = min(start + CHUNK, len(self.events))
                await asyncio.sleep(PAUSE_S)
            await p.flush()
        finally:
            await p.stop()


class Watcher:
    """Follows the redacted topic from its current end.

    The fetch loop only stores values: aiming the kill compares record counts, and must not
    lag behind the broker by the time it takes to decode a batch.
    """

    def __init__(self, k: KafkaSettings, ours: set[str], isolation: str) -> None:
        self.ours, self.values, self._seen, self._decoded = ours, list[bytes](), set[str](), 0
        self.consumer = AIOKafkaConsumer(
            k.topic_redacted,
            bootstrap_servers=k.kafka_bootstrap,
            isolation_level=isolation,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            group_id=None,
        )

    async def start(self) -> None:
        await self.consumer.start()
        while not self.consumer.assignment():
            await asyncio.sleep(0.05)
        for tp in self.consumer.assignment():
            await self.consumer.position(tp)  # pin "latest" before anything is produced

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for msgs in (await self.consumer.getmany(timeout_ms=200)).values():
                self.values.extend(m.value or b"" for m in msgs)
        await self.consumer.stop()

    def seen(self) -> set[str]:
        """Our event ids among the records so far."""
        codec = redacted_codec()
        for v in self.values[self._decoded :]:
            eid = codec.decode(v)["event_id"]
            if eid in self.ours:
                self._seen.add(eid)
        self._decoded = len(self.values)
        return self._seen

    async def wait_for(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while len(self.seen()) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return len(self.seen()) >= n


async def _drain(k: KafkaSettings, ours: set[str], isolation: str) -> list[bytes]:
    """Every record of ours in the redacted topic, from the beginning, until 3 s idle."""
    codec = redacted_codec()
    c = AIOKafkaConsumer(
        k.topic_redacted,
        bootstrap_servers=k.kafka_bootstrap,
        isolation_level=isolation,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        group_id=None,
    )
    await c.start()
    out: list[bytes] = []
    try:
        last = time.monotonic()
        while time.monotonic() - last < 3.0:
            for msgs in (await c.getmany(timeout_ms=500, max_records=5000)).values():
                last = time.monotonic()
                out += [
                    m.value for m in msgs if m.value and codec.decode(m.value)["event_id"] in ours
                ]
    finally:
        await c.stop()
    return out


def _exists(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.split(") ", 1)[1][0] not in "ZX"  # a zombie is dead, only not reaped


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while _exists(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _exists(pid)


async def _healthy(state: Path, pid: int, timeout: float = 60.0) -> bool:
    """procs.wait_healthy gives up if it looks in the moment after the fork, when
    /proc/<pid>/cmdline is still empty; this only gives up once the process is gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _exists(pid):
        if procs.healthy(procs.health_url(state, NAME)):
            return True
        await asyncio.sleep(0.2)
    return False


def _env(version: str, directory: Path) -> dict[str, str]:
    return {
        "TRUSTLOG_PSEUDONYM_KEYS": json.dumps(KEYS),
        "TRUSTLOG_PSEUDONYM_KEY_VERSION": version,
        "TRUSTLOG_DIRECTORY_FILE": str(directory),
        # the same id across the restart: it is what fences the killed incarnation and
        # aborts the transaction it left open
        "TRUSTLOG_TRANSACTIONAL_ID": f"eo-redactor-{RUN}",
    }


async def _scenario(state: Path, directory: Path) -> Outcome:
    k = KafkaSettings()
    now = datetime.now(UTC)
    pairs = [_raw(i, now) for i in range(N)]
    events = {e.event_id: e for _, e in pairs}
    ours = set(events)
    out = Outcome(events, set())
    await ensure_topics(k)  # the watcher subscribes before the redactor would create them
    watcher = Watcher(k, ours, "read_committed")
    # sees records of open transactions too: the kill is aimed at a moment when a
    # transaction has records on the broker that are not committed yet
    inflight = Watcher(k, ours, "read_uncommitted")
    await watcher.start()
    await inflight.start()
    stop_watch = asyncio.Event()
    watch_tasks = [asyncio.create_task(w.run(stop_watch)) for w in (watcher, inflight)]
    stream = Stream(k, [ev for ev, _ in pairs])
    stream_task: asyncio.Task[None] | None = None
    try:
        pid = procs.start(state, NAME, "services.redactor", _env("1", directory))
        assert await _healthy(state, pid), _tail(state)
        t0 = time.monotonic()
        stream_task = asyncio.create_task(stream.run())
        assert await watcher.wait_for(KILL_AT, 60), f"only {len(watcher.seen())} redacted"
        # Aim: records on the broker that read_committed does not show yet, i.e. an open
        # transaction. Best effort (it may commit in the meantime); `aborted_records` in the
        # printed numbers says whether the kill caught one.
        aim = time.monotonic() + 10
        while len(inflight.values) <= len(watcher.values) and time.monotonic() < aim:
            await asyncio.sleep(0.001)
        os.kill(pid, signal.SIGKILL)
        out.numbers["uncommitted_seen_at_kill"] = len(inflight.values) - len(watcher.values)
        out.seen_before_kill = set(watcher.seen())
        out.numbers["redacted_before_kill"] = len(out.seen_before_kill)
        out.numbers["kill_at_s"] = time.monotonic() - t0
        out.numbers["produced_at_kill"] = stream.sent
        assert _gone(pid), "the redactor survived SIGKILL"
        assert len(out.seen_before_kill) < N, "everything was redacted before the kill"
        t_restart = time.monotonic()
        pid = procs.start(state, NAME, "services.redactor", _env("2", directory))
        assert await _healthy(state, pid), _tail(state)
        resumed = await watcher.wait_for(len(out.seen_before_kill) + 1, 60)
        out.numbers["resume_after_restart_s"] = time.monotonic() - t_restart
        assert resumed, "nothing redacted after the restart"
        await stream_task
        assert await watcher.wait_for(N, 60), f"{len(watcher.seen())} of {N} redacted"
        out.numbers["all_redacted_s"] = time.monotonic() - t0
        url = procs.health_url(state, NAME)
        assert url is not None
        with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
            out.metrics = resp.read().decode()
    finally:
        if stream_task is not None and not stream_task.done():
            stream_task.cancel()
        stop_watch.set()
        await asyncio.gather(*watch_tasks)
    committed = await _drain(k, ours, "read_committed")
    codec = redacted_codec()
    out.records = [codec.decode(v) for v in committed]
    out.blob = b"\n".join(committed)
    out.uncommitted = len(await _drain(k, ours, "read_uncommitted"))
    out.numbers["aborted_records"] = out.uncommitted - len(committed)
    out.numbers["total_s"] = time.monotonic() - t0
    return out


def _tail(state: Path) -> str:
    log = state / "logs" / f"{NAME}.log"
    return log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"


@pytest.fixture(scope="module")
def outcome(stack: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    state = default_state_dir()
    directory = tmp_path_factory.mktemp("eo") / "directory.yaml"
    directory.write_text(
        "users:\n" + "".join(f"  eo.dir.{RUN}.{j}@corp.example: {DIR_TEAM}\n" for j in range(7))
    )
    try:
        res = asyncio.run(_scenario(state, directory))
        print(  # the numbers the report quotes; visible with -s
            "\nexactly-once:",
            {k: round(v, 2) for k, v in res.numbers.items()},
            f"committed={len(res.records)} uncommitted={res.uncommitted}",
        )
        yield res
    finally:
        procs.stop(state, NAME)


def test_every_event_is_redacted_exactly_once_across_sigkill(outcome: Outcome) -> None:
    counts = Counter(r["event_id"] for r in outcome.records)
    duplicates = {e: n for e, n in counts.items() if n > 1}
    lost = set(outcome.events) - set(counts)
    assert not duplicates, f"{len(duplicates)} events redacted more than once"
    assert not lost, f"{len(lost)} events lost"
    assert len(outcome.records) == N
    assert outcome.numbers["redacted_before_kill"] >= KILL_AT


def _metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def test_service_reports_detection_engine_and_classes(outcome: Outcome) -> None:
    """The running service uses the native detector core (bootstrap builds it) and counts
    what it found per committed batch; its metrics hold no content."""
    m = outcome.metrics
    assert _metric(m, 'trustlog_redactor_detect_engine{engine="native"}') == 1.0, m[-2000:]
    assert _metric(m, "trustlog_redactor_detect_handed_back_texts") == 0.0  # ASCII content
    cards = _metric(m, 'trustlog_redactor_sensitive_classes_total{cls="payment_card"}')
    redacted = _metric(m, 'trustlog_redactor_events_total{outcome="redacted"}')
    assert redacted is not None and 0 < redacted <= N
    # every 100th event carries one card; the restarted process saw part of the stream
    assert cards is not None and 0 < cards <= N // 100
    assert CANARY not in m


def test_rotation_at_the_restart(outcome: Outcome) -> None:
    s = RedactorSettings(
        pseudonym_keys={v: SecretStr(k) for v, k in KEYS.items()}, pseudonym_key_version="2"
    )
    lookup: dict[str, dict[str, str]] = {}
    versions = Counter[str]()
    for r in outcome.records:
        ev = outcome.events[r["event_id"]]
        if ev.user not in lookup:
            lookup[ev.user] = pseudonyms_for(ev.user, s)
        version = r["pseudonym_key_version"]
        versions[version] += 1
        assert r["user_pseudonym"] == lookup[ev.user][version]
        if r["event_id"] in outcome.seen_before_kill:
            # committed before the switch: keeps the old key's pseudonym
            assert version == "1"
    assert versions["1"] >= len(outcome.seen_before_kill)
    assert versions["2"] > 0, "no event was redacted under the new key"
    assert set(versions) == {"1", "2"}


def test_team_from_producer_directory_or_unassigned(outcome: Outcome) -> None:
    teams = Counter(r["team"] for r in outcome.records)
    want = Counter(e.team for e in outcome.events.values())
    assert teams == want
    assert teams[UNASSIGNED] == N // 20 and teams[DIR_TEAM] == N // 20
    for r in outcome.records:
        assert r["team"] == outcome.events[r["event_id"]].team


def test_no_content_or_identity_in_the_redacted_topic(outcome: Outcome) -> None:
    assert outcome.blob
    for needle in (CANARY, f"eo.user.{RUN}", f"eo.dir.{RUN}", f"eo.nobody.{RUN}", "198.51.100.77"):
        assert needle.encode() not in outcome.blob
    flagged = sum(1 for r in outcome.records if r["sensitive_classes"].get("payment_card"))
    assert flagged == N // 100
