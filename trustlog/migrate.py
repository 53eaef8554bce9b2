"""Forward-only ClickHouse migrations.

Migrations are ``NNNN_name.sql`` files applied in version order and recorded in
``{db}.schema_migrations``. A landed migration is never edited: its checksum (of the file as
written, before placeholders are filled in) is stored and checked on every run.

File format: statements end with ``;`` at the end of a line, or with a line holding only ``;``.
Chunks that are only ``--`` comments are skipped. Placeholders ``{db}``, ``{detail_ttl_days}``
and ``{rollup_ttl_days}`` are substituted literally (``str.replace``: DDL is full of braces).

ClickHouse DDL is not transactional: if a statement fails, earlier statements of the same
migration stay applied and the migration is not recorded, so write statements that can run
twice (``IF NOT EXISTS``) and the fixed migration simply re-runs.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from clickhouse_connect.driver.client import Client

from trustlog.settings import SCHEMAS_DIR

log = logging.getLogger(__name__)

DEFAULT_MIGRATIONS_DIR = SCHEMAS_DIR / "clickhouse"
MIGRATIONS_TABLE = "schema_migrations"
_FILE_RE = re.compile(r"^(\d{4})_([A-Za-z0-9_]+)\.sql$")
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class MigrationError(RuntimeError):
    """Migrations cannot be (or were not completely) applied; the message says which and why."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str  # file name, e.g. "0001_events.sql"
    path: Path
    text: str
    checksum: str


@dataclass(frozen=True)
class AppliedMigration:
    version: int
    name: str
    checksum: str
    applied_at: datetime


@dataclass(frozen=True)
class MigrationState:
    version: int
    name: str
    # applied: recorded and file unchanged; pending: file not yet applied; changed: applied
    # file was edited since; missing: recorded but no file in this checkout.
    state: Literal["applied", "pending", "changed", "missing"]
    applied_at: datetime | None


def checksum(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def discover(migrations_dir: Path) -> list[Migration]:
    """All migration files, sorted by version; rejects stray .sql names and duplicate versions."""
    found: dict[int, Migration] = {}
    if not migrations_dir.is_dir():
        raise MigrationError(f"migrations directory {migrations_dir} does not exist")
    for path in sorted(migrations_dir.glob("*.sql")):
        match = _FILE_RE.match(path.name)
        if not match:
            raise MigrationError(
                f"{path.name}: migration files must be named NNNN_name.sql (e.g. 0001_events.sql)"
            )
        version = int(match.group(1))
        if version in found:
            raise MigrationError(
                f"{path.name} and {found[version].name} share version {match.group(1)}"
            )
        text = path.read_text()
        found[version] = Migration(version, path.name, path, text, checksum(text))
    return [found[v] for v in sorted(found)]


def render(text: str, *, database: str, detail_ttl_days: int, rollup_ttl_days: int) -> str:
    return (
        text.replace("{db}", database)
        .replace("{detail_ttl_days}", str(int(detail_ttl_days)))
        .replace("{rollup_ttl_days}", str(int(rollup_ttl_days)))
    )


def _is_comment(line: str) -> bool:
    return line.lstrip().startswith("--")


def split_statements(sql: str) -> list[str]:
    """Split on a line that is only ``;`` or on ``;`` ending a (non-comment) line.

    Comment-only chunks are dropped. A ``;`` in the middle of a line is left alone, so string
    literals such as ``'a;b'`` survive; a literal spanning lines must not end a line with ``;``.
    """
    statements: list[str] = []
    current: list[str] = []

    def flush() -> None:
        chunk = "\n".join(current).strip()
        current.clear()
        if chunk and not all(_is_comment(ln) or not ln.strip() for ln in chunk.splitlines()):
            statements.append(chunk)

    for line in sql.splitlines():
        stripped = line.rstrip()
        if stripped.strip() == ";":
            flush()
        elif stripped.endswith(";") and not _is_comment(stripped):
            current.append(stripped[:-1])
            flush()
        else:
            current.append(line)
    flush()
    return statements


def _check_database(database: str) -> None:
    if not _IDENT_RE.match(database):
        raise MigrationError(f"invalid database name {database!r}: use letters, digits and _")


def _ensure_bookkeeping(client: Client, database: str) -> None:
    client.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
    client.command(
        f"CREATE TABLE IF NOT EXISTS `{database}`.{MIGRATIONS_TABLE} ("
        "version UInt32, name String, checksum String, applied_at DateTime64(3)"
        ") ENGINE = ReplacingMergeTree ORDER BY version"
    )


def _applied(client: Client, database: str) -> dict[int, AppliedMigration]:
    exists = client.command(
        "SELECT count() FROM system.tables WHERE database = {db:String} AND name = {t:String}",
        parameters={"db": database, "t": MIGRATIONS_TABLE},
    )
    if not int(str(exists)):
        return {}
    # FINAL: a migration recorded twice (two runners racing) must count once.
    result = client.query(
        f"SELECT version, name, checksum, applied_at FROM `{database}`.{MIGRATIONS_TABLE} FINAL "
        "ORDER BY version"
    )
    rows: list[Any] = list(result.result_rows)
    return {int(r[0]): AppliedMigration(int(r[0]), str(r[1]), str(r[2]), r[3]) for r in rows}


def _verify(migrations: list[Migration], applied: dict[int, AppliedMigration]) -> None:
    by_version = {m.version: m for m in migrations}
    for version, rec in applied.items():
        mig = by_version.get(version)
        if mig is None:
            raise MigrationError(
                f"the database has migration {rec.name} applied but this checkout has no file "
                f"for version {version:04d}; the code is older than the schema"
            )
        if mig.checksum != rec.checksum:
            raise MigrationError(
                f"{mig.name} was changed after it was applied (checksum {rec.checksum[:12]} in "
                f"the database, {mig.checksum[:12]} on disk). Landed migrations are never "
                "edited: restore the file and add a new migration instead."
            )
    newest = max(applied, default=0)
    late = [m.name for m in migrations if m.version not in applied and m.version < newest]
    if late:
        raise MigrationError(
            f"{', '.join(late)} would apply after the newer migration {applied[newest].name}; "
            "renumber them above it (migrations apply strictly in order)"
        )


def apply_migrations(
    client: Client,
    *,
    database: str,
    detail_ttl_days: int,
    rollup_ttl_days: int,
    migrations_dir: Path = DEFAULT_MIGRATIONS_DIR,
) -> list[str]:
    """Apply every pending migration in order; returns the file names newly applied."""
    _check_database(database)
    migrations = discover(migrations_dir)
    _ensure_bookkeeping(client, database)
    applied = _applied(client, database)
    _verify(migrations, applied)

    done: list[str] = []
    for mig in migrations:
        if mig.version in applied:
            continue
        sql = render(
            mig.text,
            database=database,
            detail_ttl_days=detail_ttl_days,
            rollup_ttl_days=rollup_ttl_days,
        )
        statements = split_statements(sql)
        for index, statement in enumerate(statements, start=1):
            try:
                client.command(statement)
            except Exception as exc:
                snippet = statement if len(statement) < 600 else statement[:600] + " ..."
                raise MigrationError(
                    f"{mig.name}: statement {index}/{len(statements)} failed: {exc}\n{snippet}\n"
                    f"Statements before it stay applied; {mig.name} is not recorded and will "
                    "re-run once fixed."
                ) from exc
        client.command(
            f"INSERT INTO `{database}`.{MIGRATIONS_TABLE} (version, name, checksum, applied_at) "
            "VALUES ({v:UInt32}, {n:String}, {c:String}, now64(3))",
            parameters={"v": mig.version, "n": mig.name, "c": mig.checksum},
        )
        log.info("applied migration %s (%d statements)", mig.name, len(statements))
        done.append(mig.name)
    return done


def migration_status(
    client: Client, database: str, *, migrations_dir: Path = DEFAULT_MIGRATIONS_DIR
) -> list[MigrationState]:
    """Every known migration (files and records) with its state, by version. Changes nothing."""
    _check_database(database)
    migrations = {m.version: m for m in discover(migrations_dir)}
    applied = _applied(client, database)
    out: list[MigrationState] = []
    for version in sorted(set(migrations) | set(applied)):
        mig = migrations.get(version)
        rec = applied.get(version)
        if rec is None:
            assert mig is not None
            out.append(MigrationState(version, mig.name, "pending", None))
        elif mig is None:
            out.append(MigrationState(version, rec.name, "missing", rec.applied_at))
        else:
            state: Literal["applied", "changed"] = (
                "applied" if mig.checksum == rec.checksum else "changed"
            )
            out.append(MigrationState(version, mig.name, state, rec.applied_at))
    return out
