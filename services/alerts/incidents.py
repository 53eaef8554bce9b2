"""Signals and commands -> incidents with a lifecycle. Pure logic: no Kafka, no ClickHouse.

Every signal for the same dedup key (rule|team|tool, plus the model for ``unknown_model``, the
flag for ``policy_flag``, period and threshold for ``budget_threshold``) folds into one incident: its count, first and last seen move,
and the owner is told again only after ``cooldown_seconds`` of *event time*. Event time (the
signal's ``window_end``) rather than the wall clock makes the result the same when a backlog
is replayed after an outage: a replay neither floods Slack nor moves ``first_seen`` and
``last_seen`` to the replay's date.

The key's window is the reopen window: a signal for a resolved incident reopens it (same
id, owner told again) when it comes within ``reopen_window_seconds`` after the resolution;
later, the resolved incident is history and a new incident opens. Acknowledge, resolve and
escalate arrive as commands (:meth:`IncidentBook.command`) and go through the state machine
of :mod:`services.alerts.lifecycle`, which refuses illegal transitions.

A ``sensitive_data`` signal names its classes (evidence ``classes``, comma separated); each
class becomes its own rule ``sensitive_data.<class>`` with the severity routing gives it.

State per key is a plain JSON-able dict so it can live in a faust Table (changelogged); the
book writes it back after every change because a Table only persists assignments. Times are
passed in (``now_ms``): the book has no clock, so tests and replays are deterministic.
"""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from services.alerts.lifecycle import (
    NOTIFYING,
    UNACKNOWLEDGED,
    Event,
    IllegalTransition,
    State,
    transition,
)
from services.alerts.routing import Route, Routing

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

ACTOR = "trustlog-alerts"  # the actor of every change the service makes by itself
SENSITIVE_DATA = "sensitive_data"

# Evidence is meant to be a handful of numbers. The caps bound message and row size and keep
# any mistaken free text a detector might put there short.
MAX_EVIDENCE_ENTRIES = 20
MAX_EVIDENCE_VALUE_CHARS = 120
# How many recent signal and command ids each incident remembers, so a message replayed
# after a crash (faust is at-least-once) is not applied twice.
RECENT_SIGNAL_IDS = 256
RECENT_COMMAND_IDS = 32
RESOLVED_SIGNAL_IDS = 32
_CLASS = re.compile(r"^[a-z0-9_]{1,48}$")

# Commands: action name -> lifecycle event and the history action it records.
COMMAND_EVENTS = {
    "acknowledge": (Event.ACKNOWLEDGE, "acknowledged"),
    "resolve": (Event.RESOLVE, "resolved"),
    "escalate": (Event.ESCALATE, "escalated"),
}


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
    elif signal["rule"] == "policy_flag":
        # Each producer policy rule is its own follow-up.
        parts.append(str((signal.get("evidence") or {}).get("flag") or ""))
    elif signal["rule"] == "budget_threshold":
        # Crossing 100 % after 80 % is news, not a repeat: one incident per budget period
        # and threshold.
        evidence = signal.get("evidence") or {}
        parts += [
            str(evidence.get("period_start") or ""),
            str(evidence.get("threshold_percent") or ""),
        ]
    return "|".join(_escape(str(p)) for p in parts)


def expand(signal: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One signal per rule it stands for: ``sensitive_data`` splits into one per class."""
    sig = dict(signal)
    if sig["rule"] != SENSITIVE_DATA:
        return [sig]
    evidence = dict(sig.get("evidence") or {})
    classes = sorted(
        {
            c.strip()
            for c in str(evidence.get("classes") or "").split(",")
            if _CLASS.match(c.strip())
        }
    )
    if not classes:
        return [sig]
    out = []
    for cls in classes:
        derived = dict(sig)
        derived["rule"] = f"{SENSITIVE_DATA}.{cls}"
        # Derived ids stay stable across a replay, so the replay is recognised per class.
        derived["signal_id"] = f"{sig.get('signal_id') or ''}#{cls}" if sig.get("signal_id") else ""
        derived["evidence"] = {**evidence, "class": cls}
        out.append(derived)
    return out


def _num(x: float) -> str:
    return format(float(x), ".6g")


def _human(seconds: float) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= n and seconds % n == 0:
            return f"{int(seconds // n)}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True)
class History:
    """One row of incident_history: who did what, when (the caller's clock), and why."""

    action: str
    actor: str
    reason: str
    from_state: str
    command_id: str = ""


@dataclass
class IncidentUpdate:
    incident: dict[str, Any]  # a record of schemas/incident.v1.avsc (times in epoch millis)
    version: int  # per incident, +1 on every change: the ReplacingMergeTree version
    # created | updated | duplicate | reopened | acknowledged | resolved | escalated
    action: str
    lifecycle: dict[str, Any]  # who acknowledged/resolved and when, escalation, reopen count
    history: History | None = None  # None when nothing but counts changed
    notify: str | None = None  # why the owner is told: opened | reminder | reopened | escalated
    notification_id: str | None = None  # stable per notification, so a replay is recognised


@dataclass
class CommandResult:
    command_id: str
    incident_id: str
    action: str
    outcome: str  # applied | refused | duplicate
    detail: str
    update: IncidentUpdate | None = None


class BatchStore(MutableMapping[str, Any]):
    """A write-back cache over the faust Table for one batch of messages.

    Ten thousand signals for one key in a batch become one Table write (one changelog
    record) at :meth:`flush` instead of ten thousand.
    """

    def __init__(self, backing: MutableMapping[str, Any]) -> None:
        self.backing = backing
        self.dirty: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        if key in self.dirty:
            return self.dirty[key]
        value = self.backing[key]
        if value is None:  # a Table with default=None answers missing keys with None
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        self.dirty[key] = value

    def __delitem__(self, key: str) -> None:
        raise TypeError("incident state is never deleted")

    def __iter__(self) -> Iterator[str]:
        yield from self.dirty
        for k in self.backing:
            if k not in self.dirty:
                yield k

    def __len__(self) -> int:
        return len(set(self.backing) | set(self.dirty))

    def flush(self) -> int:
        n = len(self.dirty)
        for k, v in self.dirty.items():
            self.backing[k] = v
        self.dirty.clear()
        return n


class IncidentBook:
    """Folds signals and commands into incidents kept in ``store`` (a dict, or a faust Table)."""

    def __init__(
        self,
        routing: Routing,
        cooldown_seconds: float,
        store: MutableMapping[str, Any] | None = None,
        *,
        reopen_window_seconds: float = 7 * 86400,
        new_id: Callable[[], str] | None = None,
    ) -> None:
        self.routing = routing
        self.cooldown_ms = int(cooldown_seconds * 1000)
        self.reopen_window_ms = int(reopen_window_seconds * 1000)
        self.store: MutableMapping[str, Any] = {} if store is None else store
        self._new_id = new_id or (lambda: str(uuid.uuid4()))

    def state(self, key: str) -> dict[str, Any] | None:
        """A copy of the stored state: the Table's object must not be changed in place."""
        raw = self.store.get(key)
        return copy.deepcopy(raw) if raw is not None else None

    # --- signals ------------------------------------------------------------------------

    def apply(self, signal: Mapping[str, Any], now_ms: int) -> list[IncidentUpdate]:
        """Fold one signal; a sensitive-data signal may touch one incident per class."""
        return [self._apply_one(s, now_ms) for s in expand(signal)]

    def _apply_one(self, signal: Mapping[str, Any], now_ms: int) -> IncidentUpdate:
        key = dedup_key(signal)
        at = to_ms(signal["window_end"])
        signal_id = str(signal.get("signal_id") or "")
        st = self.state(key)
        if st is None:
            return self._create(key, signal, at, signal_id, now_ms)
        if signal_id and signal_id in st["recent_signal_ids"]:
            return self._result(st, "duplicate")
        if st["incident"]["state"] == State.RESOLVED:
            resolved_at = st["resolved_at_ms"] or 0
            if at > resolved_at + self.reopen_window_ms:
                return self._create(key, signal, at, signal_id, now_ms)
            if at > resolved_at:
                return self._reopen(key, st, signal, at, signal_id, now_ms)
            # Activity from before the resolution, arriving late: it belongs to what was
            # resolved. Count it, but do not reopen or notify.
        return self._update(key, st, signal, at, signal_id)

    def _create(
        self, key: str, signal: Mapping[str, Any], at: int, signal_id: str, now_ms: int
    ) -> IncidentUpdate:
        r = self.routing.route(signal["rule"], signal["team"])
        incident: dict[str, Any] = {
            "incident_id": self._new_id(),
            "dedup_key": key,
            "rule": signal["rule"],
            "category": r.category,
            "severity": r.severity,
            "state": State.OPEN.value,
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
        st: dict[str, Any] = {
            "incident": incident,
            "version": 1,
            "title": r.title,
            "last_notified_ms": at,
            "recent_signal_ids": [signal_id] if signal_id else [],
            "recent_command_ids": [],
            "notify_seq": 0,
            "reopen_count": 0,
            "resolved_by": "",
            "resolved_at_ms": None,
        }
        self._assign(st, r, now_ms)
        history = History("created", ACTOR, f"signal {signal_id}", "")
        return self._save(key, st, "created", history, notify="opened")

    def _update(
        self, key: str, st: dict[str, Any], signal: Mapping[str, Any], at: int, signal_id: str
    ) -> IncidentUpdate:
        incident = st["incident"]
        self._fold(st, signal, at, signal_id)
        notify = None
        if incident["state"] in NOTIFYING and at - st["last_notified_ms"] >= self.cooldown_ms:
            st["last_notified_ms"] = at
            notify = "reminder"
        return self._save(key, st, "updated", None, notify=notify)

    def _reopen(
        self,
        key: str,
        st: dict[str, Any],
        signal: Mapping[str, Any],
        at: int,
        signal_id: str,
        now_ms: int,
    ) -> IncidentUpdate:
        incident = st["incident"]
        previous = incident["state"]
        incident["state"] = transition(previous, Event.RECUR).value
        # Back to whoever routing names now (the file may have changed), with a fresh
        # escalation clock: the owner believed it fixed, so this is news.
        r = self.routing.route(incident["rule"], incident["team"])
        incident["category"], incident["severity"] = r.category, r.severity
        self._assign(st, r, now_ms)
        st["title"] = r.title
        st["reopen_count"] += 1
        st["resolved_by"], st["resolved_at_ms"] = "", None
        st["last_notified_ms"] = at
        self._fold(st, signal, at, signal_id)
        history = History("reopened", ACTOR, f"signal {signal_id} after resolution", previous)
        return self._save(key, st, "reopened", history, notify="reopened")

    def _fold(self, st: dict[str, Any], signal: Mapping[str, Any], at: int, signal_id: str) -> None:
        incident = st["incident"]
        incident["signal_count"] += 1
        incident["first_seen"] = min(incident["first_seen"], at)
        incident["last_seen"] = max(incident["last_seen"], at)
        incident["user_pseudonym"] = self._pseudonym(
            incident["category"], signal, incident["user_pseudonym"]
        )
        self._refresh(incident, signal, st["title"])
        if signal_id:
            st["recent_signal_ids"] = [*st["recent_signal_ids"], signal_id][-RECENT_SIGNAL_IDS:]

    @staticmethod
    def _assign(st: dict[str, Any], r: Route, now_ms: int) -> None:
        """Give the incident to the routed owner and start its acknowledgement clock."""
        st["incident"]["owner"], st["incident"]["channel"] = r.owner, r.channel
        st["primary_owner"] = r.owner
        st["escalate_to"], st["escalate_channel"] = r.escalate_to, r.escalate_channel
        st["escalate_after_ms"] = (
            int(r.escalate_after_s * 1000) if r.escalate_after_s is not None else None
        )
        st["opened_wall_ms"] = now_ms
        st["escalated_at_ms"] = None
        st["acknowledged_by"], st["acknowledged_at_ms"] = "", None

    # --- commands -----------------------------------------------------------------------

    def command(self, cmd: Mapping[str, Any], now_ms: int) -> CommandResult:
        """Apply an acknowledge/resolve/escalate command, or say why it is refused."""
        command_id, incident_id = str(cmd["command_id"]), str(cmd["incident_id"])
        action = str(cmd["action"])

        def result(
            outcome: str, detail: str, update: IncidentUpdate | None = None
        ) -> CommandResult:
            return CommandResult(command_id, incident_id, action, outcome, detail, update)

        key = str(cmd["dedup_key"])
        st = self.state(key)
        if st is None or st["incident"]["incident_id"] != incident_id:
            return result("refused", "unknown incident")
        if command_id in st["recent_command_ids"]:
            return result("duplicate", "command already applied")
        if action not in COMMAND_EVENTS:
            return result("refused", f"unknown action {action!r}")
        event, history_action = COMMAND_EVENTS[action]
        incident = st["incident"]
        previous = incident["state"]
        try:
            new_state = transition(previous, event)
        except IllegalTransition as exc:
            return result("refused", str(exc))
        if event is Event.ESCALATE:
            refusal = self._escalation_refusal(st, now_ms)
            if refusal:
                return result("refused", refusal)

        incident["state"] = new_state.value
        notify = None
        if event is Event.ACKNOWLEDGE:
            st["acknowledged_by"], st["acknowledged_at_ms"] = str(cmd["actor"]), now_ms
        elif event is Event.RESOLVE:
            st["resolved_by"], st["resolved_at_ms"] = str(cmd["actor"]), now_ms
            # Resolved incidents pile up in the table; a replay after a crash only ever
            # covers the last few signals, so keep the state of a closed one small.
            st["recent_signal_ids"] = st["recent_signal_ids"][-RESOLVED_SIGNAL_IDS:]
        else:
            incident["owner"], incident["channel"] = st["escalate_to"], st["escalate_channel"]
            st["escalated_at_ms"] = now_ms
            notify = "escalated"
        st["recent_command_ids"] = [*st["recent_command_ids"], command_id][-RECENT_COMMAND_IDS:]
        history = History(
            history_action, str(cmd["actor"]), str(cmd["reason"]), previous, command_id
        )
        update = self._save(key, st, history_action, history, notify=notify)
        return result("applied", f"{previous} -> {new_state.value}", update)

    @staticmethod
    def _escalation_refusal(st: dict[str, Any], now_ms: int) -> str:
        if st["escalated_at_ms"] is not None:
            return "already escalated"
        if not st["escalate_to"] or st["escalate_after_ms"] is None:
            return "no escalation owner configured"
        if now_ms - st["opened_wall_ms"] < st["escalate_after_ms"]:
            return "escalation not due yet"
        return ""

    def escalations_due(self, now_ms: int) -> list[dict[str, Any]]:
        """Escalate commands for incidents left unacknowledged past their owner's deadline.

        The command id is fixed per incident and acknowledgement clock, so a timer that asks
        again before the first command was applied produces a duplicate, not a second hop.
        """
        out = []
        for key, st in list(self.store.items()):
            if st is None or st["incident"]["state"] not in UNACKNOWLEDGED:
                continue
            if self._escalation_refusal(st, now_ms):
                continue
            incident = st["incident"]
            after_s = st["escalate_after_ms"] / 1000
            out.append(
                {
                    "command_id": f"escalate:{incident['incident_id']}:{st['opened_wall_ms']}",
                    "incident_id": incident["incident_id"],
                    "dedup_key": key,
                    "action": "escalate",
                    "actor": ACTOR,
                    "reason": f"unacknowledged for {_human(after_s)}: "
                    f"{incident['owner']} -> {st['escalate_to']}",
                    "requested_at": now_ms,
                    "source": "escalation",
                }
            )
        return out

    # --- shared -------------------------------------------------------------------------

    def _save(
        self,
        key: str,
        st: dict[str, Any],
        action: str,
        history: History | None,
        *,
        notify: str | None,
    ) -> IncidentUpdate:
        if action != "created":
            st["version"] += 1
        notification_id = None
        if notify is not None:
            st["notify_seq"] += 1
            notification_id = f"{st['incident']['incident_id']}:{st['notify_seq']}"
        self.store[key] = st
        update = self._result(st, action)
        update.history, update.notify, update.notification_id = history, notify, notification_id
        return update

    @staticmethod
    def _result(st: dict[str, Any], action: str) -> IncidentUpdate:
        return IncidentUpdate(
            copy.deepcopy(st["incident"]), st["version"], action, lifecycle_of(st)
        )

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


def lifecycle_of(st: Mapping[str, Any]) -> dict[str, Any]:
    """The lifecycle columns of the incident row (schemas/clickhouse/0003)."""
    return {
        "primary_owner": st["primary_owner"],
        "opened_at_ms": st["opened_wall_ms"],
        "escalated_at_ms": st["escalated_at_ms"],
        "acknowledged_by": st["acknowledged_by"],
        "acknowledged_at_ms": st["acknowledged_at_ms"],
        "resolved_by": st["resolved_by"],
        "resolved_at_ms": st["resolved_at_ms"],
        "reopen_count": st["reopen_count"],
    }
