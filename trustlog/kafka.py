"""Topic layout and small aiokafka helpers shared by the services."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError

from trustlog.settings import KafkaSettings

log = logging.getLogger(__name__)

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
# Largest raw record accepted end to end (producer max_request_size, topic, consumer fetch).
MAX_RAW_MESSAGE_BYTES = 20 * 1024 * 1024


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    retention_ms: int
    # compression happens on the producer; topics keep the producer's codec
    extra: tuple[tuple[str, str], ...] = ()

    def configs(self) -> dict[str, str]:
        return {
            "retention.ms": str(self.retention_ms),
            "cleanup.policy": "delete",
            **dict(self.extra),
        }


def topic_specs(s: KafkaSettings) -> list[TopicSpec]:
    """Every topic trustlog owns, with the retention its contents justify."""
    p = s.topic_partitions
    return [
        # raw holds content and real identities: hours, never longer than catch-up needs
        TopicSpec(
            s.topic_raw,
            p,
            int(s.raw_retention_hours * HOUR_MS),
            # oversized content must reach the redactor to be dead-lettered, not bounce at ingest
            (("max.message.bytes", str(MAX_RAW_MESSAGE_BYTES)),),
        ),
        TopicSpec(s.topic_redacted, p, int(s.redacted_retention_days * DAY_MS)),
        TopicSpec(s.topic_deadletter, 1, int(s.deadletter_retention_days * DAY_MS)),
        TopicSpec(s.topic_signals, 1, int(s.signals_retention_days * DAY_MS)),
        TopicSpec(s.topic_incidents, p, int(s.incidents_retention_days * DAY_MS)),
    ]


async def ensure_topics(s: KafkaSettings, timeout_s: float = 60.0) -> list[str]:
    """Create missing topics and bring retention of existing ones in line. Returns created names."""
    admin = AIOKafkaAdminClient(bootstrap_servers=s.kafka_bootstrap, request_timeout_ms=15000)
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            await admin.start()
            break
        except Exception:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(1.0)
    created: list[str] = []
    try:
        existing = set(await admin.list_topics())
        specs = topic_specs(s)
        missing = [t for t in specs if t.name not in existing]
        for spec in missing:
            try:
                await admin.create_topics(
                    [NewTopic(spec.name, spec.partitions, 1, topic_configs=spec.configs())]
                )
                created.append(spec.name)
            except TopicAlreadyExistsError:
                pass
        present = [t for t in specs if t.name in existing]
        if present:
            await admin.alter_configs(
                [
                    ConfigResource(ConfigResourceType.TOPIC, t.name, configs=t.configs())
                    for t in present
                ]
            )
    finally:
        await admin.close()
    if created:
        log.info("created topics", extra={"topics": created})
    return created
