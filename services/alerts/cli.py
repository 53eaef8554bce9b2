"""`trustlog incidents list | show | ack | resolve`: the owner-routed queue from a terminal.

Mounted by trustlog/cli.py as ``app.add_typer(incidents_app, name="incidents")``. Reads
ClickHouse; ack and resolve publish a command for the alerts agent (the single writer of
incident state, see services.alerts.commands) and wait for its outcome. Exit codes: 0
applied, 1 refused (the message says why), 2 bad request or unknown incident, 3 still
queued after --wait (the alerts service is not running; it applies the command later).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from services.alerts.commands import (
    CommandError,
    IncidentQueries,
    jsonable,
    new_command,
    send_command,
)
from trustlog.settings import AlertsSettings, default_state_dir

incidents_app = typer.Typer(
    no_args_is_help=True, help="Incidents routed to owners: list, show, ack, resolve."
)
console = Console()

StateOpt = Annotated[
    Path | None, typer.Option("--state-dir", help="Defaults to $TRUSTLOG_STATE_DIR or ./.trustlog")
]
ActorOpt = Annotated[
    str,
    typer.Option(
        "--actor", envvar="TRUSTLOG_ACTOR", help="Who you are (a handle, e.g. alice or finops)"
    ),
]
ReasonOpt = Annotated[str, typer.Option("--reason", help="Why; kept in the incident history")]
WaitOpt = Annotated[float, typer.Option("--wait", help="Seconds to wait for the outcome")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output")]


def _queries(state_dir: Path | None) -> tuple[AlertsSettings, IncidentQueries]:
    state = (state_dir or default_state_dir()).resolve()
    os.environ["TRUSTLOG_STATE_DIR"] = str(state)
    from trustlog.storage import admin_client

    s = AlertsSettings()
    return s, IncidentQueries(admin_client(s), s.ch_database)


def _fail(message: str, code: int) -> typer.Exit:
    console.print(f"[red]{message}[/red]", markup=True, highlight=False)
    return typer.Exit(code)


def _when(v: Any) -> str:
    return "-" if v is None else f"{v:%Y-%m-%d %H:%M:%S}"


@incidents_app.command("list")
def list_incidents(
    state_dir: StateOpt = None,
    all_states: Annotated[bool, typer.Option("--all", help="Include resolved")] = False,
    state: Annotated[list[str] | None, typer.Option("--state", help="Only these states")] = None,
    team: Annotated[str | None, typer.Option(help="Only this team")] = None,
    owner: Annotated[str | None, typer.Option(help="Only this owner")] = None,
    limit: Annotated[int, typer.Option(help="At most this many")] = 100,
    as_json: JsonOpt = False,
) -> None:
    """Incidents, most recent activity first (latest version of each)."""
    _, q = _queries(state_dir)
    states = state or ([] if all_states else ["open", "acknowledged", "reopened"])
    rows = q.incidents(states=states, team=team, owner=owner, limit=limit)
    if as_json:
        print(json.dumps([jsonable(r) for r in rows]))
        return
    table = Table("id", "sev", "state", "rule", "team", "tool", "owner", "n", "last seen UTC")
    for r in rows:
        table.add_row(
            r["incident_id"][:8],
            r["severity"],
            r["state"],
            r["rule"],
            r["team"],
            r["tool"],
            r["owner"],
            str(r["signal_count"]),
            f"{r['last_seen']:%m-%d %H:%M}",
        )
    console.print(table)


@incidents_app.command("show")
def show_incident(
    incident: Annotated[str, typer.Argument(help="Incident id, or a unique prefix (6+ chars)")],
    state_dir: StateOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One incident with its full history (who, when, why) and its commands."""
    _, q = _queries(state_dir)
    try:
        row = q.find(incident)
    except CommandError as exc:
        raise _fail(str(exc), 2) from None
    history = q.history(row["incident_id"])
    commands = q.commands(row["incident_id"])
    if as_json:
        print(
            json.dumps(
                {
                    "incident": jsonable(row),
                    "history": [jsonable(h) for h in history],
                    "commands": [jsonable(c) for c in commands],
                }
            )
        )
        return
    details = Table(show_header=False, box=None)
    for key in (
        "incident_id",
        "summary",
        "rule",
        "category",
        "severity",
        "state",
        "team",
        "tool",
        "owner",
        "primary_owner",
        "channel",
        "signal_count",
        "first_seen",
        "last_seen",
        "opened_at",
        "escalated_at",
        "acknowledged_by",
        "acknowledged_at",
        "resolved_by",
        "resolved_at",
        "reopen_count",
        "user_pseudonym",
    ):
        if key in row:
            value = row[key]
            details.add_row(key, _when(value) if key.endswith(("_at", "_seen")) else str(value))
    console.print(details)
    hist = Table("at UTC", "action", "from", "to", "actor", "owner", "n", "reason", title="history")
    for h in history:
        hist.add_row(
            _when(h["at"]),
            h["action"],
            h["from_state"] or "-",
            h["state"],
            h["actor"],
            h["owner"] or "-",
            str(h["signal_count"]),
            h["reason"],
        )
    console.print(hist)
    refused = [c for c in commands if c["outcome"] != "applied"]
    if refused:
        cmds = Table("at UTC", "action", "actor", "outcome", "detail", title="refused commands")
        for c in refused:
            cmds.add_row(
                _when(c["processed_at"]), c["action"], c["actor"], c["outcome"], c["detail"]
            )
        console.print(cmds)


def _change(
    action: str, ref: str, actor: str, reason: str, wait: float, state_dir: Path | None
) -> None:
    s, q = _queries(state_dir)
    try:
        row = q.find(ref)
        cmd = new_command(row, action, actor, reason, "cli")
    except CommandError as exc:
        raise _fail(str(exc), 2) from None
    asyncio.run(send_command(s.kafka_bootstrap, s.topic_incident_commands, cmd))
    outcome = q.wait_outcome(cmd["command_id"], wait)
    iid = row["incident_id"]
    if outcome is None:
        console.print(
            f"queued {cmd['action']} for {iid} (command {cmd['command_id']}); the alerts "
            "service applies it when it runs"
        )
        raise typer.Exit(3)
    if outcome["outcome"] == "refused":
        raise _fail(f"refused: {outcome['detail']} ({iid})", 1)
    # "acknowledge" + "d", "resolve" + "d"
    console.print(f"{cmd['action']}d {iid}: {outcome['detail']}")


@incidents_app.command("ack")
def ack_incident(
    incident: Annotated[str, typer.Argument(help="Incident id, or a unique prefix (6+ chars)")],
    actor: ActorOpt,
    reason: ReasonOpt,
    wait: WaitOpt = 10.0,
    state_dir: StateOpt = None,
) -> None:
    """Acknowledge: you own it now; no more reminders, no escalation."""
    _change("ack", incident, actor, reason, wait, state_dir)


@incidents_app.command("resolve")
def resolve_incident(
    incident: Annotated[str, typer.Argument(help="Incident id, or a unique prefix (6+ chars)")],
    actor: ActorOpt,
    reason: ReasonOpt,
    wait: WaitOpt = 10.0,
    state_dir: StateOpt = None,
) -> None:
    """Resolve: done. The same problem coming back reopens it."""
    _change("resolve", incident, actor, reason, wait, state_dir)
