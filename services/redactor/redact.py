"""The redaction step as a pure function: raw Avro bytes in, redacted record or dead letter out.

No I/O here, so every privacy property can be tested without a broker. The only fields that
survive are the ones the field registry declares; content is reduced to class counts before
it is dropped; the user id becomes a keyed pseudonym.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from services.redactor.detect import scan_all
from trustlog.avro import Codec, DecodeError, raw_codec, redacted_codec
from trustlog.registry import Registry, registry

UNASSIGNED_TEAM = "unassigned"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_SAFE_LABEL = re.compile(r"^[A-Za-z0-9 ._:/@+-]{1,128}$")
_SAFE_FLAG = re.compile(r"^[a-z0-9_.:-]{1,64}$")
MAX_POLICY_FLAGS = 16
_TOKEN_FIELDS = ("input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens")
# Registry fields that are computed here rather than copied from the raw event.
_COMPUTED = frozenset(
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
    """Why an event was refused. Carries an event id only when it is a plain identifier."""

    reason: str
    event_id: str | None = None
    field: str | None = None


class Pseudonymizer:
    """HMAC-SHA256 of the normalised user id under the current key version.

    A keyed hash, not a plain or salted one: user ids come from a small, guessable space,
    so without the key nobody can test candidate names against pseudonyms.
    """

    def __init__(self, keys: dict[str, bytes], current: str) -> None:
        if current not in keys:
            raise ValueError(
                f"pseudonym key version {current!r} is not configured "
                "(set TRUSTLOG_PSEUDONYM_KEYS and TRUSTLOG_PSEUDONYM_KEY_VERSION)"
            )
        self.version = current
        self._key = keys[current]

    def __call__(self, user_id: str) -> str:
        norm = user_id.strip().casefold().encode()
        return "p_" + hmac.new(self._key, norm, hashlib.sha256).hexdigest()[:32]


def load_directory(path: Path | None) -> dict[str, str]:
    """Optional user id -> team mapping (YAML) for producers that send no team."""
    if path is None:
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    return {str(k).strip().casefold(): str(v) for k, v in (data.get("users") or data).items()}


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
        self.max_content_chars = max_content_bytes  # chars >= bytes/4; checked on chars, cheap
        self.max_content_bytes = max_content_bytes
        self.max_skew_ms = int(max_clock_skew_s * 1000)
        self.max_age_ms = int(max_event_age_s * 1000)
        self.reg = reg or registry()
        self.raw = raw or raw_codec()
        self.out = out or redacted_codec()
        self._copied = [f for f in self.out.field_names if f not in _COMPUTED]
        unknown = set(self.out.field_names) - self.reg.kept
        if unknown:
            # The redacted schema may never carry a field without a declared purpose.
            raise ValueError(f"redacted schema has unregistered fields: {sorted(unknown)}")

    def __call__(self, data: bytes, now_ms: int | None = None) -> Redacted | DeadLetter:
        try:
            ev = self.raw.decode(data)
        except DecodeError as exc:
            return DeadLetter(exc.reason)
        event_id = ev.get("event_id")
        safe_id = event_id if isinstance(event_id, str) and _SAFE_ID.match(event_id) else None
        problem = self._validate(ev, now_ms if now_ms is not None else int(time.time() * 1000))
        if problem is not None:
            return DeadLetter(problem[0], safe_id, problem[1])
        if safe_id is None:
            return DeadLetter("invalid_event_id", None, "event_id")
        prompt, reply = ev.get("prompt"), ev.get("reply")
        sensitive = scan_all(prompt, reply)
        team = (ev.get("team") or "").strip() or self.directory.get(
            ev["user_id"].strip().casefold(), UNASSIGNED_TEAM
        )
        rec: dict[str, Any] = {f: ev[f] for f in self._copied}
        rec["provider"] = rec.get("provider") or ""
        rec["workspace"] = rec.get("workspace") or ""
        rec["user_pseudonym"] = self.pseudonymize(ev["user_id"])
        rec["pseudonym_key_version"] = self.pseudonymize.version
        rec["team"] = team
        rec["sensitive_classes"] = sensitive
        rec["content_chars"] = len(prompt or "") + len(reply or "")
        return Redacted(self.out.encode(rec), team, safe_id, sensitive)

    def _validate(self, ev: dict[str, Any], now_ms: int) -> tuple[str, str] | None:
        for f in _TOKEN_FIELDS:
            if ev[f] < 0:
                return ("negative_tokens", f)
        if ev["retry_count"] < 0:
            return ("negative_retry_count", "retry_count")
        if not ev["user_id"].strip():
            return ("missing_user_id", "user_id")
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
        for f in ("prompt", "reply"):
            v = ev.get(f)
            if v and (len(v) > self.max_content_chars or len(v.encode()) > self.max_content_bytes):
                return ("oversized_content", f)
        t = ev["event_time"]
        t_ms = int(t.timestamp() * 1000) if isinstance(t, datetime) else int(t)
        if t_ms > now_ms + self.max_skew_ms:
            return ("timestamp_in_future", "event_time")
        if t_ms < now_ms - self.max_age_ms:
            return ("timestamp_too_old", "event_time")
        return None
