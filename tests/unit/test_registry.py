"""The field registry is the single source of truth: it refuses gaps, and the Avro schemas,
the redactor's allowlist and the topic retention settings (and how topics enforce them) are
checked against it."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from services.redactor.redact import COMPUTED, Pseudonymizer, Redactor
from trustlog.avro import raw_codec
from trustlog.kafka import (
    DAY_MS,
    DYNAMIC_TOPIC_CONFIG,
    HOUR_MS,
    TopicSpec,
    config_update,
    segment_ms,
    topic_specs,
)
from trustlog.registry import (
    PURPOSES,
    ROLES,
    ColumnSpec,
    FieldSpec,
    Registry,
    RegistryError,
    avro_type,
    load_avsc,
    parse_registry,
    registry,
    schema_mismatches,
)
from trustlog.settings import MAX_RAW_RETENTION_HOURS, SCHEMAS_DIR, KafkaSettings

Mutation = Callable[[dict[str, Any]], None]


def _yaml() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((SCHEMAS_DIR / "fields.yaml").read_text())
    return data


def _del(section: str, name: str, key: str) -> Mutation:
    return lambda d: d[section][name].pop(key)


def _set(section: str, name: str, key: str, value: Any) -> Mutation:
    return lambda d: d[section][name].__setitem__(key, value)


def test_the_registry_loads_and_describes_both_schemas_exactly() -> None:
    reg = registry()
    assert schema_mismatches(reg, load_avsc("raw_event.v1"), load_avsc("redacted_event.v1")) == []
    raw = set(raw_codec().field_names)
    # every raw field is either copied (a `fields` entry) or has a disposition, never both
    assert raw == (raw & reg.kept) | set(reg.raw_fields)
    assert not reg.kept & set(reg.raw_fields)


def test_every_kept_field_has_a_real_purpose_roles_and_retention() -> None:
    reg = registry()
    specs: list[FieldSpec | ColumnSpec] = [*reg.fields.values(), *reg.storage_columns.values()]
    for spec in [*specs, *reg.rollup_columns.values()]:
        assert spec.purpose and set(spec.purpose) <= PURPOSES, spec.name
        assert spec.roles and set(spec.roles) <= ROLES, spec.name
        assert spec.retention in reg.retention and spec.retention != "transient", spec.name
        assert spec.why.strip(), spec.name


def test_raw_fields_are_transient_and_unreadable() -> None:
    reg = registry()
    for spec in reg.raw_fields.values():
        assert spec.retention == "transient" and spec.roles == ()
        assert spec.type and spec.purpose
    assert reg.raw_with("pseudonymize") == ("user_id",)
    assert set(reg.raw_with("scan_then_drop")) == {"prompt", "reply"}
    # `none` is a declared absence of purpose, allowed only for what is dropped on arrival
    assert {n for n, s in reg.raw_fields.items() if "none" in s.purpose} == set(
        reg.raw_with("drop")
    )


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_del("fields", "tool", "purpose"), "field 'tool': missing purpose"),
        (_set("fields", "tool", "purpose", []), "field 'tool': has no purpose"),
        (_del("fields", "tool", "type"), "field 'tool': missing type"),
        (_del("fields", "tool", "roles"), "field 'tool': missing roles"),
        (_del("fields", "tool", "retention"), "field 'tool': missing retention"),
        (_del("fields", "tool", "why"), "field 'tool': missing why"),
        (_set("fields", "tool", "retention", "forever"), "unknown retention class"),
        (_set("fields", "tool", "purpose", ["marketing"]), "unknown purpose"),
        (_set("fields", "tool", "purpose", ["none"]), "a kept field needs a purpose"),
        (_set("fields", "tool", "roles", ["hr"]), "unknown role"),
        (_set("fields", "tool", "roles", []), "nobody may read"),
        (_set("fields", "tool", "type", "blob"), "unknown type"),
        (_set("fields", "tool", "retention", "transient"), "transient retention is for raw"),
        (_del("raw_fields", "prompt", "purpose"), "raw field 'prompt': missing purpose"),
        (_del("raw_fields", "prompt", "type"), "raw field 'prompt': missing type"),
        (_del("raw_fields", "prompt", "roles"), "raw field 'prompt': missing roles"),
        (_del("raw_fields", "prompt", "retention"), "raw field 'prompt': missing retention"),
        (_set("raw_fields", "prompt", "purpose", ["none"]), "only a dropped field"),
        (_set("raw_fields", "prompt", "roles", ["security"]), "roles must be []"),
        (_set("raw_fields", "prompt", "retention", "detail"), "retention transient"),
        (_set("raw_fields", "prompt", "disposition", "keep_quietly"), "unknown disposition"),
        (_set("raw_fields", "attributes", "disposition", "scan_then_drop"), "only strings"),
        (_set("raw_fields", "user_email", "purpose", ["none", "legal"]), "cannot be combined"),
        (_set("raw_fields", "user_id", "disposition", "drop"), "exactly one raw field"),
        (lambda d: d["raw_fields"].__setitem__("tool", d["raw_fields"]["prompt"]), "in both"),
        (_del("storage_columns", "cost_usd", "purpose"), "storage column 'cost_usd': missing"),
        (_set("storage_columns", "cost_usd", "purpose", ["none"]), "needs a purpose"),
        (_del("rollup_columns", "hour", "roles"), "rollup column 'hour': missing roles"),
        (_del("rollup_columns", "hour", "retention"), "rollup column 'hour': missing retention"),
    ],
)
def test_a_gap_in_the_registry_fails_loading(mutate: Mutation, message: str) -> None:
    data = _yaml()
    mutate(data)
    with pytest.raises(RegistryError) as err:
        parse_registry(data)
    assert message in str(err.value)


def test_all_problems_are_reported_at_once() -> None:
    data = _yaml()
    data["fields"]["tool"].pop("purpose")
    data["fields"]["model"].pop("roles")
    with pytest.raises(RegistryError) as err:
        parse_registry(data)
    assert "'tool'" in str(err.value) and "'model'" in str(err.value)


def _schemas() -> tuple[dict[str, Any], dict[str, Any]]:
    return copy.deepcopy(load_avsc("raw_event.v1")), copy.deepcopy(load_avsc("redacted_event.v1"))


def _field(schema: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in schema["fields"] if f["name"] == name)


def test_schema_drift_is_caught() -> None:
    reg = registry()
    raw, red = _schemas()
    red["fields"].append({"name": "mood", "type": "string"})
    _field(red, "input_tokens")["type"] = "int"
    red["fields"] = [f for f in red["fields"] if f["name"] != "content_chars"]
    raw["fields"].append({"name": "device_id", "type": ["null", "string"], "default": None})
    _field(raw, "tool")["type"] = "long"
    raw["fields"] = [f for f in raw["fields"] if f["name"] != "latency_ms"]
    problems = "\n".join(schema_mismatches(reg, raw, red))
    for expected in (
        "redacted field 'mood' is not in the registry",
        "redacted field 'input_tokens' is int in Avro, long in the registry",
        "registered field 'content_chars' is missing from the redacted schema",
        "raw field 'device_id' is not in the registry",
        "raw field 'tool' is long in Avro, string in the registry",
        "raw_fields entry 'latency_ms' is not in the raw schema",
    ):
        assert expected in problems


def test_avro_types_in_registry_notation() -> None:
    assert avro_type(["null", "string"]) == "string"
    assert avro_type({"type": "long", "logicalType": "timestamp-millis"}) == "timestamp"
    assert avro_type({"type": "array", "items": "string"}) == "array<string>"
    assert avro_type({"type": "map", "values": "int"}) == "map<int>"
    assert avro_type({"type": "enum", "name": "E", "symbols": ["a"]}) == "enum"
    assert avro_type(["null", "string", "long"]) == "union"


def _reg_without(field: str) -> Registry:
    data = _yaml()
    data["fields"].pop(field)
    return parse_registry(data)


def test_redactor_allowlist_is_the_registry() -> None:
    r = Redactor(Pseudonymizer({"1": b"k" * 32}, "1"))
    assert set(r.copied) | COMPUTED == registry().kept
    assert set(r.copied) <= set(raw_codec().field_names)
    assert r.scanned == registry().raw_with("scan_then_drop")
    assert r.identity_field == "user_id"


@pytest.mark.parametrize("field", ["content_chars", "tool", "user_pseudonym"])
def test_redactor_refuses_to_start_on_a_field_the_registry_lacks(field: str) -> None:
    with pytest.raises(ValueError, match=f"redacted field '{field}' is not in the registry"):
        Redactor(Pseudonymizer({"1": b"k" * 32}, "1"), reg=_reg_without(field))


def test_topic_retention_settings_follow_the_registry() -> None:
    transient = registry().retention["transient"]
    stream = registry().retention["stream"]
    fields = KafkaSettings.model_fields
    assert fields["raw_retention_hours"].default == transient["hours"]
    assert fields["stream_retention_days"].default == stream["days"]
    assert transient["max_hours"] == MAX_RAW_RETENTION_HOURS
    with pytest.raises(ValidationError, match="less than or equal to 24"):
        KafkaSettings(raw_retention_hours=25)
    with pytest.raises(ValidationError, match="greater than 0"):
        KafkaSettings(raw_retention_hours=0)
    with pytest.raises(ValidationError, match=r"'stream': 15d is outside 1d\.\.14d"):
        KafkaSettings(stream_retention_days=stream["max_days"] + 1)
    assert KafkaSettings(raw_retention_hours=24).raw_retention_hours == 24


def test_segments_roll_well_inside_the_retention() -> None:
    # Kafka deletes closed segments only: the roll interval bounds how long data outlives
    # retention.ms on a quiet topic (the default roll is 7 days)
    assert segment_ms(6 * HOUR_MS) == HOUR_MS
    assert segment_ms(90 * DAY_MS) == DAY_MS
    assert segment_ms(1000) == 60_000
    raw = next(t for t in topic_specs(KafkaSettings()) if t.name == KafkaSettings().topic_raw)
    assert int(raw.configs()["segment.ms"]) <= raw.retention_ms // 6
    assert raw.configs()["message.timestamp.type"] == "LogAppendTime"


def test_config_update_keeps_foreign_overrides_and_skips_what_holds() -> None:
    spec = TopicSpec("t", 1, 2 * HOUR_MS)
    current = {k: (v, DYNAMIC_TOPIC_CONFIG) for k, v in spec.configs().items()}
    assert config_update(spec, current) is None
    current["retention.ms"] = (str(6 * HOUR_MS), DYNAMIC_TOPIC_CONFIG)
    current["min.insync.replicas"] = ("2", DYNAMIC_TOPIC_CONFIG)
    current["flush.ms"] = ("1000", 5)  # a broker default, not ours to pin
    update = config_update(spec, current)
    assert update == {**spec.configs(), "min.insync.replicas": "2"}
