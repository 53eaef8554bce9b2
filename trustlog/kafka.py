"""Topic layout and small aiokafka helpers shared by the services."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from trustlog.settings import KafkaSettings

log = logging.getLogger(__name__)

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
# Largest raw record accepted end to end (producer max_request_size, topic, consumer fetch).
MAX_RAW_MESSAGE_BYTES = 20 * 1024 * 1024
# Alerts-owned topics (defaults of AlertsSettings.topic_incident_commands/topic_slack_outbox).
INCIDENT_COMMANDS_TOPIC = "ai-usage.incident-commands.v1"
SLACK_OUTBOX_TOPIC = "ai-usage.slack-outbox.v1"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    retention_ms: int
    # compression happens on the producer; topics keep the producer's codec
    extra: tuple[tuple[str, str], ...] = ()
    retention_class: str = ""  # schemas/retention.yaml; "" for a spec built by hand

    def configs(self) -> dict[str, str]:
        return {
            "retention.ms": str(self.retention_ms),
            "cleanup.policy": "delete",
            "segment.ms": str(segment_ms(self.retention_ms)),
            **dict(self.extra),
        }


def segment_ms(retention_ms: int) -> int:
    """Roll segments at a sixth of the retention (1 min .. 1 day).

    Kafka deletes whole closed segments only, and by default rolls a quiet topic's segment
    after 7 days: a raw topic with 6 h retention would keep content for a week. With this,
    data is gone within retention + retention/6 + the broker's 5 min retention check.
    """
    return max(60_000, min(DAY_MS, retention_ms // 6))


def topic_specs(s: KafkaSettings) -> list[TopicSpec]:
    """Every topic trustlog owns; retention.ms is its class's length (schemas/retention.yaml)."""
    from trustlog.retention import class_lengths, topic_class

    lengths = class_lengths(s)

    def topic(
        key: str, name: str, parts: int, extra: tuple[tuple[str, str], ...] = ()
    ) -> TopicSpec:
        cls = topic_class(key)
        return TopicSpec(name, parts, int(lengths[cls].total_seconds() * 1000), extra, cls)

    p = s.topic_partitions
    return [
        topic(
            "raw",
            s.topic_raw,
            p,
            (
                # oversized content must reach the redactor to be dead-lettered, not bounce at ingest
                ("max.message.bytes", str(MAX_RAW_MESSAGE_BYTES)),
                # retention counts from the broker's clock: a record claiming a future
                # timestamp would otherwise keep its segment (and the content) alive
                ("message.timestamp.type", "LogAppendTime"),
            ),
        ),
        topic("redacted", s.topic_redacted, p),
        topic("deadletter", s.topic_deadletter, 1),
        topic("signals", s.topic_signals, 1),
        topic("incidents", s.topic_incidents, p),
        # Lifecycle commands for the alerts agent; one partition like the signals it shares
        # the agent (and its table) with. Names come from AlertsSettings when given one.
        topic(
            "incident_commands",
            getattr(s, "topic_incident_commands", INCIDENT_COMMANDS_TOPIC),
            1,
        ),
        # Slack notifications not yet delivered: compacted, a delivered one gets a tombstone.
        # Short segments and tombstone retention so delivered payloads do not linger; also
        # deleted by age, so a notice Slack never accepts does not outlive its class.
        topic(
            "slack_outbox",
            getattr(s, "topic_slack_outbox", SLACK_OUTBOX_TOPIC),
            1,
            (
                ("cleanup.policy", "compact,delete"),
                ("segment.ms", str(HOUR_MS)),
                ("delete.retention.ms", str(HOUR_MS)),
                ("min.cleanable.dirty.ratio", "0.1"),
            ),
        ),
    ]


# Kafka protocol codes used below (DescribeConfigs config_source, CreateTopics error_code).
DYNAMIC_TOPIC_CONFIG = 1
TOPIC_ALREADY_EXISTS = 36


UNKNOWN_TOPIC = 3


class TopicSetupError(RuntimeError):
    """The broker refused to create a topic or to change its configuration."""

    def __init__(self, message: str, code: int = -1) -> None:
        super().__init__(message)
        self.code = code


async def _admin(s: KafkaSettings, timeout_s: float) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(bootstrap_servers=s.kafka_bootstrap, request_timeout_ms=15000)
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            await admin.start()
            return admin
        except Exception:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(1.0)


async def describe_topic_configs(
    admin: AIOKafkaAdminClient, names: list[str]
) -> dict[str, dict[str, tuple[str, int]]]:
    """``{topic: {config: (value, config_source)}}`` as the broker reports them."""
    if not names:
        return {}
    out: dict[str, dict[str, tuple[str, int]]] = {}
    resources = [ConfigResource(ConfigResourceType.TOPIC, n) for n in names]
    for resp in await admin.describe_configs(resources):
        for res in resp.to_object()["resources"]:
            if res["error_code"]:
                raise TopicSetupError(
                    f"describe {res['resource_name']}: {res['error_message']}", res["error_code"]
                )
            out[res["resource_name"]] = {
                e["config_names"]: (e["config_value"], int(e.get("config_source", -1)))
                for e in res["config_entries"]
            }
    return out


def config_update(spec: TopicSpec, current: dict[str, tuple[str, int]]) -> dict[str, str] | None:
    """The full dynamic config to write for ``spec``, or None when it already holds.

    AlterConfigs replaces a topic's whole dynamic config (aiokafka has no incremental
    variant), so overrides someone else set on the topic are carried over, ours win.
    """
    want = spec.configs()
    if all(current.get(k, ("", 0))[0] == v for k, v in want.items()):
        return None
    dynamic = {k: v for k, (v, src) in current.items() if src == DYNAMIC_TOPIC_CONFIG}
    return {**dynamic, **want}


async def ensure_topics(s: KafkaSettings, timeout_s: float = 60.0) -> list[str]:
    """Create missing topics and bring the configs of existing ones (retention first of all)
    in line with the settings. Returns the names created; raises TopicSetupError on refusal."""
    admin = await _admin(s, timeout_s)
    created: list[str] = []
    changed: dict[str, dict[str, str]] = {}
    try:
        existing = set(await admin.list_topics())
        specs = topic_specs(s)
        for spec in (t for t in specs if t.name not in existing):
            resp = await admin.create_topics(
                [NewTopic(spec.name, spec.partitions, 1, topic_configs=spec.configs())]
            )
            for err in resp.to_object()["topic_errors"]:
                if err["error_code"] == 0:
                    created.append(spec.name)
                elif err["error_code"] == TOPIC_ALREADY_EXISTS:
                    existing.add(spec.name)  # created concurrently by another service
                else:
                    raise TopicSetupError(f"create {spec.name}: {err['error_message']}")
        present = [t for t in specs if t.name in existing]
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            try:
                changed = await _align_configs(admin, present)
                break
            except TopicSetupError as exc:
                # a topic another service has just created may not be known to every
                # broker's metadata yet
                if exc.code != UNKNOWN_TOPIC or asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.5)
    finally:
        await admin.close()
    if created:
        log.info("created topics", extra={"topics": created})
    if changed:
        log.info("changed topic configs", extra={"changes": changed})
    return created


async def _align_configs(
    admin: AIOKafkaAdminClient, specs: list[TopicSpec]
) -> dict[str, dict[str, str]]:
    """Alter the topics whose config differs from their spec; returns what changed."""
    current = await describe_topic_configs(admin, [t.name for t in specs])
    updates = {t.name: config_update(t, current.get(t.name, {})) for t in specs}
    todo = {n: c for n, c in updates.items() if c is not None}
    if not todo:
        return {}
    resources = [ConfigResource(ConfigResourceType.TOPIC, n, configs=c) for n, c in todo.items()]
    for resp in await admin.alter_configs(resources):
        for res in resp.to_object()["resources"]:
            if res["error_code"]:
                raise TopicSetupError(
                    f"configure {res['resource_name']}: {res['error_message']}",
                    res["error_code"],
                )
    changed: dict[str, dict[str, str]] = {}
    for spec in specs:
        if spec.name in todo:
            old = current.get(spec.name, {})
            changed[spec.name] = {
                k: f"{old.get(k, ('unset', 0))[0]} -> {v}"
                for k, v in spec.configs().items()
                if old.get(k, ("", 0))[0] != v
            }
    return changed
