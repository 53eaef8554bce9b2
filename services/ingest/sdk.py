"""Producer SDK for Python services: ``Recorder().record(...)`` never blocks, never raises.

Events are validated in the caller's thread (cheap, so bad ones are counted at once) and
queued in a bounded buffer. A daemon thread with its own asyncio loop delivers batches to
Kafka (``transport="kafka"``) or to the ingest endpoint (``transport="http"``), retrying with
capped exponential backoff for as long as the buffer holds. Records are dropped only when the
buffer is full (``dropped_full``), when a record is invalid (``dropped_invalid``), or when the
server/broker refuses one for good (``dropped_rejected``). Log lines name fields, never values.

Delivery is at-least-once: a retried batch may arrive twice; the aggregator drops the
second copy by ``event_id`` (services/aggregator/dedup.py).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import random
import threading
import time
import weakref
from collections import deque
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import orjson
from pydantic import ValidationError

from services.ingest.events import (
    DEFAULT_MAX_FIELD_BYTES,
    UsageEventIn,
    to_raw_record,
    validation_errors,
)
from trustlog.settings import KafkaSettings

log = logging.getLogger("trustlog.sdk")

DEFAULT_PRODUCER = "python-sdk"
BACKOFF_START_S = 0.1
BACKOFF_CAP_S = 5.0
INVALID_LOG_INTERVAL_S = 10.0
EXIT_TIMEOUT_S = 5.0
KAFKA_REQUEST_TIMEOUT_MS = 10_000
HTTP_TIMEOUT_S = 30.0


@dataclass
class DeliveryResult:
    """Outcome of one attempt: indices (into the batch) to try again and to give up on."""

    retry: list[int] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)


class Transport(Protocol):
    """Moves validated events somewhere durable. Runs on the Recorder's own event loop.

    ``deliver`` may raise: the whole batch is then retried.
    """

    async def start(self) -> None: ...

    async def deliver(self, batch: Sequence[UsageEventIn]) -> DeliveryResult: ...

    async def close(self) -> None: ...


class KafkaTransport:
    """Straight to the raw topic: Avro single-object records, acks=all, idempotent."""

    def __init__(self, bootstrap: str, topic: str, producer_id: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.producer_id = producer_id
        self._producer: Any = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaProducer

        from services.ingest.app import MAX_BATCH_BYTES, silence_payload_logging

        silence_payload_logging()
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_batch_size=MAX_BATCH_BYTES,
            # room for prompt + reply at the default field cap
            max_request_size=3 * DEFAULT_MAX_FIELD_BYTES,
            request_timeout_ms=KAFKA_REQUEST_TIMEOUT_MS,
            client_id="trustlog-sdk",
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()  # a failed start leaves connections/tasks behind
            raise
        self._producer = producer

    async def deliver(self, batch: Sequence[UsageEventIn]) -> DeliveryResult:
        from aiokafka.errors import MessageSizeTooLargeError

        from trustlog.avro import raw_codec

        if self._producer is None:
            await self.start()
        codec = raw_codec()
        result = DeliveryResult()
        futures: list[tuple[int, asyncio.Future[Any]]] = []
        for i, ev in enumerate(batch):
            try:
                value = codec.encode(to_raw_record(ev, self.producer_id))
            except Exception:  # validation should prevent this; retrying cannot help
                result.rejected.append(i)
                continue
            try:
                futures.append((i, await self._producer.send(self.topic, value=value)))
            except MessageSizeTooLargeError:
                result.rejected.append(i)
            except Exception:
                result.retry.append(i)
        if futures:
            await asyncio.wait([f for _, f in futures])
        for i, f in futures:
            exc = f.exception()
            if exc is None:
                continue
            # Too large for the broker is final; everything else (leader moves, timeouts) is not.
            (result.rejected if isinstance(exc, MessageSizeTooLargeError) else result.retry).append(
                i
            )
        return result

    async def close(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()


def interpret_http_response(status: int, body: bytes, n: int) -> DeliveryResult | None:
    """Map an ingest reply for an ``n``-event batch to a result; None means "split the batch".

    202: all delivered. 422: the listed indices can never succeed, the rest can be resent.
    413 / too_many_events: the server's limits are smaller than ours, so send halves.
    401, 5xx and anything unexpected: retry (a missing key can be added server-side).
    """
    everything = list(range(n))
    if status == 202:
        return DeliveryResult()
    reason = ""
    doc: Any = None
    try:
        doc = orjson.loads(body) if body else None
        if isinstance(doc, dict):
            reason = str(doc.get("error", ""))
    except orjson.JSONDecodeError:
        pass
    if status == 413 or reason == "too_many_events":
        # body_too_large / too_many_events: our batch exceeds the server's limits;
        # event_too_large: one record exceeds Kafka's. Halving finds a size that fits.
        return None if n > 1 else DeliveryResult(rejected=everything)
    if status == 422 and isinstance(doc, dict):
        bad = {
            e["index"]
            for e in doc.get("errors", [])
            if isinstance(e, dict) and isinstance(e.get("index"), int) and 0 <= e["index"] < n
        }
        if bad and not doc.get("errors_truncated"):
            return DeliveryResult(
                retry=[i for i in everything if i not in bad], rejected=sorted(bad)
            )
        return DeliveryResult(rejected=everything)  # cannot tell which: give up on the batch
    if status in (400, 422):
        return DeliveryResult(rejected=everything)
    return DeliveryResult(retry=everything)


class HttpTransport:
    """POST batches to the ingest endpoint; ingest stamps the producer from the API key."""

    def __init__(self, url: str, api_key: str) -> None:
        parts = urlsplit(url)
        if parts.path in ("", "/"):
            url = url.rstrip("/") + "/v1/events"
        self.url = url
        self._headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        self._session: Any = None
        self._warned_auth = False

    async def start(self) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S), raise_for_status=False
        )

    async def deliver(self, batch: Sequence[UsageEventIn]) -> DeliveryResult:
        if self._session is None:
            await self.start()
        body = orjson.dumps({"events": [ev.model_dump(mode="json") for ev in batch]})
        async with self._session.post(self.url, data=body, headers=self._headers) as resp:
            status, reply = resp.status, await resp.read()
        if status == 401 and not self._warned_auth:
            self._warned_auth = True
            log.warning("trustlog ingest refused the api key; retrying", extra={"status": status})
        result = interpret_http_response(status, reply, len(batch))
        if result is not None:
            return result
        half = len(batch) // 2
        first = await self.deliver(batch[:half])
        second = await self.deliver(batch[half:])
        return DeliveryResult(
            retry=first.retry + [half + i for i in second.retry],
            rejected=first.rejected + [half + i for i in second.rejected],
        )

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


class Recorder:
    """Buffered, non-blocking usage recorder. One background thread per Recorder.

    ``bootstrap``/``settings`` (kafka transport): broker and raw topic; default from the
    TRUSTLOG_* settings. ``producer`` is stamped on every record by the kafka transport; with
    ``transport="http"`` ingest stamps the producer bound to ``api_key`` instead.
    ``max_buffer`` bounds queued + in-flight records. Create Recorders after forking: the
    delivery thread does not survive a fork.
    """

    def __init__(
        self,
        bootstrap: str | None = None,
        producer: str = DEFAULT_PRODUCER,
        *,
        transport: Literal["kafka", "http"] = "kafka",
        http_url: str | None = None,
        api_key: str | None = None,
        max_buffer: int = 10_000,
        batch_size: int = 500,
        linger_s: float = 0.05,
        settings: KafkaSettings | None = None,
        max_field_bytes: int = DEFAULT_MAX_FIELD_BYTES,
        exit_timeout_s: float = EXIT_TIMEOUT_S,
        _transport: Transport | None = None,
    ) -> None:
        if max_buffer < 1 or batch_size < 1:
            raise ValueError("max_buffer and batch_size must be >= 1")
        self.producer = producer
        self.max_buffer = max_buffer
        self.batch_size = batch_size
        self.linger_s = max(0.0, linger_s)
        self.exit_timeout_s = exit_timeout_s
        self._ctx = {"max_field_bytes": max_field_bytes}
        self._transport = _transport or self._make_transport(
            transport, bootstrap, producer, http_url, api_key, settings
        )

        self._lock = threading.Lock()
        self._progress = threading.Condition(self._lock)  # notified when records resolve
        self._queue: deque[UsageEventIn] = deque()
        self._pending = 0  # queued + in flight
        self._enqueued = 0  # all accepted by record(), ever
        self._resolved = 0  # delivered + rejected; batches resolve in FIFO order
        self._delivered = 0
        self._dropped_full = 0
        self._dropped_invalid = 0
        self._dropped_rejected = 0
        self._dropped_closed = 0
        self._failed_attempts = 0
        self._flush_waiters = 0
        self._closed = False
        self._last_invalid_log = 0.0
        self._invalid_since_log = 0

        self._loop = asyncio.new_event_loop()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._thread = threading.Thread(
            target=self._thread_main, name=f"trustlog-recorder-{producer}", daemon=True
        )
        self._thread.start()
        ref = weakref.ref(self)
        self._atexit = lambda: _close_at_exit(ref)
        atexit.register(self._atexit)

    @staticmethod
    def _make_transport(
        kind: str,
        bootstrap: str | None,
        producer: str,
        http_url: str | None,
        api_key: str | None,
        settings: KafkaSettings | None,
    ) -> Transport:
        if kind == "http":
            if not http_url or not api_key:
                raise ValueError("transport='http' needs http_url and api_key")
            return HttpTransport(http_url, api_key)
        if kind != "kafka":
            raise ValueError("transport must be 'kafka' or 'http'")
        s = settings or KafkaSettings()
        return KafkaTransport(bootstrap or s.kafka_bootstrap, s.topic_raw, producer)

    # -- caller side: cheap, lock held only for a few field updates -----------------------

    def record(self, **fields: Any) -> bool:
        """Queue one usage event. Returns False (and counts why) if it was not queued."""
        try:
            if self._closed:
                with self._lock:
                    self._dropped_closed += 1
                return False
            try:
                ev = UsageEventIn.model_validate(fields, context=self._ctx)
            except ValidationError as exc:
                self._count_invalid(exc)
                return False
            with self._lock:
                if self._pending >= self.max_buffer:
                    self._dropped_full += 1
                    return False
                self._queue.append(ev)
                self._pending += 1
                self._enqueued += 1
                n = len(self._queue)
            # Wake the worker only on transitions: a self-pipe write per call would cost more
            # than the rest of record() together.
            if n == 1 or n == self.batch_size:
                self._kick()
            return True
        except Exception:  # the caller's work matters more than one usage record
            with self._lock:
                self._dropped_invalid += 1
            return False

    def _count_invalid(self, exc: ValidationError) -> None:
        with self._lock:
            self._dropped_invalid += 1
            self._invalid_since_log += 1
            now = time.monotonic()
            if now - self._last_invalid_log < INVALID_LOG_INTERVAL_S:
                return
            self._last_invalid_log = now
            count, self._invalid_since_log = self._invalid_since_log, 0
        problems = ", ".join(f"{e['field']}:{e['reason']}" for e in validation_errors(exc))
        log.warning(
            "trustlog: dropped %d invalid usage event(s); last: %s",
            count,
            problems,
            extra={"dropped_invalid": count},
        )

    def flush(self, timeout: float = 10.0) -> bool:
        """Deliver everything queued so far; True if all of it was delivered in time."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._lock:
            target = self._enqueued
            rejected_before = self._dropped_rejected
            if self._resolved >= target:
                return True
            self._flush_waiters += 1
        try:
            self._kick()
            with self._lock:
                while self._resolved < target:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not self._thread.is_alive():
                        return False
                    self._progress.wait(remaining)
                return self._dropped_rejected == rejected_before
        finally:
            with self._lock:
                self._flush_waiters -= 1

    def close(self, timeout: float = 10.0) -> bool:
        """Flush (up to ``timeout``), stop the worker and release connections. Idempotent."""
        deadline = time.monotonic() + max(0.0, timeout)
        if self._closed:
            self._thread.join(max(0.0, deadline - time.monotonic()))
            return self._pending_now() == 0
        flushed = self.flush(timeout)
        self._closed = True
        atexit.unregister(self._atexit)
        with contextlib.suppress(RuntimeError):  # loop already gone
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(max(0.1, deadline - time.monotonic()))
        return flushed

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "queued": self._pending,
                "delivered": self._delivered,
                "dropped_full": self._dropped_full,
                "dropped_invalid": self._dropped_invalid,
                "dropped_rejected": self._dropped_rejected,
                "dropped_closed": self._dropped_closed,
                "failed_attempts": self._failed_attempts,
            }

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _pending_now(self) -> int:
        with self._lock:
            return self._pending

    def _kick(self) -> None:
        with contextlib.suppress(RuntimeError):  # loop closed by close()
            self._loop.call_soon_threadsafe(self._wake.set)

    # -- worker side: runs on the Recorder's own loop -------------------------------------

    def _thread_main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._run())
        except Exception as exc:
            log.error("trustlog recorder stopped", extra={"error": type(exc).__name__})
        finally:
            with self._lock:
                self._progress.notify_all()
            self._loop.close()

    def _take(self) -> list[UsageEventIn]:
        with self._lock:
            n = min(self.batch_size, len(self._queue))
            return [self._queue.popleft() for _ in range(n)]

    async def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._wake.clear()
                with self._lock:
                    queued, flushing = len(self._queue), self._flush_waiters > 0
                if queued == 0:
                    await self._wait(self._wake, None)
                    continue
                if queued < self.batch_size and not flushing and self.linger_s > 0:
                    # give the batch a moment to fill; record() wakes us when it is full
                    await self._wait(self._wake, self.linger_s)
                batch = self._take()
                if batch:
                    await self._deliver(batch)
        finally:
            try:
                await asyncio.wait_for(self._transport.close(), 5.0)
            except Exception as exc:
                log.warning("trustlog transport close failed", extra={"error": type(exc).__name__})

    async def _wait(self, event: asyncio.Event, timeout: float | None) -> None:
        """Wait for ``event`` (or stop), at most ``timeout`` seconds."""
        waits = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(self._stop.wait())]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _deliver(self, batch: list[UsageEventIn]) -> None:
        """Deliver ``batch`` fully before taking the next one, so completion stays FIFO."""
        backoff = BACKOFF_START_S
        while batch:
            try:
                outcome = await self._until_stop(self._transport.deliver(batch))
                if outcome is None:
                    return  # closing: close() already waited as long as it was allowed to
                result = outcome
            except Exception as exc:
                log.warning(
                    "trustlog delivery failed; will retry",
                    extra={"error": type(exc).__name__, "events": len(batch)},
                )
                result = DeliveryResult(retry=list(range(len(batch))))
            retry = sorted(set(result.retry))
            rejected = set(result.rejected) - set(retry)
            done = len(batch) - len(retry)
            with self._lock:
                self._delivered += done - len(rejected)
                self._dropped_rejected += len(rejected)
                self._pending -= done
                self._resolved += done
                if retry:
                    self._failed_attempts += 1
                self._progress.notify_all()
            if rejected:
                log.warning("trustlog: events refused for good", extra={"events": len(rejected)})
            batch = [batch[i] for i in retry]
            if batch:
                await self._wait(self._stop, backoff * random.uniform(0.5, 1.0))
                if self._stop.is_set():
                    return
                backoff = min(backoff * 2, BACKOFF_CAP_S)

    async def _until_stop(self, coro: Coroutine[Any, Any, DeliveryResult]) -> DeliveryResult | None:
        """Run one delivery attempt; None if close() stopped waiting for it (it is cancelled)."""
        task = asyncio.ensure_future(coro)
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if not task.done():
            task.cancel()
            return None
        return task.result()


def _close_at_exit(ref: weakref.ref[Recorder]) -> None:
    rec = ref()
    if rec is not None:
        rec.close(rec.exit_timeout_s)


# -- module-level convenience ----------------------------------------------------------------

_default: Recorder | None = None
_default_lock = threading.Lock()


def configure(*args: Any, **kwargs: Any) -> Recorder:
    """Create the default Recorder (closing a previous one). Same arguments as Recorder."""
    global _default
    with _default_lock:
        old, _default = _default, Recorder(*args, **kwargs)
    if old is not None:
        old.close()
    return _default


def get_recorder() -> Recorder:
    """The default Recorder; created from TRUSTLOG_* settings if configure() was not called."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Recorder()
    return _default


def record(**fields: Any) -> bool:
    """``Recorder.record`` on the default Recorder. Never raises."""
    try:
        return get_recorder().record(**fields)
    except Exception:
        return False


def flush(timeout: float = 10.0) -> bool:
    return get_recorder().flush(timeout) if _default is not None else True


def close(timeout: float = 10.0) -> bool:
    global _default
    with _default_lock:
        rec, _default = _default, None
    return rec.close(timeout) if rec is not None else True
