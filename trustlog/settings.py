"""Typed settings, one class per service, all read from ``TRUSTLOG_*`` environment variables.

The local stack writes the connection variables it chose (ports, passwords) into
``<state dir>/stack.env``; every settings class reads that file as a fallback so that
``trustlog run <service>`` works without exporting anything. Real environment variables
always win, which is how docker-compose and production deployments configure the same code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SCHEMAS_DIR = PROJECT_ROOT / "schemas"
CONFIG_DIR = PROJECT_ROOT / "config"


def default_state_dir() -> Path:
    """Where the local stack keeps all of its data, logs and pid files."""
    return Path(os.environ.get("TRUSTLOG_STATE_DIR", PROJECT_ROOT / ".trustlog")).resolve()


def stack_env_file() -> Path:
    return default_state_dir() / "stack.env"


def local_env_file() -> Path:
    """What `trustlog up` generated for the local services: pseudonym key, API key, ports."""
    return default_state_dir() / "local.env"


class _Base(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TRUSTLOG_",
        env_file=None,
        extra="ignore",
        frozen=True,
    )

    def __init__(self, **values: Any) -> None:
        # Resolve the env file at construction time, not import time, so tests can point
        # TRUSTLOG_STATE_DIR at their own stack.
        files = tuple(str(f) for f in (stack_env_file(), local_env_file()) if f.exists())
        super().__init__(_env_file=files or None, **values)


class KafkaSettings(_Base):
    kafka_bootstrap: str = "127.0.0.1:9092"
    topic_raw: str = "ai-usage.raw.v1"
    topic_redacted: str = "ai-usage.redacted.v1"
    topic_deadletter: str = "ai-usage.deadletter.v1"
    topic_signals: str = "ai-usage.signals.v1"
    topic_incidents: str = "ai-usage.incidents.v1"
    topic_partitions: int = 3
    # Raw events hold content and real identities: keep them only as long as the redactor
    # could need to catch up after an outage.
    raw_retention_hours: float = 6.0
    redacted_retention_days: float = 7.0
    deadletter_retention_days: float = 7.0
    signals_retention_days: float = 14.0
    incidents_retention_days: float = 30.0


class ClickHouseSettings(_Base):
    ch_host: str = "127.0.0.1"
    ch_port: int = 8123
    ch_user: str = "trustlog_admin"
    ch_password: SecretStr = SecretStr("")
    ch_database: str = "trustlog"
    ch_secure: bool = False
    # Detail rows are deleted by ClickHouse itself after this many days.
    detail_ttl_days: int = Field(default=60, ge=1, le=3650)
    rollup_ttl_days: int = Field(default=400, ge=1, le=3650)


class ServiceSettings(KafkaSettings):
    """What every service process shares: where to report health and how to log."""

    health_host: str = "127.0.0.1"
    health_port: int = 0  # 0 = pick a free port; the chosen one is logged and written to state
    log_level: str = "INFO"
    log_json: bool = True


class IngestSettings(ServiceSettings):
    http_host: str = "127.0.0.1"
    http_port: int = 8088
    # JSON object: API key -> producer id. The producer id is stamped on every event so a
    # client cannot claim to be another producer.
    api_keys: dict[str, str] = Field(default_factory=dict)
    max_batch_events: int = 1000
    max_body_bytes: int = 16 * 1024 * 1024
    max_field_bytes: int = 1024 * 1024


class RedactorSettings(ServiceSettings):
    # JSON object: key version -> secret. Pseudonyms are HMAC-SHA256(secret, user id).
    pseudonym_keys: dict[str, SecretStr] = Field(default_factory=dict)
    pseudonym_key_version: str = "1"
    directory_file: Path | None = None  # user id -> team, for producers that send no team
    batch_max_records: int = 2000
    max_content_bytes: int = 1024 * 1024
    max_clock_skew_hours: float = 24.0
    max_event_age_days: float = 7.0
    transactional_id: str = "trustlog-redactor-0"

    @field_validator("pseudonym_keys")
    @classmethod
    def _keys_not_empty(cls, v: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for version, key in v.items():
            if len(key.get_secret_value()) < 16:
                raise ValueError(f"pseudonym key version {version!r} is shorter than 16 chars")
        return v


class AggregatorSettings(ServiceSettings, ClickHouseSettings):
    batch_max_rows: int = 10_000
    batch_max_seconds: float = 1.0
    price_overrides_file: Path | None = None
    spike_window_seconds: int = 60
    spike_baseline_windows: int = 10
    spike_factor: float = 2.0
    spike_min_usd: float = 5.0


class AlertsSettings(ServiceSettings, ClickHouseSettings):
    slack_webhook_url: str | None = None
    routing_file: Path = CONFIG_DIR / "routing.yaml"
    cooldown_seconds: int = 3600
    faust_data_dir: Path | None = None
