"""What every service process shares: JSON logs, health and metrics endpoint, clean shutdown.

Log records carry only the fields a caller passes in ``extra``; services never pass content
or identities, and the canary tests read these logs to prove it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from trustlog.settings import ServiceSettings, default_state_dir

_STD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in _STD_ATTRS and not k.startswith("_"):
                out[k] = v
        if record.exc_info and record.exc_info[0] is not None:
            # Type and message only: a traceback's locals could hold event content.
            out["exc_type"] = record.exc_info[0].__name__
        return json.dumps(out, default=str)


def setup_logging(service: str, level: str = "INFO", as_json: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(service)
        if as_json
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party loggers may print message payloads at DEBUG; keep them at WARNING.
    for noisy in ("aiokafka", "kafka", "faust", "mode", "urllib3", "clickhouse_connect"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


class Metrics:
    """Prometheus metrics for one service, served on /metrics."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        self._counters: dict[str, Counter] = {}
        self._gauges: dict[str, Gauge] = {}
        self._hists: dict[str, Histogram] = {}

    def counter(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        if name not in self._counters:
            self._counters[name] = Counter(
                f"trustlog_{self.service}_{name}", doc, labels, registry=self.registry
            )
        return self._counters[name]

    def gauge(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        if name not in self._gauges:
            self._gauges[name] = Gauge(
                f"trustlog_{self.service}_{name}", doc, labels, registry=self.registry
            )
        return self._gauges[name]

    def histogram(self, name: str, doc: str, buckets: tuple[float, ...] | None = None) -> Histogram:
        if name not in self._hists:
            kw: dict[str, Any] = {"buckets": buckets} if buckets else {}
            self._hists[name] = Histogram(
                f"trustlog_{self.service}_{name}", doc, registry=self.registry, **kw
            )
        return self._hists[name]

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))


class Health:
    """Named checks a service updates as it runs; /healthz is 200 only when all pass."""

    def __init__(self) -> None:
        self.started = time.time()
        self._checks: dict[str, tuple[bool, str]] = {}

    def set(self, name: str, ok: bool, detail: str = "") -> None:
        self._checks[name] = (ok, detail)

    @property
    def ok(self) -> bool:
        return bool(self._checks) and all(ok for ok, _ in self._checks.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.ok else "unhealthy",
            "uptime_s": round(time.time() - self.started, 1),
            "checks": {k: {"ok": ok, "detail": d} for k, (ok, d) in self._checks.items()},
        }


def instance_name(service: str) -> str:
    """Process name under the state dir; `trustlog up` and tests set it to tell instances apart."""
    return os.environ.get("TRUSTLOG_INSTANCE") or service


def services_state_dir() -> Path:
    d = default_state_dir() / "services"
    d.mkdir(parents=True, exist_ok=True)
    return d


def health_app(health: Health, metrics: Metrics, **app_kw: Any) -> web.Application:
    """/healthz and /metrics; a service may add its own routes before serving it."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response(health.as_dict(), status=200 if health.ok else 503)

    async def metrics_h(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application(**app_kw)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_h)
    return app


async def serve_app(name: str, settings: ServiceSettings, app: web.Application) -> web.AppRunner:
    """Serve ``app`` on the health port and record its URL where `trustlog status` looks."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.health_host, settings.health_port)
    await site.start()
    port = runner.addresses[0][1]
    (services_state_dir() / f"{instance_name(name)}.health").write_text(
        f"http://{settings.health_host}:{port}\n"
    )
    logging.getLogger(name).info("health endpoint up", extra={"health_port": port})
    return runner


async def start_health_server(
    name: str, settings: ServiceSettings, health: Health, metrics: Metrics
) -> web.AppRunner:
    return await serve_app(name, settings, health_app(health, metrics))


async def run_service(
    name: str,
    settings: ServiceSettings,
    main: Callable[[asyncio.Event, Health, Metrics], Awaitable[None]],
) -> None:
    """Run ``main`` until SIGTERM/SIGINT, then let it finish its current batch and return."""
    setup_logging(name, settings.log_level, settings.log_json)
    log = logging.getLogger(name)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    health, metrics = Health(), Metrics(name)
    runner = await start_health_server(name, settings, health, metrics)
    log.info("service starting")
    try:
        await main(stop, health, metrics)
    finally:
        await runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            (services_state_dir() / f"{instance_name(name)}.health").unlink()
        log.info("service stopped")
