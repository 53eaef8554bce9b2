"""The alerts service: signals become incidents with a lifecycle, stored, published, posted.

Transport is faust: one agent reads the signals topic and the incident-commands topic, and
keeps incident state in a changelogged Table keyed by dedup key, so a restart (or a move
to another worker) keeps deduplication and lifecycle. Being the one consumer of both topics
makes the agent the single writer of incident state: a CLI acknowledgement and a signal for
the same incident are applied one after the other, never interleaved.

The agent takes messages in batches (``signal_batch_max``, waiting at most
``signal_batch_wait_seconds``). Per batch, in this order:
1. :class:`IncidentBook` folds signals and applies commands (in memory, a write-back cache
   over the Table), each command through the lifecycle state machine;
2. the latest version of every touched incident, the history rows (state changes: who,
   when, why) and the command outcomes go to ClickHouse in one insert per table, retried
   until they land, so nothing is published or posted that the table does not have;
3. notifications go to the durable Slack outbox (then to the sender, off the agent);
4. the cache is written to the Table (one changelog record per key, not per signal);
5. the latest version of every touched incident is published, keyed by owner.
A flood of ten thousand signals for one incident therefore costs a handful of inserts and
changelog records, not ten thousand.

faust is at-least-once: a signal or command replayed after a crash is recognised by its id
(action "duplicate") and only re-synchronises the incident row and topic. A crash between
steps 3 and 4 replays the batch with the same notification ids (compaction keeps one).

Next to the agent (:class:`AlertsRuntime`): the HTTP port (health, metrics, incidents API),
the Slack sender, the escalation timer (publishes escalate commands for incidents left
unacknowledged past their deadline) and the unapproved-tool check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any, cast

import faust
from aiohttp import web
from aiokafka import AIOKafkaProducer
from mode import Service

from services.alerts.api import CommandWaiters, IncidentApi, build_app
from services.alerts.approved_tools import (
    ApprovedTools,
    ToolUsage,
    UnapprovedToolWatch,
    usage_query,
)
from services.alerts.commands import IncidentQueries, command_codec, publish_command
from services.alerts.incidents import BatchStore, CommandResult, IncidentBook, IncidentUpdate
from services.alerts.outbox import KafkaOutbox
from services.alerts.routing import Routing
from services.alerts.slack import Notification, SlackNotifier, build_message
from trustlog.avro import DecodeError, incident_codec, signal_codec
from trustlog.kafka import ensure_topics
from trustlog.runtime import (
    Health,
    Metrics,
    instance_name,
    serve_app,
    services_state_dir,
    setup_logging,
)
from trustlog.settings import AlertsSettings, default_state_dir
from trustlog.storage import admin_client

SERVICE = "alerts"
APP_ID = "trustlog-alerts"
STATE_TABLE = "incident_state"

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
    "primary_owner",
    "opened_at",
    "escalated_at",
    "acknowledged_by",
    "acknowledged_at",
    "resolved_by",
    "resolved_at",
    "reopen_count",
]
HISTORY_COLUMNS = [
    "incident_id",
    "at",
    "action",
    "actor",
    "reason",
    "state",
    "signal_count",
    "from_state",
    "owner",
    "command_id",
    "version",
]
COMMAND_COLUMNS = [
    "command_id",
    "incident_id",
    "action",
    "actor",
    "reason",
    "source",
    "requested_at",
    "processed_at",
    "outcome",
    "detail",
]


def _dt(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC)


def incident_row(update: IncidentUpdate, now: datetime) -> list[Any]:
    i, lc = update.incident, update.lifecycle
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
        lc["primary_owner"],
        _dt(lc["opened_at_ms"]),
        _dt(lc["escalated_at_ms"]),
        lc["acknowledged_by"],
        _dt(lc["acknowledged_at_ms"]),
        lc["resolved_by"],
        _dt(lc["resolved_at_ms"]),
        lc["reopen_count"],
    ]


def history_row(update: IncidentUpdate, at: datetime) -> list[Any]:
    i, h = update.incident, update.history
    assert h is not None
    return [
        i["incident_id"],
        at,
        h.action,
        h.actor,
        h.reason,
        i["state"],
        i["signal_count"],
        h.from_state,
        i["owner"],
        h.command_id,
        update.version,
    ]


def command_row(cmd: dict[str, Any], result: CommandResult, at: datetime) -> list[Any]:
    return [
        result.command_id,
        result.incident_id,
        result.action,
        str(cmd.get("actor") or ""),
        str(cmd.get("reason") or ""),
        str(cmd.get("source") or ""),
        _dt(_ms(cmd.get("requested_at"))),
        at,
        result.outcome,
        result.detail,
    ]


def _ms(v: Any) -> int:
    if isinstance(v, datetime):
        return int(v.timestamp() * 1000)
    return int(v or 0)


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

    def write(
        self,
        incidents: list[list[Any]],
        history: list[list[Any]],
        commands: list[list[Any]],
    ) -> None:
        """Incident versions first, then their history and command outcomes."""
        db = self.settings.ch_database
        try:
            client = self._get()
            for table, rows, cols in (
                ("incidents", incidents, INCIDENT_COLUMNS),
                ("incident_history", history, HISTORY_COLUMNS),
                ("incident_commands", commands, COMMAND_COLUMNS),
            ):
                if rows:
                    client.insert(table, rows, column_names=cols, database=db)
        except Exception:
            self.close()  # a fresh client next time, in case the connection went bad
            raise

    def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
        self._client = None


class SideProducer:
    """The service's own producer (outbox, commands, unapproved-tool signals).

    Started in the running loop (aiokafka binds to it), i.e. by the runtime, not in
    ``__init__``; acks=all and idempotent, so a send that returned is on the broker.
    """

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True
        )
        await self._producer.start()

    async def send_and_wait(
        self, topic: str, value: bytes | None = None, key: bytes | None = None
    ) -> Any:
        if self._producer is None:
            raise RuntimeError("producer not started")
        return await self._producer.send_and_wait(topic, value=value, key=key)

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
        self._producer = None


Publish = Callable[[bytes, bytes], Awaitable[Any]]
SIGNAL, COMMAND = "signal", "command"


class AlertsPipeline:
    """What happens to one batch of messages. Knows nothing of faust, so tests drive it."""

    def __init__(
        self,
        book: IncidentBook,
        store: IncidentStore,
        publish: Publish,
        notifier: SlackNotifier,
        health: Health,
        metrics: Metrics,
        *,
        routing: Routing | None = None,
        executor: ThreadPoolExecutor | None = None,
        max_backoff: float = 30.0,
        link_template: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.book = book
        self.store = store
        self.publish = publish
        self.notifier = notifier
        self.health = health
        self.routing = routing or book.routing
        self.executor = executor or ThreadPoolExecutor(1, thread_name_prefix="alerts-ch")
        self.max_backoff = max_backoff
        self.link_template = link_template
        self.clock = clock
        self._signals = metrics.counter("signals_total", "Signals consumed, by result", ("result",))
        self._incidents = metrics.counter(
            "incident_updates_total", "Incident updates, by action", ("action",)
        )
        self._commands = metrics.counter(
            "commands_total", "Lifecycle commands, by action and outcome", ("action", "outcome")
        )
        self._notifications = metrics.counter(
            "notifications_total", "Notifications queued for Slack, by kind", ("kind",)
        )
        self._write_s = metrics.histogram("clickhouse_write_seconds", "Incident batch write")
        self._batch = metrics.histogram(
            "batch_messages", "Messages per agent batch", buckets=(1, 10, 100, 1000, 10000)
        )

    async def handle(self, raw: bytes | None) -> list[IncidentUpdate]:
        """One signal message (tests and tools); the agent uses :meth:`handle_batch`."""
        updates, _ = await self.handle_batch([(SIGNAL, raw)])
        return updates

    async def handle_batch(
        self, messages: Iterable[tuple[str, bytes | None]]
    ) -> tuple[list[IncidentUpdate], list[CommandResult]]:
        """Process a batch. Never raises for bad input: it logs and skips the message."""
        now_ms = int(self.clock() * 1000)
        updates: list[IncidentUpdate] = []
        results: list[tuple[dict[str, Any], CommandResult]] = []
        n = 0
        for kind, raw in messages:
            n += 1
            if kind == COMMAND:
                done = self._command(raw, now_ms)
                if done is not None:
                    results.append(done)
                    if done[1].update is not None:
                        updates.append(done[1].update)
            else:
                updates.extend(self._signal(raw, now_ms))
        self._batch.observe(n)
        if not updates and not results:
            return [], []

        now = datetime.now(tz=UTC)
        latest: dict[str, IncidentUpdate] = {}
        for u in updates:
            prev = latest.get(u.incident["incident_id"])
            if prev is None or u.version >= prev.version:
                latest[u.incident["incident_id"]] = u
        incident_rows = [incident_row(u, now) for u in latest.values()]
        history_rows = [history_row(u, now) for u in updates if u.history is not None]
        command_rows = [command_row(c, r, now) for c, r in results if r.outcome != "duplicate"]
        await self._retry(
            "clickhouse",
            lambda: self._write(incident_rows, history_rows, command_rows),
            f"{len(incident_rows)} incidents",
        )

        for u in updates:
            if u.notify is not None and u.notification_id is not None:
                note = self._notification(u, now_ms)
                await self._retry("outbox", partial(self.notifier.submit, note), note.id)
                self._notifications.labels(u.notify).inc()

        if isinstance(self.book.store, BatchStore):
            self.book.store.flush()

        codec = incident_codec()
        for u in latest.values():
            incident = u.incident
            try:
                await self.publish(incident["owner"].encode(), codec.encode(incident))
            except Exception as exc:
                log.error(
                    "incident publish failed",
                    extra={"incident_id": incident["incident_id"], "exc_type": type(exc).__name__},
                )
        return updates, [r for _, r in results]

    def _signal(self, raw: bytes | None, now_ms: int) -> list[IncidentUpdate]:
        try:
            if not raw:
                raise DecodeError("empty_message")
            signal = signal_codec().decode(raw)
        except DecodeError as exc:
            # By reason only: the bytes are not ours to log.
            self._signals.labels("undecodable").inc()
            log.warning("undecodable signal skipped", extra={"reason": exc.reason})
            return []
        try:
            updates = self.book.apply(signal, now_ms)
        except Exception as exc:
            self._signals.labels("invalid").inc()
            log.error(
                "signal could not be applied",
                extra={"exc_type": type(exc).__name__, "rule": signal.get("rule")},
            )
            return []
        for u in updates:
            self._signals.labels(u.action).inc()
            self._incidents.labels(u.action).inc()
        return updates

    def _command(
        self, raw: bytes | None, now_ms: int
    ) -> tuple[dict[str, Any], CommandResult] | None:
        try:
            if not raw:
                raise DecodeError("empty_message")
            cmd = command_codec().decode(raw)
        except DecodeError as exc:
            self._commands.labels("", "undecodable").inc()
            log.warning("undecodable command skipped", extra={"reason": exc.reason})
            return None
        try:
            result = self.book.command(cmd, now_ms)
        except Exception as exc:
            self._commands.labels(str(cmd.get("action")), "invalid").inc()
            log.error("command could not be applied", extra={"exc_type": type(exc).__name__})
            return None
        self._commands.labels(result.action, result.outcome).inc()
        if result.update is not None:
            self._incidents.labels(result.update.action).inc()
        # Actor and outcome, not the reason: that is the actor's free text.
        log.info(
            "incident command",
            extra={
                "incident_id": result.incident_id,
                "action": result.action,
                "outcome": result.outcome,
                "detail": result.detail,
            },
        )
        return cmd, result

    def _notification(self, u: IncidentUpdate, now_ms: int) -> Notification:
        incident = u.incident
        assert u.notify is not None and u.notification_id is not None
        note = u.history.reason if u.notify == "escalated" and u.history is not None else None
        link = (
            self.link_template.format(incident_id=incident["incident_id"])
            if self.link_template
            else None
        )
        payload = build_message(
            incident,
            kind=u.notify,
            show_pseudonym=self.routing.shows_pseudonym(incident["category"], incident["channel"]),
            note=note,
            link=link,
        )
        return Notification(
            u.notification_id,
            incident["incident_id"],
            incident["channel"],
            u.notify,
            payload,
            now_ms,
        )

    async def _write(
        self, incidents: list[list[Any]], history: list[list[Any]], commands: list[list[Any]]
    ) -> None:
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        await loop.run_in_executor(self.executor, self.store.write, incidents, history, commands)
        self._write_s.observe(time.perf_counter() - t0)

    async def _retry(self, what: str, op: Callable[[], Awaitable[Any]], ref: str) -> None:
        # Retried until it lands: skipping would lose an incident version, a history row or a
        # notification, and faust acks a batch whose handler gave up. Backpressure is the
        # honest answer to an outage.
        delay = 0.5
        while True:
            try:
                await op()
            except Exception as exc:
                self.health.set(what, False, type(exc).__name__)
                log.warning(
                    f"{what} write failed, retrying",
                    extra={"ref": ref, "exc_type": type(exc).__name__, "retry_in_s": delay},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
                continue
            self.health.set(what, True)
            return


class AlertsRuntime(Service):
    """Everything around the faust app: topics, HTTP port, Slack sender, timers, clean stop.

    Started by the worker before the app and stopped after it (mode stops children in
    reverse order), so the agent is gone before the Slack sender drains and things close.
    """

    def __init__(self, service: AlertsService, **kw: Any) -> None:
        super().__init__(**kw)
        self.svc = service
        self._runner: web.AppRunner | None = None
        self._side_tasks: list[asyncio.Future[None]] = []

    async def on_start(self) -> None:
        s, svc = self.svc.settings, self.svc
        self._runner = await serve_app(SERVICE, s, svc.http_app())
        (services_state_dir() / f"{instance_name(SERVICE)}.pid").write_text(f"{os.getpid()}\n")
        try:
            await ensure_topics(s)
        except Exception as exc:
            # Topics are normally there already (the stack or a deploy step made them);
            # failing to re-apply retention is no reason to stop alerting.
            log.warning("ensure_topics failed", extra={"exc_type": type(exc).__name__})
        await svc.producer.start()
        if svc.notifier.enabled:
            # Read back what a previous run still owed Slack before anything new is queued.
            svc.notifier.restore(await svc.outbox.load())
        await self._probe_clickhouse()
        svc.health.set("consumer", False, "starting")
        self._side_tasks = [
            asyncio.ensure_future(svc.notifier.run()),
            asyncio.ensure_future(self._reprobe_clickhouse()),
            asyncio.ensure_future(self._escalations()),
        ]
        if svc.tool_watch is not None:
            self._side_tasks.append(asyncio.ensure_future(self._unapproved_tools()))
        log.info(
            "alerts starting",
            extra={
                "slack": svc.notifier.enabled,
                "cooldown_s": s.cooldown_seconds,
                "slack_pending": len(svc.notifier.pending),
                "approved_tools": svc.tool_watch is not None,
            },
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

    async def _escalations(self) -> None:
        """Publish escalate commands; the agent applies them (or refuses a stale one)."""
        svc, s = self.svc, self.svc.settings
        while True:
            await asyncio.sleep(s.escalation_check_seconds)
            if not svc.assigned:
                continue
            try:
                for cmd in svc.book.escalations_due(int(time.time() * 1000)):
                    await publish_command(svc.producer, s.topic_incident_commands, cmd)
                    log.info(
                        "escalation requested",
                        extra={"incident_id": cmd["incident_id"], "command_id": cmd["command_id"]},
                    )
            except Exception as exc:
                log.warning("escalation check failed", extra={"exc_type": type(exc).__name__})

    async def _unapproved_tools(self) -> None:
        svc, s = self.svc, self.svc.settings
        assert svc.tool_watch is not None
        loop = asyncio.get_running_loop()
        codec = signal_codec()
        while True:
            await asyncio.sleep(s.unapproved_tool_check_seconds)
            try:
                rows = await loop.run_in_executor(svc.query_executor, svc.tool_usage)
                for sig in svc.tool_watch.signals(rows):
                    await svc.producer.send_and_wait(
                        s.topic_signals, codec.encode(sig), key=sig["team"].encode()
                    )
            except Exception as exc:
                log.warning("unapproved tool check failed", extra={"exc_type": type(exc).__name__})

    async def on_stop(self) -> None:
        svc = self.svc
        svc.health.set("consumer", False, "stopping")
        for task in self._side_tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await svc.notifier.drain(timeout=5.0)
        await svc.notifier.close()
        with contextlib.suppress(Exception):
            await svc.producer.stop()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(svc.pipeline.executor, svc.store.close)
        svc.pipeline.executor.shutdown(wait=False)
        svc.query_executor.shutdown(wait=False)
        if self._runner is not None:
            await self._runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            (services_state_dir() / f"{instance_name(SERVICE)}.health").unlink()
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
        self.assigned = False
        self.producer = SideProducer(s.kafka_bootstrap)
        self.outbox = KafkaOutbox(s.kafka_bootstrap, s.topic_slack_outbox, self.producer)
        self.notifier = notifier or SlackNotifier(
            s.slack_webhook_url,
            {ch: url.get_secret_value() for ch, url in s.slack_channel_webhooks.items()},
            outbox=self.outbox,
            metrics=self.metrics,
            retry_max=s.slack_retry_max_seconds,
        )
        self.tool_watch = (
            UnapprovedToolWatch(ApprovedTools.load(s.approved_tools_file))
            if s.approved_tools_file is not None and Path(s.approved_tools_file).exists()
            else None
        )
        self.query_executor = ThreadPoolExecutor(1, thread_name_prefix="alerts-ch-read")
        self._queries: IncidentQueries | None = None
        self.waiters = CommandWaiters()
        datadir = s.faust_data_dir or (default_state_dir() / "faust" / SERVICE)
        Path(datadir).mkdir(parents=True, exist_ok=True)

        self.app = faust.App(
            APP_ID,
            broker=f"kafka://{s.kafka_bootstrap}",
            store="memory://",  # state is small; the changelog topic is the durable copy
            datadir=str(datadir),
            web_enabled=False,  # the HTTP port is services.alerts.api
            # The signals and commands topics have one partition (trustlog.kafka.topic_specs);
            # the table's changelog must match them.
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
            # The agent writes the table after a batch, outside any single event's context;
            # with one partition the partitioner's choice is that partition.
            use_partitioner=True,
            # JSON both ways: with the raw codec a str key would come back as bytes after
            # recovery and no longer match, silently breaking dedup across restarts.
            schema=faust.Schema(key_serializer="json", value_serializer="json"),
            help="Incident state by dedup key",
        )
        self.book = IncidentBook(
            self.routing,
            s.cooldown_seconds,
            BatchStore(cast(MutableMapping[str, Any], self.table)),
            reopen_window_seconds=s.reopen_window_seconds,
        )
        incidents = self.app.topic(s.topic_incidents, key_serializer="raw", value_serializer="raw")

        async def publish(key: bytes, value: bytes) -> Any:
            return await incidents.send(key=key, value=value)

        self.pipeline = AlertsPipeline(
            self.book,
            self.store,
            publish,
            self.notifier,
            self.health,
            self.metrics,
            routing=self.routing,
            link_template=s.incident_link_template,
        )
        self.runtime = AlertsRuntime(self)

        async def on_rebalanced(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
            self.assigned = True
            self.health.set("consumer", True, "assigned")

        self.app.on_rebalance_complete.connect(on_rebalanced)

        source = self.app.topic(
            s.topic_signals,
            s.topic_incident_commands,
            key_serializer="raw",
            value_serializer="raw",
        )
        commands_topic = s.topic_incident_commands

        # One agent, one at a time: the table read-modify-write must not interleave.
        @self.app.agent(source, concurrency=1, name="alerts.incidents")
        async def process(stream: faust.StreamT[bytes]) -> None:
            # take_events is in faust-streaming 0.15 but missing from its StreamT stub.
            async for events in stream.take_events(  # type: ignore[attr-defined]
                s.signal_batch_max, within=s.signal_batch_wait_seconds
            ):
                batch = [
                    (COMMAND if e.message.topic == commands_topic else SIGNAL, e.value)
                    for e in events
                ]
                try:
                    _, results = await self.pipeline.handle_batch(batch)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # A bug here must not kill the agent (faust would ack and move on
                    # anyway); log the type, keep consuming.
                    log.error("batch handling failed", extra={"exc_type": type(exc).__name__})
                    continue
                for r in results:
                    self.waiters.fulfil(
                        r.command_id,
                        {"command_id": r.command_id, "outcome": r.outcome, "detail": r.detail},
                    )

        self.agent = process

    # --- reads for the HTTP API and the unapproved-tool check (query executor thread) ------

    def queries(self) -> IncidentQueries:
        if self._queries is None:
            self._queries = IncidentQueries(admin_client(self.settings), self.settings.ch_database)
        return self._queries

    def tool_usage(self) -> list[ToolUsage]:
        res = self.queries().client.query(usage_query(self.settings.ch_database))
        return [
            ToolUsage(str(team), str(tool), int(hour_ms), int(n), Decimal(cost))
            for team, tool, hour_ms, n, cost in res.result_rows
        ]

    def http_app(self) -> web.Application:
        s = self.settings

        async def publish(cmd: dict[str, Any]) -> None:
            await publish_command(self.producer, s.topic_incident_commands, cmd)

        api = IncidentApi(
            self.queries,
            publish,
            self.waiters,
            token=s.incident_api_token.get_secret_value() if s.incident_api_token else None,
            executor=self.query_executor,
        )
        return build_app(self.health, self.metrics, api)

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
