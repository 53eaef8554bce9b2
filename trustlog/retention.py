"""Retention from the registry: class lengths, table TTLs, topic retention, and the check.

Every table and topic has a retention class (schemas/retention.yaml, classes in
schemas/fields.yaml). :func:`apply_ttls` sets each table's TTL from its class (run by
``trustlog migrate`` as the admin: the services' own accounts may not ALTER),
:func:`trustlog.kafka.topic_specs` gives each topic its class's retention.ms, and
:func:`check` proves what is stored is inside policy.

ClickHouse deletes expired rows lazily, in TTL merges (at most every merge_with_ttl_timeout
seconds per table) and, for tables that drop whole parts only, once a part's newest row
expired. A row past its class but inside that grace is *pending*; older is a *violation*.
:func:`enforce` forces the deletion (MATERIALIZE TTL, OPTIMIZE FINAL) so the grace shrinks to
the table's grain. Kafka deletes closed segments once their newest record is past
retention.ms, checked every log.retention.check.interval.ms.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from trustlog.registry import (
    CONFIGURED_CLASS,
    HOLD_CLASS,
    RegistryError,
    RetentionMap,
    TableRetention,
    retention_map,
)

log = logging.getLogger(__name__)

# Which setting sets the length of a configurable class; the rest are fixed in fields.yaml.
CLASS_SETTINGS: Mapping[str, tuple[str, str]] = {
    "detail": ("detail_ttl_days", "days"),
    "rollup": ("rollup_ttl_days", "days"),
    "transient": ("raw_retention_hours", "hours"),
    "stream": ("stream_retention_days", "days"),
    "hold": ("hold_max_days", "days"),  # the cap of a hold's expiry
}
# Kafka's default log.retention.check.interval.ms: how often a broker looks for old segments.
KAFKA_RETENTION_CHECK = timedelta(minutes=5)
DEFAULT_TTL_MERGE_SECONDS = 14400  # ClickHouse's default merge_with_ttl_timeout
_VIEW_ENGINES = ("View", "MaterializedView", "LiveView", "WindowView")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def class_lengths(settings: object, rmap: RetentionMap | None = None) -> dict[str, timedelta]:
    """Length of every class with one: the setting's value where configurable, else the default.

    The settings classes already refuse a value outside the class bounds.
    """
    rmap = rmap or retention_map()
    out: dict[str, timedelta] = {}
    for name, cls in rmap.classes.items():
        value = cls.default if name != HOLD_CLASS else cls.max
        attr, unit = CLASS_SETTINGS.get(name, ("", ""))
        configured = getattr(settings, attr, None) if attr else None
        if configured is not None:
            value = timedelta(**{unit: float(configured)})
        if value is not None:
            out[name] = value
    return out


def topic_class(key: str) -> str:
    try:
        return retention_map().topics[key]
    except KeyError:
        raise RegistryError(
            f"topic {key!r} has no retention class in schemas/retention.yaml"
        ) from None


def _interval(length: timedelta) -> str:
    """How ClickHouse prints ``INTERVAL n DAY`` back (engine_full normalises it)."""
    secs = int(length.total_seconds())
    if secs % 86400 == 0:
        return f"toIntervalDay({secs // 86400})"
    if secs % 3600 == 0:
        return f"toIntervalHour({secs // 3600})"
    return f"toIntervalSecond({secs})"


def ttl_expression(age: str, cls: str, lengths: Mapping[str, timedelta]) -> str:
    """The TTL a table of ``cls`` must have, in ClickHouse's normalised form."""
    if cls == HOLD_CLASS:
        return age  # the hold's expiry itself
    return f"{age} + {_interval(lengths[cls])}"


def desired_ttls(
    settings: object, rmap: RetentionMap | None = None
) -> dict[str, tuple[str | None, dict[str, str]]]:
    """``{table: (table TTL or None, {column: column TTL})}`` from the registry."""
    rmap = rmap or retention_map()
    lengths = class_lengths(settings, rmap)
    out: dict[str, tuple[str | None, dict[str, str]]] = {}
    for t in rmap.tables.values():
        table_ttl = None if t.age is None else ttl_expression(t.age, t.cls, lengths)
        cols = {c: ttl_expression(age, cls, lengths) for c, cls, age in t.columns}
        out[t.table] = (table_ttl, cols)
    return out


_TABLE_TTL = re.compile(r"\bTTL (.+?)(?: DELETE)?(?: SETTINGS |$)", re.S)


def table_ttl(engine_full: str) -> str | None:
    """The table TTL clause of ``system.tables.engine_full`` (None: the table has none)."""
    found = _TABLE_TTL.search(engine_full)
    return found.group(1).strip() if found else None


def column_ttl(create_query: str, column: str) -> str | None:
    """A column's TTL from ``SHOW CREATE TABLE`` text (None: the column has none)."""
    # system.tables prints the query on one line; SHOW CREATE TABLE one column per line
    found = re.search(
        rf"`{re.escape(column)}` [^\n`]*? TTL (.+?)(?:,\s*`|,\n|\n\)|\) ENGINE)", create_query
    )
    return found.group(1).strip() if found else None


def _check_db(database: str) -> None:
    if not _IDENT.match(database):
        raise ValueError(f"invalid database name {database!r}")


def _tables(client: Any, database: str) -> dict[str, tuple[str, str, str]]:
    """``{name: (engine, engine_full, create_table_query)}`` of the database's tables."""
    res = client.query(
        "SELECT name, engine, engine_full, create_table_query FROM system.tables "
        "WHERE database = {db:String}",
        parameters={"db": database},
    )
    return {str(r[0]): (str(r[1]), str(r[2]), str(r[3])) for r in res.result_rows}


def apply_ttls(client: Any, database: str, settings: object) -> list[str]:
    """Set every table's TTL (and column TTLs) from its class; returns what changed.

    Idempotent: a TTL already right is left alone, so no ALTER and no re-materialisation.
    Tables in the map that do not exist (yet) are skipped.
    """
    _check_db(database)
    present = _tables(client, database)
    changed: list[str] = []
    for table, (want, cols) in desired_ttls(settings).items():
        if table not in present:
            continue
        _, engine_full, create = present[table]
        if want is not None and table_ttl(engine_full) != want:
            client.command(f"ALTER TABLE {database}.{table} MODIFY TTL {want}")
            changed.append(table)
        for col, col_want in cols.items():
            if column_ttl(create, col) == col_want:
                continue
            col_type = str(
                client.command(
                    "SELECT type FROM system.columns WHERE database = {db:String} "
                    "AND table = {t:String} AND name = {c:String}",
                    parameters={"db": database, "t": table, "c": col},
                )
            ).strip()
            client.command(
                f"ALTER TABLE {database}.{table} MODIFY COLUMN {col} {col_type} TTL {col_want}"
            )
            changed.append(f"{table}.{col}")
    if changed:
        log.info("retention changed", extra={"tables": changed})
    return changed


# --------------------------------------------------------------------------- the check

OK, PENDING, VIOLATION = "ok", "pending", "violation"


@dataclass
class TableStatus:
    table: str
    cls: str
    limit: timedelta | None  # the class length (hold: the cap); None for configured
    grace: timedelta  # how much past the limit ClickHouse may still hold a row
    ttl_ok: bool
    rows: int
    oldest: datetime | None  # the oldest row's age reference (hold: earliest expiry)
    past_limit: int  # rows past the class (hold: past their hold's expiry)
    past_grace: int  # rows past limit + grace: a violation
    status: str
    note: str = ""


@dataclass
class HoldRows:
    hold_id: str
    rows: int
    expires_at: datetime
    active: bool


@dataclass
class TopicStatus:
    topic: str
    cls: str
    limit: timedelta
    retention_ms: int | None
    segment_ms: int | None
    config_ok: bool
    records: int
    older_than_limit: int  # records before the first one inside the class (pending)
    older_than_allowed: int  # before the first one inside class + segment + check interval
    status: str
    note: str = ""


@dataclass
class Report:
    at: datetime
    tables: list[TableStatus] = field(default_factory=list)
    holds: list[HoldRows] = field(default_factory=list)
    topics: list[TopicStatus] = field(default_factory=list)
    enforced: list[str] = field(default_factory=list)

    @property
    def violations(self) -> list[str]:
        return [t.table for t in self.tables if t.status == VIOLATION] + [
            t.topic for t in self.topics if t.status == VIOLATION
        ]


def _ttl_merge_grace(client: Any) -> timedelta:
    v = client.command(
        "SELECT value FROM system.merge_tree_settings WHERE name = 'merge_with_ttl_timeout'"
    )
    try:
        return timedelta(seconds=int(str(v).strip()))
    except ValueError:
        return timedelta(seconds=DEFAULT_TTL_MERGE_SECONDS)


def _status(past_limit: int, past_grace: int) -> str:
    return VIOLATION if past_grace else (PENDING if past_limit else OK)


def _age_status(
    client: Any,
    database: str,
    t: TableRetention,
    limit: timedelta,
    grace: timedelta,
    ttl_ok: bool,
    lengths: Mapping[str, timedelta],
) -> TableStatus:
    assert t.age is not None
    if t.cls == HOLD_CLASS:
        # a held row may stay until its own hold's expiry, whatever its age
        cutoff, past = "now()", f"{t.age} < now()"
    else:
        cutoff = f"now() - toIntervalSecond({int(limit.total_seconds())})"
        past = f"{t.age} < {cutoff}"
    late = f"{t.age} < ({cutoff}) - toIntervalSecond({int(grace.total_seconds())})"
    col_checks = ""
    for col, _, age in t.columns:
        col_checks += (
            f", countIf(isNotNull({col}) AND toString(assumeNotNull({col})) != '' AND {age} < "
            f"now() - toIntervalSecond({{{col}_limit:UInt64}}))"
        )
    res = client.query(
        f"SELECT count(), min({t.age}), countIf({past}), countIf({late}){col_checks} "
        f"FROM {database}.{t.table}",
        parameters={f"{c}_limit": int(lengths[cls].total_seconds()) for c, cls, _ in t.columns},
    )
    row = res.result_rows[0]
    rows, oldest, past_limit, past_grace = int(row[0]), row[1], int(row[2]), int(row[3])
    note = []
    # column TTLs (e.g. a pseudonym inside a longer-kept incident): violation once past
    # their limit plus the same grace
    for (col, _, _), n in zip(t.columns, row[4:], strict=True):
        if int(n):
            note.append(f"{n} {col} values past their class")
            past_limit += int(n)
    status = _status(past_limit, past_grace)
    if not ttl_ok:
        status = VIOLATION
        note.insert(0, "TTL differs from the class (run trustlog migrate)")
    if isinstance(oldest, datetime) and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)
    elif not isinstance(oldest, datetime) and oldest is not None:
        oldest = datetime(oldest.year, oldest.month, oldest.day, tzinfo=UTC)
    return TableStatus(
        t.table,
        t.cls,
        limit,
        grace,
        ttl_ok,
        rows,
        oldest if rows else None,
        past_limit,
        past_grace,
        status,
        "; ".join(note),
    )


def check_tables(
    client: Any, database: str, settings: object, *, enforced: bool = False
) -> tuple[list[TableStatus], list[HoldRows]]:
    """Every table of the database against its class; held rows per hold."""
    _check_db(database)
    rmap = retention_map()
    lengths = class_lengths(settings, rmap)
    want = desired_ttls(settings, rmap)
    present = _tables(client, database)
    merge_grace = timedelta(0) if enforced else _ttl_merge_grace(client)
    out: list[TableStatus] = []
    for name, (engine, engine_full, create) in sorted(present.items()):
        if engine in _VIEW_ENGINES:
            continue
        t = rmap.tables.get(name)
        if t is None:
            out.append(
                TableStatus(name, "-", None, timedelta(0), False, 0, None, 0, 0, VIOLATION,
                            "no retention class in schemas/retention.yaml")
            )  # fmt: skip
            continue
        table_want, cols_want = want[name]
        ttl_ok = table_ttl(engine_full) == table_want and all(
            column_ttl(create, c) == w for c, w in cols_want.items()
        )
        if t.cls == CONFIGURED_CLASS:
            rows = int(str(client.command(f"SELECT count() FROM {database}.{name}")))
            out.append(
                TableStatus(name, t.cls, None, timedelta(0), ttl_ok, rows, None, 0, 0,
                            OK if ttl_ok else VIOLATION, "mirrors configuration: no age")
            )  # fmt: skip
            continue
        grace = timedelta(hours=t.grain_hours) + merge_grace
        out.append(_age_status(client, database, t, lengths[t.cls], grace, ttl_ok, lengths))
    holds: list[HoldRows] = []
    if "held_events" in present and "record_holds" in present:
        holds = held_rows(client, database)
        status = next((s for s in out if s.table == "held_events"), None)
        stray = [h for h in holds if not h.active]
        if status is not None and stray:
            # rows of a released hold must be gone (release deletes them)
            status.status = VIOLATION
            status.note = "; ".join(
                filter(None, [status.note, f"{len(stray)} released hold(s) still have rows"])
            )
    return out, holds


def held_rows(client: Any, database: str) -> list[HoldRows]:
    res = client.query(
        f"SELECT h.hold_id, h.n, h.expires, r.state = 'active' "
        f"FROM (SELECT hold_id, count() AS n, min(hold_expires_at) AS expires "
        f"      FROM {database}.held_events GROUP BY hold_id) AS h "
        f"LEFT JOIN (SELECT hold_id, state FROM {database}.record_holds FINAL) AS r "
        "ON h.hold_id = r.hold_id ORDER BY h.hold_id"
    )
    out = []
    for hold_id, n, expires, active in res.result_rows:
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=UTC)
        out.append(HoldRows(str(hold_id), int(n), expires, bool(active)))
    return out


def enforce_tables(client: Any, database: str, statuses: Iterable[TableStatus]) -> list[str]:
    """Force ClickHouse to delete what is past its TTL in the tables that hold such rows."""
    _check_db(database)
    done = []
    for st in statuses:
        if st.past_limit == 0 or not st.ttl_ok or st.cls in ("-", CONFIGURED_CLASS):
            continue
        # MATERIALIZE TTL recomputes every part's TTL and deletes expired rows; the OPTIMIZE
        # FINAL merge then drops parts whose rows all expired (ttl_only_drop_parts tables).
        client.command(
            f"ALTER TABLE {database}.{st.table} MATERIALIZE TTL", settings={"mutations_sync": 2}
        )
        client.command(f"OPTIMIZE TABLE {database}.{st.table} FINAL")
        done.append(st.table)
    return done


async def _older_than(
    consumer: Any,
    tps: list[Any],
    begin: dict[Any, int],
    end: dict[Any, int],
    now_ms: int,
    age: timedelta,
) -> int:
    """How many records of the partitions lie before the first one younger than ``age``."""
    cutoff = now_ms - int(age.total_seconds() * 1000)
    found = await consumer.offsets_for_times(dict.fromkeys(tps, cutoff))
    n = 0
    for tp in tps:
        hit = found.get(tp)
        first_inside = end[tp] if hit is None else hit.offset
        n += max(0, first_inside - begin[tp])
    return n


async def check_topics(settings: Any) -> list[TopicStatus]:
    """Every trustlog topic: configured retention vs its class, and its oldest records.

    Reads no record: ``offsets_for_times(T)`` gives the earliest offset with a timestamp >= T,
    so every offset before it holds a record older than T.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from trustlog.kafka import _admin, describe_topic_configs, topic_specs

    specs = topic_specs(settings)
    admin = await _admin(settings, 30.0)
    try:
        existing = set(await admin.list_topics())
        present = [s.name for s in specs if s.name in existing]
        configs = await describe_topic_configs(admin, present)
        partitions = {
            str(t["topic"]): sorted(int(p["partition"]) for p in t["partitions"])
            for t in (await admin.describe_topics(present) if present else [])
        }
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False
    )
    await consumer.start()
    out: list[TopicStatus] = []
    try:
        now_ms = int(datetime.now(UTC).timestamp() * 1000)
        for spec in specs:
            limit = timedelta(milliseconds=spec.retention_ms)
            if spec.name not in existing:
                out.append(
                    TopicStatus(spec.name, spec.retention_class, limit, None, None, False, 0, 0,
                                0, OK, "not created yet")
                )  # fmt: skip
                continue
            cfg = configs.get(spec.name, {})
            ret = int(cfg["retention.ms"][0]) if "retention.ms" in cfg else None
            seg = int(cfg["segment.ms"][0]) if "segment.ms" in cfg else None
            config_ok = all(cfg.get(k, ("", 0))[0] == v for k, v in spec.configs().items())
            tps = [TopicPartition(spec.name, p) for p in partitions.get(spec.name, [])]
            begin = await consumer.beginning_offsets(tps) if tps else {}
            end = await consumer.end_offsets(tps) if tps else {}
            allowed = limit + timedelta(milliseconds=seg or 0) + KAFKA_RETENTION_CHECK

            records = sum(end[tp] - begin[tp] for tp in tps)
            pending = await _older_than(consumer, tps, begin, end, now_ms, limit) if records else 0
            late = await _older_than(consumer, tps, begin, end, now_ms, allowed) if records else 0
            status = VIOLATION if (late or not config_ok) else (PENDING if pending else OK)
            note = "" if config_ok else "config differs from the class (run trustlog migrate)"
            out.append(
                TopicStatus(spec.name, spec.retention_class, limit, ret, seg, config_ok, records,
                            pending, late, status, note)
            )  # fmt: skip
    finally:
        await consumer.stop()
    return out
