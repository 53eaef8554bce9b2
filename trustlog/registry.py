"""The field registry (``schemas/fields.yaml``): what is kept, for which purpose, for how long."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from trustlog.settings import SCHEMAS_DIR

PURPOSES = frozenset({"billing", "security", "legal"})
RAW_DISPOSITIONS = frozenset({"pseudonymize", "drop", "scan_then_drop"})


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


@dataclass(frozen=True)
class Registry:
    fields: dict[str, FieldSpec]
    raw_fields: dict[str, str]
    storage_columns: dict[str, dict[str, Any]]
    retention: dict[str, dict[str, Any]]

    @property
    def kept(self) -> frozenset[str]:
        return frozenset(self.fields)


def load_registry(path: Path | None = None) -> Registry:
    data = yaml.safe_load((path or SCHEMAS_DIR / "fields.yaml").read_text())
    retention = data.get("retention") or {}
    fields: dict[str, FieldSpec] = {}
    for name, spec in (data.get("fields") or {}).items():
        purpose = tuple(spec.get("purpose") or ())
        if not purpose:
            raise RegistryError(f"field {name!r} has no purpose")
        unknown = set(purpose) - PURPOSES
        if unknown:
            raise RegistryError(f"field {name!r} has unknown purpose(s) {sorted(unknown)}")
        if not spec.get("why"):
            raise RegistryError(f"field {name!r} does not say why it is kept")
        if spec.get("retention") not in retention:
            raise RegistryError(f"field {name!r} has unknown retention class")
        fields[name] = FieldSpec(
            name=name,
            type=str(spec["type"]),
            purpose=purpose,
            why=str(spec["why"]),
            roles=tuple(spec.get("roles") or ()),
            retention=str(spec["retention"]),
        )
    raw_fields = dict(data.get("raw_fields") or {})
    for name, disp in raw_fields.items():
        if disp not in RAW_DISPOSITIONS:
            raise RegistryError(f"raw field {name!r} has unknown disposition {disp!r}")
    storage = dict(data.get("storage_columns") or {})
    for name, spec in storage.items():
        if not set(spec.get("purpose") or ()) <= PURPOSES or not spec.get("purpose"):
            raise RegistryError(f"storage column {name!r} needs a known purpose")
    return Registry(
        fields=fields, raw_fields=raw_fields, storage_columns=storage, retention=retention
    )


@cache
def registry() -> Registry:
    return load_registry()
