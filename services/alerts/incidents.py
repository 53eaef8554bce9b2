"""Signals -> deduplicated incidents. Pure logic: no Kafka, no ClickHouse, no clock.

Every signal for the same dedup key (rule|team|tool, plus the model for ``unknown_model``)
folds into one open incident, and the owner is told again only after ``cooldown_seconds`` of
*event time*. Event time (the signal's ``window_end``) rather than the wall clock makes the
result the same when a backlog is replayed after an outage: a replay neither floods Slack
nor moves ``first_seen``/``last_seen`` to the replay's date.

State per key is a plain JSON-able dict so it can live in a faust Table (changelogged), and
the book writes it back after every change because a Table only persists assignments.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Mapping, MutableMapping
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from services.alerts.routing import Routing

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# States in which the owner still wants to hear about new activity. An acknowledged incident
# keeps counting but stays quiet: someone is already on it.
NOTIFYING_STATES = frozenset({"open", "reopened"})
# A resolved incident is history; new activity opens a new one with a new id.
CLOSED_STATES = frozenset({"resolved"})

# Evidence is meant to be a handful of numbers. The caps bound message and row size and keep
# any mistaken free text a detector might put there short.
MAX_EVIDENCE_ENTRIES = 20
MAX_EVIDENCE_VALUE_CHARS = 120
# How many recent signal ids each incident remembers, so a signal replayed after a crash
# (faust is at-least-once) is not counted twice.
RECENT_SIGNAL_IDS = 256


def to_ms(value: Any) -> int:
    """Epoch millis from what fastavro gives for timestamp-millis (datetime) or a plain int."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return (value - _EPOCH) // timedelta(milliseconds=1)
    return int(value)


def _escape(part: str) -> str:
    # Team and tool names are free-ish strings; escaping keeps "a|b"+"c" apart from "a"+"b|c".
    return part.replace("\\", "\\\\").replace("|", "\\|")


def dedup_key(signal: Mapping[str, Any]) -> str:
    parts = [signal["rule"], signal["team"], signal.get("tool") or ""]
    if signal["rule"] == "unknown_model":
        # Each unpriced model is its own follow-up (add a price), so its own incident.
        parts.append(signal.get("model") or "")
    return "|".join(_escape(str(p)) for p in parts)


def _num(x: float) -> str:
    return format(float(x), ".6g")


class IncidentUpdate(NamedTuple):
    incident: dict[str, Any]  # a record of schemas/incident.v1.avsc (times in epoch millis)
    notify: bool
    action: str  # "created" | "updated" | "duplicate" (a signal id seen before)
    version: int  # per incident, +1 on every change: the ReplacingMergeTree version


class IncidentBook:
    """Folds signals into incidents kept in ``store`` (a dict, or a faust Table)."""

    def __init__(
        self,
        routing: Routing,
        cooldown_seconds: float,
        store: MutableMapping[str, Any] | None = None,
        *,
        new_id: Callable[[], str] | None = None,
    ) -> None:
        self.routing = routing
        self.cooldown_ms = int(cooldown_seconds * 1000)
        self.store: MutableMapping[str, Any] = {} if store is None else store
        self._new_id = new_id or (lambda: str(uuid.uuid4()))

    def state(self, key: str) -> dict[str, Any] | None:
        """A copy of the stored state: the Table's object must not be changed in place."""
        raw = self.store.get(key)
        return copy.deepcopy(raw) if raw is not None else None

    def apply(self, signal: Mapping[str, Any]) -> IncidentUpdate:
        key = dedup_key(signal)
        at = to_ms(signal["window_end"])
        signal_id = str(signal.get("signal_id") or "")
        st = self.state(key)

        if st is not None and st["incident"]["state"] not in CLOSED_STATES:
            if signal_id and signal_id in st["recent_signal_ids"]:
                return IncidentUpdate(st["incident"], False, "duplicate", st["version"])
            return self._update(key, st, signal, at, signal_id)
        return self._create(key, signal, at, signal_id)

    def _create(
        self, key: str, signal: Mapping[str, Any], at: int, signal_id: str
    ) -> IncidentUpdate:
        r = self.routing.route(signal["rule"], signal["team"])
        incident: dict[str, Any] = {
            "incident_id": self._new_id(),
            "dedup_key": key,
            "rule": signal["rule"],
            "category": r.category,
            "severity": r.severity,
            "state": "open",
            "team": signal["team"],
            "tool": signal.get("tool") or "",
            "owner": r.owner,
            "channel": r.channel,
            "signal_count": 1,
            "first_seen": at,
            "last_seen": at,
            "summary": "",
            "user_pseudonym": self._pseudonym(r.category, signal, None),
            "evidence": {},
        }
        self._refresh(incident, signal, r.title)
        st = {
            "incident": incident,
            "version": 1,
            "title": r.title,
            "last_notified_ms": at,
            "recent_signal_ids": [signal_id] if signal_id else [],
        }
        self.store[key] = st
        return IncidentUpdate(copy.deepcopy(incident), True, "created", 1)

    def _update(
        self, key: str, st: dict[str, Any], signal: Mapping[str, Any], at: int, signal_id: str
    ) -> IncidentUpdate:
        incident = st["incident"]
        incident["signal_count"] += 1
        incident["first_seen"] = min(incident["first_seen"], at)
        incident["last_seen"] = max(incident["last_seen"], at)
        incident["user_pseudonym"] = self._pseudonym(
            incident["category"], signal, incident["user_pseudonym"]
        )
        self._refresh(incident, signal, st["title"])

        last = st["last_notified_ms"]
        notify = incident["state"] in NOTIFYING_STATES and (
            last is None or at - last >= self.cooldown_ms
        )
        if notify:
            st["last_notified_ms"] = at
        st["version"] += 1
        if signal_id:
            st["recent_signal_ids"] = [*st["recent_signal_ids"], signal_id][-RECENT_SIGNAL_IDS:]
        self.store[key] = st
        return IncidentUpdate(copy.deepcopy(incident), notify, "updated", st["version"])

    @staticmethod
    def _pseudonym(category: str, signal: Mapping[str, Any], previous: str | None) -> str | None:
        # Only security follow-ups may need to know whose calls they were; cost and
        # reliability are about teams and tools, so a pseudonym there is dropped even if a
        # detector sent one by mistake.
        if category != "security":
            return None
        return signal.get("user_pseudonym") or previous

    @staticmethod
    def _refresh(incident: dict[str, Any], signal: Mapping[str, Any], title: str) -> None:
        """Latest evidence and summary: numbers and names only, never free text."""
        observed = float(signal.get("observed") or 0.0)
        baseline = float(signal.get("baseline") or 0.0)
        threshold = float(signal.get("threshold") or 0.0)
        evidence: dict[str, str] = {}
        for k, v in list((signal.get("evidence") or {}).items())[:MAX_EVIDENCE_ENTRIES]:
            evidence[str(k)[:64]] = str(v)[:MAX_EVIDENCE_VALUE_CHARS]
        evidence.update(
            observed=_num(observed),
            baseline=_num(baseline),
            threshold=_num(threshold),
            window_start_ms=str(to_ms(signal["window_start"])),
            window_end_ms=str(to_ms(signal["window_end"])),
        )
        if signal.get("model"):
            evidence["model"] = str(signal["model"])[:MAX_EVIDENCE_VALUE_CHARS]
        incident["evidence"] = evidence
        incident["summary"] = (
            f"{title}: observed {_num(observed)}, baseline {_num(baseline)}, "
            f"threshold {_num(threshold)}; {incident['signal_count']} signal(s)"
        )
