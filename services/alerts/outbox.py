"""The durable Slack outbox: a compacted Kafka topic of notifications not yet delivered.

Key = notification id, value = the notification as JSON (the Slack payload is JSON anyway
and holds metadata only; the webhook URL is a secret and is never stored, it is looked up
when sending). Delivered (or rejected) notifications get a tombstone. At start the service
reads the topic from the beginning; whatever has no tombstone is still owed to Slack.

Compaction keeps the topic about as small as the backlog: it drops every value that has a
later tombstone, then the tombstones themselves (``delete.retention.ms``). The alerts
service is the only writer and reader: one instance, like its faust table's one partition.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from services.alerts.commands import KafkaSender
from services.alerts.slack import Notification

log = logging.getLogger("trustlog.alerts.outbox")


class KafkaOutbox:
    def __init__(self, bootstrap: str, topic: str, producer: KafkaSender) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.producer = producer

    async def put(self, n: Notification) -> None:
        # send_and_wait: acks=all on the producer, so "put" returns once the broker has it.
        await self.producer.send_and_wait(
            self.topic, key=n.id.encode(), value=orjson.dumps(n.to_record())
        )

    async def done(self, notification_id: str) -> None:
        await self.producer.send_and_wait(self.topic, key=notification_id.encode(), value=None)

    async def load(self) -> list[Notification]:
        """Notifications still owed, oldest first (read from the beginning, no group)."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await consumer.start()
        pending: dict[str, dict[str, Any]] = {}
        try:
            parts = consumer.partitions_for_topic(self.topic)
            if not parts:
                await consumer._client.force_metadata_update()
                parts = consumer.partitions_for_topic(self.topic) or set()
            tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
            if not tps:
                log.warning("outbox topic not found; starting empty", extra={"topic": self.topic})
                return []
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            end = await consumer.end_offsets(tps)
            while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
                batch = await consumer.getmany(*tps, timeout_ms=1000)
                for records in batch.values():
                    for r in records:
                        key = (r.key or b"").decode()
                        if r.value is None:
                            pending.pop(key, None)
                            continue
                        try:
                            pending[key] = orjson.loads(r.value)
                        except orjson.JSONDecodeError:
                            log.error(
                                "unreadable outbox record skipped", extra={"offset": r.offset}
                            )
        finally:
            await consumer.stop()
        out = []
        for rec in pending.values():
            try:
                out.append(Notification.from_record(rec))
            except (KeyError, TypeError, ValueError):
                log.error("malformed outbox record skipped")
        out.sort(key=lambda n: n.created_ms)
        return out
