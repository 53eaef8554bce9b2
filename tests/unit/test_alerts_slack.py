"""The Slack sender against the local receiver (retries, per-channel webhooks, the outbox) and
the incidents HTTP API with its ClickHouse reads and Kafka publish replaced by memory."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.alerts.api import CommandWaiters, IncidentApi, build_app
from services.alerts.commands import CommandError
from services.alerts.incidents import IncidentBook
from services.alerts.routing import default_routing
from services.alerts.slack import Notification, SlackNotifier, build_message
from tests.slack_receiver import SlackReceiver
from tests.unit.test_alerts_logic import apply1, make_signal
from trustlog.runtime import Health, Metrics


@pytest.fixture
def receiver() -> Iterator[SlackReceiver]:
    r = SlackReceiver().start()
    yield r
    r.stop()


class MemoryOutbox:
    """The outbox contract in memory: put before the first attempt, done when Slack took it."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.log: list[tuple[str, str]] = []

    async def put(self, n: Notification) -> None:
        self.records[n.id] = n.to_record()
        self.log.append(("put", n.id))

    async def done(self, notification_id: str) -> None:
        self.records.pop(notification_id, None)
        self.log.append(("done", notification_id))

    def load(self) -> list[Notification]:
        return [Notification.from_record(json.loads(json.dumps(r))) for r in self.records.values()]


def _note(n: int = 1, channel: str = "#ai-cost", team: str = "payments") -> Notification:
    book = IncidentBook(default_routing(), 3600)
    inc = apply1(book, make_signal(team=team)).incident
    return Notification(
        f"{inc['incident_id']}:{n}",
        inc["incident_id"],
        channel,
        "opened",
        build_message(inc),
        int(time.time() * 1000),
    )


async def _until(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.05)


async def test_429_is_retried_in_place_honouring_retry_after(receiver: SlackReceiver) -> None:
    receiver.fail_next(1, status=429, retry_after=1)
    outbox = MemoryOutbox()
    n = SlackNotifier(receiver.url, outbox=outbox, metrics=Metrics("alerts_test"))
    note = _note()
    t0 = time.monotonic()
    try:
        assert await n.submit(note)
        assert outbox.log == [("put", note.id)]  # durable before the first attempt
        assert await n.send_due() == 1
    finally:
        await n.close()
    assert time.monotonic() - t0 >= 1.0
    assert [r.status for r in receiver.requests] == [429, 200]
    assert len(receiver.accepted) == 1 and not n.pending
    assert outbox.log == [("put", note.id), ("done", note.id)] and not outbox.records


async def test_5xx_is_retried_then_kept_and_delivered_later(receiver: SlackReceiver) -> None:
    receiver.fail_next(2, status=502)
    outbox = MemoryOutbox()
    n = SlackNotifier(
        receiver.url, outbox=outbox, max_retries=1, backoff_factor=0.01, retry_base=0.2
    )
    note = _note()
    try:
        await n.submit(note)
        assert await n.send_due() == 0  # 502, one in-place retry, 502 again
        assert list(n.pending) == [note.id] and note.id in outbox.records
        assert await n.send_due() == 0  # not due yet: backoff
        await asyncio.sleep(0.25)
        assert await n.send_due() == 1
    finally:
        await n.close()
    assert [r.status for r in receiver.requests] == [502, 502, 200]
    assert not n.pending and not outbox.records


async def test_long_retry_after_is_honoured_from_the_queue(receiver: SlackReceiver) -> None:
    receiver.fail_next(1, status=429, retry_after=3)
    n = SlackNotifier(receiver.url, max_retry_after=1.0, retry_base=0.1)
    note = _note()
    try:
        await n.submit(note)
        assert await n.send_due() == 0  # Retry-After 3 s is past the in-place cap
        assert note.next_try - time.monotonic() >= 2.5  # but the queue waits that long
    finally:
        await n.close()


async def test_an_outage_then_a_restart_delivers_exactly_once(receiver: SlackReceiver) -> None:
    """Slack answers 500 for a while; the service restarts; the message arrives once."""
    receiver.fail_next(1000, status=500)
    outbox = MemoryOutbox()
    first = SlackNotifier(receiver.url, outbox=outbox, max_retries=0, retry_base=0.05)
    task = asyncio.create_task(first.run())
    note = _note()
    try:
        await first.submit(note)
        await _until(lambda: len(receiver.requests) >= 3)
    finally:
        task.cancel()
        await first.drain(timeout=1.0)
        await first.close()
    assert not receiver.accepted and note.id in outbox.records

    receiver.stop_failing()
    second = SlackNotifier(receiver.url, outbox=outbox, max_retries=0, retry_base=0.05)
    second.restore(outbox.load())
    task = asyncio.create_task(second.run())
    try:
        await _until(lambda: len(receiver.accepted) == 1)
        await asyncio.sleep(0.3)
    finally:
        task.cancel()
        await second.close()
    assert len(receiver.accepted) == 1 and not outbox.records
    assert receiver.accepted[0] == note.payload


async def test_rejected_payload_is_dropped_from_the_outbox(
    receiver: SlackReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = MemoryOutbox()
    n = SlackNotifier(receiver.url, outbox=outbox)
    bad = Notification("i-1:1", "i-1", "#ai-cost", "opened", {"blocks": [{"type": "bogus"}]}, 0)
    try:
        await n.submit(bad)
        assert await n.send_due() == 0
    finally:
        await n.close()
    assert [r.status for r in receiver.requests] == [400]
    assert not n.pending and not outbox.records  # resending an invalid payload cannot help
    assert "bogus" not in caplog.text


async def test_each_channel_posts_to_its_own_webhook(receiver: SlackReceiver) -> None:
    n = SlackNotifier(receiver.url, {"#ai-security": receiver.url_for("SEC")})
    try:
        await n.submit(_note(channel="#ai-security", team="sec-team"))
        await n.submit(_note(channel="#ai-cost", team="cost-team"))
        assert await n.send_due() == 2
    finally:
        await n.close()
    assert len(receiver.payloads(lambda p: "sec-team" in json.dumps(p), hook="SEC")) == 1
    assert len(receiver.payloads(lambda p: "cost-team" in json.dumps(p), hook="B000")) == 1


async def test_one_failing_webhook_does_not_hold_up_another(receiver: SlackReceiver) -> None:
    n = SlackNotifier(
        receiver.url,
        {"#broken": "http://127.0.0.1:9/nothing-listens"},
        max_retries=0,
        retry_base=5.0,
    )
    try:
        await n.submit(_note(channel="#broken", team="t-broken"))
        await n.submit(_note(channel="#ai-cost", team="t-ok"))
        assert await n.send_due() == 1
    finally:
        await n.close()
    assert len(receiver.payloads(lambda p: "t-ok" in json.dumps(p))) == 1
    assert len(n.pending) == 1


async def test_sender_posts_as_soon_as_submitted(receiver: SlackReceiver) -> None:
    n = SlackNotifier(receiver.url)
    task = asyncio.create_task(n.run())
    try:
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        await n.submit(_note())
        await _until(lambda: len(receiver.accepted) == 1)
        assert time.monotonic() - t0 < 1.0
    finally:
        task.cancel()
        await n.close()


async def test_without_any_url_nothing_is_queued() -> None:
    outbox = MemoryOutbox()
    n = SlackNotifier(None, outbox=outbox)
    assert not n.enabled
    assert not await n.submit(_note())
    assert not n.pending and not outbox.records


# --- the HTTP API ------------------------------------------------------------------------------


class FakeQueries:
    def __init__(self) -> None:
        self.rows = {
            "5b1f0c8e-1111-4a4a-8b8b-000000000001": {
                "incident_id": "5b1f0c8e-1111-4a4a-8b8b-000000000001",
                "dedup_key": "cost_spike|t|x",
                "state": "open",
            }
        }

    def incidents(self, **kw: Any) -> list[dict[str, Any]]:
        return [r for r in self.rows.values() if not kw.get("states") or r["state"] in kw["states"]]

    def find(self, ref: str) -> dict[str, Any]:
        for iid, row in self.rows.items():
            if iid.startswith(ref):
                return dict(row)
        raise CommandError(f"no incident {ref}")

    def history(self, iid: str) -> list[dict[str, Any]]:
        return [{"action": "created", "actor": "trustlog-alerts"}]

    def commands(self, iid: str) -> list[dict[str, Any]]:
        return []


@pytest.fixture
async def api() -> AsyncIterator[tuple[TestClient[Any, Any], list[dict[str, Any]], CommandWaiters]]:
    published: list[dict[str, Any]] = []
    waiters = CommandWaiters()
    queries = FakeQueries()

    async def publish(cmd: dict[str, Any]) -> None:
        published.append(cmd)
        # stands in for the agent: acknowledge is applied, resolve is refused
        outcome = "applied" if cmd["action"] == "acknowledge" else "refused"
        detail = "open -> acknowledged" if outcome == "applied" else "cannot resolve ..."
        asyncio.get_running_loop().call_later(
            0.05,
            waiters.fulfil,
            cmd["command_id"],
            {"command_id": cmd["command_id"], "outcome": outcome, "detail": detail},
        )

    app = build_app(
        Health(),
        Metrics("alerts_api_t"),
        IncidentApi(lambda: queries, publish, waiters, token="s3cret"),  # type: ignore[arg-type,return-value]
    )
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client, published, waiters
    finally:
        await client.close()


AUTH = {"Authorization": "Bearer s3cret"}


async def test_api_lists_and_shows(api: Any) -> None:
    client, _, _ = api
    resp = await client.get("/v1/incidents")
    assert resp.status == 200 and len((await resp.json())["incidents"]) == 1
    resp = await client.get("/v1/incidents/5b1f0c8e")
    body = await resp.json()
    assert resp.status == 200 and body["history"][0]["action"] == "created"
    assert (await client.get("/v1/incidents/ffffffff")).status == 404


async def test_api_ack_waits_for_the_agent_and_reports_refusals(api: Any) -> None:
    client, published, _ = api
    body = {"actor": "alice", "reason": "on it"}
    resp = await client.post("/v1/incidents/5b1f0c8e/ack", json=body, headers=AUTH)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["outcome"] == "applied"
    assert published[-1]["action"] == "acknowledge" and published[-1]["source"] == "api"
    resp = await client.post("/v1/incidents/5b1f0c8e/resolve", json=body, headers=AUTH)
    assert resp.status == 409 and (await resp.json())["outcome"] == "refused"


async def test_api_requires_token_actor_and_reason(api: Any) -> None:
    client, published, _ = api
    ok = {"actor": "alice", "reason": "on it"}
    assert (await client.post("/v1/incidents/5b1f0c8e/ack", json=ok)).status == 401
    wrong = {"Authorization": "Bearer nope"}
    assert (await client.post("/v1/incidents/5b1f0c8e/ack", json=ok, headers=wrong)).status == 401
    for body in ({"actor": "alice"}, {"reason": "x"}, {"actor": "a b", "reason": "x"}, [1]):
        resp = await client.post("/v1/incidents/5b1f0c8e/ack", json=body, headers=AUTH)
        assert resp.status == 400, body
    resp = await client.post("/v1/incidents/ffffffff/ack", json=ok, headers=AUTH)
    assert resp.status == 404
    assert published == []


async def test_api_answers_202_when_the_agent_is_not_there(api: Any) -> None:
    client, _, waiters = api
    # no agent answers within wait=0.1: the command is queued, not lost
    waiters.fulfil = lambda *a, **k: None
    resp = await client.post(
        "/v1/incidents/5b1f0c8e/ack?wait=0.1",
        json={"actor": "alice", "reason": "x"},
        headers=AUTH,
    )
    assert resp.status == 202 and (await resp.json())["outcome"] == "queued"


async def test_health_and_metrics_are_served(api: Any) -> None:
    client, _, _ = api
    assert (await client.get("/healthz")).status == 503  # no checks reported yet
    assert (await client.get("/metrics")).status == 200
