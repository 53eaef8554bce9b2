"""Topics carry the retention their contents justify, read back from the real broker, and a
changed setting reaches topics that already exist."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from trustlog.kafka import (
    DAY_MS,
    HOUR_MS,
    MAX_RAW_MESSAGE_BYTES,
    TopicSpec,
    ensure_topics,
    topic_specs,
)
from trustlog.settings import KafkaSettings

pytestmark = pytest.mark.integration

KINDS = ("raw", "redacted", "deadletter", "signals", "incidents")


def _settings(run: str, **over: float) -> KafkaSettings:
    names = {f"topic_{k}": f"topics-{run}.{k}" for k in KINDS}
    return KafkaSettings(**names, **over)  # type: ignore[arg-type]


@pytest.fixture
async def admin(stack: object) -> AsyncIterator[AIOKafkaAdminClient]:
    a = AIOKafkaAdminClient(bootstrap_servers=KafkaSettings().kafka_bootstrap)
    await a.start()
    try:
        yield a
    finally:
        await a.close()


def _raw_spec(s: KafkaSettings) -> TopicSpec:
    return next(t for t in topic_specs(s) if t.name == s.topic_raw)


async def _configs(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, dict[str, str]]:
    """What the broker says, independent of trustlog.kafka's own describe helper."""
    out: dict[str, dict[str, str]] = {}
    resources = [ConfigResource(ConfigResourceType.TOPIC, n) for n in names]
    for resp in await admin.describe_configs(resources):
        for res in resp.to_object()["resources"]:
            assert res["error_code"] == 0, res["error_message"]
            out[res["resource_name"]] = {
                e["config_names"]: e["config_value"] for e in res["config_entries"]
            }
    return out


async def _settled(admin: AIOKafkaAdminClient, topic: str, key: str, value: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            if (await _configs(admin, [topic]))[topic].get(key) == value:
                return
        except AssertionError:  # a just-created topic may not be known to the broker yet
            pass
        assert time.monotonic() < deadline, f"{topic} {key} never became {value}"
        await asyncio.sleep(0.1)


async def test_topics_are_created_with_their_retention(admin: AIOKafkaAdminClient) -> None:
    s = _settings(
        uuid.uuid4().hex[:8],
        raw_retention_hours=3,
        stream_retention_days=5,
    )
    names = [s.topic_raw, s.topic_redacted, s.topic_deadletter]
    created = await ensure_topics(s)
    assert set(names) <= set(created)
    for n in names:
        await _settled(admin, n, "cleanup.policy", "delete")
    cfg = await _configs(admin, names)
    raw, red, dead = (cfg[n] for n in names)
    assert int(raw["retention.ms"]) == 3 * HOUR_MS
    assert int(red["retention.ms"]) == 5 * DAY_MS
    assert int(dead["retention.ms"]) == 5 * DAY_MS  # both `stream` class
    assert raw["cleanup.policy"] == red["cleanup.policy"] == dead["cleanup.policy"] == "delete"
    # raw content is gone within retention + one segment (+ the broker's 5 min check),
    # not after the 7-day default segment roll of a quiet topic
    assert int(raw["segment.ms"]) <= 3 * HOUR_MS // 6
    assert raw["message.timestamp.type"] == "LogAppendTime"
    # a 10 MB prompt must reach the redactor to be dead-lettered
    assert int(raw["max.message.bytes"]) == MAX_RAW_MESSAGE_BYTES
    assert int(raw["retention.ms"]) < int(dead["retention.ms"]) <= int(red["retention.ms"])


async def test_a_changed_setting_is_applied_to_existing_topics(
    admin: AIOKafkaAdminClient,
) -> None:
    run = uuid.uuid4().hex[:8]
    first = _settings(run, raw_retention_hours=6)
    await ensure_topics(first)
    # an operator's own override on the raw topic, which ensure_topics does not manage
    await admin.alter_configs(
        [
            ConfigResource(
                ConfigResourceType.TOPIC,
                first.topic_raw,
                configs={**_raw_spec(first).configs(), "min.compaction.lag.ms": "1234"},
            )
        ]
    )
    # config changes reach the broker's metadata cache asynchronously
    await _settled(admin, first.topic_raw, "min.compaction.lag.ms", "1234")
    second = _settings(run, raw_retention_hours=2, stream_retention_days=3)
    assert await ensure_topics(second) == []  # nothing new, only changed
    await _settled(admin, second.topic_raw, "retention.ms", str(2 * HOUR_MS))
    cfg = await _configs(admin, [second.topic_raw, second.topic_redacted])
    assert int(cfg[second.topic_raw]["retention.ms"]) == 2 * HOUR_MS
    assert int(cfg[second.topic_raw]["segment.ms"]) <= 2 * HOUR_MS // 6
    assert int(cfg[second.topic_redacted]["retention.ms"]) == 3 * DAY_MS
    # the whole dynamic config is rewritten (AlterConfigs is not incremental): foreign
    # overrides are carried over and the topic's other settings are kept
    assert cfg[second.topic_raw]["min.compaction.lag.ms"] == "1234"
    assert int(cfg[second.topic_raw]["max.message.bytes"]) == MAX_RAW_MESSAGE_BYTES
