"""The unapproved-tool rule: usage of a tool not on the team's approved list.

Raised by the alerts service rather than the aggregator: the alerts service reads the
hourly spend rollup (team, tool, requests, cost; no pseudonyms) every
``unapproved_tool_check_seconds`` and turns usage of an unapproved tool into an
``unapproved_tool`` signal on the signals topic, where it is processed like any other signal.
That sees every call (the rollup is fed by every event row) without a second full decode of
the redacted stream, and keeps the approved list, its rule and its routing in one service.
The price is latency: up to one check interval plus the aggregator's flush, which is fine
for a policy follow-up.

This module is pure: rows in, signal dicts out.
"""

from __future__ import annotations

import fnmatch
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

RULE = "unapproved_tool"
HOUR_MS = 3_600_000
EVERY_TEAM = "*"
_ID_NAMESPACE = uuid.UUID("2f1c6a4e-0b7d-4f7e-9a53-1f0d7f0e5c11")


class ApprovedToolsError(ValueError):
    """approved_tools.yaml is malformed; raised at load time."""


class ApprovedTools:
    def __init__(self, approved: Mapping[str, list[str]]) -> None:
        self.approved = {team: list(tools) for team, tools in approved.items()}

    @classmethod
    def from_dict(cls, data: Any) -> ApprovedTools:
        if not isinstance(data, Mapping) or not isinstance(data.get("approved"), Mapping):
            raise ApprovedToolsError("approved_tools: an 'approved' mapping is required")
        out: dict[str, list[str]] = {}
        for team, tools in data["approved"].items():
            if not isinstance(tools, list) or not all(isinstance(t, str) and t for t in tools):
                raise ApprovedToolsError(f"approved.{team}: must be a list of tool names")
            out[str(team)] = tools
        return cls(out)

    @classmethod
    def load(cls, path: Path) -> ApprovedTools:
        return cls.from_dict(yaml.safe_load(Path(path).read_text()) or {})

    def is_approved(self, team: str, tool: str) -> bool:
        patterns = self.approved.get(EVERY_TEAM, []) + self.approved.get(team, [])
        return any(fnmatch.fnmatchcase(tool, p) for p in patterns)


@dataclass(frozen=True)
class ToolUsage:
    """One row of the rollup query: a team's use of a tool in one hour."""

    team: str
    tool: str
    hour_ms: int
    requests: int
    cost_usd: Decimal


class UnapprovedToolWatch:
    """Emits a signal when an unapproved tool's usage in an hour grows.

    Usage that does not grow between checks emits nothing, so an idle unapproved tool does
    not feed the incident a signal per check. Signal ids derive from (team, tool, hour,
    requests): after a restart the first check repeats the last observation with the same
    id, which the incident book recognises as a replay.
    """

    def __init__(self, approved: ApprovedTools) -> None:
        self.approved = approved
        self._seen: dict[tuple[str, str, int], int] = {}

    def signals(self, rows: Iterable[ToolUsage], now_ms: int | None = None) -> list[dict[str, Any]]:
        now = int(time.time() * 1000) if now_ms is None else now_ms
        out = []
        for r in rows:
            if not r.team or self.approved.is_approved(r.team, r.tool):
                continue
            key = (r.team, r.tool, r.hour_ms)
            if r.requests <= self._seen.get(key, 0):
                continue
            self._seen[key] = r.requests
            out.append(
                {
                    "signal_id": str(
                        uuid.uuid5(_ID_NAMESPACE, f"{r.team}|{r.tool}|{r.hour_ms}|{r.requests}")
                    ),
                    "rule": RULE,
                    "team": r.team,
                    "tool": r.tool,
                    "model": "",
                    "window_start": r.hour_ms,
                    # The hour may still be running: its activity is known up to now.
                    "window_end": min(r.hour_ms + HOUR_MS, now),
                    "observed": float(r.requests),
                    "baseline": 0.0,
                    "threshold": 0.0,
                    "detected_at": now,
                    "user_pseudonym": None,
                    "evidence": {
                        "requests": str(r.requests),
                        "cost_usd": f"{r.cost_usd:.4f}",
                        "window_seconds": "3600",
                    },
                }
            )
        horizon = now - 3 * HOUR_MS
        for key in [k for k in self._seen if k[2] < horizon]:
            del self._seen[key]
        return out


def usage_query(database: str) -> str:
    """Tool usage per team and hour for the current and the previous hour, from the rollup."""
    return (
        "SELECT team, tool, toUnixTimestamp(hour) * 1000 AS hour_ms, sum(requests), "
        f"sum(cost_usd) FROM {database}.spend_hourly "
        "WHERE hour >= toStartOfHour(now() - INTERVAL 1 HOUR) GROUP BY team, tool, hour"
    )
