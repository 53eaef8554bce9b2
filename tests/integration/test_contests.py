"""Contests on the real stack: the employee, the security group, finance and managers each log
in as their own ClickHouse account (config/roles.yaml, rendered into the stack's users.xml).

The employee's pseudonyms are synced under a test key; events and one incident are inserted
with the admin account under tools no other test uses, on yesterday (so the day is whole).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError
from typer.testing import CliRunner

from services.redactor.identity import pseudonym
from trustlog.cli import app as trustlog_app
from trustlog.governance import contests, roles
from trustlog.governance.contest_cli import contest_app
from trustlog.settings import GovernanceSettings, default_state_dir

pytestmark = pytest.mark.integration

KEY = b"contest-test-key-0123456789abcdef"
EMP, OWNER, OTHER_SEC = "emp_demo", "sys_owner", "sec_lead"
FIN, MGR_SUPPORT, MGR_ENG = "fin_ops", "mgr_support", "mgr_engineering"
RUN = uuid.uuid4().hex[:8]
BIG, SMALL = f"ct-big-{RUN}", f"ct-small-{RUN}"  # tools only this module writes


def p(user_id: str) -> str:
    return pseudonym(KEY, user_id)


@dataclass
class Env:
    settings: GovernanceSettings
    config: roles.RolesConfig
    passwords: dict[str, str]
    emp_pseudonym: str
    day: date
    ids: dict[str, str]  # name -> event or incident id

    def admin(self) -> Client:
        s = self.settings
        return clickhouse_connect.get_client(
            host=s.ch_host, port=s.ch_port, username=s.ch_user,
            password=s.ch_password.get_secret_value(),
        )  # fmt: skip

    def login(self, account: str) -> Client:
        s = self.settings
        return clickhouse_connect.get_client(
            host=s.ch_host, port=s.ch_port, username=account, password=self.passwords[account]
        )

    def run(self, account: str, *args: str) -> Any:
        result = CliRunner().invoke(
            contest_app,
            [*args, "--account", account, "--json"],
            env={"TRUSTLOG_ACCOUNT_PASSWORD": self.passwords[account]},
        )
        return result


EVENT_COLUMNS = [
    "event_id", "event_time", "team", "tool", "user_pseudonym", "pseudonym_key_version",
    "status", "input_tokens", "output_tokens", "cost_usd", "priced", "content_chars",
]  # fmt: skip


@pytest.fixture(scope="module")
def env(stack: object) -> Iterator[Env]:
    s = GovernanceSettings()
    config = roles.load_roles(s.roles_file)
    assert config.get(EMP) is not None and config.get(OWNER) is not None
    passwords = roles.load_or_create_passwords(
        roles.passwords_file(default_state_dir()),
        [a.name for a in config.accounts if not a.password_sha256_hex],
    )
    emp = config.get(EMP)
    assert emp is not None and emp.user_id is not None
    admin = clickhouse_connect.get_client(
        host=s.ch_host, port=s.ch_port, username=s.ch_user,
        password=s.ch_password.get_secret_value(),
    )  # fmt: skip
    roles.sync(admin, config, s.ch_database, lambda uid: {"t1": p(uid)})
    day = datetime.now(UTC).date() - timedelta(days=1)
    noon = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    ids: dict[str, str] = {}
    rows: list[list[Any]] = []

    def add(name: str | None, team: str, tool: str, user: str, cost: str = "0.25") -> None:
        eid = str(uuid.uuid4())
        if name:
            ids[name] = eid
        rows.append([eid, noon + timedelta(minutes=len(rows)), team, tool, p(user), "t1", "ok",
                     100, 20, cost, 1, 50])  # fmt: skip

    # support/BIG: the employee and 5 others (6 people); support/SMALL: the employee and 1
    # other (2 people); engineering/BIG: the employee and 5 others.
    add("own_big", "support", BIG, emp.user_id, "0.75")
    add("own_big_2", "support", BIG, emp.user_id)
    add("own_big_3", "support", BIG, emp.user_id)
    for i in range(5):
        add(None, "support", BIG, f"ct-support-{RUN}-{i}")
    add("someone_else", "support", BIG, f"ct-support-{RUN}-0")
    add("own_small", "support", SMALL, emp.user_id, "0.10")
    add(None, "support", SMALL, f"ct-support-{RUN}-1")
    add("own_eng", "engineering", BIG, emp.user_id)
    for i in range(5):
        add(None, "engineering", BIG, f"ct-eng-{RUN}-{i}")
    admin.insert(f"{s.ch_database}.events", rows, column_names=EVENT_COLUMNS)
    ids["incident"] = f"ct-incident-{RUN}"
    admin.insert(
        f"{s.ch_database}.incidents",
        [[ids["incident"], f"dedup-{RUN}", "sensitive_data", "security", "high", "open",
          "support", BIG, "security", "#sec", 1, noon, noon, "sensitive data: observed 3",
          p(emp.user_id), {}, 1]],
        column_names=["incident_id", "dedup_key", "rule", "category", "severity", "state",
                      "team", "tool", "owner", "channel", "signal_count", "first_seen",
                      "last_seen", "summary", "user_pseudonym", "evidence", "version"],
    )  # fmt: skip
    yield Env(s, config, passwords, p(emp.user_id), day, ids)
    # Leave the stack's employee without the test key's pseudonyms.
    roles.sync(admin, config, s.ch_database, lambda uid: {})


def denied(client: Client, sql: str) -> None:
    with pytest.raises(DatabaseError) as info:
        client.query(sql)
    assert "ACCESS_DENIED" in str(info.value) or "Code: 497" in str(info.value), str(info.value)


def rows(client: Client, sql: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in client.query(sql).result_rows]


def _open(env: Env, record: str, kind: str, context: str) -> dict[str, Any]:
    result = env.run(EMP, "open", "--record", record, "--kind", kind, "--context", context)
    assert result.exit_code == 0, result.output
    out: dict[str, Any] = json.loads(result.output)
    return out


def test_contest_lifecycle_through_the_cli(env: Env) -> None:
    db = env.settings.ch_database
    # Someone else's record: the employee's own login cannot read it, so it is refused.
    other = env.run(EMP, "open", "--record", env.ids["someone_else"], "--kind", "not_me")
    assert other.exit_code == 1 and "not one of your records" in other.output, other.output
    unknown = env.run(EMP, "open", "--record", "no-such-event", "--kind", "not_me")
    assert unknown.exit_code == 1
    # Bad input is refused before a login; a non-employee cannot contest.
    long_context = env.run(EMP, "open", "--record", env.ids["own_big"], "--kind", "not_me",
                           "--context", "x" * 1001)  # fmt: skip
    assert long_context.exit_code == 2 and "1000" in long_context.output
    assert env.run(FIN, "open", "--record", env.ids["own_big"], "--kind", "not_me").exit_code == 1
    wrong_pw = CliRunner().invoke(
        contest_app, ["open", "--account", EMP, "--record", env.ids["own_big"], "--kind", "not_me"],
        env={"TRUSTLOG_ACCOUNT_PASSWORD": "wrong"},
    )  # fmt: skip
    assert wrong_pw.exit_code == 2

    # What the employee can contest: their own records and incidents, read as them.
    listed = env.run(EMP, "records", "--days", "3", "--limit", "1000")
    assert listed.exit_code == 0, listed.output
    listed_ids = {r["record_id"] for r in json.loads(listed.output)}
    assert {env.ids[n] for n in ("own_big", "own_small", "own_eng", "incident")} <= listed_ids
    assert env.ids["someone_else"] not in listed_ids

    opened = _open(env, env.ids["own_big"], "not_me", "I was on leave that day; laptop locked")
    assert opened["state"] == "open" and opened["pseudonym"] == env.emp_pseudonym
    assert (opened["team"], opened["tool"], opened["record_day"]) == (
        "support",
        BIG,
        env.day.isoformat(),
    )
    assert Decimal(opened["cost_usd"]) == Decimal("0.75")
    again = env.run(EMP, "open", "--record", env.ids["own_big"], "--kind", "other",
                    "--context", "second try at the same record")  # fmt: skip
    assert again.exit_code == 1 and "waiting for a decision" in again.output
    incident = _open(env, env.ids["incident"], "automation_misfired", "the nightly export job")
    assert incident["record_kind"] == "incident"

    # The queue: security only, oldest first, with age.
    assert env.run(EMP, "queue").exit_code == 1
    queue = json.loads(env.run(OWNER, "queue").output)
    mine_ids = [q["contest_id"] for q in queue if q["contest_id"] in
                (opened["contest_id"], incident["contest_id"])]  # fmt: skip
    assert mine_ids == [opened["contest_id"], incident["contest_id"]]
    assert all(q["age"] for q in queue)

    cid = opened["contest_id"]
    assert env.run(OWNER, "review", cid[:8]).exit_code == 0
    no_note = env.run(OWNER, "resolve", cid[:8], "--outcome", "rejected")
    assert no_note.exit_code == 1 and "needs a note" in no_note.output
    assert env.run(EMP, "resolve", cid[:8], "--outcome", "upheld").exit_code == 1
    done = env.run(OWNER, "resolve", cid[:8], "--outcome", "upheld",
                   "--note", "Badge logs confirm the leave; key rotated")  # fmt: skip
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["attributed"] is False
    assert env.run(OTHER_SEC, "resolve", cid[:8], "--outcome", "rejected",
                   "--note", "changing my mind later").exit_code == 1  # fmt: skip
    rejected = env.run(OTHER_SEC, "resolve", incident["contest_id"], "--outcome", "rejected",
                       "--note", "The export job was not running that night")  # fmt: skip
    assert rejected.exit_code == 0, rejected.output

    # The employee sees both outcomes, read through their own login.
    mine = {c["contest_id"]: c for c in json.loads(env.run(EMP, "mine").output)}
    assert mine[cid]["state"] == "upheld" and mine[cid]["actor"] == OWNER
    assert mine[cid]["note"].startswith("Badge logs") and mine[cid]["attributed"] is False
    assert mine[incident["contest_id"]]["state"] == "rejected"
    assert mine[incident["contest_id"]]["attributed"] is True

    # History is append-only: open -> under_review -> upheld, each with who and when.
    history = json.loads(env.run(OWNER, "history", cid).output)
    assert [(h["from_state"], h["state"], h["actor"]) for h in history] == [
        ("", "open", ""), ("open", "under_review", OWNER), ("under_review", "upheld", OWNER)
    ]  # fmt: skip

    # The person concerned got a notice, addressed by pseudonym.
    store = contests.ContestStore(env.admin(), db)
    [notice] = store.notices(cid)
    assert (notice.recipient_kind, notice.recipient) == ("pseudonym", env.emp_pseudonym)
    assert "upheld" in notice.message and "no longer counts as your own use" in notice.message
    # ... which the person reads themselves, as themselves (row policy on `notifications`).
    read = CliRunner().invoke(
        trustlog_app, ["notices", "--account", EMP, "--json"],
        env={"TRUSTLOG_ACCOUNT_PASSWORD": env.passwords[EMP]},
    )  # fmt: skip
    assert read.exit_code == 0, read.output
    decided = {n["contest_id"]: n for n in json.loads(read.output) if n["contest_id"]}
    assert decided[cid]["label"] == "contest decided" and decided[cid]["addressed_to"] == "you"
    assert decided[incident["contest_id"]]["message"].startswith("Your contest")
    assert (
        CliRunner()
        .invoke(trustlog_app, ["notices", "--account", FIN], env={"TRUSTLOG_ACCOUNT_PASSWORD": "x"})
        .exit_code
        == 1
    )


def test_who_can_read_contests(env: Env) -> None:
    db = env.settings.ch_database
    store = contests.ContestStore(env.admin(), db)
    # A contest by someone else (written directly: no other employee account exists here).
    record = contests.Record("event", env.ids["someone_else"], p(f"ct-support-{RUN}-0"),
                             "support", BIG, env.day, Decimal("0.25"))  # fmt: skip
    foreign = contests.open_contest(store, record, "shared_account", "the team's shared login")
    emp = env.login(EMP)
    own = rows(emp, f"SELECT DISTINCT pseudonym FROM {db}.contests_current")
    assert own == [(env.emp_pseudonym,)]
    assert rows(emp, f"SELECT count() FROM {db}.contests WHERE contest_id = "
                     f"'{foreign.contest_id}'") == [(0,)]  # fmt: skip
    assert rows(emp, f"SELECT count() FROM {db}.contests WHERE throwIf(contest_id = "
                     f"'{foreign.contest_id}', 'oracle')") == [(0,)]  # fmt: skip
    # Security reads every contest; finance and managers never the table or its context.
    sec = env.login(OTHER_SEC)
    assert rows(sec, f"SELECT count() FROM {db}.contests_current WHERE contest_id = "
                     f"'{foreign.contest_id}'") == [(1,)]  # fmt: skip
    for account in (FIN, MGR_SUPPORT):
        for obj in ("contests", "contests_current", "employee_incidents", "notifications"):
            denied(env.login(account), f"SELECT count() FROM {db}.{obj}")
    # The table itself refuses a raw identity or an essay, whoever writes (CHECK constraints).
    for bad in (
        replace(foreign, pseudonym="alice@example.com"),
        replace(foreign, context="x" * 1001),
    ):
        with pytest.raises(DatabaseError, match=r"VIOLATED_CONSTRAINT|Constraint"):
            store.save(bad)
    # The employee sees their own incident only, through their row policy.
    got = rows(emp, f"SELECT incident_id FROM {db}.employee_incidents WHERE incident_id LIKE "
                    f"'ct-incident-{RUN}%'")  # fmt: skip
    assert got == [(env.ids["incident"],)]
    denied(emp, f"SELECT evidence FROM {db}.incidents")


def test_annotations_for_finance_and_managers(env: Env) -> None:
    db = env.settings.ch_database
    store = contests.ContestStore(env.admin(), db)
    emp = env.login(EMP)
    small = contests.open_contest(
        store, _must(contests.find_own_record(emp, db, env.ids["own_small"])), "shared_account",
        "shared login on the small tool",
    )  # fmt: skip
    eng = contests.open_contest(
        store, _must(contests.find_own_record(emp, db, env.ids["own_eng"])), "not_me", ""
    )
    corrected = contests.open_contest(
        store, _must(contests.find_own_record(emp, db, env.ids["own_big_2"])), "other",
        "tagged to support, but I was on loan to engineering",
    )  # fmt: skip
    contests.resolve_contest(store, env.config, corrected.contest_id, OWNER, "corrected",
                             "team mapping fixed for loans")  # fmt: skip
    start, end = env.day, env.day + timedelta(days=1)

    def ours(client: Client, team: str | None = None) -> dict[str, contests.Annotation]:
        found = contests.annotations(client, start=start, end=end, team=team, database=db)
        return {a.contest_id: a for a in found if a.tool in (BIG, SMALL)}

    fin = ours(env.login(FIN))
    assert small.contest_id in fin and eng.contest_id in fin and corrected.contest_id in fin
    assert fin[small.contest_id].group_ok is False  # 2 people used SMALL that day
    assert fin[eng.contest_id].group_ok is True
    assert fin[corrected.contest_id].outcome_label == "corrected after contest"
    assert fin[corrected.contest_id].cost_usd == Decimal("0.25")
    for a in fin.values():  # the Python label and the view's agree
        assert a.outcome_label == contests.outcome_label(a.kind, a.status)
    # The contest the first test upheld reads as such (if it ran first in this session).
    upheld = [a for a in fin.values() if a.status == "upheld"]
    assert all(a.outcome_label == "upheld: not this person's use" for a in upheld)

    # Managers: own teams only, and not the small group.
    mgr = ours(env.login(MGR_SUPPORT))
    assert corrected.contest_id in mgr
    assert small.contest_id not in mgr and eng.contest_id not in mgr
    assert {a.team for a in mgr.values()} == {"support"}
    assert set(ours(env.login(MGR_ENG))) == {eng.contest_id}
    assert ours(env.login(MGR_SUPPORT), team="engineering") == {}
    mgr_client = env.login(MGR_SUPPORT)
    # No oracle for the rows the row policy hides (another team, a small group).
    for cond in ("team = 'engineering'", "group_ok = 0"):
        assert rows(mgr_client, f"SELECT count() FROM {db}.contest_annotations "
                                f"WHERE throwIf({cond}, 'oracle')") == [(0,)]  # fmt: skip
    # Nobody else reads annotations.
    for account in (EMP, OTHER_SEC):
        denied(env.login(account), f"SELECT count() FROM {db}.contest_annotations")

    # No pseudonym, record id or context reaches the view, not even as a column.
    admin = env.admin()
    columns = [r[0] for r in rows(admin, f"DESCRIBE TABLE {db}.contest_annotations")]
    assert columns == ["contest_id", "record_kind", "kind", "status", "outcome", "team", "tool",
                       "day", "cost_usd", "outcome_label", "group_ok"]  # fmt: skip
    dump = json.dumps(rows(admin, f"SELECT * FROM {db}.contest_annotations"), default=str)
    assert env.emp_pseudonym not in dump and "p_" not in dump
    for rid in env.ids.values():
        assert rid not in dump
    assert "on loan" not in dump and "shared login" not in dump and "team mapping" not in dump


def _must(record: contests.Record | None) -> contests.Record:
    assert record is not None
    return record
