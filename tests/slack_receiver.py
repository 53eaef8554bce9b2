"""A local stand-in for a Slack incoming webhook, strict the way Slack is.

Slack answers ``200 ok``, or ``400`` with a short code (``no_text``, ``invalid_blocks``,
``invalid_payload``) when a payload breaks Block Kit's rules. :func:`validate_payload` checks
the rules our messages can break (block count, known block types and their required fields,
text lengths, field counts), so a message the receiver accepts is one Slack would accept.

The server runs on its own event loop in a background thread, so it serves a service running
in a subprocess or in the test's own loop alike. It can be told to fail the next N requests
(429 with Retry-After, or 5xx) and records every request and every accepted payload.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

MAX_BLOCKS = 50
SECTION_TEXT_MAX = 3000
SECTION_FIELD_MAX = 2000
SECTION_FIELDS_MAX = 10
HEADER_TEXT_MAX = 150
CONTEXT_ELEMENTS_MAX = 10
ACTIONS_ELEMENTS_MAX = 25
BLOCK_ID_MAX = 255
TEXT_TYPES = ("plain_text", "mrkdwn")


def _text_obj_ok(obj: Any, max_len: int, types: tuple[str, ...] = TEXT_TYPES) -> bool:
    return (
        isinstance(obj, dict)
        and obj.get("type") in types
        and isinstance(obj.get("text"), str)
        and 0 < len(obj["text"]) <= max_len
        and (obj["type"] != "plain_text" or isinstance(obj.get("emoji", True), bool))
    )


def _image_element_ok(el: Any) -> bool:
    return (
        isinstance(el, dict)
        and el.get("type") == "image"
        and isinstance(el.get("image_url") or el.get("slack_file"), str | dict)
        and isinstance(el.get("alt_text"), str)
    )


def _section_ok(b: dict[str, Any]) -> bool:
    if "text" not in b and "fields" not in b:
        return False
    if "text" in b and not _text_obj_ok(b["text"], SECTION_TEXT_MAX):
        return False
    if "fields" in b:
        fields = b["fields"]
        if not isinstance(fields, list) or not 0 < len(fields) <= SECTION_FIELDS_MAX:
            return False
        if not all(_text_obj_ok(f, SECTION_FIELD_MAX) for f in fields):
            return False
    return True


def _elements_ok(b: dict[str, Any], max_n: int, ok: Callable[[Any], bool]) -> bool:
    els = b.get("elements")
    return isinstance(els, list) and 0 < len(els) <= max_n and all(ok(e) for e in els)


_BLOCK_RULES: dict[str, Callable[[dict[str, Any]], bool]] = {
    "section": _section_ok,
    "header": lambda b: _text_obj_ok(b.get("text"), HEADER_TEXT_MAX, ("plain_text",)),
    "context": lambda b: _elements_ok(
        b,
        CONTEXT_ELEMENTS_MAX,
        lambda e: _text_obj_ok(e, SECTION_TEXT_MAX) or _image_element_ok(e),
    ),
    "divider": lambda b: True,
    "image": _image_element_ok,
    "actions": lambda b: _elements_ok(b, ACTIONS_ELEMENTS_MAX, lambda e: isinstance(e, dict)),
    "rich_text": lambda b: _elements_ok(b, 10_000, lambda e: isinstance(e, dict)),
    "markdown": lambda b: isinstance(b.get("text"), str) and 0 < len(b["text"]) <= 12_000,
}


def validate_payload(payload: Any) -> str | None:
    """None if Slack would accept ``payload``, else the error code Slack would answer."""
    if not isinstance(payload, dict):
        return "invalid_payload"
    text, blocks = payload.get("text"), payload.get("blocks")
    if blocks is not None:
        if not isinstance(blocks, list) or len(blocks) > MAX_BLOCKS:
            return "invalid_blocks"
        for b in blocks:
            if not isinstance(b, dict):
                return "invalid_blocks"
            rule = _BLOCK_RULES.get(str(b.get("type")))
            if rule is None or not rule(b):
                return "invalid_blocks"
            block_id = b.get("block_id")
            if block_id is not None and (
                not isinstance(block_id, str) or len(block_id) > BLOCK_ID_MAX
            ):
                return "invalid_blocks"
    has_text = isinstance(text, str) and text.strip() != ""
    if not has_text and not blocks:
        return "no_text"
    return None


@dataclass
class Received:
    status: int
    payload: Any
    at: float = field(default_factory=time.time)
    path: str = ""


class SlackReceiver:
    """Background-thread HTTP server acting as an incoming webhook at :attr:`url`."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.accepted: list[dict[str, Any]] = []
        self.accepted_paths: list[str] = []  # the webhook path of each accepted payload
        self.requests: list[Received] = []
        self._failures: deque[tuple[int, float | None]] = deque()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return self.url_for("B000")

    def url_for(self, hook: str) -> str:
        """Another webhook on the same receiver (Slack has one URL per channel)."""
        return f"http://{self.host}:{self.port}/services/T000/{hook}/XXXX"

    # --- control, called from tests -------------------------------------------------------

    def fail_next(self, n: int = 1, status: int = 429, retry_after: float | None = 1) -> None:
        """Answer the next ``n`` requests with ``status`` (429 carries Retry-After)."""
        with self._lock:
            for _ in range(n):
                self._failures.append((status, retry_after if status == 429 else None))

    def stop_failing(self) -> None:
        """Drop the forced failures not used yet: the receiver answers normally again."""
        with self._lock:
            self._failures.clear()

    def reset(self) -> None:
        with self._lock:
            self.accepted.clear()
            self.accepted_paths.clear()
            self.requests.clear()
            self._failures.clear()

    def payloads(
        self,
        predicate: Callable[[dict[str, Any]], bool] | None = None,
        *,
        hook: str | None = None,
    ) -> list[Any]:
        """Accepted payloads matching ``predicate``; only those posted to ``hook`` if given."""
        with self._lock:
            return [
                p
                for p, path in zip(self.accepted, self.accepted_paths, strict=True)
                if (predicate is None or predicate(p)) and (hook is None or f"/{hook}/" in path)
            ]

    def attempts(self, predicate: Callable[[Any], bool] | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if predicate is None or predicate(r.payload)]

    def wait_for(
        self,
        predicate: Callable[[dict[str, Any]], bool] | None = None,
        count: int = 1,
        timeout: float = 30.0,
    ) -> list[Any]:
        """Block until ``count`` accepted payloads match; returns them (or what there is)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.payloads(predicate)
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    # --- server ---------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            payload: Any = json.loads(raw)
        except ValueError:
            payload = None
        with self._lock:
            forced = self._failures.popleft() if self._failures else None
            if forced is not None:
                status, retry_after = forced
                self.requests.append(Received(status, payload, path=request.path))
            else:
                error = validate_payload(payload)
                status = 400 if error else 200
                self.requests.append(Received(status, payload, path=request.path))
                if error is None:
                    self.accepted.append(payload)
                    self.accepted_paths.append(request.path)
        if forced is not None:
            headers = {"Retry-After": str(int(retry_after))} if retry_after is not None else {}
            body = "rate_limited" if status == 429 else "internal_error"
            return web.Response(status=status, text=body, headers=headers)
        return web.Response(status=status, text=error or "ok")

    def start(self) -> SlackReceiver:
        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            app = web.Application()
            app.router.add_post("/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, self.host, 0)
            loop.run_until_complete(site.start())
            self.port = self._runner.addresses[0][1]
            self._ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="slack-receiver", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("slack receiver did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop = self._thread = None


@pytest.fixture(scope="session")
def slack_receiver_server() -> Iterator[SlackReceiver]:
    """One receiver per session: a service started once can keep posting to the same URL."""
    r = SlackReceiver().start()
    yield r
    r.stop()


@pytest.fixture
def slack_receiver(slack_receiver_server: SlackReceiver) -> Iterator[SlackReceiver]:
    """The session receiver with no recorded requests and no pending forced failures."""
    slack_receiver_server.reset()
    yield slack_receiver_server
    slack_receiver_server.reset()
