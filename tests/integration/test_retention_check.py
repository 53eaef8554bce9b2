"""`trustlog retention check` and legal holds on records, on a real ClickHouse and Kafka.

Tables: the module runs its own ClickHouse with role accounts (the helpers of
test_governance_access: users come from users.xml only, and the session stack's has no role
accounts). TTL merges of `events` are stopped while rows older than the detail class are
inserted, so the check sees what a lagging server would hold; they are started again before
`--enforce`, which must then delete those rows through the TTL and nothing else. Topics: the
session stack's Kafka, with this module's own topic names.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from typer.testing import CliRunner

from services.aggregator.app import EVENT_COLUMNS
from tests.integration.test_governance_access import (
    ADMIN_PW,
    Logins,
    _start,
    _stop,
    _write_server_files,
    assert_denied,
    roles_yaml,
)
from trustlog import migrate, retention
from trustlog.cli import app
from trustlog.governance import holds, roles
from trustlog.kafka import ensure_topics
from trustlog.settings import ClickHouseSettings, RetentionSettings
from trustlog.stack import clickhouse, manager

pytestmark = pytest.mark.integration

DB = "trustlog"
RUN = uuid.uuid4().hex[:8]
P_OLD = "p_" + "a" * 32
P_HELD = "p_" + "b" * 32
N_OLD, N_NEW = 50, 20


@dataclass
class Srv(Logins):
    config: roles.RolesConfig
    roles_file: Path

    def env(self) -> dict[str, str]:
        return {
            "TRUSTLOG_CH_PORT": str(self.port),
            "TRUSTLOG_CH_USER": clickhouse.ADMIN_USER,
            "TRUSTLOG_CH_PASSWORD": ADMIN_PW,
            "TRUSTLOG_CH_DATABASE": DB,
            "TRUSTLOG_ROLES_FILE": str(self.roles_file),
        }


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Srv]:
    import yaml

    base = tmp_path_factory.mktemp("retention")
    ch_dir = base / "clickhouse"
    ch_dir.mkdir()
    state = base / "state"
    data = roles_yaml()
    config = roles.parse_roles(data)
    roles_file = base / "roles.yaml"
    roles_file.write_text(yaml.safe_dump(data))
    port = manager.pick_free_port()
    _write_server_files(ch_dir, port, config, state)
    proc = _start(ch_dir, port)
    passwords = roles.load_or_create_passwords(
        roles.passwords_file(state), [a.name for a in config.accounts]
    )
    try:
        s = Srv(port, passwords, config, roles_file)
        admin = s.admin()
        migrate.apply_migrations(admin, database=DB, detail_ttl_days=60, rollup_ttl_days=400)
        retention.apply_ttls(admin, DB, ClickHouseSettings())
        yield s
    finally:
        _stop(proc)


def _row(event_id: str, t: datetime, pseudonym: str, team: str) -> list[Any]:
    return [
        event_id, t, "ret", "chat", "gpt-4o-mini", "openai", "ws", pseudonym, "1", team,
        "other", 100, 10, 0, 0, "ok", 0, [], {"email": 1}, 0, Decimal("0.25"), 1, "genai-prices:x",
        "v", 0, 0, "retention-test",
    ]  # fmt: skip


def _count(client: Client, sql: str) -> int:
    return int(str(client.command(sql)))


def _check(srv: Srv, *args: str) -> tuple[int, dict[str, Any]]:
    res = CliRunner().invoke(
        app, ["retention", "check", "--no-topics", "--json", *args], env=srv.env()
    )
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    return res.exit_code, json.loads(res.stdout.strip().splitlines()[-1])


def _table(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in report["tables"] if t["table"] == name)


def test_ttls_come_from_the_classes_and_follow_a_changed_setting(srv: Srv) -> None:
    admin = srv.admin()
    want = retention.desired_ttls(ClickHouseSettings())
    got = {
        str(name): retention.table_ttl(str(engine))
        for name, engine in admin.query(
            "SELECT name, engine_full FROM system.tables WHERE database = {db:String}",
            parameters={"db": DB},
        ).result_rows
    }
    for table, (ttl, _) in want.items():
        assert got[table] == ttl, table  # incidents etc. had none in their migration
    assert retention.apply_ttls(admin, DB, ClickHouseSettings()) == []  # idempotent
    changed = retention.apply_ttls(admin, DB, ClickHouseSettings(detail_ttl_days=45))
    assert sorted(changed) == ["events", "incidents.user_pseudonym"]
    assert retention.apply_ttls(admin, DB, ClickHouseSettings()) == [
        "events",
        "incidents.user_pseudonym",
    ]


def test_check_finds_old_rows_enforce_deletes_them_and_holds_survive(srv: Srv) -> None:
    admin = srv.admin()
    now = datetime.now(UTC)
    old = now - timedelta(days=75)  # past 60 days + a day partition + the TTL merge interval
    # a lagging server: TTL merges do not run, rows past their class stay
    for table in ("events", "held_events"):
        admin.command(f"SYSTEM STOP TTL MERGES {DB}.{table}")
    rows = [_row(f"{RUN}-old-{i}", old, P_OLD, "old") for i in range(N_OLD)]
    rows += [_row(f"{RUN}-held-{i}", old, P_HELD, "old") for i in range(3)]
    rows += [_row(f"{RUN}-new-{i}", now, P_OLD, "new") for i in range(N_NEW)]
    admin.insert(f"{DB}.events", rows, column_names=EVENT_COLUMNS)

    # Hold 1 through the CLI: two held records, readable by sec_1 only.
    env = {
        **srv.env(),
        "TRUSTLOG_ACCOUNT_PASSWORD": srv.passwords["sec_2"],
        "TRUSTLOG_APPROVER_PASSWORD": srv.passwords["sec_3"],
    }
    res = CliRunner().invoke(
        app,
        [
            "hold", "place", "--account", "sec_2", "--approver", "sec_3",
            "--reason", "Litigation notice 2025-17: preserve these calls",
            "--readers", "sec_1", "--expires", "30d",
            "--event-id", f"{RUN}-held-0,{RUN}-held-1", "--json",
        ],
        env=env,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    hold1 = json.loads(res.stdout)
    assert hold1["held_rows"] == 2 and hold1["readers"] == ["sec_1"]
    assert hold1["placed_by"] == "sec_2" and hold1["approver"] == "sec_3"
    # Hold 2 by pseudonym and period, expiring in seconds.
    store = holds.HoldStore(admin, DB)
    hold2 = holds.place_hold(
        store,
        holds.new_hold(
            srv.config,
            placed_by="sec_1",
            approver="sec_2",
            reason="Short hold that expires during the test",
            readers=["sec_1", "sec_2"],
            expires_at=now + timedelta(seconds=3),
            max_days=365,
            now=now,
            pseudonym=P_HELD,
            period_start=old - timedelta(minutes=1),
            period_end=old + timedelta(minutes=1),
        ),
    )
    assert hold2.held_rows == 3

    code, report = _check(srv)
    events = _table(report, "events")
    assert code == 1 and "events" in report["violations"]
    assert events["status"] == "violation" and events["past_grace"] == N_OLD + 3
    assert _table(report, "spend_daily")["status"] == "ok"
    assert {h["hold_id"]: h["rows"] for h in report["holds"]} == {
        hold1["hold_id"]: 2,
        hold2.hold_id: 3,
    }

    time.sleep(max(0.0, (hold2.expires_at - datetime.now(UTC)).total_seconds()) + 1.5)
    # still no background TTL merge: what goes now, --enforce deletes
    code, report = _check(srv, "--enforce")
    assert code == 0, report["violations"]
    assert set(report["enforced"]) >= {"events", "held_events"}
    assert _count(admin, f"SELECT count() FROM {DB}.events WHERE team = 'old'") == 0
    assert _count(admin, f"SELECT count() FROM {DB}.events WHERE team = 'new'") == N_NEW
    # the live hold's copies survive, the expired hold's are gone
    held = admin.query(f"SELECT hold_id, event_id FROM {DB}.held_events ORDER BY event_id")
    assert [tuple(r) for r in held.result_rows] == [
        (hold1["hold_id"], f"{RUN}-held-0"),
        (hold1["hold_id"], f"{RUN}-held-1"),
    ]

    # Only the hold's listed reader reads them; another security account sees nothing and
    # finance is refused outright.
    reader = srv.login("sec_1").query(f"SELECT event_id, user_pseudonym FROM {DB}.held_events")
    assert sorted(r[0] for r in reader.result_rows) == [f"{RUN}-held-0", f"{RUN}-held-1"]
    assert srv.login("sec_2").query(f"SELECT event_id FROM {DB}.held_events").result_rows == []
    assert_denied(srv.login("fin_t"), f"SELECT event_id FROM {DB}.held_events")
    assert_denied(srv.login("emp_x"), f"SELECT event_id FROM {DB}.held_events")
    # ... and reads no column outside the security columns
    assert_denied(srv.login("sec_1"), f"SELECT hold_readers FROM {DB}.held_events")

    # Release: the copies are gone at once; the record says who, when and why.
    res = CliRunner().invoke(
        app,
        ["hold", "release", hold1["hold_id"][:8], "--as", "sec_1", "--reason",
         "Matter settled, counsel released the hold", "--json"],
        env={**srv.env(), "TRUSTLOG_ACCOUNT_PASSWORD": srv.passwords["sec_1"]},
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert _count(admin, f"SELECT count() FROM {DB}.held_events") == 0
    listed = CliRunner().invoke(app, ["hold", "list", "--all", "--json"], env=srv.env())
    by_id = {h["hold_id"]: h for h in json.loads(listed.stdout)}
    assert by_id[hold1["hold_id"]]["released_by"] == "sec_1"
    assert by_id[hold1["hold_id"]]["effective_state"] == "released"
    assert by_id[hold2.hold_id]["effective_state"] == "expired"
    assert _check(srv)[0] == 0
    for table in ("events", "held_events"):
        admin.command(f"SYSTEM START TTL MERGES {DB}.{table}")


def test_holds_are_refused_without_reason_readers_or_within_the_cap(srv: Srv) -> None:
    now = datetime.now(UTC)
    base: dict[str, Any] = {
        "placed_by": "sec_1",
        "approver": "sec_2",
        "reason": "A reason long enough",
        "readers": ["sec_1"],
        "expires_at": now + timedelta(days=10),
        "max_days": 30,
        "now": now,
        "event_ids": ["e1"],
    }
    for change, error in [
        ({"reason": ""}, "reason is required"),
        ({"readers": ["fin_t"]}, "reader 'fin_t' is not a security account"),
        ({"readers": []}, "name 1..3 readers"),
        ({"approver": "sec_1"}, "approver must be a different"),
        ({"expires_at": now + timedelta(days=31)}, "at most 30 days"),
        ({"event_ids": [], "pseudonym": "someone@example.com"}, "never a user id"),
        ({"event_ids": []}, "name the records"),
    ]:
        with pytest.raises(holds.HoldError, match=error):
            holds.new_hold(srv.config, **{**base, **change})
    res = CliRunner().invoke(
        app,
        ["hold", "place", "--as", "sec_1", "--approver", "sec_2", "--reason", "long enough reason",
         "--readers", "sec_3", "--expires", "400d", "--event-id", "x"],
        env=srv.env(),
    )  # fmt: skip
    assert res.exit_code == 1 and "at most 365 days" in res.output


async def test_topic_retention_is_the_class_and_the_check_reads_it(stack: object) -> None:
    names = {
        f"topic_{k}": f"retention-{RUN}.{k}"
        for k in ("raw", "redacted", "deadletter", "signals", "incidents")
    }
    s = RetentionSettings(**names, raw_retention_hours=2, stream_retention_days=3)  # type: ignore[arg-type]
    await ensure_topics(s)
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap)
    await producer.start()
    try:
        # a record stamped 4 days ago on a 3-day topic: past retention + segment + check
        await producer.send_and_wait(
            s.topic_signals, b"{}", timestamp_ms=int((time.time() - 4 * 86400) * 1000)
        )
        await producer.send_and_wait(s.topic_signals, b"{}")
    finally:
        await producer.stop()
    deadline = time.monotonic() + 15
    while True:
        found = {t.topic: t for t in await retention.check_topics(s)}
        if found[s.topic_raw].config_ok or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    raw, signals = found[s.topic_raw], found[s.topic_signals]
    assert (raw.cls, raw.retention_ms, raw.status) == ("transient", 2 * 3_600_000, "ok")
    assert raw.segment_ms is not None and raw.segment_ms <= 2 * 3_600_000 // 6
    assert found[s.topic_redacted].retention_ms == 3 * 86_400_000
    assert (signals.records, signals.older_than_allowed, signals.status) == (2, 1, "violation")
