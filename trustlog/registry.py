"""The field registry (``schemas/fields.yaml``): what is accepted and kept, why, for whom, how long.

Loading validates every entry (type, purpose, why, roles, retention; a disposition for raw
fields) and refuses the whole file on any gap, so a field without a purpose cannot reach a
build. :func:`schema_mismatches` checks the Avro schemas against it; the redactor runs it at
start-up and the tests run it too.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from trustlog.settings import SCHEMAS_DIR

PURPOSES = frozenset({"billing", "security", "legal"})
# Declared, deliberate absence of a purpose: only for raw fields that are dropped on arrival.
NO_PURPOSE = "none"
ROLES = frozenset({"finance", "manager", "security", "employee"})
RAW_DISPOSITIONS = frozenset({"pseudonymize", "drop", "scan_then_drop"})
KEEP = "keep"
TRANSIENT = "transient"
_SCALARS = frozenset({"string", "int", "long", "timestamp", "enum", "boolean", "double"})
_CONTAINER = re.compile(r"^(array|map)<([a-z]+)>$")
_REQUIRED = ("type", "purpose", "why", "roles", "retention")


class RegistryError(ValueError):
    pass


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: str
    purpose: tuple[str, ...]
    why: str
    roles: tuple[str, ...]
    retention: str
    disposition: str = KEEP


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    purpose: tuple[str, ...]
    why: str
    roles: tuple[str, ...]
    retention: str


@dataclass(frozen=True)
class Registry:
    fields: dict[str, FieldSpec]
    raw_fields: dict[str, FieldSpec]
    storage_columns: dict[str, ColumnSpec]
    rollup_columns: dict[str, ColumnSpec]
    retention: dict[str, dict[str, Any]]
    # purpose -> what it is for, in one plain sentence (the policy page quotes it)
    purposes: dict[str, str] = field(default_factory=dict)
    # What no record is ever used for, whoever reads it (the policy page states each)
    never_used_for: tuple[str, ...] = ()

    @property
    def kept(self) -> frozenset[str]:
        return frozenset(self.fields)

    def raw_with(self, disposition: str) -> tuple[str, ...]:
        return tuple(n for n, f in self.raw_fields.items() if f.disposition == disposition)


def valid_type(t: str) -> bool:
    m = _CONTAINER.match(t)
    return t in _SCALARS or (m is not None and m.group(2) in _SCALARS)


def _str_list(spec: dict[str, Any], key: str, where: str, errors: list[str]) -> tuple[str, ...]:
    v = spec.get(key)
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        errors.append(f"{where}: {key} must be a list of names")
        return ()
    return tuple(v)


def _common(
    where: str, spec: Any, retention: dict[str, Any], errors: list[str], *, typed: bool
) -> tuple[tuple[str, ...], str, tuple[str, ...], str] | None:
    """Checks shared by fields and columns. Returns (purpose, why, roles, retention)."""
    if not isinstance(spec, dict):
        errors.append(f"{where}: must be a mapping")
        return None
    missing = [k for k in _REQUIRED if k not in spec and (typed or k != "type")]
    if missing:
        errors.append(f"{where}: missing {', '.join(missing)}")
        return None
    purpose = _str_list(spec, "purpose", where, errors)
    roles = _str_list(spec, "roles", where, errors)
    if not purpose:
        errors.append(f"{where}: has no purpose")
    unknown = set(purpose) - PURPOSES - {NO_PURPOSE}
    if unknown:
        errors.append(f"{where}: unknown purpose(s) {sorted(unknown)}")
    if NO_PURPOSE in purpose and len(purpose) > 1:
        errors.append(f"{where}: purpose 'none' cannot be combined with a purpose")
    if set(roles) - ROLES:
        errors.append(f"{where}: unknown role(s) {sorted(set(roles) - ROLES)}")
    why = spec.get("why")
    if not isinstance(why, str) or not why.strip():
        errors.append(f"{where}: does not say why")
    ret = spec.get("retention")
    if ret not in retention:
        errors.append(f"{where}: unknown retention class {ret!r}")
    if typed and not (isinstance(spec["type"], str) and valid_type(spec["type"])):
        errors.append(f"{where}: unknown type {spec['type']!r}")
    return purpose, str(why), roles, str(ret)


def _kept_field(name: str, spec: Any, retention: dict[str, Any], errors: list[str]) -> FieldSpec:
    where = f"field {name!r}"
    c = _common(where, spec, retention, errors, typed=True)
    if c is None:
        return FieldSpec(name, "", (), "", (), "")
    purpose, why, roles, ret = c
    if NO_PURPOSE in purpose:
        errors.append(f"{where}: a kept field needs a purpose")
    if not roles:
        errors.append(f"{where}: a kept field nobody may read has no reason to be kept")
    if ret == TRANSIENT:
        errors.append(f"{where}: transient retention is for raw fields only")
    return FieldSpec(name, str(spec["type"]), purpose, why, roles, ret)


def _raw_field(name: str, spec: Any, retention: dict[str, Any], errors: list[str]) -> FieldSpec:
    where = f"raw field {name!r}"
    c = _common(where, spec, retention, errors, typed=True)
    if c is None:
        return FieldSpec(name, "", (), "", (), "")
    purpose, why, roles, ret = c
    disp = spec.get("disposition")
    if disp not in RAW_DISPOSITIONS:
        errors.append(f"{where}: unknown disposition {disp!r}")
    if NO_PURPOSE in purpose and disp != "drop":
        errors.append(f"{where}: only a dropped field may have purpose 'none'")
    if disp == "scan_then_drop" and spec["type"] != "string":
        errors.append(f"{where}: only strings can be scanned")
    if roles:
        errors.append(f"{where}: nobody reads raw fields, roles must be []")
    if ret != TRANSIENT:
        errors.append(f"{where}: raw fields live only in the raw topic (retention transient)")
    return FieldSpec(name, str(spec["type"]), purpose, why, roles, ret, str(disp))


def _column(
    kind: str, name: str, spec: Any, retention: dict[str, Any], errors: list[str]
) -> ColumnSpec:
    where = f"{kind} {name!r}"
    c = _common(where, spec, retention, errors, typed=False)
    if c is None:
        return ColumnSpec(name, (), "", (), "")
    purpose, why, roles, ret = c
    if NO_PURPOSE in purpose:
        errors.append(f"{where}: a stored column needs a purpose")
    return ColumnSpec(name, purpose, why, roles, ret)


def _section(data: dict[str, Any], key: str, errors: list[str]) -> dict[str, Any]:
    v = data.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        errors.append(f"{key}: must be a mapping")
        return {}
    return v


def parse_registry(data: Any) -> Registry:
    """Validate a loaded ``fields.yaml``; every problem is reported at once."""
    if not isinstance(data, dict):
        raise RegistryError("registry must be a mapping")
    errors: list[str] = []
    retention = _section(data, "retention", errors)
    fields = {
        n: _kept_field(n, s, retention, errors) for n, s in _section(data, "fields", errors).items()
    }
    raw = {
        n: _raw_field(n, s, retention, errors)
        for n, s in _section(data, "raw_fields", errors).items()
    }
    both = sorted(set(fields) & set(raw))
    if both:
        errors.append(f"in both fields and raw_fields: {both}")
    if len([f for f in raw.values() if f.disposition == "pseudonymize"]) != 1:
        errors.append("exactly one raw field must be the identity to pseudonymize")
    storage = {
        n: _column("storage column", n, s, retention, errors)
        for n, s in _section(data, "storage_columns", errors).items()
    }
    rollup = {
        n: _column("rollup column", n, s, retention, errors)
        for n, s in _section(data, "rollup_columns", errors).items()
    }
    purposes = _section(data, "purposes", errors)
    for p in sorted(PURPOSES - set(purposes)):
        errors.append(f"purposes: {p!r} is not described")
    for p, text in purposes.items():
        if p not in PURPOSES:
            errors.append(f"purposes: unknown purpose {p!r}")
        elif not isinstance(text, str) or not text.strip():
            errors.append(f"purposes: {p!r} needs a sentence saying what it is for")
    never = data.get("never_used_for")
    if (
        not isinstance(never, list)
        or not never
        or not all(isinstance(x, str) and x.strip() for x in never)
    ):
        errors.append("never_used_for: must be a non-empty list of sentences")
        never = []
    if errors:
        raise RegistryError("invalid field registry:\n  " + "\n  ".join(errors))
    return Registry(
        fields,
        raw,
        storage,
        rollup,
        retention,
        purposes={str(k): str(v) for k, v in purposes.items()},
        never_used_for=tuple(str(x).strip() for x in never),
    )


def load_registry(path: Path | None = None) -> Registry:
    return parse_registry(yaml.safe_load((path or SCHEMAS_DIR / "fields.yaml").read_text()))


@cache
def registry() -> Registry:
    return load_registry()


# ---------------------------------------------------------------------------- retention map

# Classes whose rows have no age of their own: `hold` rows live until their hold's expiry,
# `configured` rows as long as the configuration they mirror.
HOLD_CLASS = "hold"
CONFIGURED_CLASS = "configured"


@dataclass(frozen=True)
class RetentionClass:
    """A class of ``fields.yaml``: its default length and, if configurable, the bounds."""

    name: str
    what: str
    default: timedelta | None  # None: no fixed age (hold, configured)
    min: timedelta | None = None
    max: timedelta | None = None

    def check(self, value: timedelta) -> timedelta:
        """``value`` if it lies within the class bounds; a fixed class takes only its default."""
        fixed = self.min is None and self.max is None
        lo = self.default if fixed else self.min
        hi = self.default if fixed else self.max
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise RegistryError(
                f"retention class {self.name!r}: {_human(value)} is outside "
                f"{_human(lo) if lo else '0'}..{_human(hi) if hi else 'unbounded'}"
            )
        return value


def _human(td: timedelta | None) -> str:
    if td is None:
        return "-"
    secs = int(td.total_seconds())
    if secs % 86400 == 0:
        return f"{secs // 86400}d"
    if secs % 3600 == 0:
        return f"{secs // 3600}h"
    return f"{secs}s"


@dataclass(frozen=True)
class TableRetention:
    table: str
    cls: str
    age: str | None  # expression the age counts from; None for `configured`
    grain_hours: int = 0
    columns: tuple[tuple[str, str, str], ...] = ()  # (column, class, age expression)


@dataclass(frozen=True)
class RetentionMap:
    classes: dict[str, RetentionClass]
    tables: dict[str, TableRetention]
    topics: dict[str, str]  # settings name (raw, redacted, ...) -> class


def _span(spec: dict[str, Any], prefix: str) -> timedelta | None:
    days, hours = spec.get(f"{prefix}days"), spec.get(f"{prefix}hours")
    if days is not None:
        return timedelta(days=float(days))
    if hours is not None:
        return timedelta(hours=float(hours))
    return None


def retention_classes(reg: Registry) -> dict[str, RetentionClass]:
    out: dict[str, RetentionClass] = {}
    for name, spec in reg.retention.items():
        spec = spec or {}
        out[name] = RetentionClass(
            name,
            str(spec.get("what", "")),
            _span(spec, ""),
            _span(spec, "min_"),
            _span(spec, "max_"),
        )
    return out


def parse_retention_map(data: Any, reg: Registry) -> RetentionMap:
    """Validate a loaded ``retention.yaml`` against the classes of ``reg``."""
    if not isinstance(data, dict):
        raise RegistryError("retention map must be a mapping")
    classes = retention_classes(reg)
    errors: list[str] = []
    for c in classes.values():
        if c.default is None and c.name not in (HOLD_CLASS, CONFIGURED_CLASS):
            errors.append(f"retention class {c.name!r}: needs days or hours")
        if c.name == HOLD_CLASS and c.max is None:
            errors.append("retention class 'hold': needs max_days (the cap of a hold)")
    tables: dict[str, TableRetention] = {}
    for name, spec in _section(data, "tables", errors).items():
        where = f"table {name!r}"
        if not isinstance(spec, dict) or spec.get("class") not in classes:
            errors.append(f"{where}: needs a known retention class")
            continue
        cls, age = str(spec["class"]), spec.get("age")
        if (cls == CONFIGURED_CLASS) != (age is None):
            errors.append(f"{where}: every class but {CONFIGURED_CLASS!r} needs `age`")
        cols: list[tuple[str, str, str]] = []
        for col, cspec in (spec.get("columns") or {}).items():
            if (
                not isinstance(cspec, dict)
                or cspec.get("class") not in classes
                or not cspec.get("age")
            ):
                errors.append(f"{where} column {col!r}: needs a known class and `age`")
                continue
            cols.append((str(col), str(cspec["class"]), str(cspec["age"])))
        grain = spec.get("grain", 0)
        if not isinstance(grain, int) or grain < 0:
            errors.append(f"{where}: grain must be whole hours >= 0")
            grain = 0
        tables[str(name)] = TableRetention(
            str(name), cls, None if age is None else str(age), grain, tuple(cols)
        )
    topics: dict[str, str] = {}
    for name, cls in _section(data, "topics", errors).items():
        if cls not in classes or classes[cls].default is None:
            errors.append(f"topic {name!r}: needs a retention class with a length, got {cls!r}")
            continue
        topics[str(name)] = str(cls)
    if errors:
        raise RegistryError("invalid retention map:\n  " + "\n  ".join(errors))
    return RetentionMap(classes, tables, topics)


def load_retention_map(path: Path | None = None, reg: Registry | None = None) -> RetentionMap:
    text = (path or SCHEMAS_DIR / "retention.yaml").read_text()
    return parse_retention_map(yaml.safe_load(text), reg or registry())


@cache
def retention_map() -> RetentionMap:
    return load_retention_map()


# ---------------------------------------------------------------------------- schema checks


def load_avsc(name: str) -> dict[str, Any]:
    """The JSON of ``schemas/<name>.avsc`` (not fastavro's parsed form, which renames types)."""
    data: dict[str, Any] = json.loads((SCHEMAS_DIR / f"{name}.avsc").read_text())
    return data


def avro_type(t: Any) -> str:
    """An Avro field type in registry notation; a ``["null", X]`` union counts as X."""
    if isinstance(t, list):
        members = [m for m in t if m != "null"]
        return avro_type(members[0]) if len(members) == 1 else "union"
    if isinstance(t, dict):
        kind = t.get("type")
        if kind == "long" and str(t.get("logicalType", "")).startswith("timestamp-"):
            return "timestamp"
        if kind == "array":
            return f"array<{avro_type(t['items'])}>"
        if kind == "map":
            return f"map<{avro_type(t['values'])}>"
        if kind in ("enum", "record", "fixed"):
            return str(kind)
        return avro_type(kind)
    return str(t)


def schema_mismatches(
    reg: Registry, raw_schema: dict[str, Any], redacted_schema: dict[str, Any]
) -> list[str]:
    """Everything in the raw and redacted Avro schemas that disagrees with the registry."""
    problems: list[str] = []
    raw = {f["name"]: avro_type(f["type"]) for f in raw_schema["fields"]}
    red = {f["name"]: avro_type(f["type"]) for f in redacted_schema["fields"]}
    for name, t in red.items():
        spec = reg.fields.get(name)
        if spec is None:
            problems.append(f"redacted field {name!r} is not in the registry")
        elif spec.type != t:
            problems.append(f"redacted field {name!r} is {t} in Avro, {spec.type} in the registry")
    for name in sorted(reg.kept - set(red)):
        problems.append(f"registered field {name!r} is missing from the redacted schema")
    for name, t in raw.items():
        spec = reg.raw_fields.get(name) or reg.fields.get(name)
        if spec is None:
            problems.append(f"raw field {name!r} is not in the registry")
        elif spec.type != t:
            problems.append(f"raw field {name!r} is {t} in Avro, {spec.type} in the registry")
    for name in sorted(set(reg.raw_fields) - set(raw)):
        problems.append(f"raw_fields entry {name!r} is not in the raw schema")
    return problems
