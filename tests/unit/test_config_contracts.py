"""Contracts between files that must not drift: compose env vs settings, schemas vs registry."""

from __future__ import annotations

import re

import yaml

from trustlog import settings
from trustlog.avro import codec
from trustlog.settings import PROJECT_ROOT


def _settings_env_names() -> set[str]:
    names: set[str] = set()
    for cls in (
        settings.IngestSettings,
        settings.RedactorSettings,
        settings.AggregatorSettings,
        settings.AlertsSettings,
        settings.GovernanceSettings,  # `migrate --service-accounts`
    ):
        names |= {f"TRUSTLOG_{f.upper()}" for f in cls.model_fields}
    return names


def test_compose_uses_only_known_settings() -> None:
    text = (PROJECT_ROOT / "docker-compose.yml").read_text()
    compose = yaml.safe_load(text)
    used = set(re.findall(r"\b(TRUSTLOG_[A-Z_]+)\s*:", text))
    assert used, "compose sets no TRUSTLOG_ variables?"
    unknown = used - _settings_env_names()
    assert not unknown, f"docker-compose sets variables no settings class reads: {unknown}"
    assert {"ingest", "redactor", "aggregator", "alerts", "kafka", "clickhouse"} <= set(
        compose["services"]
    )
    assert compose["services"]["kafka"]["image"].startswith("apache/kafka:")
    assert compose["services"]["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")


def test_compose_gives_each_service_its_own_clickhouse_account() -> None:
    from trustlog.governance.roles import SERVICE_ACCOUNTS
    from trustlog.stack.clickhouse import ADMIN_USER

    services = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())["services"]
    env = {name: svc.get("environment", {}) for name, svc in services.items()}
    for name in ("ingest", "redactor"):  # Kafka only: no ClickHouse account at all
        assert not [k for k in env[name] if k.startswith("TRUSTLOG_CH_")], name
    for service, account in SERVICE_ACCOUNTS.items():
        assert env[service]["TRUSTLOG_CH_USER"] == account
        own = f"TRUSTLOG_{service.upper()}_CH_PASSWORD"
        assert own in env[service]["TRUSTLOG_CH_PASSWORD"]
        assert own in env["migrate"][own]  # the admin creates the account with it
    assert env["migrate"]["TRUSTLOG_CH_USER"] == ADMIN_USER
    assert "--service-accounts" in services["migrate"]["command"]
    example = (PROJECT_ROOT / ".env.example").read_text()
    for service in SERVICE_ACCOUNTS:
        assert f"TRUSTLOG_{service.upper()}_CH_PASSWORD=" in example


def test_compose_kafka_version_matches_local_stack() -> None:
    from trustlog.stack import kafka

    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["kafka"]["image"] == f"apache/kafka:{kafka.KAFKA_VERSION}"


def test_schemas_parse_and_share_the_task_label_enum() -> None:
    raw = codec("raw_event.v1").schema
    red = codec("redacted_event.v1").schema
    for name in ("signal.v1", "incident.v1"):
        assert codec(name).field_names

    def labels(schema: dict) -> list[str]:  # type: ignore[type-arg]
        field = next(f for f in schema["fields"] if f["name"] == "task_label")
        return list(field["type"]["symbols"])

    assert (
        labels(raw)
        == labels(red)
        == [
            "drafting",
            "research",
            "coding",
            "support",
            "data_cleanup",
            "other",
        ]
    )
