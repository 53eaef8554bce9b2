"""The alerts service as deployed: a `python -m services.alerts` process against real Kafka and
ClickHouse, posting to a local Slack-like receiver.

One service process serves the module (faust startup and group join cost seconds); each test
uses its own team name, so tests never read each other's incidents or Slack posts.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.slack_receiver import SlackReceiver
from trustlog.avro import incident_codec, signal_codec
from trustlog.settings import PROJECT_ROOT, AlertsSettings, default_state_dir
from trustlog.storage import admin_client

pytestmark = pytest.mark.integration

READY_TIMEOUT = 90.0


class AlertsProcess:
    """Start/stop the service subprocess; its log goes to a file the tests can read."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def health_file(self) -> Path:
        return default_state_dir() / "services" / "alerts.health"

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.health_file.unlink()
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.alerts"],
            cwd=PROJECT_ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.wait_ready()

    def health(self) -> dict[str, Any] | None:
        try:
            url = self.health_file.read_text().strip() + "/healthz"
            with urllib.request.urlopen(url, timeout=2) as resp:
                return dict(json.load(resp))
        except Exception:
            return None

    def metrics(self) -> str:
        url = self.health_file.read_text().strip() + "/metrics"
        with urllib.request.urlopen(url, timeout=2) as resp:
            return str(resp.read().decode())

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"alerts exited with {self.proc.returncode}:\n{self.log_tail()}")
            h = self.health()
            if h is not None and h["status"] == "ok":
                return
            time.sleep(0.25)
        pytest.fail(f"alerts not healthy after {READY_TIMEOUT}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])


@pytest.fixture(scope="module")
def settings(stack: object) -> AlertsSettings:
    return AlertsSettings()


@pytest.fixture(scope="module")
def alerts(
    settings: AlertsSettings,
    slack_receiver_server: SlackReceiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[AlertsProcess]:
    env = dict(os.environ)  # carries TRUSTLOG_STATE_DIR from the stack fixture
    env.update(
        TRUSTLOG_SLACK_WEBHOOK_URL=slack_receiver_server.url,
        TRUSTLOG_HEALTH_PORT="0",
        TRUSTLOG_FAUST_DATA_DIR=str(tmp_path_factory.mktemp("faust")),
    )
    p = AlertsProcess(env, tmp_path_factory.mktemp("alerts") / "alerts.log")
    p.start()
    yield p
    if p.proc is not None and p.proc.poll() is None:
        p.stop()


def _signal(team: str, i: int, base: datetime, **kw: Any) -> dict[str, Any]:
    end = base + timedelta(minutes=i)
    sig: dict[str, Any] = {
        "signal_id": str(uuid.uuid4()),
        "rule": "cost_spike",
        "team": team,
        "tool": "copilot",
        "model": "",
        "window_start": end - timedelta(minutes=1),
        "window_end": end,
        "observed": 10.0 + i,
        "baseline": 3.0,
        "threshold": 6.0,
        "detected_at": end,
        "user_pseudonym": None,
        "evidence": {"requests": str(100 + i)},
    }
    sig.update(kw)
    return sig


async def _publish(settings: AlertsSettings, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for v in values:
            await producer.send(settings.topic_signals, value=v)
        await producer.flush()
    finally:
        await producer.stop()


def _poll(fn: Callable[[], Any], ok: Callable[[Any], bool], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if ok(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.25)


def _incidents(settings: AlertsSettings, team: str) -> tuple[int, int]:
    """(distinct incident ids, latest signal_count) for one team."""
    client = admin_client(settings)
    try:
        db = settings.ch_database
        distinct = client.query(
            f"SELECT count(DISTINCT incident_id) FROM {db}.incidents WHERE team = {{t:String}}",
            parameters={"t": team},
        ).result_rows[0][0]
        latest = client.query(
            f"SELECT max(signal_count) FROM {db}.incidents FINAL WHERE team = {{t:String}}",
            parameters={"t": team},
        ).result_rows[0][0]
        return int(distinct), int(latest or 0)
    finally:
        client.close()


def _history(settings: AlertsSettings, team_incident: str) -> list[tuple[str, int]]:
    client = admin_client(settings)
    try:
        rows = client.query(
            f"SELECT action, signal_count FROM {settings.ch_database}.incident_history "
            "WHERE incident_id = {i:String} ORDER BY signal_count",
            parameters={"i": team_incident},
        ).result_rows
        return [(str(a), int(c)) for a, c in rows]
    finally:
        client.close()


async def _incident_records(
    settings: AlertsSettings, team: str
) -> list[tuple[bytes, dict[str, Any]]]:
    """Every record on the incidents topic for ``team`` (read from the beginning, no group)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False
    )
    await consumer.start()
    out: list[tuple[bytes, dict[str, Any]]] = []
    try:
        parts = consumer.partitions_for_topic(settings.topic_incidents) or set()
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(settings.topic_incidents) or set()
        tps = [TopicPartition(settings.topic_incidents, p) for p in parts]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        codec = incident_codec()
        while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
            batch = await consumer.getmany(*tps, timeout_ms=1000)
            for records in batch.values():
                for r in records:
                    if r.value is None:
                        continue
                    inc = codec.decode(r.value)
                    if inc["team"] == team:
                        out.append((r.key or b"", inc))
    finally:
        await consumer.stop()
    return out


def _mentions(team: str) -> Callable[[Any], bool]:
    return lambda payload: isinstance(payload, dict) and team in json.dumps(payload)


async def test_fifty_spikes_make_one_incident_one_post(
    settings: AlertsSettings,
    alerts: AlertsProcess,
    slack_receiver: SlackReceiver,
) -> None:
    team = f"team-{uuid.uuid4().hex[:8]}"
    base = datetime.now(tz=UTC).replace(microsecond=0) - timedelta(hours=1)
    codec = signal_codec()
    # Poison first: the agent must log it by reason and keep going.
    values = [b"not an avro signal", b"\xc3\x01" + b"\x00" * 8 + b"junk"]
    values += [codec.encode(_signal(team, i, base)) for i in range(50)]
    t0 = time.monotonic()
    await _publish(settings, values)

    distinct, latest = _poll(lambda: _incidents(settings, team), lambda v: v[1] >= 50)
    elapsed = time.monotonic() - t0
    assert (distinct, latest) == (1, 50), alerts.log_tail()

    posts = slack_receiver.wait_for(_mentions(team), count=1, timeout=15)
    time.sleep(2.0)  # any extra (wrong) post would have arrived by now
    posts = slack_receiver.payloads(_mentions(team))
    assert len(posts) == 1, f"expected one Slack post, got {len(posts)}"
    assert "Spend rate jumped" in json.dumps(posts[0])

    records = await _incident_records(settings, team)
    assert len(records) >= 50  # one per update; at-least-once may add a replay
    assert {k for k, _ in records} == {b"finops"}
    assert {inc["incident_id"] for _, inc in records} == {records[0][1]["incident_id"]}
    assert max(inc["signal_count"] for _, inc in records) == 50
    assert all(inc["user_pseudonym"] is None for _, inc in records)

    incident_id = records[0][1]["incident_id"]
    history = _history(settings, incident_id)
    assert history[0] == ("created", 1) and len(history) == 50
    assert {a for a, _ in history[1:]} == {"updated"}

    h = alerts.health()
    assert h is not None and h["status"] == "ok"
    metrics = alerts.metrics()
    assert 'trustlog_alerts_signals_total{result="undecodable"}' in metrics
    assert 'trustlog_alerts_incident_updates_total{action="created"}' in metrics
    log = alerts.log_text()
    assert "undecodable signal skipped" in log
    assert "B000/XXXX" not in log  # the webhook URL is a secret
    print(f"\n50 signals -> 1 incident in ClickHouse after {elapsed:.1f}s")


async def test_rate_limited_post_is_retried(
    settings: AlertsSettings,
    alerts: AlertsProcess,
    slack_receiver: SlackReceiver,
) -> None:
    team = f"team-{uuid.uuid4().hex[:8]}"
    slack_receiver.fail_next(1, status=429, retry_after=1)
    await _publish(settings, [signal_codec().encode(_signal(team, 0, datetime.now(tz=UTC)))])

    posts = slack_receiver.wait_for(_mentions(team), count=1, timeout=60)
    assert len(posts) == 1, alerts.log_tail()
    attempts = slack_receiver.attempts(_mentions(team))
    assert [a.status for a in attempts] == [429, 200]
    assert attempts[1].at - attempts[0].at >= 1.0  # Retry-After was honoured


async def test_restart_keeps_dedup_and_sigterm_is_clean(
    settings: AlertsSettings,
    alerts: AlertsProcess,
    slack_receiver: SlackReceiver,
) -> None:
    team = f"team-{uuid.uuid4().hex[:8]}"
    base = datetime.now(tz=UTC) - timedelta(minutes=30)
    codec = signal_codec()
    await _publish(settings, [codec.encode(_signal(team, 0, base))])
    assert _poll(lambda: _incidents(settings, team), lambda v: v[1] >= 1) == (1, 1)

    t0 = time.monotonic()
    rc = alerts.stop()
    stop_s = time.monotonic() - t0
    assert rc == 0, alerts.log_tail()
    assert not alerts.health_file.exists()
    alerts.start()  # state comes back from the table's changelog topic

    await _publish(settings, [codec.encode(_signal(team, 1, base))])
    assert _poll(lambda: _incidents(settings, team), lambda v: v[1] >= 2) == (1, 2)
    time.sleep(2.0)
    assert len(slack_receiver.payloads(_mentions(team))) == 1  # still within cooldown
    print(f"\nSIGTERM -> exit 0 in {stop_s:.1f}s; restart kept dedup")
