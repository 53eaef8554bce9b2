"""Recorder logic with injected fake transports: no Kafka, no HTTP server."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import orjson
import pytest

from services.ingest import sdk
from services.ingest.events import UsageEventIn
from services.ingest.sdk import DeliveryResult, Recorder, interpret_http_response

CANARY = "CANARY-sdk-51d2-do-not-leak"


def fields(**over: Any) -> dict[str, Any]:
    f: dict[str, Any] = {
        "tool": "chat",
        "model": "gpt-4o",
        "user_id": "u-1",
        "input_tokens": 100,
        "output_tokens": 20,
        "task_label": "coding",
        "prompt": "hello world " * 20,
    }
    f.update(over)
    return f


class Collecting:
    """Delivers everything; optionally fails the first ``fail_first`` attempts."""

    def __init__(self, fail_first: int = 0, reject: Sequence[int] = ()) -> None:
        self.got: list[UsageEventIn] = []
        self.fail_first = fail_first
        self.reject = set(reject)
        self.attempts = 0
        self.closed = False

    async def start(self) -> None:
        pass

    async def deliver(self, batch: Sequence[UsageEventIn]) -> DeliveryResult:
        self.attempts += 1
        if self.attempts <= self.fail_first:
            raise ConnectionError("broker down")
        rejected = [i for i in range(len(batch)) if batch[i].input_tokens in self.reject]
        self.got.extend(ev for i, ev in enumerate(batch) if i not in rejected)
        return DeliveryResult(rejected=rejected)

    async def close(self) -> None:
        self.closed = True


class Blocking:
    """A transport whose delivery never completes (a hung broker connection)."""

    def __init__(self) -> None:
        self.started = threading.Event()

    async def start(self) -> None:
        pass

    async def deliver(self, batch: Sequence[UsageEventIn]) -> DeliveryResult:
        self.started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def close(self) -> None:
        pass


@pytest.fixture
def recorders() -> Iterator[list[Recorder]]:
    made: list[Recorder] = []
    yield made
    for r in made:
        r.close(0.5)


def make(recorders: list[Recorder], transport: Any, **kw: Any) -> Recorder:
    r = Recorder(producer="unit", _transport=transport, **kw)
    recorders.append(r)
    return r


def test_records_are_delivered_and_flush_reports_it(recorders: list[Recorder]) -> None:
    t = Collecting()
    r = make(recorders, t, batch_size=50)
    assert all(r.record(**fields(input_tokens=i)) for i in range(120))
    assert r.flush(5.0) is True
    assert sorted(ev.input_tokens for ev in t.got) == list(range(120))
    assert r.stats() == {
        "queued": 0,
        "delivered": 120,
        "dropped_full": 0,
        "dropped_invalid": 0,
        "dropped_rejected": 0,
        "dropped_closed": 0,
        "failed_attempts": 0,
    }


def test_flush_with_nothing_queued_is_immediately_true(recorders: list[Recorder]) -> None:
    r = make(recorders, Blocking())
    t0 = time.perf_counter()
    assert r.flush(5.0) is True
    assert time.perf_counter() - t0 < 0.1


def test_flush_skips_the_linger(recorders: list[Recorder]) -> None:
    r = make(recorders, Collecting(), linger_s=30.0, batch_size=1000)
    r.record(**fields())
    t0 = time.perf_counter()
    assert r.flush(5.0) is True
    assert time.perf_counter() - t0 < 1.0


def test_failures_are_retried_with_backoff_without_losing_records(
    recorders: list[Recorder],
) -> None:
    t = Collecting(fail_first=3)
    r = make(recorders, t, batch_size=10)
    for i in range(10):
        r.record(**fields(input_tokens=i))
    assert r.flush(10.0) is True
    s = r.stats()
    assert s["delivered"] == 10 and s["failed_attempts"] == 3 and s["queued"] == 0
    assert sorted(ev.input_tokens for ev in t.got) == list(range(10))


def test_permanently_rejected_records_are_counted_and_flush_says_false(
    recorders: list[Recorder],
) -> None:
    t = Collecting(reject=[3])
    r = make(recorders, t)
    for i in range(5):
        r.record(**fields(input_tokens=i))
    assert r.flush(5.0) is False
    s = r.stats()
    assert (s["delivered"], s["dropped_rejected"], s["queued"]) == (4, 1, 0)
    r.record(**fields(input_tokens=9))
    assert r.flush(5.0) is True  # later flushes only judge later records


def test_invalid_records_are_counted_and_logged_by_field_name_only(
    recorders: list[Recorder], caplog: pytest.LogCaptureFixture
) -> None:
    r = make(recorders, Collecting())
    caplog.set_level(logging.DEBUG)
    bad = fields(prompt=CANARY, reply=CANARY, user_id=CANARY, user_email=CANARY, input_tokens=-3)
    assert r.record(**bad) is False
    assert r.record(**fields(task_label=CANARY, user_id=CANARY)) is False
    assert r.record(**fields(producer="someone-else")) is False
    assert r.stats()["dropped_invalid"] == 3 and r.stats()["queued"] == 0
    text = "\n".join(rec.getMessage() + repr(rec.__dict__) for rec in caplog.records)
    assert "input_tokens:greater_than_equal" in text
    assert CANARY not in text


def test_record_never_raises(recorders: list[Recorder]) -> None:
    r = make(recorders, Collecting())
    weird: list[dict[str, Any]] = [
        {},
        {"tool": object()},
        fields(event_time=object()),
        fields(attributes={1: 2}),
        fields(prompt="\ud800"),
    ]
    for f in weird:
        assert r.record(**f) is False
    assert r.stats()["dropped_invalid"] == len(weird)


def test_record_stays_fast_while_the_transport_hangs(recorders: list[Recorder]) -> None:
    t = Blocking()
    r = make(recorders, t, max_buffer=1000, batch_size=100, linger_s=0.0)
    assert r.record(**fields())
    assert t.started.wait(5.0)  # the worker is now stuck inside deliver()
    n = 20_000
    worst = 0.0
    t0 = time.perf_counter()
    for i in range(n):
        start = time.perf_counter()
        r.record(**fields(input_tokens=i))
        worst = max(worst, time.perf_counter() - start)
    mean_us = (time.perf_counter() - t0) / n * 1e6
    s = r.stats()
    assert s["queued"] == 1000 and s["dropped_full"] == n + 1 - 1000 and s["delivered"] == 0
    # generous bounds for shared CI machines; the measured cost is ~7-10 µs
    assert mean_us < 200, mean_us
    assert worst < 0.25, worst
    t1 = time.perf_counter()
    assert r.flush(0.3) is False
    assert 0.25 < time.perf_counter() - t1 < 2.0


def test_close_is_bounded_when_delivery_hangs_and_is_idempotent(
    recorders: list[Recorder],
) -> None:
    t = Blocking()
    r = make(recorders, t)
    r.record(**fields())
    assert t.started.wait(5.0)
    t0 = time.perf_counter()
    assert r.close(0.5) is False
    assert time.perf_counter() - t0 < 2.0
    assert r.close(0.1) is False
    assert r.record(**fields()) is False
    assert r.stats()["dropped_closed"] == 1


def test_context_manager_flushes_and_closes_transport() -> None:
    t = Collecting()
    with Recorder(producer="unit", _transport=t) as r:
        for _ in range(7):
            r.record(**fields())
    assert len(t.got) == 7 and t.closed
    assert not r._thread.is_alive()


def test_buffer_counts_in_flight_records(recorders: list[Recorder]) -> None:
    t = Blocking()
    r = make(recorders, t, max_buffer=3, batch_size=2, linger_s=0.0)
    assert r.record(**fields()) and r.record(**fields())
    assert t.started.wait(5.0)  # two in flight
    assert r.record(**fields()) is True
    assert r.record(**fields()) is False
    assert r.stats()["queued"] == 3 and r.stats()["dropped_full"] == 1


def test_module_level_configure_and_record() -> None:
    t = Collecting()
    rec = sdk.configure(producer="unit", _transport=t)
    try:
        assert sdk.record(**fields()) is True
        assert sdk.record(input_tokens=-1) is False
        assert sdk.flush(5.0) is True
        assert len(t.got) == 1 and rec.stats()["dropped_invalid"] == 1
    finally:
        sdk.close(1.0)
    assert sdk._default is None


def test_http_transport_needs_url_and_key() -> None:
    with pytest.raises(ValueError):
        Recorder(transport="http", http_url="http://127.0.0.1:1")


# -- mapping ingest replies to retry / reject -------------------------------------------------


def test_http_202_delivers_all() -> None:
    assert interpret_http_response(202, b'{"accepted": 3}', 3) == DeliveryResult()


@pytest.mark.parametrize("status", [401, 500, 502, 503, 504, 429])
def test_http_transient_statuses_retry_everything(status: int) -> None:
    assert interpret_http_response(status, b"", 3) == DeliveryResult(retry=[0, 1, 2])


def test_http_422_drops_only_the_listed_indices() -> None:
    body = orjson.dumps(
        {
            "error": "invalid_events",
            "errors": [{"index": 1, "field": "prompt", "reason": "string_too_long"}],
            "errors_truncated": False,
        }
    )
    assert interpret_http_response(422, body, 3) == DeliveryResult(retry=[0, 2], rejected=[1])
    truncated = orjson.dumps({"error": "invalid_events", "errors": [], "errors_truncated": True})
    assert interpret_http_response(422, truncated, 2) == DeliveryResult(rejected=[0, 1])


@pytest.mark.parametrize(
    ("status", "reason"),
    [(413, "body_too_large"), (400, "too_many_events"), (413, "event_too_large")],
)
def test_http_size_limits_split_the_batch(status: int, reason: str) -> None:
    body = orjson.dumps({"error": reason})
    assert interpret_http_response(status, body, 4) is None
    assert interpret_http_response(status, body, 1) == DeliveryResult(rejected=[0])


def test_http_other_client_errors_are_final() -> None:
    assert interpret_http_response(400, b'{"error": "invalid_json"}', 2) == DeliveryResult(
        rejected=[0, 1]
    )
