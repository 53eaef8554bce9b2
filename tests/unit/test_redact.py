"""Pure redaction logic: registered fields only, keyed pseudonyms, dead letters without content."""

from __future__ import annotations

import io
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import fastavro
import pytest

from services.redactor.redact import DeadLetter, Pseudonymizer, Redacted, Redactor
from trustlog.avro import raw_codec, redacted_codec
from trustlog.registry import registry

KEY = {"1": b"k" * 32, "2": b"j" * 32}
CANARY_PROMPT = "CANARY-PROMPT-7f3a9"
CANARY_USER = "canary.user.5521@corp.example"


def raw(**over: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "event_id": "0b6c2d1e-1111-4a4a-9f9f-000000000001",
        "event_time": datetime.now(UTC),
        "producer": "svc-a",
        "tool": "chat-assistant",
        "model": "gpt-4o-mini",
        "provider": "openai",
        "workspace": None,
        "user_id": CANARY_USER,
        "user_email": CANARY_USER,
        "team": "support",
        "task_label": "support",
        "input_tokens": 100,
        "output_tokens": 20,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "status": "ok",
        "retry_count": 0,
        "policy_flags": [],
        "latency_ms": 1200,
        "client_ip": "203.0.113.9",
        "prompt": f"{CANARY_PROMPT} card 4111 1111 1111 1111",
        "reply": f"reply {CANARY_PROMPT}",
        "attributes": {"note": CANARY_PROMPT},
    }
    ev.update(over)
    return ev


def redactor(**kw: Any) -> Redactor:
    return Redactor(Pseudonymizer(KEY, kw.pop("version", "1")), **kw)


def test_keeps_only_registered_fields_and_masks_identity() -> None:
    res = redactor()(raw_codec().encode(raw()))
    assert isinstance(res, Redacted)
    out = redacted_codec().decode(res.value)
    assert set(out) == registry().kept
    assert out["user_pseudonym"].startswith("p_") and len(out["user_pseudonym"]) == 34
    assert out["pseudonym_key_version"] == "1"
    assert out["sensitive_classes"] == {"payment_card": 1}
    assert out["content_chars"] > 0
    blob = res.value.decode("latin-1")
    for canary in (CANARY_PROMPT, CANARY_USER, "canary.user", "203.0.113.9", "4111"):
        assert canary not in blob


def test_pseudonym_is_keyed_stable_and_versioned() -> None:
    p1, p2 = Pseudonymizer(KEY, "1"), Pseudonymizer(KEY, "2")
    assert p1("Alice@Corp.com ") == p1("alice@corp.com")
    assert p1("alice@corp.com") != p2("alice@corp.com")
    assert p1("alice@corp.com") != p1("bob@corp.com")
    with pytest.raises(ValueError, match="not configured"):
        Pseudonymizer(KEY, "3")


def test_missing_team_uses_directory_then_unassigned() -> None:
    r = redactor(directory={CANARY_USER.casefold(): "finance"})
    out = redacted_codec().decode(r(raw_codec().encode(raw(team=None))).value)  # type: ignore[union-attr]
    assert out["team"] == "finance"
    out = redacted_codec().decode(redactor()(raw_codec().encode(raw(team=None))).value)  # type: ignore[union-attr]
    assert out["team"] == "unassigned"


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({"input_tokens": -1}, "negative_tokens"),
        ({"retry_count": -3}, "negative_retry_count"),
        ({"user_id": "  "}, "missing_user_id"),
        ({"event_time": datetime.now(UTC) + timedelta(days=30)}, "timestamp_in_future"),
        ({"event_time": datetime(2001, 1, 1, tzinfo=UTC)}, "timestamp_too_old"),
        ({"prompt": "x" * 2_000_000}, "oversized_content"),
        ({"tool": "tool\nwith newline " + CANARY_PROMPT * 20}, "invalid_label"),
        ({"policy_flags": [CANARY_PROMPT + " free text"]}, "invalid_policy_flag"),
        ({"event_id": CANARY_PROMPT + " not an id!"}, "invalid_event_id"),
    ],
)
def test_bad_events_become_content_free_dead_letters(over: dict[str, Any], reason: str) -> None:
    res = redactor()(raw_codec().encode(raw(**over)))
    assert isinstance(res, DeadLetter)
    assert res.reason == reason
    assert CANARY_PROMPT not in repr(res) and CANARY_USER not in repr(res)
    if reason != "invalid_event_id":
        assert res.event_id == "0b6c2d1e-1111-4a4a-9f9f-000000000001"


def test_undecodable_input_is_dead_lettered() -> None:
    r = redactor()
    assert r(b"not avro at all").reason == "not_avro_single_object"  # type: ignore[union-attr]
    good = raw_codec().encode(raw())
    assert r(good[:10] + b"\xff" * 5).reason == "malformed_avro"  # type: ignore[union-attr]
    assert r(b"\xc3\x01" + b"\x00" * 8 + good[10:]).reason == "unknown_schema_fingerprint"  # type: ignore[union-attr]


def test_invalid_utf8_is_dead_lettered() -> None:
    # Hand-encode a record whose first string (event_id) holds invalid UTF-8 bytes.
    c = raw_codec()
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, c.schema, raw(event_id="AAAA"))
    body = buf.getvalue().replace(b"AAAA", b"\xff\xfe\xfd\xfc", 1)
    res = redactor()(c.header + body)
    assert isinstance(res, DeadLetter) and res.reason == "invalid_utf8"


def test_redacted_schema_fields_all_registered() -> None:
    assert set(redacted_codec().field_names) == registry().kept
    for spec in registry().fields.values():
        assert spec.purpose and spec.why


def test_raw_fields_have_a_disposition() -> None:
    reg = registry()
    raw_names = set(raw_codec().field_names)
    undeclared = raw_names - reg.kept - set(reg.raw_fields)
    assert not undeclared, f"raw fields with no registry entry: {undeclared}"


def test_throughput_sanity() -> None:
    """Not a benchmark: just catches an accidental O(n^2) in the hot path."""
    r = redactor()
    data = raw_codec().encode(raw())
    t = time.perf_counter()
    for _ in range(2000):
        r(data)
    assert time.perf_counter() - t < 10
