"""UsageEventIn validation, error shaping and the ingest HTTP handler against a fake producer.

No Kafka here: the app tests use an in-memory producer on a loopback test server.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from services.ingest.app import METRICS_KEY, create_app
from services.ingest.events import (
    CallStatus,
    TaskLabel,
    UsageEventIn,
    to_raw_record,
    validation_errors,
)
from trustlog.avro import raw_codec
from trustlog.settings import IngestSettings

CANARY = "CANARY-7f3a9c-do-not-leak"
CONTENT_FIELDS = ("prompt", "reply", "user_id", "user_email")


def base(**over: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "tool": "chat-assistant",
        "model": "gpt-4o-mini",
        "user_id": "u-1",
        "input_tokens": 10,
        "output_tokens": 5,
    }
    ev.update(over)
    return ev


def validate(data: Any, cap: int | None = None) -> UsageEventIn:
    ctx = {"max_field_bytes": cap} if cap else None
    return UsageEventIn.model_validate(data, context=ctx)


def errors_of(data: Any, cap: int | None = None) -> list[dict[str, Any]]:
    with pytest.raises(ValidationError) as ei:
        validate(data, cap)
    return validation_errors(ei.value)


def reasons(data: Any, cap: int | None = None) -> set[tuple[str | None, str]]:
    return {(e["field"], e["reason"]) for e in errors_of(data, cap)}


# -- the model -----------------------------------------------------------------------------


def test_minimal_event_gets_defaults() -> None:
    before = datetime.now(UTC)
    ev = validate(base())
    assert uuid.UUID(ev.event_id).version == 4
    assert ev.event_time.tzinfo is not None and before <= ev.event_time <= datetime.now(UTC)
    assert ev.task_label is TaskLabel.other and ev.status is CallStatus.ok
    assert ev.cached_tokens == ev.reasoning_tokens == ev.retry_count == 0
    assert ev.policy_flags == [] and ev.attributes == {}


def test_two_events_get_distinct_ids() -> None:
    assert validate(base()).event_id != validate(base()).event_id


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-05-01T12:00:00Z", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01T14:00:00+02:00", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01T12:00:00.123456+00:00", datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)),
        (1714564800000, datetime(2024, 5, 1, 12, tzinfo=UTC)),
        (1714564800123.0, datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)),
        (
            datetime(2024, 5, 1, 7, tzinfo=timezone(timedelta(hours=-5))),
            datetime(2024, 5, 1, 12, tzinfo=UTC),
        ),
    ],
)
def test_event_time_forms_normalise_to_utc(value: Any, expected: datetime) -> None:
    got = validate(base(event_time=value)).event_time
    assert got == expected and got.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("2024-05-01T12:00:00", "timezone_required"),
        (datetime(2024, 5, 1, 12), "timezone_required"),
        ("yesterday", "invalid_event_time"),
        ("1714564800000", "invalid_event_time"),
        (True, "invalid_event_time"),
        (10**20, "invalid_event_time"),
        ([], "invalid_event_time"),
    ],
)
def test_bad_event_times(value: Any, reason: str) -> None:
    assert reasons(base(event_time=value)) == {("event_time", reason)}


def test_event_id_must_be_uuid_and_is_normalised() -> None:
    u = uuid.uuid4()
    assert validate(base(event_id=str(u).upper())).event_id == str(u)
    assert validate(base(event_id=u)).event_id == str(u)
    assert reasons(base(event_id="order-42")) == {("event_id", "invalid_uuid")}
    assert reasons(base(event_id=42)) == {("event_id", "string_type")}


def test_task_label_is_a_fixed_list_never_free_text() -> None:
    for label in ("drafting", "research", "coding", "support", "data_cleanup", "other"):
        assert validate(base(task_label=label)).task_label.value == label
    assert reasons(base(task_label="summarise the Q3 board memo")) == {("task_label", "enum")}
    assert reasons(base(status="fine")) == {("status", "enum")}


@pytest.mark.parametrize(
    "field", ["input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens", "retry_count"]
)
def test_counts_are_non_negative_integers(field: str) -> None:
    assert reasons(base(**{field: -1})) == {(field, "greater_than_equal")}
    assert reasons(base(**{field: "12"})) == {(field, "int_type")}
    assert reasons(base(**{field: True})) == {(field, "int_type")}
    assert reasons(base(**{field: 2**63})) == {(field, "less_than_equal")}


def test_required_fields() -> None:
    assert reasons({"tool": "x"}) == {
        ("model", "missing"),
        ("user_id", "missing"),
        ("input_tokens", "missing"),
        ("output_tokens", "missing"),
    }
    assert reasons(base(tool="")) == {("tool", "string_too_short")}


def test_unknown_fields_are_rejected_by_name() -> None:
    assert reasons(base(prompt_text="hi")) == {("prompt_text", "extra_forbidden")}


def test_producer_cannot_be_claimed_by_the_client() -> None:
    assert reasons(base(producer="billing-service")) == {("producer", "extra_forbidden")}


def test_content_allowed_up_to_the_configured_cap_in_bytes() -> None:
    assert validate(base(prompt="a" * 100, reply="b" * 100), cap=100).prompt == "a" * 100
    assert reasons(base(prompt="a" * 101), cap=100) == {("prompt", "string_too_long")}
    # 34 x 3-byte characters = 102 bytes: over the cap although only 34 characters
    assert reasons(base(reply="€" * 34), cap=100) == {("reply", "string_too_long")}
    assert validate(base(reply="€" * 33), cap=100).reply == "€" * 33


def test_identifiers_have_their_own_small_cap() -> None:
    assert reasons(base(tool="t" * 257)) == {("tool", "string_too_long")}
    assert reasons(base(user_email="e" * 321)) == {("user_email", "string_too_long")}
    assert reasons(base(policy_flags=["f"] * 65)) == {("policy_flags", "too_long")}
    assert reasons(base(attributes={f"k{i}": "v" for i in range(65)})) == {
        ("attributes", "too_long")
    }
    # a tiny configured cap also applies to identifiers
    assert reasons(base(tool="t" * 20), cap=12) == {("tool", "string_too_long")}


def test_lone_surrogates_are_rejected_not_crashing_the_encoder() -> None:
    assert reasons(base(prompt="ok \ud800 no")) == {("prompt", "invalid_utf8")}


def test_to_raw_record_round_trips_through_the_avro_codec() -> None:
    ev = validate(
        base(
            event_time="2024-05-01T12:00:00.123Z",
            task_label="coding",
            status="blocked",
            policy_flags=["pii.block"],
            attributes={"app": "x"},
            prompt="héllo",
            latency_ms=12,
        )
    )
    rec = to_raw_record(ev, "producer-a")
    assert rec["producer"] == "producer-a"
    assert set(rec) == set(raw_codec().field_names)
    back = raw_codec().decode(raw_codec().encode(rec))
    assert back["event_time"] == datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)
    assert back["task_label"] == "coding" and back["status"] == "blocked"
    assert back["prompt"] == "héllo" and back["policy_flags"] == ["pii.block"]
    assert back["event_id"] == ev.event_id


# -- error shaping never carries values -----------------------------------------------------


def _bad_events_with_canary() -> list[Any]:
    """Many ways to be invalid, each with the canary in content and identity fields."""
    planted = {"prompt": CANARY, "reply": CANARY, "user_id": CANARY, "user_email": CANARY}
    return [
        base(**planted, input_tokens=-5),
        base(**planted, task_label=CANARY),
        base(**planted, status=CANARY),
        base(**planted, event_time=CANARY),
        base(**planted, event_id=CANARY),
        base(**planted, input_tokens=CANARY),
        base(**planted, attributes={"k": [CANARY]}),
        base(**planted, policy_flags=[CANARY * 10]),
        base(**planted, unknown_field=CANARY),
        base(prompt=CANARY * 100, reply=CANARY * 100, user_id=CANARY * 100, user_email=CANARY * 50),
        base(prompt=[CANARY], reply={"x": CANARY}, user_id=[CANARY], user_email=123),
        base(prompt=CANARY + "\ud800", user_id=CANARY + "\udfff"),
        [CANARY],
        CANARY,
    ]


@pytest.mark.parametrize("data", _bad_events_with_canary())
def test_errors_never_contain_planted_values(data: Any) -> None:
    with pytest.raises(ValidationError) as ei:
        validate(data, cap=len(CANARY) * 3)
    shaped = validation_errors(ei.value, index=7)
    assert shaped and all(e["index"] == 7 for e in shaped)
    assert all(set(e) == {"index", "field", "reason"} for e in shaped)
    assert CANARY not in json.dumps(shaped)
    # hide_input_in_errors: even an accidental str(exc) in a log line does not leak values
    assert CANARY not in str(ei.value)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    field=st.sampled_from(list(UsageEventIn.model_fields)),
    value=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.just(CANARY),
        lambda kids: (
            st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3)
        ),
        max_leaves=5,
    ),
)
def test_errors_never_echo_values_property(field: str, value: Any) -> None:
    data = base(prompt=CANARY, reply=CANARY, user_id=CANARY, user_email=CANARY)
    data[field] = value
    try:
        validate(data, cap=64)
    except ValidationError as exc:
        assert CANARY not in json.dumps(validation_errors(exc))


def test_long_unknown_field_names_are_truncated() -> None:
    shaped = errors_of(base(**{"x" * 500: 1}))
    assert shaped == [{"field": "x" * 64, "reason": "extra_forbidden"}]


# -- the HTTP handler against a fake producer -----------------------------------------------


class FakeProducer:
    """Records what was sent; can be told to fail sends or acknowledgements."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.fail_ack: BaseException | None = None
        self.hang = False

    async def send(
        self, topic: str, value: bytes | None = None, key: bytes | None = None
    ) -> asyncio.Future[Any]:
        assert value is not None and key is None
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.fail_ack is not None:
            fut.set_exception(self.fail_ack)
        elif not self.hang:
            self.sent.append((topic, value))
            fut.set_result(None)
        return fut


KEYS = {"key-a": "producer-a", "key-b": "producer-b"}


@pytest.fixture
async def client() -> Any:
    settings = IngestSettings(
        api_keys=KEYS,
        max_batch_events=5,
        max_body_bytes=4096,
        max_field_bytes=200,
        topic_raw="raw-test",
    )
    producer = FakeProducer()
    app = await create_app(settings, producer)
    async with TestClient(TestServer(app)) as c:
        c.producer = producer  # type: ignore[attr-defined]
        yield c


async def post(
    c: TestClient, body: Any, key: str | None = "key-a", raw: bytes | None = None
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = raw if raw is not None else orjson.dumps(body)
    resp = await c.post("/v1/events", data=data, headers=headers)
    return resp.status, await resp.json()


async def test_accepts_batch_and_stamps_producer_from_key(client: TestClient) -> None:
    status, body = await post(
        client, {"events": [base(), base(event_id=str(uuid.uuid4()))]}, "key-b"
    )
    assert status == 202 and body["accepted"] == 2 and len(body["event_ids"]) == 2
    sent = client.producer.sent  # type: ignore[attr-defined]
    decoded = [raw_codec().decode(v) for _, v in sent]
    assert {t for t, _ in sent} == {"raw-test"}
    assert [d["producer"] for d in decoded] == ["producer-b", "producer-b"]
    assert [d["event_id"] for d in decoded] == body["event_ids"]


async def test_accepts_a_bare_array(client: TestClient) -> None:
    status, body = await post(client, [base()])
    assert status == 202 and body["accepted"] == 1


@pytest.mark.parametrize(
    ("key", "reason"), [(None, "missing_api_key"), ("nope", "unknown_api_key")]
)
async def test_auth(client: TestClient, key: str | None, reason: str) -> None:
    assert await post(client, [base()], key) == (401, {"error": reason})
    assert not client.producer.sent  # type: ignore[attr-defined]


async def test_basic_auth_scheme_is_not_a_bearer_key(client: TestClient) -> None:
    resp = await client.post("/v1/events", data=b"[]", headers={"Authorization": "Basic key-a"})
    assert resp.status == 401 and (await resp.json())["error"] == "missing_api_key"


@pytest.mark.parametrize(
    ("raw", "status", "reason"),
    [
        (b"{not json", 400, "invalid_json"),
        (b'{"events": {}}', 400, "invalid_body"),
        (b'{"events": [], "producer": "x"}', 400, "invalid_body"),
        (b'"hello"', 400, "invalid_body"),
        (b"[]", 400, "empty_batch"),
        (b'{"events": []}', 400, "empty_batch"),
        (orjson.dumps([base()] * 6), 400, "too_many_events"),
        (b"[" + b" " * 5000 + b"]", 413, "body_too_large"),
    ],
)
async def test_bad_bodies(client: TestClient, raw: bytes, status: int, reason: str) -> None:
    got_status, body = await post(client, None, raw=raw)
    assert (got_status, body["error"]) == (status, reason)
    assert not client.producer.sent  # type: ignore[attr-defined]


async def test_batch_is_all_or_nothing_with_indexed_errors_without_values(
    client: TestClient,
) -> None:
    events = [
        base(prompt=CANARY),
        base(user_id=CANARY, input_tokens=-1),
        base(user_email=CANARY, task_label=CANARY),
        "not an object",
    ]
    status, body = await post(client, {"events": events})
    assert status == 422 and body["error"] == "invalid_events"
    assert body["errors"] == [
        {"index": 1, "field": "input_tokens", "reason": "greater_than_equal"},
        {"index": 2, "field": "task_label", "reason": "enum"},
        {"index": 3, "field": None, "reason": "model_type"},
    ]
    assert CANARY not in json.dumps(body)
    assert not client.producer.sent  # type: ignore[attr-defined]


async def test_kafka_failure_is_503_and_retryable(client: TestClient) -> None:
    client.producer.fail_ack = KafkaConnectionError()  # type: ignore[attr-defined]
    status, body = await post(client, [base()])
    assert (status, body) == (503, {"error": "kafka_unavailable"})
    health = await (await client.get("/healthz")).json()
    assert health["checks"]["kafka"]["ok"] is False
    client.producer.fail_ack = None  # type: ignore[attr-defined]
    assert (await post(client, [base()]))[0] == 202
    assert (await client.get("/healthz")).status == 200


async def test_record_too_large_for_kafka_is_413_not_retryable(client: TestClient) -> None:
    client.producer.fail_ack = MessageSizeTooLargeError()  # type: ignore[attr-defined]
    assert await post(client, [base()]) == (413, {"error": "event_too_large"})


async def test_no_202_before_every_ack(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("services.ingest.app.PUBLISH_TIMEOUT_S", 0.2)
    client.producer.hang = True  # type: ignore[attr-defined]
    status, body = await post(client, [base()])
    assert (status, body["error"]) == (503, "kafka_unavailable")


async def test_metrics_count_accepted_and_rejected(client: TestClient) -> None:
    await post(client, [base(), base()])
    await post(client, [base()], "wrong")
    assert isinstance(client.server, TestServer)
    text = client.server.app[METRICS_KEY].render().decode()
    assert "trustlog_ingest_events_accepted_total 2.0" in text
    assert 'trustlog_ingest_requests_rejected_total{reason="unknown_api_key"} 1.0' in text
    assert "trustlog_ingest_publish_seconds_count 1.0" in text
