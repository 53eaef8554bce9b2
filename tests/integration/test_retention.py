"""Retention is enforced by ClickHouse itself: expired detail rows go, rollups stay.

A database of this test's own is migrated with the real migrations and a detail TTL of one
day (the TTL unit of the migrations is a day; the settings refuse anything outside 30..90 days
unless TRUSTLOG_DETAIL_TTL_UNCHECKED is set, see trustlog/settings.py). Rows stamped
"one day ago plus a few seconds" therefore expire a few seconds after they are inserted,
through the very TTL expression production uses; no ALTER ... MODIFY TTL to seconds needed.
Nothing in the test deletes: ClickHouse's TTL merge does (the local server runs TTL merges
every 60 s at most; if it has not got to it in time the test triggers a merge with OPTIMIZE
... FINAL, and the TTL is still what drops the rows).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from pydantic import ValidationError

from services.aggregator.app import EVENT_COLUMNS
from trustlog.migrate import apply_migrations
from trustlog.retention import apply_ttls
from trustlog.settings import ClickHouseSettings
from trustlog.storage import admin_client

RUN = uuid.uuid4().hex[:8]
DB = f"tl_retention_{RUN}"
EXPIRE_IN_S = 6
N_OLD, N_NEW = 400, 60


@pytest.fixture(scope="module")
def ch(stack: object) -> Iterator[Client]:
    client = admin_client()
    apply_migrations(client, database=DB, detail_ttl_days=1, rollup_ttl_days=400)
    yield client
    client.command(f"DROP DATABASE IF EXISTS {DB}")
    client.close()


def _row(i: int, t: datetime, team: str) -> list[Any]:
    return [
        f"{RUN}-{i}", t, "ret", "chat", "gpt-4o-mini", "openai", "ws", "p_1", "1", team,
        "other", 100, 10, 0, 0, "ok", 0, [], {}, 0, Decimal("0.25"), 1, "genai-prices:x", "v",
        0, i, "retention-test",
    ]  # fmt: skip


def _count(ch: Client, sql: str) -> int:
    return int(str(ch.command(sql)))


@pytest.mark.integration
def test_expired_detail_rows_are_dropped_by_ttl_and_rollups_remain(ch: Client) -> None:
    now = datetime.now(UTC)
    if (now + timedelta(seconds=EXPIRE_IN_S + 30)).date() != now.date():
        time.sleep(EXPIRE_IN_S + 31)  # keep old and new rows in different day partitions
        now = datetime.now(UTC)
    expires_at = now + timedelta(seconds=EXPIRE_IN_S)
    old_t = expires_at - timedelta(days=1)
    ch.insert(
        f"{DB}.events", [_row(i, old_t, "old") for i in range(N_OLD)], column_names=EVENT_COLUMNS
    )
    ch.insert(
        f"{DB}.events",
        [_row(N_OLD + i, now, "new") for i in range(N_NEW)],
        column_names=EVENT_COLUMNS,
    )
    # Not yet expired: all there, and the part knows when its rows expire.
    assert _count(ch, f"SELECT count() FROM {DB}.events") == N_OLD + N_NEW
    ttl_max = ch.query(
        f"SELECT max(delete_ttl_info_max) FROM system.parts WHERE database = '{DB}' "
        "AND table = 'events' AND active AND partition = {p:String}",
        parameters={"p": old_t.strftime("%Y%m%d")},
    ).result_rows[0][0]
    assert abs(ttl_max.replace(tzinfo=UTC) - expires_at) < timedelta(seconds=2)

    while datetime.now(UTC) < expires_at + timedelta(seconds=1):
        time.sleep(0.2)
    how = "background TTL merge"
    deadline = time.monotonic() + 20
    while _count(ch, f"SELECT count() FROM {DB}.events WHERE team = 'old'") and (
        time.monotonic() < deadline
    ):
        time.sleep(0.5)
    if _count(ch, f"SELECT count() FROM {DB}.events WHERE team = 'old'"):
        how = "TTL merge triggered by OPTIMIZE FINAL"
        ch.command(f"OPTIMIZE TABLE {DB}.events FINAL")
    assert _count(ch, f"SELECT count() FROM {DB}.events WHERE team = 'old'") == 0, how
    assert _count(ch, f"SELECT count() FROM {DB}.events WHERE team = 'new'") == N_NEW

    # No one deleted anything: since the inserts, no DELETE, ALTER or DROP touched the table.
    ch.command("SYSTEM FLUSH LOGS")
    deletes = ch.query(
        "SELECT query_kind, query FROM system.query_log WHERE has(databases, {db:String}) "
        "AND query_kind IN ('Delete', 'Alter', 'Drop') AND event_time_microseconds >= {t:DateTime64(6)}",
        parameters={"db": DB, "t": now},
    ).result_rows
    assert deletes == []

    # The rollups keep what the detail rows said: every call, every cent.
    for rollup in ("spend_hourly", "spend_daily"):
        got = ch.query(
            f"SELECT team, sum(requests), sum(cost_usd) FROM {DB}.{rollup} GROUP BY team"
        ).result_rows
        assert {r[0]: (r[1], Decimal(r[2])) for r in got} == {
            "old": (N_OLD, Decimal("0.25") * N_OLD),
            "new": (N_NEW, Decimal("0.25") * N_NEW),
        }, rollup
    print(f"\nexpired detail rows removed by {how}; rollups intact")


@pytest.mark.integration
def test_configured_retention_is_applied_to_an_existing_database(ch: Client) -> None:
    def ttl_days() -> dict[str, str]:
        rows = ch.query(
            "SELECT name, extract(engine_full, 'toIntervalDay\\\\((\\\\d+)\\\\)') FROM system.tables "
            "WHERE database = {db:String} AND name IN ('events', 'spend_hourly', 'spend_daily')",
            parameters={"db": DB},
        ).result_rows
        return {str(r[0]): str(r[1]) for r in rows}

    assert ttl_days() == {"events": "1", "spend_hourly": "400", "spend_daily": "400"}
    settings = ClickHouseSettings(detail_ttl_days=45, rollup_ttl_days=500)
    changed = apply_ttls(ch, DB, settings)
    assert {"events", "spend_daily", "spend_hourly"} <= set(changed)
    assert ttl_days() == {"events": "45", "spend_hourly": "500", "spend_daily": "500"}
    assert apply_ttls(ch, DB, settings) == []  # already in line: no ALTER


def test_detail_ttl_is_bounded_to_30_90_days_unless_explicitly_unchecked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for var in ("DETAIL_TTL_DAYS", "ROLLUP_TTL_DAYS", "DETAIL_TTL_UNCHECKED"):
        monkeypatch.delenv(f"TRUSTLOG_{var}", raising=False)
    assert ClickHouseSettings().detail_ttl_days == 60
    assert ClickHouseSettings().rollup_ttl_days == 400
    for days in (30, 90):
        assert ClickHouseSettings(detail_ttl_days=days).detail_ttl_days == days
    for days in (29, 91, 1):
        with pytest.raises(ValidationError, match=r"'detail': \d+d is outside 30d\.\.90d"):
            ClickHouseSettings(detail_ttl_days=days)
    assert ClickHouseSettings(detail_ttl_days=1, detail_ttl_unchecked=True).detail_ttl_days == 1
    # the rollup class starts above the detail class's maximum: rollups outlive detail
    with pytest.raises(ValidationError, match=r"'rollup': 60d is outside 91d\.\.1100d"):
        ClickHouseSettings(detail_ttl_days=90, rollup_ttl_days=60)
    with pytest.raises(ValidationError, match="rollups outlive detail"):
        ClickHouseSettings(detail_ttl_days=90, rollup_ttl_days=60, detail_ttl_unchecked=True)
