"""The alerts service: signals become deduplicated incidents, stored, published, posted.

Transport is faust: one agent on the signals topic and the incident state in a changelogged
Table keyed by dedup key, so a restart (or a move to another worker) keeps deduplication.
Signals are low-rate, which is where faust's per-message cost is worth its state handling.

Per signal, in this order:
1. ``IncidentBook.apply`` folds it into the incident (Table write, changelogged);
2. the incident version and a history row go to ClickHouse, retried until they land, so an
   incident is never published or posted that the table does not have;
3. the incident is published to the incidents topic, keyed by owner;
4. if the book says so, a Slack message is queued; posting happens off the agent so a slow
   or rate-limiting Slack never holds up incident processing.

faust is at-least-once: a signal replayed after a crash is recognised by its id
(action "duplicate") and only re-synchronises the incident row (same version, so the
ReplacingMergeTree keeps one) and the topic; it adds no history row and no notification.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import faust
from aiohttp import web
from mode import Service

from services.alerts.incidents import IncidentBook, IncidentUpdate
from services.alerts.routing import Routing
from services.alerts.slack import SlackNotifier
from trustlog.avro import DecodeError, incident_codec, signal_codec
from trustlog.kafka import ensure_topics
from trustlog.runtime import (
    Health,
    Metrics,
    services_state_dir,
    setup_logging,
    start_health_server,
)
from trustlog.settings import AlertsSettings, default_state_dir
from trustlog.storage import admin_client

SERVICE = "alerts"
APP_ID = "trustlog-alerts"
STATE_TABLE = "incident_state"
ACTOR = "trustlog-alerts"

log = logging.getLogger("trustlog.alerts")

INCIDENT_COLUMNS = [
    "incident_id",
    "dedup_key",
    "rule",
    "category",
    "severity",
    "state",
    "team",
    "tool",
    "owner",
    "channel",
    "signal_count",
    "first_seen",
    "last_seen",
    "summary",
    "user_pseudonym",
    "evidence",
    "version",
    "updated_at",
]
HISTORY_COLUMNS = ["incident_id", "at", "action", "actor", "reason", "state", "signal_count"]


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def incident_row(update: IncidentUpdate, now: datetime) -> list[Any]:
    i = update.incident
    return [
        i["incident_id"],
        i["dedup_key"],
        i["rule"],
        i["category"],
        i["severity"],
        i["state"],
        i["team"],
        i["tool"],
        i["owner"],
        i["channel"],
        i["signal_count"],
        _dt(i["first_seen"]),
        _dt(i["last_seen"]),
        i["summary"],
        i["user_pseudonym"],
        dict(i["evidence"]),
        update.version,
        now,
    ]


def history_row(update: IncidentUpdate, now: datetime, reason: str) -> list[Any]:
    i = update.incident
    return [i["incident_id"], now, update.action, ACTOR, reason, i["state"], i["signal_count"]]


class IncidentStore:
    """ClickHouse writes for incidents. Blocking: call from one executor thread only."""

    def __init__(self, settings: AlertsSettings, client_factory: Callable[[], Any] | None = None):
        self.settings = settings
        self._factory = client_factory or (lambda: admin_client(settings))
        self._client: Any = None

    def _get(self) -> Any:
        if self._client is None:
            self._client = self._factory()
        return self._client

    def ping(self) -> bool:
        return bool(self._get().ping())

    def write(self, update: IncidentUpdate, reason: str | None) -> None:
        """Incident version, then (unless ``reason`` is None) its history row."""
        now = datetime.now(tz=UTC)
        db = self.settings.ch_database
        try:
            client = self._get()
            client.insert(
                "incidents",
                [incident_row(update, now)],
                column_names=INCIDENT_COLUMNS,
                database=db,
            )
            if reason is not None:
                client.insert(
                    "incident_history",
                    [history_row(update, now, reason)],
                    column_names=HISTORY_COLUMNS,
                    database=db,
                )
        except Exception:
            self.close()  # a fresh client next time, in case the connection went bad
            raise

    def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
        self._client = None


Publish = Callable[[bytes, bytes], Awaitable[Any]]


class AlertsPipeline:
    """What happens to one signal. Knows nothing of faust, so tests can drive it directly."""

    def __init__(
        self,
        book: IncidentBook,
        store: IncidentStore,
        publish: Publish,
        notifier: SlackNotifier,
        health: Health,
        metrics: Metrics,
        executor: ThreadPoolExecutor | None = None,
        max_backoff: float = 30.0,
    ) -> None:
        self.book = book
        self.store = store
        self.publish = publish
        self.notifier = notifier
        self.health = health
        self.executor = executor or ThreadPoolExecutor(1, thread_name_prefix="alerts-ch")
        self.max_backoff = max_backoff
        self._signals = metrics.counter("signals_total", "Signals consumed, by result", ("result",))
        self._incidents = metrics.counter(
            "incident_updates_total", "Incident updates, by action", ("action",)
        )
        self._write_s = metrics.histogram("clickhouse_write_seconds", "Incident write latency")

    async def handle(self, raw: bytes | None) -> IncidentUpdate | None:
        """Process one signal message. Never raises for bad input: it logs and skips."""
        try:
            if not raw:
                raise DecodeError("empty_message")
            signal = signal_codec().decode(raw)
        except DecodeError as exc:
            # By reason only: the bytes are not ours to log.
            self._signals.labels("undecodable").inc()
            log.warning("undecodable signal skipped", extra={"reason": exc.reason})
            return None
        try:
            update = self.book.apply(signal)
        except Exception as exc:
            self._signals.labels("invalid").inc()
            log.error(
                "signal could not be applied",
                extra={"exc_type": type(exc).__name__, "rule": signal.get("rule")},
            )
            return None
        self._signals.labels(update.action).inc()
        self._incidents.labels(update.action).inc()

        reason = None if update.action == "duplicate" else f"signal {signal.get('signal_id', '')}"
        await self._write(update, reason)
        incident = update.incident
        try:
            await self.publish(incident["owner"].encode(), incident_codec().encode(incident))
        except Exception as exc:
            log.error(
                "incident publish failed",
                extra={"incident_id": incident["incident_id"], "exc_type": type(exc).__name__},
            )
        if update.notify:
            self.notifier.submit(incident)
        return update

    async def _write(self, update: IncidentUpdate, reason: str | None) -> None:
        # Retried until it lands: skipping would lose the incident from the table, and faust
        # acks a message whose handler raised. Backpressure is the honest answer to an outage.
        loop = asyncio.get_running_loop()
        delay = 0.5
        while True:
            t0 = time.perf_counter()
            try:
                await loop.run_in_executor(self.executor, self.store.write, update, reason)
            except Exception as exc:
                self.health.set("clickhouse", False, type(exc).__name__)
                log.warning(
                    "clickhouse write failed, retrying",
                    extra={
                        "incident_id": update.incident["incident_id"],
                        "exc_type": type(exc).__name__,
                        "retry_in_s": delay,
                    },
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
                continue
            self._write_s.observe(time.perf_counter() - t0)
            self.health.set("clickhouse", True)
            return


class AlertsRuntime(Service):
    """Everything around the faust app: topics, health server, Slack sender, clean stop.

    Started by the worker before the app and stopped after it (mode stops children in
    reverse order), so the agent is gone before the Slack session and ClickHouse close.
    """

    def __init__(self, service: AlertsService, **kw: Any) -> None:
        super().__init__(**kw)
        self.svc = service
        self._runner: web.AppRunner | None = None
        self._side_tasks: list[asyncio.Future[None]] = []

    async def on_start(self) -> None:
        s, svc = self.svc.settings, self.svc
        self._runner = await start_health_server(SERVICE, s, svc.health, svc.metrics)
        (services_state_dir() / f"{SERVICE}.pid").write_text(f"{os.getpid()}\n")
        try:
            await ensure_topics(s)
        except Exception as exc:
            # Topics are normally there already (the stack or a deploy step made them);
            # failing to re-apply retention is no reason to stop alerting.
            log.warning("ensure_topics failed", extra={"exc_type": type(exc).__name__})
        await self._probe_clickhouse()
        svc.health.set("consumer", False, "starting")
        self._side_tasks = [
            asyncio.ensure_future(svc.notifier.run()),
            asyncio.ensure_future(self._reprobe_clickhouse()),
        ]
        log.info(
            "alerts starting",
            extra={"slack": svc.notifier.enabled, "cooldown_s": s.cooldown_seconds},
        )

    async def _probe_clickhouse(self) -> None:
        svc = self.svc
        try:
            loop = asyncio.get_running_loop()
            ok = await loop.run_in_executor(svc.pipeline.executor, svc.store.ping)
            svc.health.set("clickhouse", ok)
        except Exception as exc:
            # Not fatal: writes retry until ClickHouse is back; health says why meanwhile.
            svc.health.set("clickhouse", False, type(exc).__name__)

    async def _reprobe_clickhouse(self, interval: float = 10.0) -> None:
        # Writes update the check, but with no signals arriving a failed start-up probe
        # would keep /healthz red after ClickHouse came back.
        while True:
            await asyncio.sleep(interval)
            if not self.svc.health.as_dict()["checks"]["clickhouse"]["ok"]:
                await self._probe_clickhouse()

    async def on_stop(self) -> None:
        svc = self.svc
        svc.health.set("consumer", False, "stopping")
        for task in self._side_tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await svc.notifier.drain(timeout=5.0)
        await svc.notifier.close()
        await asyncio.get_running_loop().run_in_executor(svc.pipeline.executor, svc.store.close)
        svc.pipeline.executor.shutdown(wait=False)
        if self._runner is not None:
            await self._runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            (services_state_dir() / f"{SERVICE}.health").unlink()
        log.info("alerts stopped", extra={"slack_pending": len(svc.notifier.pending)})


class AlertsService:
    """Builds the faust app, its table and agent, and the pieces they call."""

    def __init__(
        self,
        settings: AlertsSettings | None = None,
        *,
        store: IncidentStore | None = None,
        notifier: SlackNotifier | None = None,
    ) -> None:
        self.settings = s = settings or AlertsSettings()
        self.health = Health()
        self.metrics = Metrics(SERVICE)
        self.routing = Routing.load(s.routing_file)
        self.store = store or IncidentStore(s)
        self.notifier = notifier or SlackNotifier(s.slack_webhook_url, metrics=self.metrics)
        datadir = s.faust_data_dir or (default_state_dir() / "faust" / SERVICE)
        Path(datadir).mkdir(parents=True, exist_ok=True)

        self.app = faust.App(
            APP_ID,
            broker=f"kafka://{s.kafka_bootstrap}",
            store="memory://",  # state is small; the changelog topic is the durable copy
            datadir=str(datadir),
            web_enabled=False,  # /healthz and /metrics come from trustlog.runtime
            # The signals topic has one partition (trustlog.kafka.topic_specs); the table's
            # changelog must match it.
            topic_partitions=1,
            key_serializer="raw",
            value_serializer="raw",
            consumer_auto_offset_reset="earliest",
            stream_recovery_delay=0.5,
            broker_session_timeout=10.0,
            broker_heartbeat_interval=1.0,
            producer_acks=-1,
        )
        self.table = self.app.Table(
            STATE_TABLE,
            default=None,
            partitions=1,
            # JSON both ways: with the raw codec a str key would come back as bytes after
            # recovery and no longer match, silently breaking dedup across restarts.
            schema=faust.Schema(key_serializer="json", value_serializer="json"),
            help="Incident state by dedup key",
        )
        self.book = IncidentBook(
            self.routing, s.cooldown_seconds, cast(MutableMapping[str, Any], self.table)
        )
        signals = self.app.topic(s.topic_signals, key_serializer="raw", value_serializer="raw")
        incidents = self.app.topic(s.topic_incidents, key_serializer="raw", value_serializer="raw")

        async def publish(key: bytes, value: bytes) -> Any:
            return await incidents.send(key=key, value=value)

        self.pipeline = AlertsPipeline(
            self.book, self.store, publish, self.notifier, self.health, self.metrics
        )
        self.runtime = AlertsRuntime(self)

        async def on_rebalanced(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
            self.health.set("consumer", True, "assigned")

        self.app.on_rebalance_complete.connect(on_rebalanced)

        # One at a time: the table read-modify-write per key must not interleave.
        @self.app.agent(signals, concurrency=1, name="alerts.signals")
        async def process_signals(stream: faust.StreamT[bytes]) -> None:
            async for value in stream:
                try:
                    await self.pipeline.handle(value)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # A bug here must not kill the agent (faust would ack and move on
                    # anyway); log the type, keep consuming.
                    log.error("signal handling failed", extra={"exc_type": type(exc).__name__})

        self.agent = process_signals

    def worker(self) -> faust.Worker:
        worker = faust.Worker(
            self.app,
            self.runtime,
            # Our JSON logging is already set up: stop mode from replacing the root handler
            # and from redirecting stdout into the log.
            override_logging=False,
            redirect_stdouts=False,
            quiet=True,
        )
        worker.spinner = None  # a terminal spinner writes to stdout; logs are the interface
        return worker


def main() -> None:
    settings = AlertsSettings()
    setup_logging(SERVICE, settings.log_level, settings.log_json)
    worker = AlertsService(settings).worker()
    # Runs the loop until SIGTERM/SIGINT (mode installs both handlers), stops the services
    # in order, and exits with status 0 on a clean stop.
    worker.execute_from_commandline()
