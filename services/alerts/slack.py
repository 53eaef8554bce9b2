"""Slack: a Block Kit message per incident notification, and a webhook sender that retries.

Messages carry metadata only: team, tool, rule, owner, counts, times and evidence numbers.
They never carry content, and a pseudonym only for security incidents (a cost follow-up is
about a team's spend, not a person). Whatever the incident dict holds, the builder picks
fields by name, so a new field upstream cannot leak into Slack by accident.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.http_retry.builtin_interval_calculators import BackoffRetryIntervalCalculator
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.webhook.async_client import AsyncWebhookClient

from trustlog.runtime import Metrics

log = logging.getLogger("trustlog.alerts.slack")

# Slack's limits (https://docs.slack.dev/reference/block-kit/blocks): header text 150 chars,
# section text 3000, a field 2000 and at most 10 fields per section.
HEADER_MAX = 150
FIELD_MAX = 2000
FIELDS_PER_SECTION = 10
FIELD_VALUE_MAX = 200

_SEVERITY_MARK = {"critical": "🔴", "high": "🟠", "medium": "🟡", "low": "🔵"}


def _escape(s: str) -> str:
    # mrkdwn treats <...> as links and mentions (<!channel>); escaping stops a team or tool
    # name from pinging a channel or forging a link.
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def _when(v: Any) -> str:
    if isinstance(v, datetime):
        dt = v if v.tzinfo else v.replace(tzinfo=UTC)
    else:
        dt = datetime.fromtimestamp(int(v) / 1000, tz=UTC)
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _is_number(v: str) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _field(label: str, value: Any) -> dict[str, str]:
    text = f"*{_escape(_clip(label, 64))}*\n{_escape(_clip(str(value), FIELD_VALUE_MAX)) or '-'}"
    return {"type": "mrkdwn", "text": _clip(text, FIELD_MAX)}


def ack_command(incident_id: str) -> str:
    return f"trustlog incidents ack {incident_id}"


def build_message(incident: Mapping[str, Any]) -> dict[str, Any]:
    """Block Kit payload for one incident (an incident.v1 record)."""
    severity = str(incident["severity"])
    title = _title_of(incident)
    header = _clip(
        f"{_SEVERITY_MARK.get(severity, '')} {severity.upper()}: {title}".strip(), HEADER_MAX
    )

    fields = [
        _field("Team", incident["team"]),
        _field("Tool", incident.get("tool") or "-"),
        _field("Rule", incident["rule"]),
        _field("Owner", incident["owner"]),
        _field("Signals", incident["signal_count"]),
        _field("State", incident["state"]),
        _field("First seen", _when(incident["first_seen"])),
        _field("Last seen", _when(incident["last_seen"])),
    ]
    if incident.get("category") == "security" and incident.get("user_pseudonym"):
        fields.append(_field("Pseudonym", incident["user_pseudonym"]))

    # Evidence shows numbers only (observed, baseline, counts...): a value that is not a
    # number is left out rather than trusted to be harmless. The model name is the one
    # non-number worth showing (unknown_model incidents are about it).
    evidence = dict(incident.get("evidence") or {})
    ev_fields = [
        _field(k, v) for k, v in sorted(evidence.items()) if _is_number(v) and not k.endswith("_ms")
    ]
    if evidence.get("model"):
        ev_fields.insert(0, _field("Model", evidence["model"]))

    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": header, "emoji": True}},
        {"type": "section", "fields": fields[:FIELDS_PER_SECTION]},
    ]
    if ev_fields:
        blocks.append({"type": "section", "fields": ev_fields[:FIELDS_PER_SECTION]})
    blocks.append(
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": f"{incident['category']} incident `{incident['incident_id']}`"
                    f" · acknowledge: `{ack_command(str(incident['incident_id']))}`",
                }
            ],
        }
    )
    text = _clip(
        f"[{severity.upper()}] {title}: team {incident['team']}, "
        f"tool {incident.get('tool') or '-'}, {incident['signal_count']} signal(s), "
        f"owner {incident['owner']} (incident {incident['incident_id']})",
        3000,
    )
    return {"text": _escape(text), "blocks": blocks}


def _title_of(incident: Mapping[str, Any]) -> str:
    # The incident record has no title field; the summary starts with "<title>: numbers".
    summary = str(incident.get("summary") or "")
    return summary.split(":", 1)[0] if summary else str(incident["rule"])


class CappedRateLimitRetryHandler(AsyncRateLimitErrorRetryHandler):
    """The built-in 429 handler, but a huge Retry-After cannot stall the alerts agent.

    Past ``max_wait`` seconds the request is given up here and goes to the retry queue,
    which tries again later without blocking incident processing.
    """

    def __init__(self, max_retry_count: int, max_wait: float) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self.max_wait = max_wait

    async def _can_retry_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        if response is None or response.status_code != 429:
            return False
        return _retry_after(response) <= self.max_wait

    async def prepare_for_next_attempt_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> None:
        # The parent parses Retry-After with int() and would raise on an HTTP-date.
        state.next_attempt_requested = True
        wait = _retry_after(response) if response is not None else 1.0
        await asyncio.sleep(wait + random.random() * 0.25)
        state.increment_current_attempt()


class AnyServerErrorRetryHandler(AsyncRetryHandler):
    """Backoff retry for every 5xx (the built-in one covers only 500 and 503)."""

    async def _can_retry_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        return response is not None and 500 <= response.status_code < 600


def _retry_after(response: HttpResponse) -> float:
    for k, v in response.headers.items():
        if k.lower() == "retry-after":
            try:
                return max(0.0, float(v[0] if isinstance(v, list) else v))
            except (TypeError, ValueError, IndexError):
                break
    return 1.0


@dataclass
class _Pending:
    incident_id: str
    payload: dict[str, Any]
    attempts: int


_SLACK_ERROR = re.compile(r"^[a-z_]{1,64}$")


class SlackNotifier:
    """Posts incident messages to one incoming-webhook URL.

    Each post retries in place (429 honouring Retry-After, 5xx with backoff, connection
    errors). A post that still fails goes into an in-memory queue, newest message per
    incident, that :meth:`retry_pending` drains later. Logs name the incident and the status,
    never the payload: it is metadata, but logs travel further than Slack does.
    """

    def __init__(
        self,
        webhook_url: str | None,
        *,
        metrics: Metrics | None = None,
        max_retries: int = 3,
        max_retry_after: float = 30.0,
        backoff_factor: float = 0.5,
        timeout: int = 10,
        queue_limit: int = 1000,
    ) -> None:
        self.webhook_url = webhook_url
        self.queue_limit = queue_limit
        self.pending: OrderedDict[str, _Pending] = OrderedDict()
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._client: AsyncWebhookClient | None = None
        # slack_sdk logs the URL (a secret) and the body when its logger's own level is
        # NOTSET or DEBUG; an explicit WARNING level on a private logger keeps both out.
        self._sdk_logger = logging.getLogger("trustlog.alerts.slack_sdk")
        self._sdk_logger.setLevel(logging.WARNING)
        interval = BackoffRetryIntervalCalculator(backoff_factor=backoff_factor)
        self._handlers: list[AsyncRetryHandler] = [
            AsyncConnectionErrorRetryHandler(
                max_retry_count=max_retries, interval_calculator=interval
            ),
            CappedRateLimitRetryHandler(max_retry_count=max_retries, max_wait=max_retry_after),
            AnyServerErrorRetryHandler(max_retry_count=max_retries, interval_calculator=interval),
        ]
        self._lock = asyncio.Lock()
        self._inbox: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=queue_limit)
        m = metrics
        self._sent = (
            m.counter("slack_posts_total", "Slack posts by result", ("result",)) if m else None
        )
        self._queued = m.gauge("slack_pending", "Slack posts waiting for a retry") if m else None

    @property
    def enabled(self) -> bool:
        return bool(self.webhook_url)

    def _get_client(self) -> AsyncWebhookClient:
        # The session must be created inside the running loop (faust's), hence lazily.
        if self._client is None:
            assert self.webhook_url
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout)
            )
            self._client = AsyncWebhookClient(
                self.webhook_url,
                timeout=self._timeout,
                session=self._session,
                logger=self._sdk_logger,
                retry_handlers=self._handlers,
            )
        return self._client

    def _count(self, result: str) -> None:
        if self._sent is not None:
            self._sent.labels(result).inc()
        if self._queued is not None:
            self._queued.set(len(self.pending))

    async def notify(self, incident: Mapping[str, Any]) -> bool:
        """Build and post the message for ``incident``. True when Slack accepted it."""
        incident_id = str(incident["incident_id"])
        if not self.enabled:
            self._count("disabled")
            return False
        # A newer message for this incident supersedes a queued older one.
        self.pending.pop(incident_id, None)
        return await self._deliver(_Pending(incident_id, build_message(incident), 0))

    def submit(self, incident: Mapping[str, Any]) -> None:
        """Queue a post without waiting: the caller (the faust agent) never waits on Slack."""
        if not self.enabled:
            self._count("disabled")
            return
        item = _Pending(str(incident["incident_id"]), build_message(incident), 0)
        try:
            self._inbox.put_nowait(item)
        except asyncio.QueueFull:
            self._enqueue(item)

    async def run(self, retry_interval: float = 15.0) -> None:
        """Post submitted messages in order; retry the queue when idle or after a success."""
        while True:
            try:
                item = await asyncio.wait_for(self._inbox.get(), timeout=retry_interval)
            except TimeoutError:
                if self.pending:
                    await self.retry_pending()
                continue
            self.pending.pop(item.incident_id, None)
            if await self._deliver(item) and self.pending and self._inbox.empty():
                await self.retry_pending()  # Slack answers again: catch up now

    async def drain(self, timeout: float) -> None:
        """On shutdown: one quick try for whatever is still waiting in the inbox."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not self._inbox.empty():
                    item = self._inbox.get_nowait()
                    self.pending.pop(item.incident_id, None)
                    await self._deliver(item)

    async def _deliver(self, item: _Pending) -> bool:
        item.attempts += 1
        try:
            async with self._lock:  # one post at a time keeps Slack's per-hook rate
                resp = await self._get_client().send_dict(item.payload)
            status, body = resp.status_code, resp.body
        except Exception as exc:
            status, body = 0, type(exc).__name__
        if status == 200:
            self._count("ok")
            if item.attempts > 1:
                log.info(
                    "slack post delivered from retry queue",
                    extra={"incident_id": item.incident_id, "attempts": item.attempts},
                )
            return True
        # Slack answers errors with short codes (invalid_blocks, no_service); anything else
        # in the body is not logged.
        reason = body if isinstance(body, str) and _SLACK_ERROR.match(body) else ""
        if status == 400:
            # The payload itself is wrong; sending it again cannot succeed.
            self._count("rejected")
            log.error(
                "slack rejected message",
                extra={"incident_id": item.incident_id, "status": status, "reason": reason},
            )
            return False
        self._enqueue(item)
        self._count("failed")
        log.warning(
            "slack post failed, queued for retry",
            extra={
                "incident_id": item.incident_id,
                "status": status,
                "reason": reason,
                "attempts": item.attempts,
                "pending": len(self.pending),
            },
        )
        return False

    def _enqueue(self, item: _Pending) -> None:
        self.pending[item.incident_id] = item
        self.pending.move_to_end(item.incident_id)
        while len(self.pending) > self.queue_limit:
            dropped, _ = self.pending.popitem(last=False)
            self._count("dropped")
            log.error("slack retry queue full, dropped oldest", extra={"incident_id": dropped})

    async def retry_pending(self) -> int:
        """One pass over the queue, oldest first. Returns how many were delivered."""
        delivered = 0
        for incident_id in list(self.pending):
            item = self.pending.pop(incident_id, None)
            if item is None:
                continue
            if await self._deliver(item):
                delivered += 1
            elif incident_id in self.pending:
                break  # Slack is still failing: keep the order, try again next pass
        if self._queued is not None:
            self._queued.set(len(self.pending))
        return delivered

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        self._session = None
        self._client = None
