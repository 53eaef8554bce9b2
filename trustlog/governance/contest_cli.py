"""`trustlog contest`: contest one of your own records; the security group decides.

Employees: ``records`` (your recent records, to find an id), ``open``, ``mine``. The
security group (any security account of config/roles.yaml): ``queue``, ``review``,
``resolve``, ``history``. Every command logs in as ``--account`` with that account's own
ClickHouse password (TRUSTLOG_ACCOUNT_PASSWORD or a prompt). Employee reads go through that
login, so ClickHouse decides what is theirs; writes go through the admin account after the
role is checked. Exit codes: 0 done, 1 refused (the message says why), 2 bad input or login.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from trustlog.governance import contests, notices, roles
from trustlog.governance.cli import (
    JsonOpt,
    PasswordOpt,
    StateOpt,
    _admin,
    _config,
    _fail,
    _jsonable,
    _settings,
    _when,
    console,
    login,
)
from trustlog.settings import GovernanceSettings

contest_app = typer.Typer(
    no_args_is_help=True,
    help="Contest one of your own records (employees); decide contests (security group).",
)

AccountOpt = Annotated[
    str,
    typer.Option(
        "--account", "--as", envvar="TRUSTLOG_ACCOUNT", help="Your account (config/roles.yaml)"
    ),
]
IdArg = Annotated[str, typer.Argument(help="Contest id or a unique prefix (6+ chars)")]


def _role(config: roles.RolesConfig, account: str, role: str, what: str) -> None:
    acc = config.get(account)
    if acc is None or acc.role != role:
        raise _fail(f"{account!r} is not an {role} account: {what}", 1)


def _employee(
    s: GovernanceSettings,
    account: str,
    password: str | None,
    what: str = "only employees contest their own records",
) -> Any:
    _role(_config(s), account, "employee", what)
    return login(s, account, password)


def _owner(s: GovernanceSettings, account: str, password: str | None) -> roles.RolesConfig:
    config = _config(s)
    _role(config, account, "security", "contests are decided by the security group")
    login(s, account, password)
    return config


def _json(value: Any) -> str:
    # dates and Decimal costs as their exact text (str(date) is ISO)
    return json.dumps(value, default=str)


def _public(c: contests.Contest) -> dict[str, Any]:
    """A contest as JSON, with attributed and outcome spelled out."""
    return {**_jsonable(c), "outcome": c.outcome, "attributed": c.attributed}


# --------------------------------------------------------------------------- employee


@contest_app.command("records")
def records(
    account: AccountOpt,
    days: Annotated[int, typer.Option(min=1, max=90, help="How far back")] = 7,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    password: PasswordOpt = None,
    state_dir: StateOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Your own recent records and incidents (read as you), with their ids."""
    s = _settings(state_dir)
    client = _employee(s, account, password)
    db = s.ch_database
    events = client.query(
        "SELECT 'event', event_id, event_time, toString(team), toString(tool), toString(model), "
        f"toString(status), cost_usd FROM {db}.employee_events "
        "WHERE event_time >= now64(3) - toIntervalDay({d:UInt32}) "
        "ORDER BY event_time DESC LIMIT {n:UInt32}",
        parameters={"d": days, "n": limit},
    ).result_rows
    incidents = client.query(
        "SELECT 'incident', incident_id, first_seen, toString(team), toString(tool), "
        f"toString(rule), toString(state), 0 FROM {db}.employee_incidents "
        "WHERE last_seen >= now64(3) - toIntervalDay({d:UInt32}) "
        "ORDER BY first_seen DESC LIMIT {n:UInt32}",
        parameters={"d": days, "n": limit},
    ).result_rows
    found = [*events, *incidents]
    if as_json:
        keys = ("record_kind", "record_id", "at", "team", "tool", "what", "status", "cost_usd")
        print(_json([_jsonable(dict(zip(keys, map(str, r), strict=True))) for r in found]))
        return
    table = Table("kind", "id", "time UTC", "team", "tool", "model / rule", "status", "cost $")
    for kind, rid, at, team, tool, what, status, cost in found:
        table.add_row(kind, rid, _when(at), team, tool, what, status, f"{cost:.4f}")
    console.print(table)


@contest_app.command("open")
def contest_open(
    account: AccountOpt,
    record: Annotated[str, typer.Option("--record", help="An event id or incident id of yours")],
    kind: Annotated[str, typer.Option(help=" | ".join(contests.KINDS))],
    context: Annotated[
        str,
        typer.Option(help=f"What happened, in your words (max {contests.MAX_CONTEXT_CHARS})"),
    ] = "",
    password: PasswordOpt = None,
    state_dir: StateOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Contest one of your own records; the security group decides and you get the outcome."""
    s = _settings(state_dir)
    try:
        # Validate before asking for a password: a bad request should not cost a login.
        contests.check_request(kind, context)
        contests.check_record_id(record)
    except contests.ContestError as exc:
        raise _fail(str(exc), 2) from None
    client = _employee(s, account, password)
    found = contests.find_own_record(client, s.ch_database, record)
    if found is None:
        raise _fail(
            f"{record!r} is not one of your records (or it is no longer kept): you can only "
            "contest what `trustlog contest records` shows you",
            1,
        )
    try:
        contest = contests.open_contest(
            contests.ContestStore(_admin(s), s.ch_database), found, kind, context
        )
    except contests.ContestError as exc:
        raise _fail(str(exc), 1) from None
    if as_json:
        print(_json(_public(contest)))
        return
    console.print(
        f"contest {contest.contest_id} opened for {contest.record_kind} {contest.record_id}; "
        "the security group decides, and `trustlog contest mine` shows the outcome",
        highlight=False,
    )


@contest_app.command("mine")
def contest_mine(
    account: AccountOpt,
    password: PasswordOpt = None,
    state_dir: StateOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Your contests and their outcomes (read as you)."""
    s = _settings(state_dir)
    client = _employee(s, account, password)
    found = contests.own_contests(client, s.ch_database)
    if as_json:
        print(_json([_public(c) for c in found]))
        return
    table = Table("id", "opened UTC", "record", "kind", "state", "decided by", "note", "counts")
    for c in found:
        table.add_row(
            c.contest_id[:8],
            _when(c.opened_at),
            f"{c.record_kind} {c.record_id[:12]}",
            c.kind,
            c.state,
            c.actor,
            c.note,
            "yes" if c.attributed else "no longer yours",
        )
    console.print(table)


def notices_command(
    account: AccountOpt,
    limit: Annotated[int, typer.Option(min=1, max=notices.MAX_NOTICES)] = 200,
    password: PasswordOpt = None,
    state_dir: StateOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Your notices, newest first: reviews of your records (cases opened and closed) and
    decisions on your contests. Read as you: ClickHouse shows only the ones that concern you."""
    s = _settings(state_dir)
    client = _employee(
        s, account, password, "notices are read by the employee they concern, as themselves"
    )
    found = notices.own_notices(client, s.ch_database, limit)
    if as_json:
        print(_json([_jsonable(n) for n in found]))
        return
    table = Table("time UTC", "kind", "to", "message")
    for n in found:
        table.add_row(_when(n.created_at), n.label, n.addressed_to, n.message)
    console.print(table)
    console.print(f"{len(found)} notice(s)")


# --------------------------------------------------------------------------- security group


@contest_app.command("queue")
def contest_queue(
    account: AccountOpt,
    all_contests: Annotated[bool, typer.Option("--all", help="Include decided contests")] = False,
    password: PasswordOpt = None,
    state_dir: StateOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Contests waiting for a decision, oldest first, with their age."""
    s = _settings(state_dir)
    _owner(s, account, password)
    now = datetime.now(UTC)
    found = contests.ContestStore(_admin(s), s.ch_database).queue(include_decided=all_contests)
    if as_json:
        print(_json([{**_public(c), "age": contests.age(c, now)} for c in found]))
        return
    table = Table("id", "age", "state", "kind", "record", "team", "tool", "day", "context")
    for c in found:
        table.add_row(
            c.contest_id[:8],
            contests.age(c, now),
            c.state + (f" ({c.actor})" if c.actor else ""),
            c.kind,
            f"{c.record_kind} {c.record_id}",
            c.team,
            c.tool,
            f"{c.record_day:%Y-%m-%d}",
            c.context,
        )
    console.print(table)
    console.print(f"{len(found)} contest(s)")


@contest_app.command("review")
def contest_review(
    contest_id: IdArg,
    account: AccountOpt,
    password: PasswordOpt = None,
    state_dir: StateOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Take a contest: it is under review by you."""
    s = _settings(state_dir)
    config = _owner(s, account, password)
    store = contests.ContestStore(_admin(s), s.ch_database)
    try:
        contest = contests.review_contest(store, config, contest_id, account)
    except contests.ContestError as exc:
        raise _fail(str(exc), 1) from None
    if as_json:
        print(_json(_public(contest)))
        return
    console.print(f"contest {contest.contest_id} under review by {account}")


@contest_app.command("resolve")
def contest_resolve(
    contest_id: IdArg,
    account: AccountOpt,
    outcome: Annotated[str, typer.Option(help=" | ".join(contests.OUTCOMES))],
    note: Annotated[
        str, typer.Option(help="To the person: why, or what was corrected (needed unless upheld)")
    ] = "",
    password: PasswordOpt = None,
    state_dir: StateOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Decide a contest; the person who contested gets a notice with the outcome."""
    s = _settings(state_dir)
    if outcome not in contests.OUTCOMES:
        raise _fail(f"outcome must be one of {', '.join(contests.OUTCOMES)}", 2)
    config = _owner(s, account, password)
    store = contests.ContestStore(_admin(s), s.ch_database)
    try:
        contest = contests.resolve_contest(store, config, contest_id, account, outcome, note)
    except contests.ContestError as exc:
        raise _fail(str(exc), 1) from None
    if as_json:
        print(_json(_public(contest)))
        return
    effect = "" if contest.attributed else "; no longer counted as the person's own use"
    console.print(f"contest {contest.contest_id} {contest.state}{effect}; notice recorded")


@contest_app.command("history")
def contest_history(
    contest_id: IdArg,
    account: AccountOpt,
    password: PasswordOpt = None,
    state_dir: StateOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Every change of one contest: who, when, from which state to which."""
    s = _settings(state_dir)
    _owner(s, account, password)
    store = contests.ContestStore(_admin(s), s.ch_database)
    try:
        steps = store.history(store.get(contest_id).contest_id)
    except contests.ContestError as exc:
        raise _fail(str(exc), 1) from None
    if as_json:
        print(_json([_public(c) for c in steps]))
        return
    table = Table("time UTC", "from", "to", "by", "note")
    for c in steps:
        table.add_row(_when(c.at), c.from_state or "-", c.state, c.actor or "(employee)", c.note)
    console.print(table)
