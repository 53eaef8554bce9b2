"""Streaming signal rules over redacted events. Pure logic: events in, signal dicts out.

Windows are on event time, so a replay or a late batch lands in the window it belongs to.
The spike rule compares the spend of the current window of one team x tool with the median
of its previous windows (missing windows count as zero) and fires while the window is still
open, as soon as spend crosses ``max(factor * baseline, min_usd)``: the minimum absolute
amount keeps small teams from being noise. Each rule fires at most once per key and window;
the alerts service folds repeated windows into one incident.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

SECURITY_RULES = frozenset({"sensitive_data", "policy_flag", "blocked_action"})


def _signal(
    rule: str,
    team: str,
    tool: str,
    window_start_ms: int,
    window_ms: int,
    observed: float,
    *,
    baseline: float = 0.0,
    threshold: float = 0.0,
    model: str = "",
    user_pseudonym: str | None = None,
    evidence: dict[str, str] | None = None,
) -> dict[str, Any]:
    if rule not in SECURITY_RULES:
        user_pseudonym = None  # cost and reliability signals never name a person
    return {
        "signal_id": str(uuid.uuid4()),
        "rule": rule,
        "team": team,
        "tool": tool,
        "model": model,
        "window_start": window_start_ms,
        "window_end": window_start_ms + window_ms,
        "observed": float(observed),
        "baseline": float(baseline),
        "threshold": float(threshold),
        "detected_at": int(time.time() * 1000),
        "user_pseudonym": user_pseudonym,
        "evidence": evidence or {},
    }


@dataclass
class _Series:
    windows: dict[int, Decimal] = field(default_factory=dict)
    fired: set[int] = field(default_factory=set)
    latest: int = 0


class SpikeDetector:
    def __init__(
        self,
        window_s: int = 60,
        baseline_windows: int = 10,
        factor: float = 2.0,
        min_usd: float = 5.0,
    ) -> None:
        self.window_ms = window_s * 1000
        self.n = baseline_windows
        self.factor = Decimal(str(factor))
        self.min_usd = Decimal(str(min_usd))
        self._series: dict[tuple[str, str], _Series] = defaultdict(_Series)
        self._touched: set[tuple[tuple[str, str], int]] = set()

    def observe(self, team: str, tool: str, event_time_ms: int, cost: Decimal) -> None:
        w = event_time_ms - event_time_ms % self.window_ms
        s = self._series[(team, tool)]
        s.windows[w] = s.windows.get(w, Decimal(0)) + cost
        if w > s.latest:
            s.latest = w
            horizon = w - (self.n + 2) * self.window_ms
            for old in [k for k in s.windows if k < horizon]:
                del s.windows[old]
            s.fired = {k for k in s.fired if k >= horizon}
        self._touched.add(((team, tool), w))

    def baseline(self, key: tuple[str, str], w: int) -> Decimal:
        s = self._series[key]
        prev = [s.windows.get(w - i * self.window_ms, Decimal(0)) for i in range(1, self.n + 1)]
        return Decimal(statistics.median(prev))

    def evaluate(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for key, w in sorted(self._touched, key=lambda kw: kw[1]):
            s = self._series[key]
            if w in s.fired or w not in s.windows:
                continue
            observed = s.windows[w]
            base = self.baseline(key, w)
            threshold = max(self.factor * base, self.min_usd)
            if observed >= threshold:
                s.fired.add(w)
                out.append(
                    _signal(
                        "cost_spike",
                        key[0],
                        key[1],
                        w,
                        self.window_ms,
                        float(observed),
                        baseline=float(base),
                        threshold=float(threshold),
                        evidence={
                            "window_spend_usd": f"{observed:.4f}",
                            "baseline_median_usd": f"{base:.4f}",
                            "baseline_windows": str(self.n),
                            "window_seconds": str(self.window_ms // 1000),
                        },
                    )
                )
        self._touched.clear()
        return out


class OncePerWindow:
    """Emit one signal per (rule, key, window) for event-level rules, with a running count.

    Sensitive data, policy flags, blocked actions and unknown models can arrive thousands of
    times a minute; one signal per window is enough for the alerts service to open or update
    an incident, and keeps the signals topic small.
    """

    def __init__(self, window_s: int = 60) -> None:
        self.window_ms = window_s * 1000
        self._seen: dict[tuple[str, str, str, str, int], int] = {}
        self._latest = 0

    def hit(
        self,
        rule: str,
        team: str,
        tool: str,
        event_time_ms: int,
        *,
        detail: str = "",
        model: str = "",
        user_pseudonym: str | None = None,
        evidence: dict[str, str] | None = None,
    ) -> dict[str, Any] | None:
        w = event_time_ms - event_time_ms % self.window_ms
        key = (rule, team, tool, detail, w)
        n = self._seen.get(key, 0) + 1
        self._seen[key] = n
        if w > self._latest:
            self._latest = w
            horizon = w - 10 * self.window_ms
            for k in [k for k in self._seen if k[4] < horizon]:
                del self._seen[k]
        if n > 1:
            return None
        return _signal(
            rule,
            team,
            tool,
            w,
            self.window_ms,
            1.0,
            model=model,
            user_pseudonym=user_pseudonym,
            evidence=evidence,
        )
