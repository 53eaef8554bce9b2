"""The alerts service's HTTP port: /healthz and /metrics plus the incidents API.

    GET  /v1/incidents?state=open&state=reopened&team=&owner=&limit=   (default: not resolved)
    GET  /v1/incidents/{id}              incident, its history and its commands
    POST /v1/incidents/{id}/ack          {"actor": "...", "reason": "..."}
    POST /v1/incidents/{id}/resolve      {"actor": "...", "reason": "..."}

``{id}`` may be a unique prefix of at least 6 characters. A POST publishes a command for
the agent (see :mod:`services.alerts.commands`) and waits up to ``?wait=`` seconds (default
5) for its outcome: 200 applied, 409 refused (the body says why, e.g. "cannot acknowledge an
incident that is resolved"), 202 still queued. 400 for a missing actor or reason, 404 for an
unknown incident, 401 when ``TRUSTLOG_INCIDENT_API_TOKEN`` is set and not presented.

The port serves health and metrics like every service's (trustlog.runtime), and writes the
same ``<state>/services/<instance>.health`` file, so ``trustlog status`` finds it.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web

from services.alerts.commands import (
    CommandError,
    IncidentQueries,
    check_request,
    jsonable,
    new_command,
)
from trustlog.runtime import Health, Metrics, health_app

log = logging.getLogger("trustlog.alerts.api")

OPEN_STATES = ["open", "acknowledged", "reopened"]
MAX_WAIT_S = 30.0
MAX_BODY_BYTES = 16 * 1024

Publish = Callable[[dict[str, Any]], Awaitable[None]]


class CommandWaiters:
    """Callers waiting for a command's outcome; the agent fulfils them after its batch."""

    def __init__(self) -> None:
        self._futures: dict[str, asyncio.Future[dict[str, Any]]] = {}

    def expect(self, command_id: str) -> asyncio.Future[dict[str, Any]]:
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._futures[command_id] = fut
        return fut

    def fulfil(self, command_id: str, outcome: dict[str, Any]) -> None:
        fut = self._futures.pop(command_id, None)
        if fut is not None and not fut.done():
            fut.set_result(outcome)

    def discard(self, command_id: str) -> None:
        self._futures.pop(command_id, None)


class IncidentApi:
    def __init__(
        self,
        queries: Callable[[], IncidentQueries],
        publish: Publish,
        waiters: CommandWaiters,
        *,
        token: str | None = None,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self._queries = queries
        self._publish = publish
        self._waiters = waiters
        self._token = token
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix="alerts-api-ch")

    async def _q(self, fn: Callable[[IncidentQueries], Any]) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(self._queries()))

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/incidents", self.list)
        app.router.add_get("/v1/incidents/{ref}", self.show)
        app.router.add_post("/v1/incidents/{ref}/{action:ack|acknowledge|resolve}", self.change)

    async def list(self, request: web.Request) -> web.Response:
        states = request.query.getall("state", []) or OPEN_STATES
        if request.query.get("all") in ("1", "true", "yes"):
            states = []
        try:
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            return _error(400, "limit must be a number")
        rows = await self._q(
            lambda q: q.incidents(
                states=states,
                team=request.query.get("team"),
                owner=request.query.get("owner"),
                limit=limit,
            )
        )
        return web.json_response({"incidents": [jsonable(r) for r in rows]})

    async def show(self, request: web.Request) -> web.Response:
        ref = request.match_info["ref"]
        try:
            incident = await self._q(lambda q: q.find(ref))
        except CommandError as exc:
            return _error(404, str(exc))
        iid = incident["incident_id"]
        history = await self._q(lambda q: q.history(iid))
        commands = await self._q(lambda q: q.commands(iid))
        return web.json_response(
            {
                "incident": jsonable(incident),
                "history": [jsonable(h) for h in history],
                "commands": [jsonable(c) for c in commands],
            }
        )

    async def change(self, request: web.Request) -> web.Response:
        if self._token is not None:
            presented = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(presented.encode(), self._token.encode()):
                return _error(401, "a valid bearer token is required")
        if (request.content_length or 0) > MAX_BODY_BYTES:
            return _error(413, "body too large")
        try:
            body = await request.json()
        except ValueError:
            return _error(400, 'body must be JSON: {"actor": "...", "reason": "..."}')
        if not isinstance(body, dict):
            return _error(400, 'body must be JSON: {"actor": "...", "reason": "..."}')
        action = request.match_info["action"]
        try:
            check_request(action, str(body.get("actor") or ""), str(body.get("reason") or ""))
            wait = min(MAX_WAIT_S, max(0.0, float(request.query.get("wait", "5"))))
        except (CommandError, ValueError) as exc:
            return _error(400, str(exc))
        ref = request.match_info["ref"]
        try:
            incident = await self._q(lambda q: q.find(ref))
        except CommandError as exc:
            return _error(404, str(exc))
        cmd = new_command(incident, action, str(body["actor"]), str(body["reason"]), "api")
        # Registered before publishing: the agent may answer before the publish returns.
        waiter = self._waiters.expect(cmd["command_id"])
        outcome: dict[str, Any] | None = None
        try:
            await self._publish(cmd)
            outcome = await asyncio.wait_for(waiter, wait)
        except TimeoutError:
            pass
        except Exception as exc:
            log.error("command publish failed", extra={"exc_type": type(exc).__name__})
            return _error(503, "could not queue the command; try again")
        finally:
            self._waiters.discard(cmd["command_id"])
        # The reason is the actor's free text: it goes to incident_history, not to logs.
        log.info(
            "incident command",
            extra={
                "incident_id": cmd["incident_id"],
                "action": cmd["action"],
                "outcome": (outcome or {}).get("outcome", "queued"),
            },
        )
        base = {"command_id": cmd["command_id"], "incident_id": cmd["incident_id"]}
        if outcome is None:
            return web.json_response({**base, "outcome": "queued"}, status=202)
        status = 200 if outcome["outcome"] in ("applied", "duplicate") else 409
        return web.json_response({**base, **jsonable(outcome)}, status=status)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def build_app(health: Health, metrics: Metrics, api: IncidentApi | None) -> web.Application:
    app = health_app(health, metrics, client_max_size=MAX_BODY_BYTES)
    if api is not None:
        api.routes(app)
    return app
