"""Typed settings, one class per service, all read from ``TRUSTLOG_*`` environment variables.

The local stack writes the connection variables it chose (ports, passwords) into
``<state dir>/stack.env``; every settings class reads that file as a fallback so that
``trustlog run <service>`` works without exporting anything. Real environment variables
always win, which is how docker-compose and production deployments configure the same code.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

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


MAX_RAW_RETENTION_HOURS = 24


def _in_class(cls: str, value: timedelta) -> None:
    """Refuse a retention setting outside its class bounds in schemas/fields.yaml."""
    from trustlog.registry import RegistryError, registry, retention_classes

    try:
        retention_classes(registry())[cls].check(value)
    except RegistryError as exc:
        raise ValueError(str(exc)) from None


class KafkaSettings(_Base):
    kafka_bootstrap: str = "127.0.0.1:9092"
    topic_raw: str = "ai-usage.raw.v1"
    topic_redacted: str = "ai-usage.redacted.v1"
    topic_deadletter: str = "ai-usage.deadletter.v1"
    topic_signals: str = "ai-usage.signals.v1"
    topic_incidents: str = "ai-usage.incidents.v1"
    topic_partitions: int = 3
    # Topic retention is per class (schemas/retention.yaml says which topic has which):
    # `transient` for the raw topic, which holds content and real identities: only as long as
    # the redactor could need to catch up after an outage; longer than a day is refused, a
    # redactor down that long has to be fixed, not waited for.
    raw_retention_hours: float = Field(default=6.0, gt=0, le=MAX_RAW_RETENTION_HOURS)
    # `stream` for every topic between services (redacted, dead letters, signals, incidents,
    # commands, Slack outbox): long enough to replay after an outage, 1..14 days.
    stream_retention_days: float = Field(default=7.0, gt=0)

    @model_validator(mode="after")
    def _topic_classes(self) -> KafkaSettings:
        _in_class("transient", timedelta(hours=self.raw_retention_hours))
        _in_class("stream", timedelta(days=self.stream_retention_days))
        return self


class ClickHouseSettings(_Base):
    ch_host: str = "127.0.0.1"
    ch_port: int = 8123
    ch_user: str = "trustlog_admin"
    ch_password: SecretStr = SecretStr("")
    ch_database: str = "trustlog"
    ch_secure: bool = False
    # Detail rows are deleted by ClickHouse itself after this many days: the `detail` class
    # of schemas/fields.yaml (30..90). A value outside it is refused unless
    # detail_ttl_unchecked is set, which exists for tests and demos on throwaway databases
    # (the retention test needs rows that expire within seconds).
    detail_ttl_days: int = Field(default=60, ge=1, le=3650)
    detail_ttl_unchecked: bool = False
    # Hourly and daily rollups (`rollup` class, 91..1100): no pseudonyms, kept for
    # year-over-year budget review.
    rollup_ttl_days: int = Field(default=400, ge=1, le=3650)
    # Longest a legal hold on records may last (`hold` class, at most its max_days).
    hold_max_days: int = Field(default=365, ge=1)

    @model_validator(mode="after")
    def _retention_bounds(self) -> ClickHouseSettings:
        if not self.detail_ttl_unchecked:
            _in_class("detail", timedelta(days=self.detail_ttl_days))
            _in_class("rollup", timedelta(days=self.rollup_ttl_days))
        if self.rollup_ttl_days <= self.detail_ttl_days:
            raise ValueError("rollup_ttl_days must exceed detail_ttl_days: rollups outlive detail")
        _in_class("hold", timedelta(days=self.hold_max_days))
        return self


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
    # Validation errors would otherwise echo the input, i.e. the pseudonym keys.
    model_config = SettingsConfigDict(hide_input_in_errors=True)

    # JSON object: key version -> secret. Pseudonyms are HMAC-SHA256(secret, user id).
    # NoDecode: the JSON text of the highest-priority source replaces the others whole;
    # decoded dicts would be merged key by key, and a key retired from the environment
    # would live on from an env file (docs/identity.md).
    pseudonym_keys: Annotated[dict[str, SecretStr], NoDecode] = Field(default_factory=dict)
    pseudonym_key_version: str = "1"
    directory_file: Path | None = None  # user id -> team, for producers that send no team
    # Events per transaction at most. One transaction's commit is a round trip the loop waits
    # for: with 2,000 the redactor sat idle 15-20% of the time at full load; 5,000 (about
    # 0.2 s of work then) halves that. Under light load batches are as small as what arrived.
    batch_max_records: int = Field(default=5000, ge=1, le=50_000)
    max_content_bytes: int = 1024 * 1024
    max_clock_skew_hours: float = 24.0
    max_event_age_days: float = 7.0
    transactional_id: str = "trustlog-redactor-0"

    @field_validator("pseudonym_keys", mode="before")
    @classmethod
    def _keys_from_json(cls, v: Any) -> Any:
        if not isinstance(v, str):
            return v
        try:
            return json.loads(v) if v.strip() else {}
        except json.JSONDecodeError:
            raise ValueError("must be a JSON object: key version -> secret") from None

    @field_validator("pseudonym_keys")
    @classmethod
    def _keys_not_empty(cls, v: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for version, key in v.items():
            if len(key.get_secret_value()) < 16:
                raise ValueError(f"pseudonym key version {version!r} is shorter than 16 chars")
        return v

    @model_validator(mode="after")
    def _current_key_configured(self) -> RedactorSettings:
        # An empty key set is refused when the redactor starts (Pseudonymizer), not here.
        keys = self.pseudonym_keys
        if keys and self.pseudonym_key_version not in keys:
            raise ValueError(
                f"TRUSTLOG_PSEUDONYM_KEY_VERSION={self.pseudonym_key_version!r} is not a "
                "version in TRUSTLOG_PSEUDONYM_KEYS"
            )
        secrets = [k.get_secret_value() for k in keys.values()]
        if len(set(secrets)) != len(secrets):
            raise ValueError(
                "two pseudonym key versions share a secret: rotating would change nothing"
            )
        return self


class AggregatorSettings(ServiceSettings, ClickHouseSettings):
    batch_max_rows: int = 10_000
    batch_max_seconds: float = 1.0
    price_overrides_file: Path | None = None
    # Signal rules (services/aggregator/signals.py). A spend spike fires when the last 60 s
    # reach spike_factor x the expected spend, z sigmas beyond noise, and spike_min_usd.
    # The factor is below 2 so that a doubling is caught while its first window fills.
    spike_window_seconds: int = 60
    spike_baseline_windows: int = 10  # minutes in the median that gives the current level
    spike_factor: float = Field(default=1.5, gt=1.0)
    spike_min_usd: float = 5.0
    spike_z: float = Field(default=4.5, gt=0)
    spike_seasonal_weeks: int = Field(default=4, ge=0, le=8)  # 0: no same-hour-of-week baseline
    spike_task_labels: bool = True  # also per team x task label
    storm_min_count: int = Field(default=20, ge=1)  # errors / retries per window for a storm
    signal_max_keys: int = Field(default=2000, ge=10)  # memory bound of the spike state
    # Rebuild the baselines (and budget period-to-date spend) from spend_hourly at start.
    signal_warm_start: bool = True
    budgets_file: Path | None = CONFIG_DIR / "budgets.yaml"
    # Kafka consumer group; tests run their own aggregator on their own topic and group.
    consumer_group: str = "trustlog-aggregator"
    # Producer retries (same event_id twice) are dropped if the id is among the last this
    # many stored by this process (services/aggregator/dedup.py); 0 turns that off. About
    # 120 bytes per id. At start and on every rebalance it is refilled from ClickHouse with
    # ids of events from the last dedup_warm_hours.
    dedup_recent_ids: int = Field(default=500_000, ge=0)
    dedup_warm_hours: int = Field(default=48, ge=1)
    # TEST ONLY, 0 (off) in every deployment: sleep this long after ClickHouse acknowledged
    # a batch and before its offsets are committed, so a test can SIGKILL the aggregator in
    # exactly that window and prove the restart neither loses nor double counts the batch.
    test_pause_before_commit_seconds: float = Field(default=0.0, ge=0.0, le=60.0)


class AlertsSettings(ServiceSettings, ClickHouseSettings):
    slack_webhook_url: str | None = None
    # JSON object: Slack channel -> its incoming webhook URL (a webhook posts to one channel);
    # channels not listed use slack_webhook_url.
    slack_channel_webhooks: dict[str, SecretStr] = Field(default_factory=dict)
    routing_file: Path = CONFIG_DIR / "routing.yaml"
    # Tools each team may use; None turns the unapproved-tool check off.
    approved_tools_file: Path | None = CONFIG_DIR / "approved_tools.yaml"
    unapproved_tool_check_seconds: float = Field(default=60.0, gt=0)
    cooldown_seconds: int = 3600
    # A resolved incident whose signal recurs within this long is reopened; later, a new
    # incident opens.
    reopen_window_seconds: int = Field(default=7 * 86400, ge=0)
    escalation_check_seconds: float = Field(default=15.0, gt=0)
    faust_data_dir: Path | None = None
    # Lifecycle commands (ack/resolve/escalate) and the durable Slack outbox (compacted).
    topic_incident_commands: str = "ai-usage.incident-commands.v1"
    topic_slack_outbox: str = "ai-usage.slack-outbox.v1"
    # The agent takes signals in batches: up to this many, waiting at most this long.
    signal_batch_max: int = Field(default=1000, ge=1)
    signal_batch_wait_seconds: float = Field(default=0.05, gt=0)
    # Longest wait between retries of a notification Slack did not accept.
    slack_retry_max_seconds: float = Field(default=300.0, gt=0)
    # When set, POST /v1/incidents/... needs "Authorization: Bearer <token>".
    incident_api_token: SecretStr | None = None
    # Optional link for Slack's "Open incident" button, e.g. https://ops.example/i/{incident_id}
    incident_link_template: str | None = None


class GovernanceSettings(ClickHouseSettings):
    """`trustlog roles | case | audit` (docs/governance.md): who may read what, and cases."""

    # Role accounts, minimum group size and case limits; one file for users.xml and for the
    # SQL a production server is given.
    roles_file: Path = CONFIG_DIR / "roles.yaml"
    # Passwords of the service accounts (trustlog_aggregator, trustlog_alerts) for the SQL a
    # production server is given (`roles sql`, `migrate --service-accounts`); unset, the
    # state dir's generated ones are used. Each service itself logs in with TRUSTLOG_CH_USER
    # and TRUSTLOG_CH_PASSWORD.
    aggregator_ch_password: SecretStr | None = None
    alerts_ch_password: SecretStr | None = None
    # Where the services connect from (IPs or CIDRs), for that SQL; loopback by default.
    service_networks: list[str] = Field(default_factory=lambda: ["127.0.0.1", "::1"])

    def service_passwords(self) -> dict[str, str | None]:
        """service -> password given in the environment (None: use the generated one)."""
        return {
            "aggregator": _secret(self.aggregator_ch_password),
            "alerts": _secret(self.alerts_ch_password),
        }


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


class RetentionSettings(AlertsSettings, GovernanceSettings):
    """`trustlog retention check`: every table and every topic, so every setting of both."""
