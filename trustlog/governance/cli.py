"""`trustlog roles | case | audit`: role accounts, time-boxed cases, the monthly access review.

Mounted by trustlog/cli.py (``app.add_typer(roles_app, name="roles")``, ``case_app`` as
"case", ``audit_app`` as "audit"). Writes go through the admin account; a case action is
taken *as* a security account, proven with that account's own ClickHouse password
(``--as`` / TRUSTLOG_ACCOUNT, password from TRUSTLOG_ACCOUNT_PASSWORD or a prompt), so the
opener and the approver of a case are two people who each logged in. Exit codes: 0 done,
1 refused (the message says why), 2 bad input or authentication failed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from trustlog.governance import audit, cases, holds, roles
from trustlog.settings import GovernanceSettings, default_state_dir

roles_app = typer.Typer(no_args_is_help=True, help="Role accounts from config/roles.yaml.")
case_app = typer.Typer(
    no_args_is_help=True, help="Time-boxed deeper review: open, approve, close, list."
)
audit_app = typer.Typer(no_args_is_help=True, help="Who holds and who used detail access.")
hold_app = typer.Typer(
    no_args_is_help=True,
    help="Legal holds on records: keep named records past retention for a few readers.",
)
console = Console()

StateOpt = Annotated[
    Path | None, typer.Option("--state-dir", help="Defaults to $TRUSTLOG_STATE_DIR or ./.trustlog")
]
AsOpt = Annotated[
    str,
    typer.Option(
        "--as",
        "--account",
        envvar="TRUSTLOG_ACCOUNT",
        help="Your security account (config/roles.yaml)",
    ),
]
PasswordOpt = Annotated[
    str | None,
    typer.Option(
        "--password",
        envvar="TRUSTLOG_ACCOUNT_PASSWORD",
        help="Your account's ClickHouse password; prefer the prompt or the variable "
        "(a password on the command line shows in the process list)",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output")]


def _settings(state_dir: Path | None) -> GovernanceSettings:
    state = (state_dir or default_state_dir()).resolve()
    os.environ["TRUSTLOG_STATE_DIR"] = str(state)
    return GovernanceSettings()


def _config(s: GovernanceSettings) -> roles.RolesConfig:
    try:
        return roles.load_roles(s.roles_file)
    except roles.RolesError as exc:
        raise _fail(str(exc), 2) from None


def _admin(s: GovernanceSettings) -> Any:
    from trustlog.storage import admin_client

    return admin_client(s)


def _fail(message: str, code: int) -> typer.Exit:
    console.print(message, style="red", markup=False, highlight=False)
    return typer.Exit(code)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _when(value: datetime | None) -> str:
    return "-" if value is None else f"{value:%Y-%m-%d %H:%M:%S}"


def authenticate(s: GovernanceSettings, account: str, password: str) -> Any:
    """Prove the actor is ``account`` by logging in to ClickHouse with its own password.

    Returns that login's client: reads made with it are the account's own, under its grants
    and row policies (how `trustlog contest` lets the database decide what is an employee's).
    """
    from trustlog.storage import client_as

    try:
        client = client_as(s, account, password)
        who = str(client.command("SELECT currentUser()")).strip()
    except Exception:
        raise _fail(
            f"cannot log in to ClickHouse as {account!r}: wrong account or password", 2
        ) from None
    if who != account:
        raise _fail(f"ClickHouse says you are {who!r}, not {account!r}", 2)
    return client


def login(s: GovernanceSettings, account: str, password: str | None) -> Any:
    """Log in as ``account`` (password from the option, the variable or a prompt)."""
    if password is None:
        password = typer.prompt(f"ClickHouse password of {account}", hide_input=True)
    return authenticate(s, account, password)


def _actor(s: GovernanceSettings, account: str, password: str | None) -> str:
    login(s, account, password)
    return account


# --------------------------------------------------------------------------- roles


@roles_app.command("show")
def roles_show(state_dir: StateOpt = None, as_json: JsonOpt = False) -> None:
    """Every account, its role and what ClickHouse lets it read (--json: exact grants)."""
    s = _settings(state_dir)
    config = _config(s)
    specs = roles.access_specs(config, s.ch_database)
    services = roles.service_access_specs(s.ch_database)
    if as_json:
        print(json.dumps([_jsonable(sp) for sp in (*specs, *services)]))
        return
    table = Table("account", "role", "who", "reads", "rows")
    for acc in config.accounts:
        reads, limited = roles.describe_access(acc)
        table.add_row(acc.name, acc.role, acc.title, reads, limited)
    for service, name in roles.SERVICE_ACCOUNTS.items():
        grants = "; ".join(
            g.removeprefix("GRANT ") for g in roles.service_grants(service, s.ch_database)
        )
        table.add_row(name, roles.SERVICE_ROLE, f"the {service} service", grants, "all")
    console.print(table)
    console.print(
        f"min group size for managers: {config.min_group_size}; cases: at most "
        f"{config.cases.max_days} days, {config.cases.max_period_days} days of events"
    )


@roles_app.command("sql")
def roles_sql(
    state_dir: StateOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write to this file (0600)")] = None,
) -> None:
    """SQL that creates the same accounts on a production server (CREATE USER, GRANT, ...),
    the services' own accounts (trustlog_aggregator, trustlog_alerts) included."""
    s = _settings(state_dir)
    config = _config(s)
    generated = [a.name for a in config.accounts if not a.password_sha256_hex]
    hashes = roles.local_password_hashes(config, default_state_dir())
    if generated:
        print(
            f"note: {', '.join(generated)} have no password_sha256_hex in {s.roles_file}; "
            "using the passwords generated in this state dir",
            file=sys.stderr,
        )
    given = s.service_passwords()
    if not all(given.values()):
        print(
            "note: service accounts without TRUSTLOG_<SERVICE>_CH_PASSWORD use the passwords "
            "generated in this state dir",
            file=sys.stderr,
        )
    try:
        stmts = roles.render_sql(
            config,
            s.ch_database,
            hashes,
            service_hashes=roles.service_password_hashes(default_state_dir(), given),
            service_networks=s.service_networks,
        )
    except roles.RolesError as exc:
        raise _fail(str(exc), 2) from None
    text = "".join(f"{stmt};\n" for stmt in stmts)
    if out is None:
        print(text, end="")
        return
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    console.print(f"wrote {out}")


@roles_app.command("sync")
def roles_sync(state_dir: StateOpt = None) -> None:
    """Write min_group_size and the employee accounts' pseudonyms to ClickHouse."""
    s = _settings(state_dir)
    config = _config(s)
    try:
        result = roles.sync(_admin(s), config, s.ch_database)
    except roles.RolesError as exc:
        raise _fail(str(exc), 2) from None
    console.print(
        f"min group size {result.min_group_size}; employee pseudonyms: "
        f"{result.employee_rows_added} added, {result.employee_rows_retired} retired"
    )


@roles_app.command("password")
def roles_password(
    account: Annotated[
        str, typer.Argument(help="An account without password_sha256_hex, or a service account")
    ],
    state_dir: StateOpt = None,
) -> None:
    """Print the password generated for a local account (kept in the state dir, 0600)."""
    s = _settings(state_dir)
    config = _config(s)
    if account in roles.SERVICE_ACCOUNTS.values():
        print(roles.local_service_passwords(default_state_dir())[account])
        return
    acc = config.get(account)
    if acc is None:
        raise _fail(f"no account {account!r} in {s.roles_file}", 2)
    if acc.password_sha256_hex:
        raise _fail(f"{account} has a password hash in the config; its password is not here", 1)
    names = [a.name for a in config.accounts if not a.password_sha256_hex]
    print(roles.load_or_create_passwords(roles.passwords_file(default_state_dir()), names)[account])


# --------------------------------------------------------------------------- cases


def _case_row(case: cases.Case, now: datetime) -> list[str]:
    return [
        case.case_id[:8],
        case.effective_state(now),
        cases.describe_scope(case),
        f"{case.period_start:%m-%d %H:%M}..{case.period_end:%m-%d %H:%M}",
        case.reader,
        case.approver,
        _when(case.expires_at),
        "hold" if case.legal_hold else "",
        case.outcome,
    ]


@case_app.command("open")
def case_open(
    account: AsOpt,
    approver: Annotated[str, typer.Option(help="Another security account, who must approve")],
    reason: Annotated[str, typer.Option(help="Why; shown to the people concerned")],
    scope: Annotated[str, typer.Option(help="pseudonym:p_..., team:NAME or tool:NAME")],
    since: Annotated[str, typer.Option(help="Start of the period covered: ISO time or e.g. 7d")],
    expires_in: Annotated[str, typer.Option("--expires-in", help="e.g. 3d, 12h (capped)")],
    until: Annotated[
        str | None, typer.Option(help="End of the period: ISO time or e.g. 1h; default now")
    ] = None,
    legal_hold_reason: Annotated[
        str | None,
        typer.Option(help="Legal hold: no notice to the people concerned; say why"),
    ] = None,
    password: PasswordOpt = None,
    state_dir: StateOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Open a case for yourself; it grants nothing until the approver approves it."""
    s = _settings(state_dir)
    config = _config(s)
    now = datetime.now(UTC)
    kind, sep, value = scope.partition(":")
    try:
        if not sep:
            raise cases.CaseError("scope must look like pseudonym:p_..., team:NAME or tool:NAME")
        # Validate before asking for a password: a bad request should not cost a login.
        case = cases.new_case(
            config,
            reader=account,
            approver=approver,
            reason=reason,
            scope_kind=kind,
            scope_value=value,
            period_start=cases.parse_time(since, now),
            period_end=cases.parse_time(until, now) if until else None,
            expires_in=cases.parse_duration(expires_in),
            now=now,
            legal_hold_reason=legal_hold_reason,
        )
    except cases.CaseError as exc:
        raise _fail(str(exc), 1) from None
    _actor(s, account, password)
    # Store the case validated above; its expiry runs from before the login, never later.
    cases.CaseStore(_admin(s), s.ch_database).save(case)
    if as_json:
        print(json.dumps(_jsonable(case)))
        return
    console.print(
        f"case {case.case_id} opened, pending approval by {case.approver}; it expires "
        f"{_when(case.expires_at)} UTC whether approved or not"
    )


@case_app.command("approve")
def case_approve(
    case_id: Annotated[str, typer.Argument(help="Case id or a unique prefix (6+ chars)")],
    account: AsOpt,
    password: PasswordOpt = None,
    state_dir: StateOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Approve a case that names you as approver: its reader can read from now on."""
    s = _settings(state_dir)
    config = _config(s)
    _actor(s, account, password)
    try:
        case = cases.approve_case(
            cases.CaseStore(_admin(s), s.ch_database), config, case_id, account
        )
    except cases.CaseError as exc:
        raise _fail(str(exc), 1) from None
    if as_json:
        print(json.dumps(_jsonable(case)))
        return
    notice = (
        "no notice (legal hold)" if case.legal_hold else "notice recorded for the people concerned"
    )
    console.print(
        f"case {case.case_id} open for {case.reader} until {_when(case.expires_at)} UTC; {notice}"
    )


@case_app.command("close")
def case_close(
    case_id: Annotated[str, typer.Argument(help="Case id or a unique prefix (6+ chars)")],
    account: AsOpt,
    outcome: Annotated[str, typer.Option(help=" | ".join(cases.OUTCOMES))],
    note: Annotated[str, typer.Option(help="What was found or done")] = "",
    password: PasswordOpt = None,
    state_dir: StateOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Close a case (any security account) with its outcome; access ends at once."""
    s = _settings(state_dir)
    config = _config(s)
    _actor(s, account, password)
    try:
        case = cases.close_case(
            cases.CaseStore(_admin(s), s.ch_database), config, case_id, account, outcome, note
        )
    except cases.CaseError as exc:
        raise _fail(str(exc), 1) from None
    if as_json:
        print(json.dumps(_jsonable(case)))
        return
    console.print(f"case {case.case_id} closed: {case.outcome}")


@case_app.command("list")
def case_list(
    state_dir: StateOpt = None,
    all_cases: Annotated[bool, typer.Option("--all", help="Include closed and expired")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Cases, newest first."""
    s = _settings(state_dir)
    now = datetime.now(UTC)
    found = cases.CaseStore(_admin(s), s.ch_database).recent()
    if not all_cases:
        found = [c for c in found if c.effective_state(now) in ("pending", "open")]
    if as_json:
        print(
            json.dumps([{**_jsonable(c), "effective_state": c.effective_state(now)} for c in found])
        )
        return
    table = Table(
        "id", "state", "scope", "period", "reader", "approver", "expires UTC", "", "outcome"
    )
    for c in found:
        table.add_row(*_case_row(c, now))
    console.print(table)


# --------------------------------------------------------------------------- holds


def _hold_row(h: holds.RecordHold, now: datetime) -> list[str]:
    return [
        h.hold_id[:8],
        h.effective_state(now),
        h.scope_value if h.scope_kind == "pseudonym" else f"{len(h.event_ids)} event id(s)",
        str(h.held_rows),
        ", ".join(h.readers),
        f"{h.placed_by} / {h.approver}",
        _when(h.placed_at),
        _when(h.expires_at),
        h.reason if len(h.reason) <= 40 else h.reason[:39] + "…",
        f"{h.released_by} {_when(h.released_at)}" if h.released_at else "",
    ]


def _expiry(text: str, now: datetime) -> datetime:
    """A duration from now ('90d') or an ISO date/time (UTC unless it says otherwise)."""
    try:
        return now + cases.parse_duration(text)
    except cases.CaseError:
        return cases.parse_time(text, now)


@hold_app.command("place")
def hold_place(
    account: Annotated[
        str,
        typer.Option("--as", "--account", envvar="TRUSTLOG_ACCOUNT", help="Your security account"),
    ],
    approver: Annotated[str, typer.Option(help="Another security account, who approves now")],
    reason: Annotated[str, typer.Option(help="Why these records must be kept")],
    readers: Annotated[str, typer.Option(help="Security accounts who may read them, a,b")],
    expires: Annotated[str, typer.Option(help="ISO date/time or e.g. 90d (capped)")],
    event_id: Annotated[
        list[str] | None, typer.Option("--event-id", help="A record to hold (repeatable)")
    ] = None,
    pseudonym: Annotated[str | None, typer.Option(help="Hold one pseudonym's records")] = None,
    since: Annotated[
        str | None, typer.Option("--from", help="With --pseudonym: ISO time or e.g. 30d")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--to", help="With --pseudonym: ISO time or e.g. 1h")
    ] = None,
    password: PasswordOpt = None,
    approver_password: Annotated[
        str | None,
        typer.Option(
            envvar="TRUSTLOG_APPROVER_PASSWORD",
            help="The approver's ClickHouse password (prompted if not given)",
            show_default=False,
        ),
    ] = None,
    state_dir: StateOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Place a legal hold: copy the named records where retention cannot delete them."""
    s = _settings(state_dir)
    config = _config(s)
    now = datetime.now(UTC)
    ids = [i for raw in event_id or [] for i in raw.split(",")]
    try:
        hold = holds.new_hold(
            config,
            placed_by=account,
            approver=approver,
            reason=reason,
            readers=readers.split(","),
            expires_at=_expiry(expires, now),
            max_days=s.hold_max_days,
            now=now,
            event_ids=ids,
            pseudonym=pseudonym,
            period_start=cases.parse_time(since, now) if since else None,
            period_end=cases.parse_time(until, now) if until else None,
        )
    except cases.CaseError as exc:
        raise _fail(str(exc), 1) from None
    # Two people, both logged in: one places, another approves.
    _actor(s, account, password)
    _actor(s, approver, approver_password)
    placed = holds.place_hold(holds.HoldStore(_admin(s), s.ch_database), hold)
    if as_json:
        print(json.dumps(_jsonable(placed)))
        return
    console.print(
        f"hold {placed.hold_id} placed: {placed.held_rows} record(s) kept until "
        f"{_when(placed.expires_at)} UTC, readable by {', '.join(placed.readers)}",
        highlight=False,
    )
    if placed.held_rows == 0:
        console.print("no stored record matched: nothing is held", style="yellow")


@hold_app.command("list")
def hold_list(
    state_dir: StateOpt = None,
    all_holds: Annotated[bool, typer.Option("--all", help="Include released and expired")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Legal holds on records, newest first."""
    s = _settings(state_dir)
    now = datetime.now(UTC)
    found = holds.HoldStore(_admin(s), s.ch_database).list(include_ended=all_holds)
    if as_json:
        print(
            json.dumps([{**_jsonable(h), "effective_state": h.effective_state(now)} for h in found])
        )
        return
    table = Table(
        "id", "state", "scope", "rows", "readers", "placed / approved", "placed UTC",
        "expires UTC", "reason", "released",
    )  # fmt: skip
    for h in found:
        table.add_row(*_hold_row(h, now))
    console.print(table)


@hold_app.command("release")
def hold_release(
    hold_id: Annotated[str, typer.Argument(help="Hold id or a unique prefix (6+ chars)")],
    account: AsOpt,
    reason: Annotated[str, typer.Option(help="Why the records need not be kept any more")],
    password: PasswordOpt = None,
    state_dir: StateOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Release a hold early: its copies are deleted now."""
    s = _settings(state_dir)
    config = _config(s)
    _actor(s, account, password)
    try:
        hold = holds.release_hold(
            holds.HoldStore(_admin(s), s.ch_database), config, hold_id, account, reason
        )
    except cases.CaseError as exc:
        raise _fail(str(exc), 1) from None
    if as_json:
        print(json.dumps(_jsonable(hold)))
        return
    console.print(f"hold {hold.hold_id} released; its {hold.held_rows} copies are deleted")


# --------------------------------------------------------------------------- audit


@audit_app.callback()
def _audit() -> None:
    """Who holds and who used detail access."""
    # A callback keeps `access-review` a subcommand even while it is the only one.


@audit_app.command("access-review")
def access_review(
    month: Annotated[str, typer.Option(help="YYYY-MM")],
    state_dir: StateOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Who holds detail access, who read what under which case, and unused access."""
    s = _settings(state_dir)
    config = _config(s)
    try:
        audit.month_bounds(month)
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    review = audit.access_review(_admin(s), s.ch_database, config, month)
    if as_json:
        print(json.dumps(_jsonable(review)))
        return
    _print_review(review)


def _print_review(review: audit.AccessReview) -> None:
    console.print(
        f"[bold]Access review {review.month}[/bold] (as of {_when(review.as_of)} UTC)",
        highlight=False,
    )
    holders = Table("account", "role", "who", "access", "config", "server", "last detail read")
    for h in review.holders:
        holders.add_row(
            h.account,
            h.role,
            h.title,
            h.access,
            "yes" if h.in_config else "no",
            "yes" if h.on_server else "no",
            _when(h.last_detail_read) + (" (unused 30 d)" if h.unused else ""),
        )
    console.print("Who holds detail access", holders)
    case_table = Table(
        "case",
        "state",
        "scope",
        "reader",
        "approver",
        "approved",
        "ended",
        "reads",
        "rows",
        "outcome",
    )
    for line in review.cases:
        c = line.case
        window = c.access_window()
        case_table.add_row(
            c.case_id[:8],
            line.state,
            cases.describe_scope(c),
            c.reader,
            c.approver,
            _when(c.approved_at),
            _when(window[1]) if window else "-",
            str(line.reads),
            str(line.rows),
            c.outcome + (" (legal hold)" if c.legal_hold else ""),
        )
    console.print("Cases", case_table)
    reads = Table("time UTC", "account", "cases", "objects", "rows")
    for r in review.case_reads:
        reads.add_row(
            _when(r.event_time),
            r.account,
            ", ".join(i[:8] for i in r.case_ids) or "-",
            ", ".join(r.objects),
            str(r.result_rows),
        )
    console.print("Detail reads by security accounts", reads)
    if review.own_reads:
        console.print(
            "Employees reading their own records: "
            + ", ".join(f"{a} ({n})" for a, n in sorted(review.own_reads.items()))
        )
    if review.bookkeeping_reads:
        console.print(
            "Bookkeeping reads of events by services (no detail columns): "
            + ", ".join(f"{a} ({n})" for a, n in sorted(review.bookkeeping_reads.items()))
        )
    if review.other_detail_reads:
        console.print(
            "Detail read by accounts outside the roles (admin, `trustlog sql`): "
            + ", ".join(f"{a} ({n})" for a, n in sorted(review.other_detail_reads.items()))
        )
    refused = Counter(r.account for r in review.refused)
    if refused:
        console.print(
            "Refused queries: " + ", ".join(f"{a} ({n})" for a, n in sorted(refused.items()))
        )
    if review.findings:
        console.print("[bold]Findings[/bold]")
        for f in review.findings:
            console.print(f"  - {f}", highlight=False)
    else:
        console.print("No findings.")
