"""What producers send, validated before anything reaches the raw topic.

Validation errors are reported by field name and reason code only. Pydantic errors carry the
offending input and messages that can quote it; for prompt, reply or user_id that would be the
very content trustlog promises not to spread, so ``validation_errors`` keeps neither.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
)
from pydantic_core import PydanticCustomError

# Same default as IngestSettings.max_field_bytes; used when no validation context is given.
DEFAULT_MAX_FIELD_BYTES = 1024 * 1024
# Identifiers and labels are short by nature; a long one is a bug or content in disguise.
IDENT_MAX_BYTES = 256
EMAIL_MAX_BYTES = 320
FLAG_MAX_BYTES = 128
MAX_POLICY_FLAGS = 64
ATTR_KEY_MAX_BYTES = 128
ATTR_VALUE_MAX_BYTES = 4096
MAX_ATTRIBUTES = 64
# Unknown field names are echoed in errors; cap them in case a client sends text as a key.
ERROR_FIELD_MAX_CHARS = 64

LONG_MAX = 2**63 - 1
INT_MAX = 2**31 - 1


class TaskLabel(StrEnum):
    drafting = "drafting"
    research = "research"
    coding = "coding"
    support = "support"
    data_cleanup = "data_cleanup"
    other = "other"


class CallStatus(StrEnum):
    ok = "ok"
    error = "error"
    blocked = "blocked"


def _max_field_bytes(info: ValidationInfo) -> int:
    ctx = info.context
    if isinstance(ctx, dict):
        cap = ctx.get("max_field_bytes")
        if isinstance(cap, int) and cap > 0:
            return cap
    return DEFAULT_MAX_FIELD_BYTES


def _byte_capped(static_cap: int | None) -> AfterValidator:
    """UTF-8 byte cap (Avro, Kafka and the settings all count bytes, not characters).

    ``static_cap=None`` means "content": only the configured max_field_bytes applies.
    """

    def check(v: str, info: ValidationInfo) -> str:
        configured = _max_field_bytes(info)
        cap = configured if static_cap is None else min(static_cap, configured)
        # ASCII: bytes == chars, no surrogates. Over the cap in chars: over it in bytes too.
        if v.isascii() or len(v) > cap:
            size = len(v)
        else:
            try:
                size = len(v.encode("utf-8"))
            except UnicodeEncodeError:  # lone surrogates: cannot be written as Avro string
                raise PydanticCustomError("invalid_utf8", "string is not valid UTF-8") from None
        if size > cap:
            raise PydanticCustomError("string_too_long", "string exceeds {cap} bytes", {"cap": cap})
        return v

    return AfterValidator(check)


def _parse_event_id(v: Any) -> Any:
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, str):
        # event_id is kept for 60 days and shown to people; only a UUID guarantees it
        # carries no text.
        try:
            if len(v) <= 45:
                return str(uuid.UUID(v))
        except ValueError:
            pass
        raise PydanticCustomError("invalid_uuid", "event_id must be a UUID")
    return v  # let the str type check report the wrong type


def _parse_event_time(v: Any) -> Any:
    if isinstance(v, bool):
        raise PydanticCustomError("invalid_event_time", "event_time must be ISO-8601 or epoch ms")
    if isinstance(v, int | float):
        # Epoch milliseconds (pydantic alone would guess seconds vs ms from the magnitude).
        try:
            return datetime.fromtimestamp(v / 1000.0, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise PydanticCustomError("invalid_event_time", "event_time out of range") from None
    if isinstance(v, str):
        if len(v) > 64:
            raise PydanticCustomError("invalid_event_time", "event_time must be ISO-8601")
        try:
            v = datetime.fromisoformat(v)
        except ValueError:
            raise PydanticCustomError("invalid_event_time", "event_time must be ISO-8601") from None
    if isinstance(v, datetime):
        if v.tzinfo is None or v.utcoffset() is None:
            # A naive time is usually local time on the producer; guessing UTC would shift
            # spend into the wrong hour without anyone noticing.
            raise PydanticCustomError("timezone_required", "event_time needs a UTC offset")
        try:
            return v.astimezone(UTC)
        except (OverflowError, ValueError):
            raise PydanticCustomError("invalid_event_time", "event_time out of range") from None
    raise PydanticCustomError("invalid_event_time", "event_time must be ISO-8601 or epoch ms")


def _now() -> datetime:
    return datetime.now(UTC)


def _new_event_id() -> str:
    return str(uuid.uuid4())


Ident = Annotated[str, Field(strict=True, min_length=1), _byte_capped(IDENT_MAX_BYTES)]
OptIdent = Annotated[str, Field(strict=True), _byte_capped(IDENT_MAX_BYTES)] | None
Email = Annotated[str, Field(strict=True), _byte_capped(EMAIL_MAX_BYTES)] | None
Content = Annotated[str, Field(strict=True), _byte_capped(None)] | None
Flag = Annotated[str, Field(strict=True), _byte_capped(FLAG_MAX_BYTES)]
AttrKey = Annotated[str, Field(strict=True), _byte_capped(ATTR_KEY_MAX_BYTES)]
AttrValue = Annotated[str, Field(strict=True), _byte_capped(ATTR_VALUE_MAX_BYTES)]
Long = Annotated[int, Field(strict=True, ge=0, le=LONG_MAX)]
Int32 = Annotated[int, Field(strict=True, ge=0, le=INT_MAX)]


class UsageEventIn(BaseModel):
    """One model call as a producer reports it: raw_event.v1 minus ``producer``.

    ``producer`` is not a field: ingest stamps it from the API key (the SDK from its config),
    so sending it is rejected like any other unknown field.
    Validate with ``UsageEventIn.model_validate(data, context={"max_field_bytes": n})``.
    """

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    event_id: Annotated[str, BeforeValidator(_parse_event_id)] = Field(
        default_factory=_new_event_id
    )
    event_time: Annotated[datetime, BeforeValidator(_parse_event_time)] = Field(
        default_factory=_now
    )
    tool: Ident
    model: Ident
    provider: OptIdent = None
    workspace: OptIdent = None
    user_id: Ident
    user_email: Email = None
    team: OptIdent = None
    task_label: TaskLabel = TaskLabel.other
    input_tokens: Long
    output_tokens: Long
    cached_tokens: Long = 0
    reasoning_tokens: Long = 0
    status: CallStatus = CallStatus.ok
    retry_count: Int32 = 0
    policy_flags: Annotated[list[Flag], Field(max_length=MAX_POLICY_FLAGS)] = Field(
        default_factory=list
    )
    latency_ms: Long | None = None
    client_ip: OptIdent = None
    prompt: Content = None
    reply: Content = None
    attributes: Annotated[dict[AttrKey, AttrValue], Field(max_length=MAX_ATTRIBUTES)] = Field(
        default_factory=dict
    )


def to_raw_record(ev: UsageEventIn, producer: str) -> dict[str, Any]:
    """The raw_event.v1 record for ``raw_codec().encode``, with the trusted producer id."""
    return {
        "event_id": ev.event_id,
        "event_time": ev.event_time,
        "producer": producer,
        "tool": ev.tool,
        "model": ev.model,
        "provider": ev.provider,
        "workspace": ev.workspace,
        "user_id": ev.user_id,
        "user_email": ev.user_email,
        "team": ev.team,
        "task_label": ev.task_label.value,
        "input_tokens": ev.input_tokens,
        "output_tokens": ev.output_tokens,
        "cached_tokens": ev.cached_tokens,
        "reasoning_tokens": ev.reasoning_tokens,
        "status": ev.status.value,
        "retry_count": ev.retry_count,
        "policy_flags": list(ev.policy_flags),
        "latency_ms": ev.latency_ms,
        "client_ip": ev.client_ip,
        "prompt": ev.prompt,
        "reply": ev.reply,
        "attributes": dict(ev.attributes),
    }


def validation_errors(exc: ValidationError, index: int | None = None) -> list[dict[str, Any]]:
    """``[{"index"?, "field", "reason"}]`` for a ValidationError, without any input value.

    Only the top-level field name and pydantic's error type are kept: messages, context and
    nested locations (attribute keys, list items) can all quote what the client sent.
    """
    out: list[dict[str, Any]] = []
    seen: set[tuple[str | None, str]] = set()
    for err in exc.errors(include_url=False, include_context=False, include_input=False):
        loc = err.get("loc") or ()
        field = loc[0] if loc and isinstance(loc[0], str) else None
        if field is not None and len(field) > ERROR_FIELD_MAX_CHARS:
            field = field[:ERROR_FIELD_MAX_CHARS]
        reason = str(err.get("type", "invalid"))
        if (field, reason) in seen:
            continue
        seen.add((field, reason))
        item: dict[str, Any] = {"field": field, "reason": reason}
        if index is not None:
            item = {"index": index, **item}
        out.append(item)
    return out
