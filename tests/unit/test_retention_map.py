"""Every table the migrations create and every topic trustlog owns has a retention class, and
the TTL / retention.ms it is given is that class's length (schemas/retention.yaml)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from trustlog import migrate, retention
from trustlog.kafka import segment_ms, topic_specs
from trustlog.registry import (
    CONFIGURED_CLASS,
    RegistryError,
    parse_retention_map,
    registry,
    retention_map,
)
from trustlog.settings import AlertsSettings, ClickHouseSettings, KafkaSettings

DB = "tl"
_CREATE = re.compile(r"CREATE TABLE IF NOT EXISTS tl\.(\w+)")
_TABLE_TTL = re.compile(r"^TTL (.+?)(?: DELETE)?$", re.M)
_COLUMN_TTL = re.compile(r"ALTER TABLE tl\.(\w+)\s+MODIFY COLUMN (\w+) [^\n]*\n\s*TTL (.+)$", re.S)


def _statements(settings: ClickHouseSettings) -> list[str]:
    out = []
    for mig in migrate.discover(migrate.DEFAULT_MIGRATIONS_DIR):
        sql = migrate.render(
            mig.text,
            database=DB,
            detail_ttl_days=settings.detail_ttl_days,
            rollup_ttl_days=settings.rollup_ttl_days,
        )
        out += migrate.split_statements(sql)
    return out


def _normalise(expr: str) -> str:
    """``INTERVAL n DAY`` the way ClickHouse prints it back."""
    return re.sub(r"INTERVAL (\d+) DAY", r"toIntervalDay(\1)", expr.strip())


def migration_ttls(settings: ClickHouseSettings) -> dict[str, str | None]:
    """Table (or table.column) -> the TTL a migration writes (None: it writes none)."""
    ttls: dict[str, str | None] = {}
    for stmt in _statements(settings):
        created = _CREATE.search(stmt)
        if created:
            found = _TABLE_TTL.search(stmt)
            ttls[created.group(1)] = _normalise(found.group(1)) if found else None
        col = _COLUMN_TTL.search(stmt)
        if col:
            ttls[f"{col.group(1)}.{col.group(2)}"] = _normalise(col.group(3))
    return ttls


def test_every_table_a_migration_creates_has_a_class_and_nothing_else_is_listed() -> None:
    created = {t for t in migration_ttls(ClickHouseSettings()) if "." not in t}
    mapped = set(retention_map().tables) - {migrate.MIGRATIONS_TABLE}
    assert created - mapped == set(), "tables without a retention class"
    assert mapped - created == set(), "retention.yaml lists tables no migration creates"


@pytest.mark.parametrize(
    "settings",
    [
        ClickHouseSettings(),
        ClickHouseSettings(detail_ttl_days=30, rollup_ttl_days=1100),
        ClickHouseSettings(detail_ttl_days=90, rollup_ttl_days=91),
    ],
    ids=["defaults", "short-detail", "long-detail"],
)
def test_ttls_written_by_migrations_are_the_class_lengths(settings: ClickHouseSettings) -> None:
    want = retention.desired_ttls(settings)
    for name, ttl in migration_ttls(settings).items():
        table, _, column = name.partition(".")
        if ttl is None:
            continue  # set by apply_ttls at `trustlog migrate`
        expected = want[table][1][column] if column else want[table][0]
        assert ttl == expected, f"{name}: migration writes {ttl}, class says {expected}"


def test_every_table_but_configuration_mirrors_gets_a_ttl_from_its_class() -> None:
    lengths = retention.class_lengths(ClickHouseSettings())
    for table, (ttl, cols) in retention.desired_ttls(ClickHouseSettings()).items():
        spec = retention_map().tables[table]
        if spec.cls == CONFIGURED_CLASS:
            assert ttl is None and not cols
            continue
        assert ttl is not None
        if spec.cls != "hold":
            days = int(lengths[spec.cls] / timedelta(days=1))
            assert ttl.endswith(f"+ toIntervalDay({days})"), (table, ttl)
    # a pseudonym inside an incident lives no longer than the detail rows
    assert retention.desired_ttls(ClickHouseSettings())["incidents"][1] == {
        "user_pseudonym": "toDateTime(last_seen) + toIntervalDay(60)"
    }


def test_every_topic_has_its_class_retention_and_a_segment_roll_inside_it() -> None:
    s = AlertsSettings(raw_retention_hours=3, stream_retention_days=5)
    specs = topic_specs(s)
    assert {t.retention_class for t in specs} <= set(registry().retention)
    lengths = retention.class_lengths(s)
    assert lengths["transient"] == timedelta(hours=3)
    assert lengths["stream"] == timedelta(days=5)
    for spec in specs:
        assert spec.retention_class, spec.name
        assert spec.retention_ms == lengths[spec.retention_class] / timedelta(milliseconds=1)
        cfg = spec.configs()
        assert int(cfg["retention.ms"]) == spec.retention_ms
        # Kafka deletes closed segments only: the roll bounds how long data outlives retention
        assert int(cfg["segment.ms"]) <= max(segment_ms(spec.retention_ms), 3_600_000)
        assert "delete" in cfg["cleanup.policy"], spec.name
    assert len(specs) == len(retention_map().topics)
    raw = next(t for t in specs if t.name == s.topic_raw)
    assert raw.retention_class == "transient"


def test_class_settings_are_bounded_by_the_registry() -> None:
    assert ClickHouseSettings(detail_ttl_days=45).detail_ttl_days == 45
    for bad in ({"detail_ttl_days": 29}, {"detail_ttl_days": 91}, {"rollup_ttl_days": 90}):
        with pytest.raises(ValidationError, match="is outside"):
            ClickHouseSettings(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=r"'hold': 366d is outside 1d\.\.365d"):
        ClickHouseSettings(hold_max_days=366)
    with pytest.raises(ValidationError, match="is outside"):
        KafkaSettings(stream_retention_days=30)
    # throwaway test databases may expire detail within a day
    assert ClickHouseSettings(detail_ttl_days=1, detail_ttl_unchecked=True).detail_ttl_days == 1
    classes = retention_map().classes
    assert classes["incident"].check(timedelta(days=365)) == timedelta(days=365)
    with pytest.raises(RegistryError, match="outside"):
        classes["incident"].check(timedelta(days=30))  # fixed classes take their length only


def _map(**tables: Any) -> dict[str, Any]:
    return {"version": 1, "tables": tables, "topics": {"raw": "transient"}}


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (_map(t={"class": "nope", "age": "d"}), "table 't': needs a known retention class"),
        (_map(t={"class": "detail"}), "every class but 'configured' needs `age`"),
        (_map(t={"class": "configured", "age": "d"}), "every class but 'configured' needs"),
        (_map(t={"class": "detail", "age": "d", "grain": -1}), "grain must be whole hours"),
        (
            _map(t={"class": "detail", "age": "d", "columns": {"c": {"class": "x"}}}),
            "column 'c': needs a known class",
        ),
        ({"tables": {}, "topics": {"raw": "configured"}}, "topic 'raw': needs a retention class"),
    ],
)
def test_a_broken_retention_map_is_refused(data: dict[str, Any], error: str) -> None:
    with pytest.raises(RegistryError, match=re.escape(error)):
        parse_retention_map(data, registry())


def test_ttl_clauses_are_read_back_from_clickhouse_text() -> None:
    engine = (
        "MergeTree PARTITION BY toYYYYMMDD(event_time) ORDER BY (team, tool) "
        "TTL toDateTime(event_time) + toIntervalDay(60) SETTINGS ttl_only_drop_parts = 1"
    )
    assert retention.table_ttl(engine) == "toDateTime(event_time) + toIntervalDay(60)"
    assert retention.table_ttl("ReplacingMergeTree(version) ORDER BY name") is None
    assert retention.table_ttl("MergeTree ORDER BY h TTL hold_expires_at") == "hold_expires_at"
    create = (
        "CREATE TABLE tl.incidents\n(\n    `summary` String,\n    `user_pseudonym` "
        "Nullable(String) TTL toDateTime(last_seen) + toIntervalDay(60),\n    `v` UInt64\n)"
    )
    assert retention.column_ttl(create, "user_pseudonym") == (
        "toDateTime(last_seen) + toIntervalDay(60)"
    )
    assert retention.column_ttl(create, "summary") is None
    one_line = create.replace("\n", " ").replace("(    ", "(")
    assert retention.column_ttl(one_line, "user_pseudonym") == (
        "toDateTime(last_seen) + toIntervalDay(60)"
    )
    last = "CREATE TABLE t (`a` String, `p` String TTL toDateTime(d) + toIntervalDay(9)) ENGINE = X"
    assert retention.column_ttl(last, "p") == "toDateTime(d) + toIntervalDay(9)"
