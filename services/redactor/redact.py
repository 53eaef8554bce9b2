"""The redaction step as a pure function: raw Avro bytes in, redacted record or dead letter out.

No I/O here, so every privacy property can be tested without a broker. The field registry
drives it: registered fields are copied, the `pseudonymize` raw field becomes a keyed
pseudonym, `scan_then_drop` fields are reduced to class counts, everything else is dropped.
Nothing a caller passes in can make it raise: any failure is a dead letter with a reason code.
"""

from __future__ import annotations

import io
import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import fastavro
import yaml

from services.redactor.detect import scan_all
from services.redactor.identity import Pseudonymizer, normalize_user_id
from trustlog.avro import HEADER_LEN, Codec, DecodeError, raw_codec, redacted_codec
from trustlog.registry import Registry, load_avsc, registry, schema_mismatches

__all__ = ["DeadLetter", "Pseudonymizer", "Redacted", "Redactor", "load_directory"]

UNASSIGNED_TEAM = "unassigned"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_SAFE_LABEL = re.compile(r"^[A-Za-z0-9 ._:/@+-]{1,128}$")
_SAFE_FLAG = re.compile(r"^[a-z0-9_.:-]{1,64}$")
MAX_POLICY_FLAGS = 16
MAX_USER_ID_CHARS = 512
_TOKEN_FIELDS = ("input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens")
# Registry fields this module computes rather than copies from the raw event.
COMPUTED = frozenset(
    {"user_pseudonym", "pseudonym_key_version", "team", "sensitive_classes", "content_chars"}
)


@dataclass(frozen=True)
class Redacted:
    value: bytes
    team: str
    event_id: str
    sensitive: dict[str, int]


@dataclass(frozen=True)
class DeadLetter:
    """Why an event was refused. Never content: an id only when it is a plain identifier,
    a field name, and for unexpected failures the exception type (not its message)."""

    reason: str
    event_id: str | None = None
    field: str | None = None
    detail: str | None = None


def load_directory(path: Path | None) -> dict[str, str]:
    """Optional user id -> team mapping (YAML, optionally under ``users:``) for producers that
    send no team. Errors never quote an entry: its key is a real identity."""
    if path is None:
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    entries = data.get("users", data) if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise ValueError(f"directory file {path} must map user ids to teams")
    out: dict[str, str] = {}
    for i, (user, team) in enumerate(entries.items(), 1):
        if not isinstance(team, str) or not _SAFE_LABEL.match(team):
            raise ValueError(f"directory file {path}: entry {i} has no valid team label")
        out[normalize_user_id(str(user))] = team
    return out


def _plain_longs(t: Any) -> Any:
    """The same Avro type with logical types removed (identical binary layout)."""
    if isinstance(t, list):
        return [_plain_longs(m) for m in t]
    if isinstance(t, dict):
        if "logicalType" in t and t.get("type") in ("long", "int"):
            return t["type"]
        return {k: _plain_longs(v) for k, v in t.items()}
    return t


class Redactor:
    def __init__(
        self,
        pseudonymize: Pseudonymizer,
        *,
        directory: dict[str, str] | None = None,
        max_content_bytes: int = 1024 * 1024,
        max_clock_skew_s: float = 24 * 3600,
        max_event_age_s: float = 7 * 24 * 3600,
        reg: Registry | None = None,
        raw: Codec | None = None,
        out: Codec | None = None,
    ) -> None:
        self.pseudonymize = pseudonymize
        self.directory = directory or {}
        self.max_content_bytes = max_content_bytes
        self.max_skew_ms = int(max_clock_skew_s * 1000)
        self.max_age_ms = int(max_event_age_s * 1000)
        self.reg = reg or registry()
        self.raw = raw or raw_codec()
        self.out = out or redacted_codec()
        raw_json, out_json = load_avsc(self.raw.name), load_avsc(self.out.name)
        problems = schema_mismatches(self.reg, raw_json, out_json)
        raw_names = set(self.raw.field_names)
        self.copied = tuple(f for f in self.out.field_names if f not in COMPUTED)
        problems += [f"registered field {f!r} is neither in the raw event nor computed"
                     for f in self.copied if f not in raw_names]  # fmt: skip
        problems += [f"computed field {f!r} is not registered" for f in COMPUTED - self.reg.kept]
        (self.identity_field,) = self.reg.raw_with("pseudonymize")
        self.scanned = self.reg.raw_with("scan_then_drop")
        if problems:
            # The redactor never runs with a schema the registry does not describe exactly.
            raise ValueError("schemas disagree with the field registry: " + "; ".join(problems))
        # For dead letters of undecodable records: the same layout with plain longs tells an
        # out-of-range timestamp from garbage, and yields the event id where one exists.
        self._lenient = fastavro.parse_schema(_plain_longs(raw_json))

    def __call__(self, data: bytes, now_ms: int | None = None) -> Redacted | DeadLetter:
        try:
            return self._redact(data, now_ms if now_ms is not None else int(time.time() * 1000))
        except Exception as exc:
            # A bug (or a detector failure) must not stop the stream or replay forever; the
            # type name is safe to keep, the message might quote content.
            return DeadLetter("redactor_error", None, None, type(exc).__name__)

    def _redact(self, data: bytes, now_ms: int) -> Redacted | DeadLetter:
        try:
            ev = self.raw.decode(data)
        except DecodeError as exc:
            return self._undecodable(data, exc.reason)
        event_id = ev.get("event_id")
        safe_id = event_id if isinstance(event_id, str) and _SAFE_ID.match(event_id) else None
        problem = self._validate(ev, now_ms)
        if problem is not None:
            return DeadLetter(problem[0], safe_id, problem[1])
        if safe_id is None:
            return DeadLetter("invalid_event_id", None, "event_id")
        texts = [ev.get(f) for f in self.scanned]
        sensitive = scan_all(*texts)
        user = ev[self.identity_field]
        team = (ev.get("team") or "").strip() or self.directory.get(
            normalize_user_id(user), UNASSIGNED_TEAM
        )
        rec: dict[str, Any] = {f: ev[f] for f in self.copied}
        rec["provider"] = rec.get("provider") or ""
        rec["workspace"] = rec.get("workspace") or ""
        rec["user_pseudonym"] = self.pseudonymize(user)
        rec["pseudonym_key_version"] = self.pseudonymize.version
        rec["team"] = team
        rec["sensitive_classes"] = sensitive
        rec["content_chars"] = sum(len(t) for t in texts if t)
        return Redacted(self.out.encode(rec), team, safe_id, sensitive)

    def _undecodable(self, data: bytes, reason: str) -> DeadLetter:
        if data[2:HEADER_LEN] != self.raw.fingerprint:
            return DeadLetter(reason)  # not our layout: nothing in it can be read as an id
        ev = None
        if reason == "malformed_avro":
            try:
                ev = fastavro.schemaless_reader(io.BytesIO(data[HEADER_LEN:]), self._lenient, None)
            except Exception:
                ev = None
        if isinstance(ev, dict):
            eid = ev.get("event_id")
            safe = eid if isinstance(eid, str) and _SAFE_ID.match(eid) else None
            # Only the logical type failed: a timestamp no calendar can hold.
            return DeadLetter("timestamp_out_of_range", safe, "event_time")
        return DeadLetter(reason, self._leading_event_id(data))

    def _leading_event_id(self, data: bytes) -> str | None:
        """The event id of a record garbled after its first field (event_id comes first)."""
        if self.raw.field_names[:1] != ["event_id"]:
            return None
        try:
            head = fastavro.schemaless_reader(io.BytesIO(data[HEADER_LEN:]), _EVENT_ID_PREFIX, None)
        except Exception:
            return None
        eid = head.get("event_id") if isinstance(head, dict) else None
        return eid if isinstance(eid, str) and _SAFE_ID.match(eid) else None

    def _validate(self, ev: dict[str, Any], now_ms: int) -> tuple[str, str] | None:
        for f in _TOKEN_FIELDS:
            if ev[f] < 0:
                return ("negative_tokens", f)
        if ev["retry_count"] < 0:
            return ("negative_retry_count", "retry_count")
        user = ev[self.identity_field]
        if not user.strip():
            return ("missing_user_id", self.identity_field)
        if len(user) > MAX_USER_ID_CHARS:
            return ("oversized_field", self.identity_field)
        for f in ("tool", "model", "producer"):
            if not _SAFE_LABEL.match(ev[f]):
                return ("invalid_label", f)
        for f in ("provider", "workspace", "team"):
            v = ev.get(f)
            if v and not _SAFE_LABEL.match(v):
                return ("invalid_label", f)
        flags = ev["policy_flags"]
        # Flags are labels from the producer's policy engine, not a side channel for text.
        if len(flags) > MAX_POLICY_FLAGS or not all(_SAFE_FLAG.match(x) for x in flags):
            return ("invalid_policy_flag", "policy_flags")
        for f in self.scanned:
            v = ev.get(f)
            # chars first: cheap, and a text with more chars than the cap has more bytes too;
            # one with a quarter of them cannot have more (UTF-8 takes at most 4 per char)
            if (
                v
                and len(v) * 4 > self.max_content_bytes
                and (len(v) > self.max_content_bytes or len(v.encode()) > self.max_content_bytes)
            ):
                return ("oversized_content", f)
        t = ev["event_time"]
        t_ms = int(t.timestamp() * 1000) if isinstance(t, datetime) else int(t)
        if t_ms > now_ms + self.max_skew_ms:
            return ("timestamp_in_future", "event_time")
        if t_ms < now_ms - self.max_age_ms:
            return ("timestamp_too_old", "event_time")
        return None


_EVENT_ID_PREFIX = fastavro.parse_schema(
    {"type": "record", "name": "EventIdPrefix", "fields": [{"name": "event_id", "type": "string"}]}
)
