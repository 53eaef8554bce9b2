"""Slack: a Block Kit message per notification, and a webhook sender that never loses one.

Messages carry metadata only: team, tool, rule, owner, counts, times and evidence numbers.
They never carry content, and a pseudonym only for security incidents posted to a channel
routing lists for it (a cost follow-up is about a team's spend, not a person). Whatever the
incident dict holds, the builder picks fields by name, so a new field upstream cannot leak
into Slack by accident.

Delivery: every notification goes to a durable outbox (a compacted Kafka topic, see
:mod:`services.alerts.outbox`) before the first attempt and is removed only when Slack
accepted it (or rejected the payload as invalid, which no retry can fix). Each post retries
in place (429 honouring Retry-After, 5xx with backoff, connection errors); what still
fails is retried later with growing delays, and after a restart the outbox is read back, so
a Slack outage delays notifications but never drops them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import re
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

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
SECTION_TEXT_MAX = 3000
FIELD_MAX = 2000
FIELDS_PER_SECTION = 10
FIELD_VALUE_MAX = 200

_SEVERITY_MARK = {"critical": "🔴", "high": "🟠", "medium": "🟡", "low": "🔵"}
_KIND_PREFIX = {
    "opened": "",
    "reminder": "Still happening · ",
    "reopened": "Reopened · ",
    "escalated": "Escalated · ",
}
# Evidence values shown although they are not numbers: identifiers a follow-up needs (the
# unpriced model, the policy rule, the sensitive-data class), checked against a strict shape.
_EVIDENCE_NAMES = ("model", "flag", "class")
_IDENTIFIER = re.compile(r"^[A-Za-z0-9_.:/@+-]{1,120}$")


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
    return f'trustlog incidents ack {incident_id} --actor <you> --reason "<why>"'


def build_message(
    incident: Mapping[str, Any],
    *,
    kind: str = "opened",
    show_pseudonym: bool = False,
    note: str | None = None,
    link: str | None = None,
) -> dict[str, Any]:
    """Block Kit payload for one notification about ``incident`` (an incident.v1 record).

    ``show_pseudonym`` is the caller's decision (routing knows which channels may see one);
    it is honoured only for security incidents whatever the caller says.
    """
    severity = str(incident["severity"])
    title = _title_of(incident)
    header = _clip(
        f"{_SEVERITY_MARK.get(severity, '')} {_KIND_PREFIX.get(kind, '')}"
        f"{severity.upper()}: {title}".strip(),
        HEADER_MAX,
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
    if show_pseudonym and incident.get("category") == "security" and incident.get("user_pseudonym"):
        fields.append(_field("Pseudonym", incident["user_pseudonym"]))

    # Evidence shows numbers only (observed, baseline, counts...): a value that is not a
    # number is left out rather than trusted to be harmless, except a few identifiers.
    evidence = dict(incident.get("evidence") or {})
    named = [
        _field(k.capitalize(), evidence[k])
        for k in _EVIDENCE_NAMES
        if _IDENTIFIER.match(str(evidence.get(k) or ""))
    ]
    numbers = [
        _field(k, v) for k, v in sorted(evidence.items()) if _is_number(v) and not k.endswith("_ms")
    ]
    ev_fields = named + numbers

    what = str(incident.get("summary") or title)
    if note:
        what = f"{what}\n{note}"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": header, "emoji": True}},
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": _clip(_escape(what), SECTION_TEXT_MAX)},
        },
        {"type": "section", "fields": fields[:FIELDS_PER_SECTION]},
    ]
    if ev_fields:
        blocks.append({"type": "section", "fields": ev_fields[:FIELDS_PER_SECTION]})
    if link:
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Open incident"},
                        "url": link,
                    }
                ],
            }
        )
    blocks.append(
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": _clip(
                        f"{incident['category']} incident `{incident['incident_id']}`"
                        f" · acknowledge: `{_escape(ack_command(str(incident['incident_id'])))}`",
                        SECTION_TEXT_MAX,
                    ),
                }
            ],
        }
    )
    text = _clip(
        f"[{severity.upper()}] {_KIND_PREFIX.get(kind, '')}{title}: team {incident['team']}, "
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
    """The built-in 429 handler, but a huge Retry-After cannot stall the sender.

    Past ``max_wait`` seconds the request is given up here and stays queued with its
    Retry-After as the earliest next attempt.
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
        return retry_after(response.headers) <= self.max_wait

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
        wait = retry_after(response.headers) if response is not None else 1.0
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


def retry_after(headers: Mapping[str, Any]) -> float:
    """Seconds from a Retry-After header (seconds form); 1.0 when absent or unparsable."""
    for k, v in headers.items():
        if k.lower() == "retry-after":
            try:
                return max(0.0, float(v[0] if isinstance(v, list) else v))
            except (TypeError, ValueError, IndexError):
                break
    return 1.0


@dataclass
class Notification:
    """One message for one channel. ``id`` is stable (incident id + sequence number)."""

    id: str
    incident_id: str
    channel: str
    kind: str
    payload: dict[str, Any]
    created_ms: int
    attempts: int = 0
    next_try: float = field(default=0.0, compare=False)  # monotonic seconds

    def to_record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "incident_id": self.incident_id,
            "channel": self.channel,
            "kind": self.kind,
            "payload": self.payload,
            "created_ms": self.created_ms,
        }

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> Notification:
        return cls(
            id=str(rec["id"]),
            incident_id=str(rec["incident_id"]),
            channel=str(rec["channel"]),
            kind=str(rec.get("kind") or "opened"),
            payload=dict(rec["payload"]),
            created_ms=int(rec.get("created_ms") or 0),
        )


class Outbox(Protocol):
    """Where pending notifications are kept until Slack took them (survives restarts)."""

    async def put(self, n: Notification) -> None: ...

    async def done(self, notification_id: str) -> None: ...


_SLACK_ERROR = re.compile(r"^[a-z_]{1,64}$")


class SlackNotifier:
    """Posts notifications to the incoming webhook of their channel.

    ``channel_urls`` maps a channel to its own webhook (one Slack incoming webhook posts to
    one channel); other channels use ``default_url``. Logs name the notification and the
    status, never the payload or the URL (a secret): the payload is metadata, but logs
    travel further than Slack does.
    """

    def __init__(
        self,
        default_url: str | None,
        channel_urls: Mapping[str, str] | None = None,
        *,
        outbox: Outbox | None = None,
        metrics: Metrics | None = None,
        max_retries: int = 3,
        max_retry_after: float = 30.0,
        backoff_factor: float = 0.5,
        timeout: int = 10,
        retry_base: float = 2.0,
        retry_max: float = 300.0,
    ) -> None:
        self.default_url = default_url
        self.channel_urls = dict(channel_urls or {})
        self.outbox = outbox
        self.pending: OrderedDict[str, Notification] = OrderedDict()
        self.retry_base = retry_base
        self.retry_max = retry_max
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._clients: dict[str, AsyncWebhookClient] = {}
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
        self._wake = asyncio.Event()
        self._unrouted: set[str] = set()
        m = metrics
        self._sent = (
            m.counter("slack_posts_total", "Slack posts by result", ("result",)) if m else None
        )
        self._queued = (
            m.gauge("slack_pending", "Notifications not yet accepted by Slack") if m else None
        )

    @property
    def enabled(self) -> bool:
        return bool(self.default_url or self.channel_urls)

    def url_for(self, channel: str) -> str | None:
        return self.channel_urls.get(channel) or self.default_url

    def _client(self, url: str) -> AsyncWebhookClient:
        # The session must be created inside the running loop (faust's), hence lazily.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout)
            )
        client = self._clients.get(url)
        if client is None:
            client = self._clients[url] = AsyncWebhookClient(
                url,
                timeout=self._timeout,
                session=self._session,
                logger=self._sdk_logger,
                retry_handlers=self._handlers,
            )
        return client

    def _count(self, result: str) -> None:
        if self._sent is not None:
            self._sent.labels(result).inc()
        if self._queued is not None:
            self._queued.set(len(self.pending))

    def restore(self, items: list[Notification]) -> None:
        """Pending notifications read back from the outbox at start, oldest first."""
        for n in items:
            self.pending[n.id] = n
        if items:
            log.info("slack notifications restored from outbox", extra={"pending": len(items)})
            self._count("restored")
            self._wake.set()

    async def submit(self, n: Notification) -> bool:
        """Make ``n`` durable, then queue it for the sender. False if Slack is not configured.

        Raises if the outbox cannot take it; the caller retries (it must not be dropped).
        """
        if self.url_for(n.channel) is None:
            if self.enabled and n.channel not in self._unrouted:
                self._unrouted.add(n.channel)
                log.warning(
                    "no slack webhook for channel; its notifications are not sent",
                    extra={"channel": n.channel},
                )
            self._count("disabled")
            return False
        if n.id in self.pending:
            return True  # a replayed batch asked again: already queued
        if self.outbox is not None:
            await self.outbox.put(n)
        self.pending[n.id] = n
        self._wake.set()
        return True

    async def run(self) -> None:
        """Send due notifications, oldest first; sleep until the next one is due."""
        while True:
            await self.send_due()
            now = time.monotonic()
            wait = min((n.next_try for n in self.pending.values()), default=now + 60.0) - now
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, wait))

    async def send_due(self) -> int:
        """One pass over the due notifications. Returns how many Slack accepted."""
        delivered = 0
        failing: set[str] = set()
        now = time.monotonic()
        for n in list(self.pending.values()):
            if n.next_try > now or n.id not in self.pending:
                continue
            url = self.url_for(n.channel)
            if url is None or url in failing:
                # No webhook any more (settings changed), or this webhook just failed: keep
                # the order per webhook and try later.
                n.next_try = now + self.retry_base
                continue
            if await self._deliver(n, url):
                delivered += 1
            elif n.id in self.pending:
                failing.add(url)
        if self._queued is not None:
            self._queued.set(len(self.pending))
        return delivered

    async def drain(self, timeout: float) -> None:
        """On shutdown: one quick pass; what is left stays in the outbox for the next start."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                for n in self.pending.values():
                    n.next_try = 0.0
                await self.send_due()

    async def _deliver(self, n: Notification, url: str) -> bool:
        n.attempts += 1
        headers: Mapping[str, Any] = {}
        try:
            resp = await self._client(url).send_dict(n.payload)
            status, body, headers = resp.status_code, resp.body, resp.headers or {}
        except Exception as exc:
            status, body = 0, type(exc).__name__
        if status == 200:
            await self._forget(n)
            self._count("ok")
            if n.attempts > 1:
                log.info(
                    "slack notification delivered after retries",
                    extra={"notification_id": n.id, "attempts": n.attempts},
                )
            return True
        # Slack answers errors with short codes (invalid_blocks, no_service); anything else
        # in the body is not logged.
        reason = body if isinstance(body, str) and _SLACK_ERROR.match(body) else ""
        if status == 400:
            # The payload itself is wrong; sending it again cannot succeed.
            await self._forget(n)
            self._count("rejected")
            log.error(
                "slack rejected notification",
                extra={"notification_id": n.id, "status": status, "reason": reason},
            )
            return False
        delay = min(self.retry_max, self.retry_base * 2 ** min(n.attempts - 1, 16))
        if status == 429:
            delay = max(delay, retry_after(headers))
        n.next_try = time.monotonic() + delay * (1 + random.random() * 0.1)
        self._count("failed")
        log.warning(
            "slack post failed, will retry",
            extra={
                "notification_id": n.id,
                "status": status,
                "reason": reason,
                "attempts": n.attempts,
                "retry_in_s": round(delay, 1),
                "pending": len(self.pending),
            },
        )
        return False

    async def _forget(self, n: Notification) -> None:
        self.pending.pop(n.id, None)
        if self.outbox is None:
            return
        try:
            await self.outbox.done(n.id)
        except Exception as exc:
            # Slack has it; the worst case is a repeat of this message after a restart.
            log.warning(
                "outbox tombstone failed",
                extra={"notification_id": n.id, "exc_type": type(exc).__name__},
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        self._session = None
        self._clients.clear()
