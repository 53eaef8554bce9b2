"""Every ClickHouse column that holds event data is declared in the field registry."""

from __future__ import annotations

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
