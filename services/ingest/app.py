"""HTTP ingest: authenticated batches of usage events -> the raw Kafka topic.

A 202 means every record of the batch was acknowledged by all in-sync replicas, so clients
can drop their copy. Nothing here logs or echoes request bodies: errors name fields and
reasons, never values (the raw topic is the only place content may travel before the
redactor).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Awaitable, Sequence
from typing import Any, Protocol

import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError
from pydantic import ValidationError

from services.ingest.events import UsageEventIn, to_raw_record, validation_errors
from trustlog.avro import raw_codec
from trustlog.kafka import ensure_topics
from trustlog.runtime import Health, Metrics, run_service
from trustlog.settings import IngestSettings, KafkaSettings

log = logging.getLogger("ingest")

# Bound on how long a request waits for Kafka before answering 503 (the client retries).
PUBLISH_TIMEOUT_S = 15.0
# 422 responses list at most this many errors; a 1000-event batch with a systematic bug
# would otherwise produce a huge reply.
MAX_REPORTED_ERRORS = 100
# Avro framing and the Kafka record header add a little to the JSON-sized payload.
RECORD_OVERHEAD_BYTES = 64 * 1024
# Kafka's default per-batch limit is ~1 MiB; stay under it so batching never causes rejects.
MAX_BATCH_BYTES = 512 * 1024

SETTINGS_KEY = web.AppKey("settings", IngestSettings)
PRODUCER_KEY: web.AppKey[Any] = web.AppKey("producer")
HEALTH_KEY = web.AppKey("health", Health)
METRICS_KEY = web.AppKey("metrics", Metrics)


class Producer(Protocol):
    """The slice of AIOKafkaProducer ingest uses (tests pass a fake)."""

    def send(
        self, topic: str, value: bytes | None = ..., key: bytes | None = ...
    ) -> Awaitable[asyncio.Future[Any]]: ...


class _SendContentFilter(logging.Filter):
    """aiokafka logs every record value at DEBUG ("Sending (key=... value=...)"): raw content."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Sending (key=")


def silence_payload_logging() -> None:
    lg = logging.getLogger("aiokafka.producer.producer")
    if not any(isinstance(f, _SendContentFilter) for f in lg.filters):
        lg.addFilter(_SendContentFilter())


def make_producer(settings: KafkaSettings, max_request_bytes: int) -> AIOKafkaProducer:
    silence_payload_logging()
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=MAX_BATCH_BYTES,
        max_request_size=max_request_bytes + RECORD_OVERHEAD_BYTES,
        request_timeout_ms=int(PUBLISH_TIMEOUT_S * 1000),
        client_id="trustlog-ingest",
    )


def _error(status: int, reason: str, **extra: Any) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps({"error": reason, **extra}),
        content_type="application/json",
    )


def _consume_exception(fut: asyncio.Future[Any]) -> None:
    # Futures abandoned after a timeout may fail later; retrieve so asyncio does not warn.
    if not fut.cancelled():
        fut.exception()


class _Ingest:
    def __init__(
        self, settings: IngestSettings, producer: Producer, health: Health, metrics: Metrics
    ) -> None:
        self.settings = settings
        self.producer = producer
        self.health = health
        self.codec = raw_codec()
        self.keys = [(k.encode(), v) for k, v in settings.api_keys.items()]
        self.ctx = {"max_field_bytes": settings.max_field_bytes}
        self.accepted = metrics.counter("events_accepted", "Events acknowledged by Kafka")
        self.rejected = metrics.counter(
            "requests_rejected", "Requests refused, by reason", ("reason",)
        )
        self.rejected_events = metrics.counter(
            "events_rejected",
            "Events in refused requests (when countable), by reason",
            ("reason",),
        )
        self.publish_latency = metrics.histogram(
            "publish_seconds",
            "Time from first send to the last Kafka acknowledgement of a batch",
            (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0),
        )

    def _producer_for(self, request: web.Request) -> str | web.Response:
        auth = request.headers.get("Authorization", "")
        scheme, _, key = auth.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            return self._reject(401, "missing_api_key")
        given = key.encode()
        found: str | None = None
        for known, producer in self.keys:  # constant-time compare against every key
            if hmac.compare_digest(given, known):
                found = producer
        if found is None:
            return self._reject(401, "unknown_api_key")
        return found

    def _reject(self, status: int, reason: str, events: int = 0, **extra: Any) -> web.Response:
        self.rejected.labels(reason).inc()
        if events:
            self.rejected_events.labels(reason).inc(events)
        return _error(status, reason, **extra)

    async def _read_body(self, request: web.Request) -> bytes | None:
        """The body, or None once it passes max_body_bytes (checked while streaming)."""
        limit = self.settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return None
        buf = bytearray()
        async for chunk in request.content.iter_any():
            buf += chunk
            if len(buf) > limit:
                return None
        return bytes(buf)

    async def post_events(self, request: web.Request) -> web.Response:
        producer_id = self._producer_for(request)
        if isinstance(producer_id, web.Response):
            return producer_id
        body = await self._read_body(request)
        if body is None:
            return self._reject(413, "body_too_large", max_body_bytes=self.settings.max_body_bytes)
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return self._reject(400, "invalid_json")
        if isinstance(doc, dict) and set(doc) == {"events"}:
            doc = doc["events"]
        if not isinstance(doc, list):
            return self._reject(400, "invalid_body")
        if not doc:
            return self._reject(400, "empty_batch")
        if len(doc) > self.settings.max_batch_events:
            return self._reject(
                400, "too_many_events", len(doc), max_batch_events=self.settings.max_batch_events
            )

        values, event_ids, errors = self._validate(doc, producer_id)
        if errors:
            log.info(
                "rejected batch",
                extra={"producer": producer_id, "events": len(doc), "errors": len(errors)},
            )
            return self._reject(
                422,
                "invalid_events",
                len(doc),
                errors=errors[:MAX_REPORTED_ERRORS],
                errors_truncated=len(errors) > MAX_REPORTED_ERRORS,
            )

        t0 = time.perf_counter()
        try:
            await self._publish(values)
        except MessageSizeTooLargeError:
            # Retrying cannot help: the broker's record limit is below this event's size.
            log.warning("record too large for Kafka", extra={"producer": producer_id})
            return self._reject(413, "event_too_large", len(doc))
        except Exception as exc:
            self.health.set("kafka", False, type(exc).__name__)
            log.warning(
                "publish failed",
                extra={"producer": producer_id, "events": len(doc), "error": type(exc).__name__},
            )
            resp = self._reject(503, "kafka_unavailable", len(doc))
            resp.headers["Retry-After"] = "1"
            return resp
        self.publish_latency.observe(time.perf_counter() - t0)
        self.health.set("kafka", True)
        self.accepted.inc(len(values))
        return web.Response(
            status=202,
            body=orjson.dumps({"accepted": len(values), "event_ids": event_ids}),
            content_type="application/json",
        )

    def _validate(
        self, doc: list[Any], producer_id: str
    ) -> tuple[list[bytes], list[str], list[dict[str, Any]]]:
        values: list[bytes] = []
        event_ids: list[str] = []
        errors: list[dict[str, Any]] = []
        for i, item in enumerate(doc):
            try:
                ev = UsageEventIn.model_validate(item, context=self.ctx)
            except ValidationError as exc:
                errors.extend(validation_errors(exc, i))
                continue
            if errors:
                continue  # the batch is refused anyway; only collect errors
            try:
                values.append(self.codec.encode(to_raw_record(ev, producer_id)))
            except Exception:  # validation should make this impossible; never 500 on it
                errors.append({"index": i, "field": None, "reason": "unencodable"})
                continue
            event_ids.append(ev.event_id)
        return values, event_ids, errors

    async def _publish(self, values: Sequence[bytes]) -> None:
        """Send every record and wait for all acknowledgements (raises on the first failure)."""
        topic = self.settings.topic_raw
        futures: list[asyncio.Future[Any]] = []
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                for v in values:
                    futures.append(await self.producer.send(topic, value=v, key=None))
                # asyncio.wait, unlike gather, never cancels the producer's own futures.
                await asyncio.wait(futures)
        finally:
            for f in futures:
                if not f.done():
                    f.add_done_callback(_consume_exception)
        for f in futures:
            f.result()

    async def healthz(self, _: web.Request) -> web.Response:
        return web.Response(
            status=200 if self.health.ok else 503,
            body=orjson.dumps(self.health.as_dict()),
            content_type="application/json",
        )


async def create_app(
    settings: IngestSettings,
    producer: Producer,
    *,
    health: Health | None = None,
    metrics: Metrics | None = None,
) -> web.Application:
    """The ingest application publishing through ``producer`` (already started)."""
    health = health or Health()
    metrics = metrics or Metrics("ingest")
    health.set("kafka", True)
    ingest = _Ingest(settings, producer, health, metrics)
    # Bodies are streamed and capped by _read_body; client_max_size only guards request.read().
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[SETTINGS_KEY] = settings
    app[PRODUCER_KEY] = producer
    app[HEALTH_KEY] = health
    app[METRICS_KEY] = metrics
    app.router.add_post("/v1/events", ingest.post_events)
    app.router.add_get("/healthz", ingest.healthz)
    return app


async def serve(
    settings: IngestSettings, stop: asyncio.Event, health: Health, metrics: Metrics
) -> None:
    """Run until ``stop`` is set; then stop accepting, finish in-flight requests, flush."""
    if not settings.api_keys:
        log.warning("no api keys configured: every request will be refused")
    await ensure_topics(settings)
    producer = make_producer(settings, settings.max_body_bytes)
    await producer.start()
    runner: web.AppRunner | None = None
    try:
        app = await create_app(settings, producer, health=health, metrics=metrics)
        # No access log: it is not content, but it is per-request noise with client addresses.
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=20)
        await runner.setup()
        site = web.TCPSite(runner, settings.http_host, settings.http_port)
        await site.start()
        health.set("http", True)
        log.info("ingest listening", extra={"http_port": runner.addresses[0][1]})
        await stop.wait()
        health.set("http", False, "stopping")
    finally:
        if runner is not None:
            await runner.cleanup()  # waits for in-flight handlers, which await their acks
        with contextlib.suppress(Exception):
            await producer.flush()
        await producer.stop()


def main() -> None:
    settings = IngestSettings()

    async def _main(stop: asyncio.Event, health: Health, metrics: Metrics) -> None:
        await serve(settings, stop, health, metrics)

    asyncio.run(run_service("ingest", settings, _main))
