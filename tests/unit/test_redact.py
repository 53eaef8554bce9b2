"""Pure redaction logic: registered fields only, keyed pseudonyms across a key rotation, dead
letters without content, and properties over generated events that no content ever leaks."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import string
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from services.redactor.app import build_redactor, dead_letter_value
from services.redactor.identity import pseudonyms_for
from services.redactor.redact import DeadLetter, Pseudonymizer, Redacted, Redactor, load_directory
from trustlog.avro import raw_codec, redacted_codec
from trustlog.registry import load_avsc, registry
from trustlog.settings import RedactorSettings

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


def test_trailing_bytes_after_a_record_are_refused() -> None:
    res = redactor()(raw_codec().encode(raw()) + b"junk")
    assert isinstance(res, DeadLetter) and res.reason == "trailing_bytes"


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


# --------------------------------------------------------------------------- identity


@pytest.fixture
def no_env_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Settings read only what a test passes, not a developer's .trustlog/local.env."""
    monkeypatch.setenv("TRUSTLOG_STATE_DIR", str(tmp_path))
    for var in ("TRUSTLOG_PSEUDONYM_KEYS", "TRUSTLOG_PSEUDONYM_KEY_VERSION"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def _settings(version: str, keys: dict[str, str] | None = None) -> RedactorSettings:
    keys = keys or {"1": "first-key-" + "a" * 22, "2": "second-key-" + "b" * 21}
    return RedactorSettings(
        pseudonym_keys={v: SecretStr(k) for v, k in keys.items()}, pseudonym_key_version=version
    )


def _redact_with(s: RedactorSettings, **over: Any) -> dict[str, Any]:
    res = build_redactor(s)(raw_codec().encode(raw(**over)))
    assert isinstance(res, Redacted)
    return redacted_codec().decode(res.value)


def test_rotation_switches_new_events_and_lookup_spans_both_versions(no_env_files: Path) -> None:
    before, after = _settings("1"), _settings("2")
    old = _redact_with(before)
    new = _redact_with(after, event_id="0b6c2d1e-1111-4a4a-9f9f-000000000002")
    # new events: the new key's pseudonym and version; the old row is untouched (it is
    # already written) and keeps version 1 until its TTL
    assert (old["pseudonym_key_version"], new["pseudonym_key_version"]) == ("1", "2")
    assert old["user_pseudonym"] != new["user_pseudonym"]
    # the lookup under the new settings still finds the old row's pseudonym
    assert pseudonyms_for(CANARY_USER, after) == {
        "1": old["user_pseudonym"],
        "2": new["user_pseudonym"],
    }
    assert pseudonyms_for(f"  {CANARY_USER.upper()} ", after) == pseudonyms_for(CANARY_USER, after)


def test_a_retired_key_can_no_longer_link_its_rows(no_env_files: Path) -> None:
    both = _settings("2")
    only_new = _settings("2", {"2": both.pseudonym_keys["2"].get_secret_value()})
    assert set(pseudonyms_for(CANARY_USER, only_new)) == {"2"}
    assert pseudonyms_for(CANARY_USER, only_new)["2"] == pseudonyms_for(CANARY_USER, both)["2"]


def test_a_key_retired_in_the_environment_does_not_survive_in_an_env_file(
    no_env_files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old_key, new_key = "old-key-" + "o" * 24, "new-key-" + "n" * 24
    (no_env_files / "local.env").write_text(
        f"TRUSTLOG_PSEUDONYM_KEYS={json.dumps({'1': old_key})}\nTRUSTLOG_PSEUDONYM_KEY_VERSION=1\n"
    )
    assert set(RedactorSettings().pseudonym_keys) == {"1"}
    monkeypatch.setenv("TRUSTLOG_PSEUDONYM_KEYS", json.dumps({"2": new_key}))
    monkeypatch.setenv("TRUSTLOG_PSEUDONYM_KEY_VERSION", "2")
    s = RedactorSettings()
    # the environment's key set replaces the file's whole; it is not merged into it
    assert set(s.pseudonym_keys) == {"2"}
    assert set(pseudonyms_for(CANARY_USER, s)) == {"2"}


def test_pseudonym_is_hmac_sha256_of_the_normalised_id() -> None:
    key = b"k" * 32
    want = "p_" + hmac.new(key, b"alice@corp.com", hashlib.sha256).hexdigest()[:32]
    assert Pseudonymizer({"1": key}, "1")(" Alice@Corp.com") == want


def test_remembered_pseudonyms_are_the_computed_ones_and_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.redactor import identity

    monkeypatch.setattr(identity, "CACHE_ENTRIES", 3)
    key = b"k" * 32
    p = Pseudonymizer({"1": key}, "1")
    users = [f"user{i}@corp.com" for i in range(7)] * 2 + [" USER1@corp.com"]
    assert [p(u) for u in users] == [identity.pseudonym(key, u) for u in users]
    assert len(p._cache) <= 3
    # a rotation is a new Pseudonymizer (the redactor restarts): nothing carries over
    assert Pseudonymizer({"1": key, "2": b"j" * 32}, "2")(users[0]) != p(users[0])


def test_key_settings_are_validated_without_quoting_secrets(no_env_files: Path) -> None:
    with pytest.raises(ValidationError, match="is not a version in TRUSTLOG_PSEUDONYM_KEYS"):
        _settings("3")
    with pytest.raises(ValidationError, match="share a secret") as err:
        _settings("1", {"1": "same-secret-" + "x" * 20, "2": "same-secret-" + "x" * 20})
    assert "same-secret" not in str(err.value)
    with pytest.raises(ValidationError, match="shorter than 16") as err3:
        _settings("1", {"1": "short-secret"})
    assert "short-secret" not in str(err3.value)
    with pytest.raises(ValueError, match="not configured") as err2:
        pseudonyms_for(CANARY_USER, RedactorSettings(pseudonym_keys={}))
    assert CANARY_USER not in str(err2.value)


def test_directory_file(tmp_path: Path) -> None:
    f = tmp_path / "dir.yaml"
    f.write_text(f"users:\n  {CANARY_USER.upper()}: finance\n  other@corp.example: legal\n")
    directory = load_directory(f)
    r = redactor(directory=directory)
    out = redacted_codec().decode(r(raw_codec().encode(raw(team=None))).value)  # type: ignore[union-attr]
    assert out["team"] == "finance"
    # the producer's team wins over the directory
    out = redacted_codec().decode(r(raw_codec().encode(raw(team="support"))).value)  # type: ignore[union-attr]
    assert out["team"] == "support"
    # an unknown user is kept under "unassigned", never dropped
    out = redacted_codec().decode(r(raw_codec().encode(raw(team=" ", user_id="u-9"))).value)  # type: ignore[union-attr]
    assert out["team"] == "unassigned"
    f.write_text(f"{CANARY_USER}: 'not a team\\n{CANARY_PROMPT}'\n")
    with pytest.raises(ValueError, match="entry 1 has no valid team label") as err:
        load_directory(f)
    assert CANARY_USER not in str(err.value) and CANARY_PROMPT not in str(err.value)


# --------------------------------------------------------------------------- more bad input


def _encode_with(schema_json: dict[str, Any], record: dict[str, Any]) -> bytes:
    """Bytes in the raw event's layout, written from a hand-made schema (same fingerprint)."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema_json), record)
    return raw_codec().header + buf.getvalue()


def _plain_raw_schema() -> dict[str, Any]:
    schema = load_avsc("raw_event.v1")
    for f in schema["fields"]:
        if f["name"] == "event_time":
            f["type"] = "long"
    return schema


@pytest.mark.parametrize("millis", [2**62, -(2**62), 253_402_300_800_000])
def test_timestamp_no_calendar_holds_is_a_dead_letter_with_its_id(millis: int) -> None:
    res = redactor()(_encode_with(_plain_raw_schema(), raw(event_time=millis)))
    assert res == DeadLetter("timestamp_out_of_range", raw()["event_id"], "event_time")


def test_invalid_utf8_in_content_keeps_the_event_id() -> None:
    data = raw_codec().encode(raw(prompt="PPPPPPPPPPPP"))
    res = redactor()(data.replace(b"PPPPPPPPPPPP", b"\xff\xfe" * 6, 1))
    assert res == DeadLetter("invalid_utf8", raw()["event_id"])


def test_truncated_record_keeps_the_event_id() -> None:
    data = raw_codec().encode(raw())
    res = redactor()(data[: len(data) // 2])
    assert res == DeadLetter("malformed_avro", raw()["event_id"])


def test_oversized_user_id_is_refused() -> None:
    res = redactor()(raw_codec().encode(raw(user_id="u" * 10_000)))
    assert res == DeadLetter("oversized_field", raw()["event_id"], "user_id")


def test_a_redactor_bug_is_a_dead_letter_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*texts: str | None) -> dict[str, int]:
        raise RuntimeError(f"detector choked on {texts[0]}")

    monkeypatch.setattr("services.redactor.redact.scan_all", broken)
    res = redactor()(raw_codec().encode(raw()))
    assert res == DeadLetter("redactor_error", None, None, "RuntimeError")
    assert CANARY_PROMPT.encode() not in dead_letter_value(res, "raw", 0, 1)


# --------------------------------------------------------------------------- properties

# Generated labels and ids use only these characters. Every content window the leak check
# looks at holds at least one character outside them, so a window can only turn up in the
# output if the redactor copied it, never by coincidence with a team name or an id.
OUT_ALPHABET = frozenset(string.ascii_lowercase + string.digits + "-_")
WINDOW = 8
_LABELS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=24)
_SEPARATORS = st.sampled_from(["§", "Ж", "€", "😀", "ß", "中", "\u2028", "é"])


def _chunked() -> st.SearchStrategy[str]:
    """Arbitrary text cut into runs of at most 7 characters by non-ASCII separators, so that
    every window of 8 characters holds a separator."""
    part = st.tuples(st.text(max_size=WINDOW - 1), _SEPARATORS).map("".join)
    return st.lists(part, min_size=2, max_size=40).map("".join)


_CANARIES = st.builds(
    lambda tag, card: f"CANARY-{tag} card {card} mail Jane.Doe@Corp.Example ip 203.0.113.9",
    st.text(alphabet="0123456789ABCDEF", min_size=8, max_size=16),
    st.sampled_from(["4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005"]),
)
_CONTENT = st.one_of(_chunked(), _CANARIES)
_IDENTITY = st.one_of(
    st.builds(
        lambda first, last, n: f"{first}.{last}{n}@Corp.Example",
        st.text(alphabet=string.ascii_letters, min_size=2, max_size=12),
        st.text(alphabet=string.ascii_letters, min_size=2, max_size=12),
        st.integers(0, 10_000),
    ),
    _chunked(),
)
_IP = st.ip_addresses().map(str).filter(lambda s: len(s) >= WINDOW)


def _distinctive_windows(text: str) -> set[bytes]:
    return {
        text[i : i + WINDOW].encode()
        for i in range(len(text) - WINDOW + 1)
        if not set(text[i : i + WINDOW]) <= OUT_ALPHABET
    }


@st.composite
def _raw_events(draw: st.DrawFn) -> dict[str, Any]:
    now = datetime.now(UTC)
    return raw(
        event_id=draw(st.uuids().map(str)),
        event_time=now + timedelta(seconds=draw(st.integers(-10 * 86400, 2 * 86400))),
        producer=draw(_LABELS),
        tool=draw(_LABELS),
        model=draw(_LABELS),
        provider=draw(st.none() | _LABELS),
        workspace=draw(st.none() | _LABELS),
        team=draw(st.none() | _LABELS),
        user_id=draw(_IDENTITY),
        user_email=draw(st.none() | _IDENTITY),
        # 2-byte varints at most: larger numbers add nothing here
        input_tokens=draw(st.integers(-3, 8000)),
        output_tokens=draw(st.integers(0, 8000)),
        policy_flags=draw(
            st.lists(st.text(alphabet="abc_.:-", min_size=1, max_size=8), max_size=3)
        ),
        client_ip=draw(st.none() | _IP),
        prompt=draw(st.none() | _CONTENT),
        reply=draw(st.none() | _CONTENT),
        attributes=draw(st.dictionaries(_CONTENT, _CONTENT, max_size=3)),
    )


_PROPERTY_REDACTOR = redactor()


def _emitted(res: Redacted | DeadLetter) -> bytes:
    """Every byte the redactor service would publish or log for this result."""
    if isinstance(res, Redacted):
        return res.value + res.team.encode() + res.event_id.encode() + repr(res.sensitive).encode()
    return dead_letter_value(res, "ai-usage.raw.v1", 0, 0) + repr(res).encode()


def _assert_nothing_leaks(ev: dict[str, Any], out: bytes) -> None:
    secrets = [ev["prompt"], ev["reply"], ev["client_ip"], ev["user_email"], ev["user_id"]]
    secrets += [t for kv in ev["attributes"].items() for t in kv]
    for text in filter(None, secrets):
        for w in _distinctive_windows(text):
            assert w not in out, f"content window {w!r} reached the output"
    for ident in filter(None, (ev["user_id"], ev["user_email"])):
        for form in (ident, ident.strip(), ident.strip().casefold()):
            if len(form) >= WINDOW:
                assert form.encode() not in out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_raw_events())
def test_no_content_or_identity_ever_leaves_the_redactor(ev: dict[str, Any]) -> None:
    res = _PROPERTY_REDACTOR(raw_codec().encode(ev))
    assert isinstance(res, Redacted | DeadLetter)
    _assert_nothing_leaks(ev, _emitted(res))
    if isinstance(res, Redacted):
        out = redacted_codec().decode(res.value)
        assert set(out) == registry().kept
        assert out["user_pseudonym"] == _PROPERTY_REDACTOR.pseudonymize(ev["user_id"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_raw_events(), st.data())
def test_corrupted_bytes_never_crash_and_dead_letters_hold_no_content(
    ev: dict[str, Any], data: st.DataObject
) -> None:
    blob = bytearray(raw_codec().encode(ev))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(blob) - 1))
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip":
            blob[pos] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del blob[pos:]
            if not blob:
                break
        else:
            blob[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
    res = _PROPERTY_REDACTOR(bytes(blob))
    assert isinstance(res, Redacted | DeadLetter)
    # A corrupted record that still decodes is simply a different record: its labels are
    # producer-controlled like any label. What is checked is that refusals carry no content.
    if isinstance(res, DeadLetter):
        _assert_nothing_leaks(ev, _emitted(res))
