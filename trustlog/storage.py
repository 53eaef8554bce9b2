"""ClickHouse access: one place that builds clients and applies migrations."""

from __future__ import annotations

from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from trustlog.settings import ClickHouseSettings


def client_as(s: ClickHouseSettings, username: str, password: str, **kw: Any) -> Client:
    """A client of the server ``s`` points at, logged in as ``username``."""
    return clickhouse_connect.get_client(
        host=s.ch_host,
        port=s.ch_port,
        username=username,
        password=password,
        secure=s.ch_secure,
        connect_timeout=10,
        send_receive_timeout=120,
        **kw,
    )


def admin_client(settings: ClickHouseSettings | None = None, **kw: Any) -> Client:
    """A client logged in as TRUSTLOG_CH_USER: the admin for migrations and the CLI, the
    service's own account inside the aggregator and alerts (`trustlog up` sets it)."""
    s = settings or ClickHouseSettings()
    return client_as(s, s.ch_user, s.ch_password.get_secret_value(), **kw)


def migrate_all(client: Client, settings: ClickHouseSettings | None = None) -> list[str]:
    from trustlog.migrate import apply_migrations
    from trustlog.retention import apply_ttls

    s = settings or ClickHouseSettings()
    applied = apply_migrations(
        client,
        database=s.ch_database,
        detail_ttl_days=s.detail_ttl_days,
        rollup_ttl_days=s.rollup_ttl_days,
    )
    # TTLs come from the retention classes (schemas/retention.yaml), not from the literals a
    # migration was written with, and follow a changed setting on an existing database.
    apply_ttls(client, s.ch_database, s)
    return applied
