"""The alerts service as deployed: a `python -m services.alerts` process against real Kafka and
ClickHouse, posting to a local Slack-like receiver that validates Block Kit.

One service process serves the module (faust startup and group join cost seconds); each test
uses its own team name, so tests never read each other's incidents or Slack posts. The
process runs with a 120 s cooldown, a second webhook for #ai-security, and a routing file
that escalates low-severity incidents after 3 s and routes one partner team's security
incidents to a channel that may not see pseudonyms.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from typer.testing import CliRunner

from services.alerts.cli import incidents_app
from tests.slack_receiver import SlackReceiver
from trustlog.avro import incident_codec, signal_codec
from trustlog.governance import roles
from trustlog.settings import CONFIG_DIR, PROJECT_ROOT, AlertsSettings, default_state_dir
from trustlog.storage import admin_client

pytestmark = pytest.mark.integration

READY_TIMEOUT = 90.0
COOLDOWN_S = 120
SECURITY_HOOK = "SEC"
RUN = uuid.uuid4().hex[:8]
PARTNER_TEAM = f"partner-{RUN}"


class AlertsProcess:
    """Start/stop the service subprocess; its log goes to a file the tests can read."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def health_file(self) -> Path:
        return default_state_dir() / "services" / "alerts.health"

    @property
    def url(self) -> str:
        return self.health_file.read_text().strip()

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
            with urllib.request.urlopen(self.url + "/healthz", timeout=2) as resp:
                return dict(json.load(resp))
        except Exception:
            return None

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=2) as resp:
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


def _routing_file(path: Path) -> Path:
    data = yaml.safe_load((CONFIG_DIR / "routing.yaml").read_text())
    data["escalation"]["after"]["low"] = "3s"
    data["owners"]["partner-security"] = {
        "kind": "group",
        "name": "Partner security",
        "channel": "#partner-security",
    }
    data["routes"] = [{"team": PARTNER_TEAM, "category": "security", "owner": "partner-security"}]
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def settings(stack: object) -> AlertsSettings:
    return AlertsSettings()


@pytest.fixture(scope="module")
def alerts(
    settings: AlertsSettings,
    slack_receiver_server: SlackReceiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[AlertsProcess]:
    tmp = tmp_path_factory.mktemp("alerts")
    env = dict(os.environ)  # carries TRUSTLOG_STATE_DIR from the stack fixture
    # The service's own ClickHouse account, as `trustlog up` runs it (not stack.env's admin).
    own = roles.service_env(default_state_dir(), "alerts")
    assert own["TRUSTLOG_CH_USER"] == roles.SERVICE_ACCOUNTS["alerts"]
    env.update(own)
    env.update(
        TRUSTLOG_SLACK_WEBHOOK_URL=slack_receiver_server.url,
        TRUSTLOG_SLACK_CHANNEL_WEBHOOKS=json.dumps(
            {"#ai-security": slack_receiver_server.url_for(SECURITY_HOOK)}
        ),
        TRUSTLOG_ROUTING_FILE=str(_routing_file(tmp / "routing.yaml")),
        TRUSTLOG_COOLDOWN_SECONDS=str(COOLDOWN_S),
        TRUSTLOG_ESCALATION_CHECK_SECONDS="0.5",
        TRUSTLOG_UNAPPROVED_TOOL_CHECK_SECONDS="1",
        TRUSTLOG_HEALTH_PORT="0",
        TRUSTLOG_FAUST_DATA_DIR=str(tmp / "faust"),
    )
    p = AlertsProcess(env, tmp / "alerts.log")
    p.start()
    yield p
    if p.proc is not None and p.proc.poll() is None:
        p.stop()


def _signal(team: str, at: datetime, rule: str = "cost_spike", **kw: Any) -> dict[str, Any]:
    sig: dict[str, Any] = {
        "signal_id": str(uuid.uuid4()),
        "rule": rule,
        "team": team,
        "tool": "copilot",
        "model": "",
        "window_start": at - timedelta(minutes=1),
        "window_end": at,
        "observed": 12.0,
        "baseline": 3.0,
        "threshold": 6.0,
        "detected_at": at,
        "user_pseudonym": None,
        "evidence": {"requests": "140"},
    }
    sig.update(kw)
    return sig


async def _publish(settings: AlertsSettings, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=20
    )
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


def _query(settings: AlertsSettings, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    client = admin_client(settings)
    try:
        return [tuple(r) for r in client.query(sql, parameters=params).result_rows]
    finally:
        client.close()


def _incidents(settings: AlertsSettings, team: str) -> list[dict[str, Any]]:
    """Latest version of each incident of ``team``."""
    cols = ("incident_id", "rule", "state", "owner", "primary_owner", "signal_count", "version")
    rows = _query(
        settings,
        f"SELECT {', '.join(cols)} FROM {settings.ch_database}.incidents FINAL "
        "WHERE team = {t:String} ORDER BY rule",
        t=team,
    )
    return [dict(zip(cols, r, strict=True)) for r in rows]


def _distinct_ids(settings: AlertsSettings, team: str) -> int:
    rows = _query(
        settings,
        f"SELECT count(DISTINCT incident_id) FROM {settings.ch_database}.incidents "
        "WHERE team = {t:String}",
        t=team,
    )
    return int(rows[0][0])


def _history(settings: AlertsSettings, incident_id: str) -> list[tuple[str, str, str]]:
    """(action, actor, state) of every history row, oldest first."""
    rows = _query(
        settings,
        f"SELECT action, actor, state FROM {settings.ch_database}.incident_history "
        "WHERE incident_id = {i:String} ORDER BY at, version",
        i=incident_id,
    )
    return [(str(a), str(b), str(c)) for a, b, c in rows]


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


async def _cli(*args: str) -> Any:
    """The CLI as an operator runs it. In a thread: it runs its own event loop."""
    return await asyncio.to_thread(CliRunner().invoke, incidents_app, list(args))


def _http(method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


# --- dedup, no flood --------------------------------------------------------------------------


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
    values += [codec.encode(_signal(team, base + timedelta(seconds=i))) for i in range(50)]
    t0 = time.monotonic()
    await _publish(settings, values)

    rows = _poll(lambda: _incidents(settings, team), lambda v: v and v[0]["signal_count"] >= 50)
    elapsed = time.monotonic() - t0
    assert len(rows) == 1 and rows[0]["signal_count"] == 50, alerts.log_tail()
    assert _distinct_ids(settings, team) == 1

    posts = slack_receiver.wait_for(_mentions(team), count=1, timeout=15)
    time.sleep(2.0)  # any extra (wrong) post would have arrived by now
    posts = slack_receiver.payloads(_mentions(team))
    assert len(posts) == 1, f"expected one Slack post, got {len(posts)}"
    assert "Spend rate jumped" in json.dumps(posts[0])
    assert slack_receiver.payloads(_mentions(team), hook="B000") == posts  # cost: default hook

    records = await _incident_records(settings, team)
    assert records, "nothing published for the team"
    assert {k for k, _ in records} == {b"finops"}  # keyed by owner
    assert {inc["incident_id"] for _, inc in records} == {rows[0]["incident_id"]}
    assert max(inc["signal_count"] for _, inc in records) == 50
    assert all(inc["user_pseudonym"] is None for _, inc in records)

    # history holds state changes, not every signal
    assert _history(settings, rows[0]["incident_id"]) == [("created", "trustlog-alerts", "open")]

    h = alerts.health()
    assert h is not None and h["status"] == "ok"
    metrics = alerts.metrics()
    assert 'trustlog_alerts_signals_total{result="undecodable"}' in metrics
    assert 'trustlog_alerts_incident_updates_total{action="created"}' in metrics
    log = alerts.log_text()
    assert "undecodable signal skipped" in log
    assert "B000/XXXX" not in log and f"{SECURITY_HOOK}/XXXX" not in log  # webhook URLs are secrets
    print(f"\n50 signals -> 1 incident in ClickHouse after {elapsed:.1f}s")


async def test_ten_thousand_spikes_in_five_minutes_one_incident_one_post_per_cooldown(
    settings: AlertsSettings,
    alerts: AlertsProcess,
    slack_receiver: SlackReceiver,
) -> None:
    """Issue 5, point 6: a flood of spike signals for one team (5 minutes of event time)."""
    team = f"flood-{uuid.uuid4().hex[:8]}"
    n, span_s = 10_000, 300
    base = datetime.now(tz=UTC).replace(microsecond=0) - timedelta(hours=2)
    codec = signal_codec()
    values = [
        codec.encode(_signal(team, base + timedelta(milliseconds=i * span_s * 1000 // n)))
        for i in range(n)
    ]
    t0 = time.monotonic()
    await _publish(settings, values)
    sent_s = time.monotonic() - t0
    rows = _poll(
        lambda: _incidents(settings, team),
        lambda v: bool(v) and v[0]["signal_count"] >= n,
        timeout=60,
    )
    elapsed = time.monotonic() - t0
    assert len(rows) == 1 and rows[0]["signal_count"] == n, alerts.log_tail()
    assert _distinct_ids(settings, team) == 1

    # cooldown 120 s over 300 s of event time: the first post, then at 120 s and 240 s
    allowed = math.ceil(span_s / COOLDOWN_S)
    slack_receiver.wait_for(_mentions(team), count=allowed, timeout=15)
    time.sleep(2.0)
    posts = slack_receiver.payloads(_mentions(team))
    assert len(posts) == allowed == 3, f"{len(posts)} posts for {n} signals"
    headers = [p["blocks"][0]["text"]["text"] for p in posts]
    assert "Still happening" not in headers[0]
    assert all("Still happening" in h for h in headers[1:])
    print(
        f"\n{n} spike signals over {span_s} s of event time -> 1 incident, {len(posts)} Slack "
        f"posts (cooldown {COOLDOWN_S} s); published in {sent_s:.1f}s, all folded after "
        f"{elapsed:.1f}s ({n / elapsed:.0f} signals/s end to end)"
    )


async def test_rate_limited_post_is_retried(
    settings: AlertsSettings,
    alerts: AlertsProcess,
    slack_receiver: SlackReceiver,
) -> None:
    team = f"team-{uuid.uuid4().hex[:8]}"
    slack_receiver.fail_next(1, status=429, retry_after=1)
    await _publish(settings, [signal_codec().encode(_signal(team, datetime.now(tz=UTC)))])

    posts = slack_receiver.wait_for(_mentions(team), count=1, timeout=60)
    assert len(posts) == 1, alerts.log_tail()
    attempts = slack_receiver.attempts(_mentions(team))
    assert [a.status for a in attempts] == [429, 200]
    assert attempts[1].at - attempts[0].at >= 1.0  # Retry-After was honoured


# --- routing to owner channels, privacy -----------------------------------------------------


async def test_security_incidents_go_to_the_security_webhook_with_pseudonym_only_there(
    settings: AlertsSettings,
    alerts: AlertsProcess,
    slack_receiver: SlackReceiver,
) -> None:
    team = f"sec-{uuid.uuid4().hex[:8]}"
    now = datetime.now(tz=UTC)
    codec = signal_codec()
    await _publish(
        settings,
        [
            codec.encode(
                _signal(
                    team,
                    now,
                    "sensitive_data",
                    user_pseudonym="ps_sec_123",
                    evidence={"classes": "payment_card,email", "event_id": "e-1"},
                )
            ),
            codec.encode(_signal(team, now, "cost_spike", user_pseudonym="ps_cost_leak")),
            codec.encode(
                _signal(
                    PARTNER_TEAM,
                    now,
                    "sensitive_data",
                    user_pseudonym="ps_partner_9",
                    evidence={"classes": "payment_card"},
                )
            ),
        ],
    )
    sec = slack_receiver.wait_for(_mentions(team), count=3, timeout=30)
    assert len(sec) == 3, alerts.log_tail()
    on_sec_hook = slack_receiver.payloads(_mentions(team), hook=SECURITY_HOOK)
    titles = " | ".join(p["blocks"][0]["text"]["text"] for p in on_sec_hook)
    assert len(on_sec_hook) == 2
    assert "CRITICAL: Payment card numbers" in titles and "LOW: E-mail addresses" in titles
    assert all("ps_sec_123" in json.dumps(p) for p in on_sec_hook)
    (cost,) = slack_receiver.payloads(_mentions(team), hook="B000")
    assert "Spend rate jumped" in json.dumps(cost) and "ps_cost_leak" not in json.dumps(cost)

    # the partner team's security owner watches a channel not listed for pseudonyms
    (partner,) = slack_receiver.wait_for(_mentions(PARTNER_TEAM), count=1, timeout=30)
    assert "partner-security" in json.dumps(partner)
    assert "ps_partner_9" not in json.dumps(partner)
    assert slack_receiver.payloads(_mentions(PARTNER_TEAM), hook="B000") == [partner]

    rules = {r["rule"]: r for r in _incidents(settings, team)}
    assert set(rules) == {"cost_spike", "sensitive_data.email", "sensitive_data.payment_card"}
    assert rules["sensitive_data.payment_card"]["owner"] == "security-oncall"


# --- lifecycle: CLI, API, reopen, escalation ---------------------------------------------------


async def test_lifecycle_through_the_cli_and_the_http_api(
    settings: AlertsSettings,
    alerts: AlertsProcess,
    slack_receiver: SlackReceiver,
) -> None:
    team = f"life-{uuid.uuid4().hex[:8]}"
    codec = signal_codec()
    await _publish(settings, [codec.encode(_signal(team, datetime.now(tz=UTC)))])
    rows = _poll(lambda: _incidents(settings, team), bool)
    assert rows, alerts.log_tail()
    iid = rows[0]["incident_id"]

    listed = await _cli("list", "--team", team, "--json")
    assert listed.exit_code == 0, listed.output
    assert [r["incident_id"] for r in json.loads(listed.output)] == [iid]

    ack = await _cli("ack", iid[:8], "--actor", "alice", "--reason", "looking at the batch job")
    assert ack.exit_code == 0, ack.output
    assert "open -> acknowledged" in ack.output
    again = await _cli("ack", iid[:8], "--actor", "bob", "--reason", "me too")
    assert again.exit_code == 1
    assert "cannot acknowledge an incident that is acknowledged" in again.output
    missing = await _cli("ack", iid[:8], "--actor", "bob", "--reason", "")
    assert missing.exit_code == 2 and "reason" in missing.output

    status, body = _http(
        "POST", f"{alerts.url}/v1/incidents/{iid}/resolve", {"actor": "bob", "reason": "fixed"}
    )
    assert (status, body["outcome"], body["detail"]) == (
        200,
        "applied",
        "acknowledged -> resolved",
    )
    status, body = _http(
        "POST", f"{alerts.url}/v1/incidents/{iid}/ack", {"actor": "carol", "reason": "late"}
    )
    assert status == 409 and "resolved" in body["detail"]
    status, _ = _http("POST", f"{alerts.url}/v1/incidents/{iid}/ack", {"actor": "carol"})
    assert status == 400

    # the problem comes back: same incident, reopened, owner told again
    await _publish(
        settings, [codec.encode(_signal(team, datetime.now(tz=UTC) + timedelta(seconds=30)))]
    )
    reopened = slack_receiver.wait_for(
        lambda p: _mentions(team)(p) and "Reopened" in json.dumps(p), timeout=30
    )
    assert len(reopened) == 1, alerts.log_tail()
    status, shown = _http("GET", f"{alerts.url}/v1/incidents/{iid[:8]}")
    assert status == 200 and shown["incident"]["state"] == "reopened"
    assert shown["incident"]["reopen_count"] == 1
    assert [(h["action"], h["actor"], h["from_state"], h["state"]) for h in shown["history"]] == [
        ("created", "trustlog-alerts", "", "open"),
        ("acknowledged", "alice", "open", "acknowledged"),
        ("resolved", "bob", "acknowledged", "resolved"),
        ("reopened", "trustlog-alerts", "resolved", "reopened"),
    ]
    assert [h["reason"] for h in shown["history"]][1:3] == ["looking at the batch job", "fixed"]
    outcomes = sorted((c["actor"], c["outcome"]) for c in shown["commands"])
    assert outcomes == [
        ("alice", "applied"),
        ("bob", "applied"),
        ("bob", "refused"),
        ("carol", "refused"),
    ]
    shown_cli = await _cli("show", iid[:8])
    assert shown_cli.exit_code == 0 and "reopened" in shown_cli.output

    # every state change reached the owner-keyed topic
    records = await _incident_records(settings, team)
    states = [inc["state"] for _, inc in records]
    for state in ("open", "acknowledged", "resolved", "reopened"):
        assert state in states
    assert {k for k, _ in records} == {b"finops"}


async def test_unacknowledged_incident_escalates_to_the_second_owner(
    settings: AlertsSettings,
    alerts: AlertsProcess,
    slack_receiver: SlackReceiver,
) -> None:
    team = f"esc-{uuid.uuid4().hex[:8]}"
    # unknown_model is low severity: this module's routing escalates it after 3 s
    sig = _signal(team, datetime.now(tz=UTC), "unknown_model", model="mystery-1")
    await _publish(settings, [signal_codec().encode(sig)])
    escalated = slack_receiver.wait_for(
        lambda p: _mentions(team)(p) and "Escalated" in json.dumps(p), timeout=30
    )
    assert len(escalated) == 1, alerts.log_tail()
    body = json.dumps(escalated[0])
    assert "finops-lead" in body and "unacknowledged for 3s" in body
    (row,) = _poll(
        lambda: _incidents(settings, team), lambda v: bool(v) and v[0]["owner"] == "finops-lead"
    )
    assert (row["owner"], row["primary_owner"], row["state"]) == ("finops-lead", "finops", "open")
    history = _history(settings, row["incident_id"])
    assert history == [
        ("created", "trustlog-alerts", "open"),
        ("escalated", "trustlog-alerts", "open"),
    ]
    time.sleep(2.0)
    assert len(slack_receiver.payloads(_mentions(team))) == 2  # opened, escalated: one hop
    records = await _incident_records(settings, team)
    assert {k for k, _ in records} == {b"finops", b"finops-lead"}  # the queue follows the owner


def test_unapproved_tool_usage_opens_a_security_incident(
    settings: AlertsSettings,
    alerts: AlertsProcess,
    slack_receiver: SlackReceiver,
) -> None:
    team = f"tools-{uuid.uuid4().hex[:8]}"
    hour = datetime.now(tz=UTC).replace(minute=0, second=0, microsecond=0)
    client = admin_client(settings)
    try:
        # what the aggregator's rollup holds after this team's calls
        client.insert(
            "spend_hourly",
            [
                [hour, team, "shadow-gpt", "gpt-x", "other", "ws", 7, Decimal("0.42")],
                [hour, team, "chat-assistant", "gpt-x", "other", "ws", 50, Decimal("1.00")],
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
            ],
            database=settings.ch_database,
        )
    finally:
        client.close()
    rows = _poll(lambda: _incidents(settings, team), bool, timeout=30)
    assert [(r["rule"], r["owner"]) for r in rows] == [("unapproved_tool", "security-oncall")]
    (post,) = slack_receiver.wait_for(_mentions(team), timeout=15)
    assert "shadow-gpt" in json.dumps(post) and "chat-assistant" not in json.dumps(post)
    assert slack_receiver.payloads(_mentions(team), hook=SECURITY_HOOK) == [post]
    # The service read the rollup and wrote the incident as its own account, never the admin.
    _query(settings, "SYSTEM FLUSH LOGS")
    db = settings.ch_database

    def users(kind: str, table: str) -> set[str]:
        return {
            r[0]
            for r in _query(
                settings,
                "SELECT DISTINCT user FROM system.query_log WHERE type = 'QueryFinish' "
                "AND query_kind = {k:String} AND has(tables, {t:String})",
                k=kind,
                t=f"{db}.{table}",
            )
        }

    alerts_account = roles.SERVICE_ACCOUNTS["alerts"]
    assert users("Insert", "incidents") == {alerts_account}
    assert alerts_account in users("Select", "spend_hourly")


# --- durability --------------------------------------------------------------------------------


async def test_undelivered_notification_survives_a_restart_and_arrives_once(
    settings: AlertsSettings,
    alerts: AlertsProcess,
    slack_receiver: SlackReceiver,
) -> None:
    team = f"outage-{uuid.uuid4().hex[:8]}"
    slack_receiver.fail_next(100_000, status=500)  # Slack is down for a while
    try:
        await _publish(settings, [signal_codec().encode(_signal(team, datetime.now(tz=UTC)))])
        failed = _poll(lambda: slack_receiver.attempts(_mentions(team)), lambda a: len(a) >= 2)
        assert len(failed) >= 2 and {a.status for a in failed} == {500}, alerts.log_tail()
        assert alerts.stop() == 0, alerts.log_tail()
        assert '"slack_pending": 1' in alerts.log_text()
        slack_receiver.stop_failing()  # Slack is back; so is the service
        alerts.start()
    finally:
        slack_receiver.stop_failing()
    posts = slack_receiver.wait_for(_mentions(team), count=1, timeout=30)
    time.sleep(3.0)  # a second copy would arrive by now
    posts = slack_receiver.payloads(_mentions(team))
    assert len(posts) == 1, alerts.log_tail()
    assert "slack notifications restored from outbox" in alerts.log_text()


async def test_restart_keeps_dedup_and_sigterm_is_clean(
    settings: AlertsSettings,
    alerts: AlertsProcess,
    slack_receiver: SlackReceiver,
) -> None:
    team = f"team-{uuid.uuid4().hex[:8]}"
    base = datetime.now(tz=UTC) - timedelta(minutes=30)
    codec = signal_codec()
    await _publish(settings, [codec.encode(_signal(team, base))])
    rows = _poll(lambda: _incidents(settings, team), bool)
    assert [r["signal_count"] for r in rows] == [1]

    t0 = time.monotonic()
    rc = alerts.stop()
    stop_s = time.monotonic() - t0
    assert rc == 0, alerts.log_tail()
    assert not alerts.health_file.exists()
    alerts.start()  # state comes back from the table's changelog topic

    await _publish(settings, [codec.encode(_signal(team, base + timedelta(minutes=1)))])
    rows = _poll(lambda: _incidents(settings, team), lambda v: v[0]["signal_count"] >= 2)
    assert [r["signal_count"] for r in rows] == [2] and _distinct_ids(settings, team) == 1
    time.sleep(2.0)
    assert len(slack_receiver.payloads(_mentions(team))) == 1  # still within cooldown
    print(f"\nSIGTERM -> exit 0 in {stop_s:.1f}s; restart kept dedup")
