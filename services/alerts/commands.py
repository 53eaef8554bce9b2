"""The owner-routed queue as the CLI and the HTTP API see it.

Reads come from ClickHouse (``incidents`` latest version, ``incident_history``,
``incident_commands``). Changes do not write anything directly: acknowledge and resolve are
commands published to the incident-commands topic, which the alerts agent consumes next to
the signals. The agent is the single writer of incident state (its faust table), so a
command and a signal for the same incident can never race; it applies the command through
the lifecycle state machine, or refuses it, and records the outcome in
``incident_commands``, where the caller waits for it.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer

from trustlog.avro import codec

# What a caller may ask for, by the names the CLI and API use.
ACTIONS = {"ack": "acknowledge", "acknowledge": "acknowledge", "resolve": "resolve"}
_ACTOR = re.compile(r"^[A-Za-z0-9._@+-]{1,64}$")
MAX_REASON_CHARS = 500
MIN_PREFIX = 6
_PREFIX = re.compile(r"^[0-9a-f-]{6,36}$")

INCIDENT_FIELDS = (
    "incident_id",
    "rule",
    "category",
    "severity",
    "state",
    "team",
    "tool",
    "owner",
    "channel",
    "signal_count",
    "first_seen",
    "last_seen",
    "summary",
    "primary_owner",
    "opened_at",
    "escalated_at",
    "acknowledged_by",
    "acknowledged_at",
    "resolved_by",
    "resolved_at",
    "reopen_count",
    "dedup_key",
    "version",
)
HISTORY_FIELDS = ("at", "action", "from_state", "state", "actor", "reason", "owner", "signal_count")
COMMAND_FIELDS = (
    "command_id",
    "action",
    "actor",
    "reason",
    "source",
    "requested_at",
    "processed_at",
    "outcome",
    "detail",
)


class KafkaSender(Protocol):
    """What the publishers here need from a producer (aiokafka's, or a lazily started one)."""

    async def send_and_wait(
        self, topic: str, value: bytes | None = None, key: bytes | None = None
    ) -> Any: ...


class CommandError(ValueError):
    """A request the caller must fix (bad actor, missing reason, unknown incident)."""


def command_codec() -> Any:
    return codec("incident_command.v1")


def check_request(action: str, actor: str, reason: str) -> tuple[str, str, str]:
    """Normalised (action, actor, reason), or CommandError saying what is wrong."""
    if action not in ACTIONS:
        raise CommandError(f"unknown action {action!r}; one of ack, resolve")
    actor = (actor or "").strip()
    reason = (reason or "").strip()
    if not _ACTOR.match(actor):
        raise CommandError("actor must be a handle of 1-64 letters, digits or . _ @ + -")
    if not reason:
        raise CommandError("a reason is required")
    if len(reason) > MAX_REASON_CHARS:
        raise CommandError(f"reason is longer than {MAX_REASON_CHARS} characters")
    return ACTIONS[action], actor, reason


def new_command(
    incident: Mapping[str, Any], action: str, actor: str, reason: str, source: str
) -> dict[str, Any]:
    action, actor, reason = check_request(action, actor, reason)
    return {
        "command_id": str(uuid.uuid4()),
        "incident_id": str(incident["incident_id"]),
        "dedup_key": str(incident["dedup_key"]),
        "action": action,
        "actor": actor,
        "reason": reason,
        "requested_at": int(time.time() * 1000),
        "source": source,
    }


async def publish_command(producer: KafkaSender, topic: str, cmd: Mapping[str, Any]) -> None:
    await producer.send_and_wait(
        topic, key=str(cmd["dedup_key"]).encode(), value=command_codec().encode(dict(cmd))
    )


async def send_command(bootstrap: str, topic: str, cmd: Mapping[str, Any]) -> None:
    """One-shot publish for the CLI."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await publish_command(producer, topic, cmd)
    finally:
        await producer.stop()


def jsonable(row: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in row.items():
        if isinstance(v, datetime):
            v = (v if v.tzinfo else v.replace(tzinfo=UTC)).isoformat()
        out[k] = v
    return out


class IncidentQueries:
    """ClickHouse reads for the queue. Blocking: call from a thread, not the event loop."""

    def __init__(self, client: Any, database: str) -> None:
        self.client = client
        self.db = database

    def _rows(
        self, sql: str, params: Mapping[str, Any], names: tuple[str, ...]
    ) -> list[dict[str, Any]]:
        res = self.client.query(sql, parameters=dict(params))
        return [dict(zip(names, r, strict=True)) for r in res.result_rows]

    def incidents(
        self,
        *,
        states: list[str] | None = None,
        team: str | None = None,
        owner: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Latest version of each incident, most recent activity first."""
        where = ["1"]
        params: dict[str, Any] = {"limit": max(1, min(limit, 1000))}
        if states:
            where.append("state IN {states:Array(String)}")
            params["states"] = states
        if team:
            where.append("team = {team:String}")
            params["team"] = team
        if owner:
            where.append("owner = {owner:String}")
            params["owner"] = owner
        sql = (
            f"SELECT {', '.join(INCIDENT_FIELDS)} FROM {self.db}.incidents FINAL "
            f"WHERE {' AND '.join(where)} ORDER BY last_seen DESC LIMIT {{limit:UInt32}}"
        )
        return self._rows(sql, params, INCIDENT_FIELDS)

    def find(self, ref: str) -> dict[str, Any]:
        """The incident whose id is ``ref`` or starts with it (at least 6 characters)."""
        ref = ref.strip().lower()
        if not _PREFIX.match(ref):
            raise CommandError(f"incident id must be at least {MIN_PREFIX} hex characters")
        fields = (*INCIDENT_FIELDS, "user_pseudonym", "evidence")
        rows = self._rows(
            f"SELECT {', '.join(fields)} FROM {self.db}.incidents FINAL "
            "WHERE startsWith(incident_id, {p:String}) LIMIT 2",
            {"p": ref},
            fields,
        )
        if not rows:
            raise CommandError(f"no incident {ref}")
        if len(rows) > 1:
            raise CommandError(f"{ref} matches more than one incident; give more of the id")
        row = rows[0]
        if row["category"] != "security":
            row.pop("user_pseudonym")  # never set there anyway; not even the key is shown
        return row

    def history(self, incident_id: str) -> list[dict[str, Any]]:
        return self._rows(
            f"SELECT {', '.join(HISTORY_FIELDS)} FROM {self.db}.incident_history "
            "WHERE incident_id = {i:String} ORDER BY at, version",
            {"i": incident_id},
            HISTORY_FIELDS,
        )

    def commands(self, incident_id: str) -> list[dict[str, Any]]:
        return self._rows(
            f"SELECT {', '.join(COMMAND_FIELDS)} FROM {self.db}.incident_commands FINAL "
            "WHERE incident_id = {i:String} ORDER BY requested_at",
            {"i": incident_id},
            COMMAND_FIELDS,
        )

    def outcome(self, command_id: str) -> dict[str, Any] | None:
        rows = self._rows(
            f"SELECT {', '.join(COMMAND_FIELDS)} FROM {self.db}.incident_commands FINAL "
            "WHERE command_id = {c:String}",
            {"c": command_id},
            COMMAND_FIELDS,
        )
        return rows[0] if rows else None

    def wait_outcome(
        self, command_id: str, timeout: float, interval: float = 0.2
    ) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while True:
            found = self.outcome(command_id)
            if found is not None or time.monotonic() >= deadline:
                return found
            time.sleep(interval)


async def wait_outcome_async(
    queries: IncidentQueries, command_id: str, timeout: float
) -> dict[str, Any] | None:
    return await asyncio.to_thread(queries.wait_outcome, command_id, timeout)
