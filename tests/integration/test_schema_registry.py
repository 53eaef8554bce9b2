"""Every ClickHouse column that holds event data is declared in the field registry, with a
storage type that matches the registry type; the rollup holds only registered totals."""

from __future__ import annotations

import re

import pytest

from trustlog.registry import registry
from trustlog.settings import ClickHouseSettings
from trustlog.storage import admin_client

pytestmark = pytest.mark.integration


def test_detail_columns_are_registered(stack: object) -> None:
    db = ClickHouseSettings().ch_database
    cols = {r[0] for r in admin_client().query(f"DESCRIBE TABLE {db}.events").result_rows}
    reg = registry()
    unknown = cols - reg.kept - set(reg.storage_columns)
    assert not unknown, f"events columns without a registry entry: {unknown}"
    assert reg.kept <= cols, f"registered fields missing from events: {reg.kept - cols}"


def test_rollup_has_no_identities(stack: object) -> None:
    db = ClickHouseSettings().ch_database
    cols = {r[0] for r in admin_client().query(f"DESCRIBE TABLE {db}.spend_hourly").result_rows}
    assert not cols & {"user_pseudonym", "event_id", "pseudonym_key_version", "producer"}


def test_detail_table_has_ttl(stack: object) -> None:
    db = ClickHouseSettings().ch_database
    ddl = admin_client().command(f"SHOW CREATE TABLE {db}.events")
    assert "TTL" in str(ddl)


# ClickHouse types a registry type may be stored as (LowCardinality/Nullable unwrapped).
_CH_TYPES = {
    "string": r"String",
    "enum": r"String|Enum(8|16)\(.*\)",
    "timestamp": r"DateTime64\(\d(, '[^']+')?\)|DateTime(\('[^']+'\))?",
    "long": r"U?Int64",
    "int": r"U?Int32",
    "array<string>": r"Array\(String\)",
    "map<int>": r"Map\(String, U?Int32\)",
}


def _unwrap(ch_type: str) -> str:
    while True:
        inner = re.sub(r"(LowCardinality|Nullable)\(([^()]*(\([^()]*\))?)\)", r"\2", ch_type)
        if inner == ch_type:
            return inner
        ch_type = inner


def test_detail_column_types_match_the_registry(stack: object) -> None:
    db = ClickHouseSettings().ch_database
    types = {r[0]: r[1] for r in admin_client().query(f"DESCRIBE TABLE {db}.events").result_rows}
    for name, spec in registry().fields.items():
        pattern = _CH_TYPES.get(spec.type)
        assert pattern, f"no ClickHouse type known for registry type {spec.type}"
        assert re.fullmatch(pattern, _unwrap(types[name])), (
            f"events.{name} is {types[name]}, the registry says {spec.type}"
        )


def test_rollup_columns_are_registered_and_carry_no_identity(stack: object) -> None:
    db = ClickHouseSettings().ch_database
    client = admin_client()
    tables = [
        r[0]
        for r in client.query(
            "SELECT name FROM system.tables WHERE database = {db:String} "
            "AND name LIKE 'spend\\_%' AND engine NOT LIKE '%View'",
            parameters={"db": db},
        ).result_rows
    ]
    assert "spend_hourly" in tables
    reg = registry()
    seen: set[str] = set()
    for table in tables:
        cols = {r[0] for r in client.query(f"DESCRIBE TABLE {db}.`{table}`").result_rows}
        assert cols <= set(reg.rollup_columns), (
            f"{table}: unregistered {cols - set(reg.rollup_columns)}"
        )
        seen |= cols
    assert seen == set(reg.rollup_columns), (
        f"registered but in no rollup: {set(reg.rollup_columns) - seen}"
    )
    for spec in reg.rollup_columns.values():
        assert spec.retention == "rollup" and "employee" not in spec.roles


def test_type_mapping_rejects_a_mismatch() -> None:
    # guards the check above against a pattern that would accept anything
    assert not re.fullmatch(_CH_TYPES["long"], _unwrap("String"))
    assert not re.fullmatch(_CH_TYPES["string"], _unwrap("LowCardinality(Nullable(UInt64))"))
    assert re.fullmatch(_CH_TYPES["string"], _unwrap("LowCardinality(Nullable(String))"))
    assert re.fullmatch(_CH_TYPES["timestamp"], _unwrap("DateTime64(3, 'UTC')"))
    assert re.fullmatch(_CH_TYPES["map<int>"], _unwrap("Map(LowCardinality(String), UInt32)"))
