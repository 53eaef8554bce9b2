"""Notices to the people a case or a contest concerns, as the person reads them.

Cases (on approval and closing, unless under legal hold) and contest decisions write one row
to ``notifications`` (trustlog.governance.cases.insert_notification). The person concerned
reads them with ``trustlog notices`` through their own ClickHouse login: the row policy on
``notifications`` (trustlog.governance.roles.employee_notice_filter) decides which are theirs,
so nothing here filters by person.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# What each kind of notice is about, in the words the person reads.
KIND_LABELS = {
    "case_opened": "case opened",
    "case_closed": "case closed",
    "contest_resolved": "contest decided",
}
MAX_NOTICES = 1000


@dataclass(frozen=True)
class Notice:
    notification_id: str
    created_at: datetime
    kind: str
    label: str
    # "you" for a notice to one of your pseudonyms, else "team X" / "tool X"
    addressed_to: str
    case_id: str
    contest_id: str
    message: str


def _addressed_to(recipient_kind: str, recipient: str) -> str:
    return "you" if recipient_kind == "pseudonym" else f"{recipient_kind} {recipient}"


def own_notices(employee_client: Any, database: str, limit: int = 200) -> list[Notice]:
    """The reader's notices, newest first, read as the reader (their row policy)."""
    res = employee_client.query(
        "SELECT notification_id, created_at, toString(kind), toString(recipient_kind), "
        f"recipient, case_id, contest_id, message FROM {database}.notifications FINAL "
        "ORDER BY created_at DESC, notification_id LIMIT {n:UInt32}",
        parameters={"n": max(1, min(limit, MAX_NOTICES))},
    )
    out = []
    for nid, at, kind, rkind, recipient, case_id, contest_id, message in res.result_rows:
        created = at.replace(tzinfo=UTC) if at.tzinfo is None else at
        out.append(
            Notice(
                notification_id=nid,
                created_at=created,
                kind=kind,
                label=KIND_LABELS.get(kind, kind.replace("_", " ")),
                addressed_to=_addressed_to(rkind, recipient),
                case_id=case_id,
                contest_id=contest_id,
                message=message,
            )
        )
    return out
