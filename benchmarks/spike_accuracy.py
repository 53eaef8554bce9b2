"""Spike detection accuracy on a generated month of AI usage.

A month of individual priced calls from several teams and tools is fed, call by call and in
event-time order, to the aggregator's detectors (``services/aggregator/signals.py``) exactly
as the aggregator feeds them. The traffic has weekday/weekend and hour-of-day cycles in each
team's time zone, day-to-day and minute-to-minute activity noise, Poisson arrivals and
log-normal call costs. Spikes of known start, length and size are injected: spend spikes of a
team x tool or a team x task label (more calls, or pricier calls), error storms and retry
storms. The detector is warm-started from four weeks of generated hourly history (the
``spend_hourly`` restart path) and restarted once mid-month from the month's own hourly
rollup, as after a deploy.

Measured: recall per spike size and the delay from spike start to signal (event time),
precision and false signals per team-week, storms, budget thresholds against an independent
running sum, and what ``observe()`` costs per event.

    .venv/bin/python -m benchmarks.spike_accuracy [--days 30] [--seed 7] [--no-chart]
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import math
import os
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import itemgetter
from pathlib import Path
from typing import Any

from benchmarks._machine import describe_machine
from services.aggregator.baseline import HourlyRow
from services.aggregator.signals import (
    Budget,
    BudgetConfig,
    BudgetTracker,
    SpikeConfig,
    SpikeDetector,
    period_bounds,
)

MIN_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
RESULTS = Path(__file__).resolve().parent / "results"

# --------------------------------------------------------------------------- traffic model


@dataclass(frozen=True)
class Tool:
    name: str
    peak_per_min: float  # calls per minute at a weekday's busiest hour
    mean_cost: float  # USD per call
    cost_sigma: float  # log-normal shape of the call cost
    labels: tuple[tuple[str, float], ...]  # task label mix
    error_rate: float = 0.01
    retry_rate: float = 0.03  # retries per call


@dataclass(frozen=True)
class Team:
    name: str
    utc_offset_h: float
    tools: tuple[Tool, ...]
    weekend_share: float = 0.12  # weekend daytime activity relative to a weekday


# Volumes and prices of a large company: a support bot on a small model, a coding assistant
# on a big one, research agents with long contexts, small teams that spend cents a minute.
TEAMS: tuple[Team, ...] = (
    Team(
        "support",
        0,
        (
            Tool(
                "support-drafts",
                500,
                0.016,
                0.8,
                (("support", 0.85), ("drafting", 0.15)),
                error_rate=0.02,
            ),
            Tool("kb-search", 150, 0.004, 0.6, (("research", 0.7), ("support", 0.3))),
        ),
        weekend_share=0.35,
    ),
    Team(
        "engineering",
        -5,
        (
            Tool(
                "code-helper",
                400,
                0.045,
                1.0,
                (("coding", 0.85), ("research", 0.15)),
                error_rate=0.02,
            ),
            Tool("chat-assistant", 120, 0.01, 0.9, (("drafting", 0.4), ("coding", 0.6))),
        ),
    ),
    Team(
        "data",
        1,
        (
            Tool("data-cleaner", 300, 0.03, 0.9, (("data_cleanup", 0.9), ("other", 0.1))),
            Tool("chat-assistant", 40, 0.01, 0.9, (("research", 1.0),)),
        ),
    ),
    Team(
        "research",
        9,
        (
            Tool(
                "research-agent",
                180,
                0.06,
                1.1,
                (("research", 0.9), ("drafting", 0.1)),
                error_rate=0.03,
                retry_rate=0.05,
            ),
        ),
    ),
    Team(
        "marketing",
        1,
        (Tool("chat-assistant", 90, 0.015, 0.9, (("drafting", 0.8), ("research", 0.2))),),
    ),
    Team("sales", -8, (Tool("email-drafts", 110, 0.008, 0.7, (("drafting", 1.0),)),)),
    Team(
        "legal",
        0,
        (Tool("contract-review", 10, 0.15, 1.1, (("research", 0.7), ("drafting", 0.3))),),
    ),
    Team("finance-ops", 1, (Tool("chat-assistant", 20, 0.01, 0.8, (("data_cleanup", 1.0),)),)),
)

NIGHT = 0.04  # share of the peak rate that runs around the clock (automations)
DAY_SIGMA = 0.12  # day-to-day activity (log-normal)
AR_SIGMA, AR_MINUTES = 0.12, 20.0  # minute-to-minute activity: AR(1) in log, 20-min memory


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def activity(local_hour: float, weekend: bool, weekend_share: float) -> float:
    """Share of the peak rate at a local time: office hours, a lunch dip, quiet nights."""
    day = (
        _sig((local_hour - 8.75) / 0.6)
        * _sig((18.0 - local_hour) / 0.8)
        * (1.0 - 0.25 * math.exp(-(((local_hour - 12.75) / 0.6) ** 2)))
    )
    if weekend:
        day *= weekend_share
    return NIGHT + (1.0 - NIGHT) * day


@dataclass
class Injection:
    team: str
    dim: str  # "tool" | "task"
    target: str  # tool name or task label
    kind: str  # "spend" | "errors" | "retries"
    mode: str  # spend: "calls" (more calls) | "cost" (pricier calls)
    start_ms: int
    end_ms: int
    factor: float
    base_usd_per_min: float = 0.0  # ground truth just before the start
    base_calls_per_min: float = 0.0
    base_share: float = 0.0  # errors (retries) per call before the storm
    detected_ms: int | None = None
    detected_rule: str = ""


@dataclass
class BenchConfig:
    days: int = 30
    history_weeks: int = 4
    start: datetime = datetime(2026, 6, 1, tzinfo=UTC)  # a Monday
    seed: int = 7
    teams: tuple[Team, ...] = TEAMS
    spike_gap_hours: float = 6.0  # mean time between injections per team (plus min_gap)
    min_gap_hours: float = 3.0
    office_share: float = 0.75  # share of injections moved into the team's office hours
    kind_weights: tuple[float, float, float] = (0.7, 0.15, 0.15)  # spend, errors, retries
    spend_sizes: tuple[float, ...] = (1.5, 2.0, 2.0, 2.0, 2.0, 3.0, 5.0)
    restart_at_day: float | None = 15.5  # restart the detector (warm start from the rollup)
    spike: SpikeConfig = field(default_factory=SpikeConfig)
    # (team, tool): per-minute trace of that key on the first day with a tool spike on it
    trace: tuple[str, str] | None = None
    measure_overhead: bool = True


@dataclass
class Results:
    cfg: BenchConfig
    injections: list[Injection]
    signals: list[dict[str, Any]]
    budget_signals: list[dict[str, Any]]
    budget_expected: list[tuple[str, str, int, float, int]]  # team, period, start, pct, t_ms
    events: int
    observe_s: float
    budget_s: float
    loop_s: float
    keys: int
    trace: list[tuple[int, dict[str, Any]]]  # every 5 s (ms): SpikeDetector.state() then
    trace_day: int
    rates: dict[tuple[str, str], float]  # mean $/min per key over the month


class Traffic:
    """The generated calls, minute by minute, with the injections applied."""

    def __init__(self, cfg: BenchConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.start_ms = int(cfg.start.timestamp() * 1000)
        self.hist_minutes = cfg.history_weeks * 7 * 1440
        self.origin_ms = self.start_ms - self.hist_minutes * MIN_MS
        self.minutes = self.hist_minutes + cfg.days * 1440
        self.keys = [(ti, j) for ti, t in enumerate(cfg.teams) for j in range(len(t.tools))]
        self.lam: dict[tuple[int, int], list[float]] = {k: self._rates(*k) for k in self.keys}
        self.cost_tables = {
            s: self._lognormal_table(s)
            for s in {tl.cost_sigma for t in cfg.teams for tl in t.tools}
        }
        self.injections = self._inject()
        self.by_team: dict[str, list[Injection]] = defaultdict(list)
        for inj in self.injections:
            self.by_team[inj.team].append(inj)

    def _rates(self, ti: int, j: int) -> list[float]:
        team, tool = self.cfg.teams[ti], self.cfg.teams[ti].tools[j]
        rng = random.Random(f"{self.cfg.seed}-{team.name}-{tool.name}")
        day_rng = random.Random(f"{self.cfg.seed}-{team.name}-days")
        day_factor = [
            math.exp(day_rng.gauss(0.0, DAY_SIGMA)) for _ in range(self.minutes // 1440 + 2)
        ]
        origin_day = self.origin_ms // DAY_MS
        rho = math.exp(-1.0 / AR_MINUTES)
        innov = AR_SIGMA * math.sqrt(1.0 - rho * rho)
        x = rng.gauss(0.0, AR_SIGMA)
        out = []
        for m in range(self.minutes):
            x = rho * x + rng.gauss(0.0, innov)
            local = m + int(team.utc_offset_h * 60)
            local_day = local // 1440
            weekend = (origin_day + local_day + 3) % 7 >= 5  # 1970-01-01 was a Thursday
            a = activity((local % 1440) / 60.0, weekend, team.weekend_share)
            out.append(tool.peak_per_min * a * day_factor[max(0, local_day)] * math.exp(x))
        return out

    @staticmethod
    def _lognormal_table(sigma: float) -> list[float]:
        r = random.Random(int(sigma * 1000))
        return [math.exp(r.gauss(0.0, sigma) - sigma * sigma / 2.0) for _ in range(1 << 16)]

    def key_rate(self, ti: int, j: int, m: int) -> tuple[float, float]:
        """(calls, USD) per minute of one team x tool at minute index ``m``."""
        lam = self.lam[(ti, j)][m]
        return lam, lam * self.cfg.teams[ti].tools[j].mean_cost

    def _inject(self) -> list[Injection]:
        cfg, rng = self.cfg, self.rng
        out: list[Injection] = []
        end_ms = self.start_ms + cfg.days * DAY_MS
        for ti, team in enumerate(cfg.teams):
            t = self.start_ms + int(rng.uniform(1, cfg.spike_gap_hours) * HOUR_MS)
            while t < end_ms - HOUR_MS:
                if rng.random() < cfg.office_share:
                    t = self._office_hours(team, t, rng)
                    if t >= end_ms - HOUR_MS:
                        break
                kind = rng.choices(["spend", "errors", "retries"], cfg.kind_weights)[0]
                dim = "tool" if rng.random() < 0.65 else "task"
                j = rng.randrange(len(team.tools))
                target = team.tools[j].name
                if dim == "task":
                    labels = sorted({lb for tl in team.tools for lb, _ in tl.labels})
                    target = rng.choice(labels)
                dur = math.exp(rng.uniform(math.log(3), math.log(30))) * MIN_MS
                if kind == "spend":
                    factor = rng.choice(cfg.spend_sizes)
                    mode = "calls" if rng.random() < 0.7 else "cost"
                elif kind == "errors":
                    factor, mode = rng.choice([3.0, 5.0, 10.0, 20.0]), "share"
                else:
                    factor, mode = rng.choice([4.0, 8.0, 15.0]), "share"
                inj = Injection(team.name, dim, target, kind, mode, t, t + int(dur), factor)
                self._ground_truth(ti, inj)
                out.append(inj)
                gap = cfg.min_gap_hours + rng.expovariate(1.0 / cfg.spike_gap_hours)
                t = inj.end_ms + int(gap * HOUR_MS)
        return out

    @staticmethod
    def _office_hours(team: Team, t: int, rng: random.Random) -> int:
        """The next weekday 09:00-17:00 (team local time) moment at or after ``t``."""
        off = int(team.utc_offset_h * HOUR_MS)
        local = t + off
        while True:
            day0 = local - local % DAY_MS
            weekday = (day0 // DAY_MS + 3) % 7  # 1970-01-01 was a Thursday
            lo, hi = day0 + 9 * HOUR_MS, day0 + 17 * HOUR_MS
            if weekday < 5 and local < hi:
                local = max(local, lo + int(rng.uniform(0, 8) * HOUR_MS))
                if local < hi:
                    return local - off
            local = day0 + DAY_MS

    def _ground_truth(self, ti: int, inj: Injection) -> None:
        m = (inj.start_ms - self.origin_ms) // MIN_MS
        calls = usd = share = 0.0
        for j, tool in enumerate(self.cfg.teams[ti].tools):
            c, u = self.key_rate(ti, j, m)
            if inj.dim == "tool":
                w = 1.0 if tool.name == inj.target else 0.0
            else:
                w = dict(tool.labels).get(inj.target, 0.0)
            base = tool.error_rate if inj.kind == "errors" else tool.retry_rate
            calls += c * w
            usd += u * w
            share += c * w * base
        inj.base_calls_per_min, inj.base_usd_per_min = calls, usd
        inj.base_share = share / calls if calls else 0.0

    def history_rows(self) -> list[HourlyRow]:
        """Hourly rollup rows of the weeks before the month, as ``spend_hourly`` holds them."""
        rng = random.Random(f"{self.cfg.seed}-history")
        rows = []
        for ti, j in self.keys:
            team, tool = self.cfg.teams[ti], self.cfg.teams[ti].tools[j]
            lam = self.lam[(ti, j)]
            for h in range(self.hist_minutes // 60):
                calls = sum(lam[h * 60 : h * 60 + 60])
                cost = calls * tool.mean_cost * math.exp(rng.gauss(0.0, 0.05))
                for label, w in tool.labels:
                    rows.append(
                        HourlyRow(
                            self.origin_ms + h * HOUR_MS,
                            team.name,
                            tool.name,
                            label,
                            cost * w,
                            round(calls * w),
                            round(calls * w * tool.error_rate),
                            round(calls * w * tool.retry_rate),
                        )
                    )
        return rows

    def hour_events(self, hour: int) -> list[tuple[int, str, str, str, float, bool, int]]:
        """Every call of month hour ``hour`` (0 = the month's first), sorted by event time."""
        rnd, bits = self.rng.random, self.rng.getrandbits
        evs: list[tuple[int, str, str, str, float, bool, int]] = []
        h_start = self.start_ms + hour * HOUR_MS
        for ti, team in enumerate(self.cfg.teams):
            active = [
                i
                for i in self.by_team.get(team.name, ())
                if i.start_ms < h_start + HOUR_MS and i.end_ms > h_start
            ]
            for j, tool in enumerate(team.tools):
                lam_arr = self.lam[(ti, j)]
                table = self.cost_tables[tool.cost_sigma]
                labels = [lb for lb, _ in tool.labels]
                cum = list(_cumulative([w for _, w in tool.labels]))
                mean, perr, pret = tool.mean_cost, tool.error_rate, tool.retry_rate
                m0 = self.hist_minutes + hour * 60
                for mi in range(60):
                    lam = lam_arr[m0 + mi]
                    base = h_start + mi * MIN_MS
                    n = _poisson(self.rng, lam)
                    for _ in range(n):
                        u = rnd()
                        k = 0
                        while u > cum[k]:
                            k += 1
                        evs.append(
                            (
                                base + int(rnd() * MIN_MS),
                                team.name,
                                tool.name,
                                labels[k],
                                mean * table[bits(16)],
                                rnd() < perr,
                                1 if rnd() < pret else 0,
                            )
                        )
                    if active:
                        self._apply(active, tool, labels, cum, lam, base, evs, n)
        evs.sort(key=itemgetter(0))
        return evs

    def _apply(
        self,
        active: list[Injection],
        tool: Tool,
        labels: list[str],
        cum: list[float],
        lam: float,
        base: int,
        evs: list[tuple[int, str, str, str, float, bool, int]],
        n: int,
    ) -> None:
        """Change the last ``n`` events (one minute of one tool) by the active injections."""
        rnd, bits = self.rng.random, self.rng.getrandbits
        table = self.cost_tables[tool.cost_sigma]
        weights = dict(tool.labels)
        for inj in active:
            lo, hi = max(inj.start_ms, base), min(inj.end_ms, base + MIN_MS)
            if lo >= hi:
                continue
            if inj.dim == "tool" and inj.target != tool.name:
                continue
            if inj.dim == "task" and inj.target not in weights:
                continue

            def hit(
                ev: tuple[int, str, str, str, float, bool, int],
                inj: Injection = inj,
                lo: int = lo,
                hi: int = hi,
            ) -> bool:
                return lo <= ev[0] < hi and (inj.dim == "tool" or ev[3] == inj.target)

            first = len(evs) - n
            if inj.kind == "spend" and inj.mode == "cost":
                for i in range(first, len(evs)):
                    ev = evs[i]
                    if hit(ev):
                        evs[i] = (*ev[:4], ev[4] * inj.factor, *ev[5:])
            elif inj.kind == "spend":
                w = 1.0 if inj.dim == "tool" else weights[inj.target]
                extra = _poisson(self.rng, (inj.factor - 1.0) * lam * w * (hi - lo) / MIN_MS)
                for _ in range(extra):
                    if inj.dim == "tool":
                        u, k = rnd(), 0
                        while u > cum[k]:
                            k += 1
                        label = labels[k]
                    else:
                        label = inj.target
                    evs.append(
                        (
                            lo + int(rnd() * (hi - lo)),
                            inj.team,
                            tool.name,
                            label,
                            tool.mean_cost * table[bits(16)],
                            rnd() < tool.error_rate,
                            1 if rnd() < tool.retry_rate else 0,
                        )
                    )
            else:
                for i in range(first, len(evs)):
                    ev = evs[i]
                    if not hit(ev):
                        continue
                    if inj.kind == "errors":
                        err = rnd() < min(0.95, tool.error_rate * inj.factor)
                        evs[i] = (*ev[:5], err, ev[6])
                    else:
                        mean_r = tool.retry_rate * inj.factor
                        evs[i] = (*ev[:6], _poisson(self.rng, mean_r))


def _cumulative(ws: list[float]) -> list[float]:
    total, acc, out = sum(ws), 0.0, []
    for w in ws:
        acc += w / total
        out.append(acc)
    out[-1] = 1.0
    return out


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam < 30:
        rnd = rng.random
        limit, k, p = math.exp(-lam), 0, rnd()
        while p > limit:
            k += 1
            p *= rnd()
        return k
    # normal approximation; the error is far below the traffic's own noise at these rates
    return max(0, round(rng.gauss(lam, math.sqrt(lam))))


# --------------------------------------------------------------------------- the run


def budgets_for(teams: tuple[Team, ...], traffic: Traffic, days: int) -> BudgetConfig:
    """Monthly budgets that the month's spend crosses (some teams over, some under) and one
    weekly budget, so every threshold is exercised and each must fire once per period."""
    out = []
    for i, team in enumerate(teams):
        usd = 0.0
        for j, tool in enumerate(team.tools):
            lam = traffic.lam[(i, j)][traffic.hist_minutes :]
            usd += sum(lam) * tool.mean_cost
        usd *= 30 / max(days, 1)
        out.append(Budget(team.name, "month", round(usd * (0.85 + 0.1 * (i % 4)), 2)))
    if teams:
        t0 = teams[0]
        weekly = sum(
            sum(traffic.lam[(0, j)][traffic.hist_minutes :]) * tl.mean_cost
            for j, tl in enumerate(t0.tools)
        ) / max(days / 7, 1)
        out.append(Budget(t0.name, "week", round(weekly * 0.95, 2)))
    return BudgetConfig(tuple(out), (80.0, 90.0, 100.0))


def run(cfg: BenchConfig) -> Results:
    traffic = Traffic(cfg)
    det = SpikeDetector(cfg.spike)
    history = traffic.history_rows()
    det.warm_start(history, traffic.start_ms)
    bcfg = budgets_for(cfg.teams, traffic, cfg.days)
    budgets = BudgetTracker(bcfg)
    budgets.warm_start([r for r in history if r.hour_ms >= traffic.start_ms])  # none: new month
    expected = _BudgetTruth(bcfg)
    trace_day = -1
    if cfg.trace is not None:
        team_t, tool_t = cfg.trace
        days = [
            (i.start_ms - traffic.start_ms) // DAY_MS
            for i in traffic.injections
            if (i.team, i.dim, i.target, i.kind) == (team_t, "tool", tool_t, "spend")
            and i.factor >= 2
        ]
        trace_day = min(days, default=0)

    signals: list[dict[str, Any]] = []
    budget_signals: list[dict[str, Any]] = []
    rollup: dict[tuple[int, str, str, str], list[float]] = defaultdict(lambda: [0.0, 0, 0, 0])
    restart_hour = int(cfg.restart_at_day * 24) if cfg.restart_at_day is not None else -1
    observe_s = budget_s = loop_s = 0.0
    events = loop_events = 0
    trace: list[tuple[int, dict[str, Any]]] = []
    spend: dict[tuple[str, str], float] = defaultdict(float)

    def noop(*_: Any) -> None:
        return None

    for hour in range(cfg.days * 24):
        if hour == restart_hour:
            # A deploy: the detector's memory is gone; it rebuilds from the hourly rollup.
            now = traffic.start_ms + hour * HOUR_MS
            rows = history + [
                HourlyRow(h, tm, tl, lb, v[0], int(v[1]), int(v[2]), int(v[3]))
                for (h, tm, tl, lb), v in rollup.items()
            ]
            det = SpikeDetector(cfg.spike)
            det.warm_start(rows, now)
            budgets = BudgetTracker(bcfg)
            budgets.warm_start([r for r in rows if r.hour_ms >= traffic.start_ms])
        evs = traffic.hour_events(hour)
        events += len(evs)
        h_ms = traffic.start_ms + hour * HOUR_MS
        tracing = cfg.trace is not None and hour // 24 == trace_day
        obs = det.observe
        t0 = time.perf_counter()
        if tracing and cfg.trace is not None:
            team_t, tool_t = cfg.trace[0], cfg.trace[1]
            times = [e[0] for e in evs]
            step = 5_000  # sample the traced key every 5 s
            for si in range(HOUR_MS // step):
                lo = bisect.bisect_left(times, h_ms + si * step)
                hi = bisect.bisect_left(times, h_ms + (si + 1) * step)
                for t, team, tool, label, cost, err, ret in evs[lo:hi]:
                    obs(team, tool, label, t, cost, err, ret)
                st = det.state(team_t, tool_t)
                if st is not None:
                    trace.append((h_ms + (si + 1) * step, st))
        else:
            for t, team, tool, label, cost, err, ret in evs:
                obs(team, tool, label, t, cost, err, ret)
        t1 = time.perf_counter()
        bobs = budgets.observe
        for t, team, _tool, _label, cost, _err, _ret in evs:
            bobs(team, t, cost)
        t2 = time.perf_counter()
        if cfg.measure_overhead and hour % 4 == 0:
            for t, team, tool, label, cost, err, ret in evs:
                noop(team, tool, label, t, cost, err, ret)
        t3 = time.perf_counter()
        observe_s += t1 - t0
        budget_s += t2 - t1
        if cfg.measure_overhead and hour % 4 == 0:
            loop_s += t3 - t2
            loop_events += len(evs)
        signals.extend(det.take())
        budget_signals.extend(budgets.take())
        for t, team, tool, label, cost, err, ret in evs:
            acc = rollup[(h_ms, team, tool, label)]
            acc[0] += cost
            acc[1] += 1
            acc[2] += err
            acc[3] += ret
            spend[(team, tool)] += cost
            expected.observe(team, t, cost)
    minutes = cfg.days * 1440
    return Results(
        cfg,
        traffic.injections,
        signals,
        budget_signals,
        expected.crossings,
        events,
        observe_s,
        budget_s,
        loop_s * events / max(loop_events, 1),  # sampled every 4th hour, scaled to all
        det.key_count(),
        trace,
        trace_day,
        {k: v / minutes for k, v in spend.items()},
    )


class _BudgetTruth:
    """Independent reference: a plain running sum per team and period, no early exits."""

    def __init__(self, cfg: BudgetConfig) -> None:
        self.cfg = cfg
        self.spent: dict[tuple[str, str, int], float] = defaultdict(float)
        self.crossings: list[tuple[str, str, int, float, int]] = []
        self.by_team: dict[str, list[Budget]] = defaultdict(list)
        for b in cfg.budgets:
            self.by_team[b.team].append(b)
        self.bounds: dict[tuple[str, str], tuple[int, int]] = {}

    def observe(self, team: str, t: int, cost: float) -> None:
        for b in self.by_team.get(team, ()):
            lo, hi = self.bounds.get((team, b.period), (0, 0))
            if not lo <= t < hi:
                lo, hi = self.bounds[(team, b.period)] = period_bounds(b.period, t)
            before = self.spent[(team, b.period, lo)]
            after = before + cost
            self.spent[(team, b.period, lo)] = after
            for pct in self.cfg.thresholds_percent:
                level = b.usd * pct / 100.0
                if before < level <= after:
                    self.crossings.append((team, b.period, lo, pct, t))


# --------------------------------------------------------------------------- scoring

KIND = {
    "cost_spike": "spend",
    "task_spend_spike": "spend",
    "error_storm": "errors",
    "task_error_storm": "errors",
    "retry_storm": "retries",
    "task_retry_storm": "retries",
}


@dataclass
class Score:
    per_kind: dict[str, dict[str, float]]
    false_by_team: dict[str, int]
    team_weeks: float
    spend_rows: list[dict[str, Any]]
    delays_2x: list[float]
    in_scope_2x: list[Injection]
    budget_ok: bool
    budget_detail: str


def _matches(sig: dict[str, Any], inj: Injection, grace_ms: int) -> bool:
    t = int(sig["window_end"])
    return (
        sig["team"] == inj.team
        and KIND[sig["rule"]] == inj.kind
        and inj.start_ms <= t <= inj.end_ms + grace_ms
    )


def in_scope(inj: Injection, cfg: SpikeConfig) -> bool:
    """Whether the target asks for this spike to be caught.

    Spend: the spiked key spent at least the minimum per window before the spike (smaller
    keys are the "small teams" the minimum keeps quiet). Storms: the storm brings at least
    twice the minimum count of errors (retries) into a window.
    """
    if inj.kind == "spend":
        return inj.base_usd_per_min * cfg.window_s / 60.0 >= cfg.min_usd
    storm = inj.base_calls_per_min * inj.base_share * inj.factor * cfg.window_s / 60.0
    return storm >= 2 * cfg.storm_min_count


def score(res: Results) -> Score:
    cfg = res.cfg.spike
    grace = cfg.window_s * 1000 + cfg.bucket_s * 1000
    by_team: dict[str, list[Injection]] = defaultdict(list)
    for inj in res.injections:
        inj.detected_ms, inj.detected_rule = None, ""
        by_team[inj.team].append(inj)
    false_by_team: dict[str, int] = {t.name: 0 for t in res.cfg.teams}
    tp_signals: dict[str, int] = defaultdict(int)
    fp_signals: dict[str, int] = defaultdict(int)
    for sig in sorted(res.signals, key=lambda s: int(s["window_end"])):
        kind = KIND[sig["rule"]]
        hit = [i for i in by_team[sig["team"]] if _matches(sig, i, grace)]
        if not hit:
            fp_signals[kind] += 1
            false_by_team[sig["team"]] += 1
            continue
        tp_signals[kind] += 1
        for inj in hit:
            if inj.detected_ms is None:
                inj.detected_ms = int(sig["window_end"])
                inj.detected_rule = sig["rule"]
    per_kind: dict[str, dict[str, float]] = {}
    for kind in ("spend", "errors", "retries"):
        injs = [i for i in res.injections if i.kind == kind]
        scoped = [i for i in injs if in_scope(i, cfg)]
        tp, fp = tp_signals[kind], fp_signals[kind]
        per_kind[kind] = {
            "injected": len(injs),
            "in_scope": len(scoped),
            "recall_in_scope": _ratio(sum(i.detected_ms is not None for i in scoped), len(scoped)),
            "recall_all": _ratio(sum(i.detected_ms is not None for i in injs), len(injs)),
            "signals": tp + fp,
            "false_signals": fp,
            "precision": _ratio(tp, tp + fp),
        }
    rows = []
    spend = [i for i in res.injections if i.kind == "spend"]
    for size in sorted({i.factor for i in spend}):
        for flag in (True, False):
            group = [i for i in spend if i.factor == size and in_scope(i, cfg) == flag]
            if not group:
                continue
            delays = [(i.detected_ms - i.start_ms) / 1000 for i in group if i.detected_ms]
            rows.append(
                {
                    "size": size,
                    "scope": "in scope" if flag else "below minimum",
                    "n": len(group),
                    "detected": len(delays),
                    "recall": _ratio(len(delays), len(group)),
                    "p50": _pct(delays, 50),
                    "p95": _pct(delays, 95),
                    "max": max(delays) if delays else float("nan"),
                    "within_60s": sum(d <= 60 for d in delays),
                }
            )
    in2 = [i for i in spend if i.factor >= 2.0 and in_scope(i, cfg)]
    delays_2x = [(i.detected_ms - i.start_ms) / 1000 for i in in2 if i.detected_ms]
    ok, detail = _check_budgets(res)
    return Score(
        per_kind,
        false_by_team,
        len(res.cfg.teams) * res.cfg.days / 7.0,
        rows,
        delays_2x,
        in2,
        ok,
        detail,
    )


def _check_budgets(res: Results) -> tuple[bool, str]:
    got = sorted(
        (
            s["team"],
            s["evidence"]["period"],
            int(s["window_start"]),
            float(s["evidence"]["threshold_percent"]),
            int(s["window_end"]),
        )
        for s in res.budget_signals
    )
    want = sorted(res.budget_expected)
    if got == want:
        return True, f"{len(got)} of {len(want)} threshold crossings, each once, at the exact event"
    return False, f"signals {got} != expected {want}"


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))]


# --------------------------------------------------------------------------- report


def _machine() -> str:
    return f"{describe_machine()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"


def _f(x: float, nd: int = 0) -> str:
    return "-" if isinstance(x, float) and math.isnan(x) else f"{x:.{nd}f}"


def report(res: Results, sc: Score, wall_s: float, chart: str | None) -> str:
    c = res.cfg.spike
    spend, errs, rets = sc.per_kind["spend"], sc.per_kind["errors"], sc.per_kind["retries"]
    fp_total = sum(sc.false_by_team.values())
    d2 = sc.delays_2x
    det = res.observe_s - res.loop_s
    lines = [
        "# Spike detection accuracy",
        "",
        f"Machine: {_machine()}. Command: `.venv/bin/python -m benchmarks.spike_accuracy "
        f"--days {res.cfg.days} --seed {res.cfg.seed}` ({wall_s:.0f} s wall).",
        "",
        f"Generated traffic: {res.cfg.days} days from {res.cfg.start.date()} (a Monday), "
        f"{len(res.cfg.teams)} teams, {sum(len(t.tools) for t in res.cfg.teams)} team x tool "
        f"keys, {res.events:,} individual calls fed in event-time order; office-hour and "
        "weekday/weekend cycles per team time zone, day-to-day (log-normal, sigma "
        f"{DAY_SIGMA}) and minute-to-minute (AR(1), sigma {AR_SIGMA}, {AR_MINUTES:.0f}-min "
        "memory) activity noise, Poisson arrivals, log-normal call costs. The detector is "
        f"warm-started from {res.cfg.history_weeks} weeks of hourly rollup rows and restarted "
        f"on day {res.cfg.restart_at_day} from the month's own rollup (as after a deploy).",
        "",
        f"Detector (defaults of `SpikeConfig`): 60-s window sliding in {c.bucket_s}-s steps; "
        f"expected spend = median of the last {c.level_minutes} minutes, adjusted by the same "
        f"hour of the week (median of up to {c.seasonal_weeks} weeks); fires at "
        f"{c.corroborated_factor} x expected when more calls ({c.factor} x and {c.z} sigma) or "
        f"pricier calls ({c.z + 1:g} sigma on the mean log cost) are certain, else at "
        f"max({c.factor} x expected, expected + {c.z} sigma), never below ${c.min_usd:g} per "
        f"window. {len(res.injections)} injections: spend spikes of sizes "
        f"{sorted(set(res.cfg.spend_sizes))} (more calls or pricier calls, 3-30 min, on a "
        "team x tool or a team x task label), error and retry storms; "
        f"{res.cfg.office_share:.0%} of them moved into the team's office hours, where the "
        "large keys are above the minimum.",
        "",
        "## Result",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| recall, spend doublings (>= 2x) in scope | {len(d2)} / {len(sc.in_scope_2x)} = "
        f"{_f(_ratio(len(d2), len(sc.in_scope_2x)), 3)} | 1 |",
        f"| delay spike start -> signal (event time), >= 2x in scope: p50 / p95 / max | "
        f"{_f(_pct(d2, 50))} / {_f(_pct(d2, 95))} / {_f(max(d2) if d2 else float('nan'))} s | "
        "max <= 60 s |",
        f"| false spend signals per team-week | {spend['false_signals']:.0f} / "
        f"{sc.team_weeks:.1f} = {spend['false_signals'] / sc.team_weeks:.2f} | < 1 |",
        f"| false signals per team-week, all rules | {fp_total} / {sc.team_weeks:.1f} = "
        f"{fp_total / sc.team_weeks:.2f} | < 1 |",
        f"| precision, spend signals | {_f(spend['precision'], 3)} "
        f"({spend['signals']:.0f} signals) | |",
        f"| recall, all spend spikes incl. 1.5x and below the minimum | "
        f"{_f(spend['recall_all'], 3)} | (information) |",
        f"| error storms ({errs['injected']:.0f}, {errs['in_scope']:.0f} in scope): recall in "
        f"scope / all, precision | {_f(errs['recall_in_scope'], 3)} / "
        f"{_f(errs['recall_all'], 3)}, {_f(errs['precision'], 3)} | |",
        f"| retry storms ({rets['injected']:.0f}, {rets['in_scope']:.0f} in scope): recall in "
        f"scope / all, precision | {_f(rets['recall_in_scope'], 3)} / "
        f"{_f(rets['recall_all'], 3)}, {_f(rets['precision'], 3)} | |",
        f"| budget thresholds (80/90/100 %, monthly + one weekly) | "
        f"{'exact' if sc.budget_ok else 'MISMATCH'}: {sc.budget_detail} | once per period |",
        f"| observe() cost per event (both dimensions, loop overhead removed) | "
        f"{det / res.events * 1e6:.2f} us | O(1) |",
        f"| budget tracker per event | {res.budget_s / res.events * 1e6:.2f} us | |",
        f"| keys held at the end, memory per key (tracemalloc) | {res.keys}, "
        f"{bytes_per_key() / 1024:.1f} KiB | bounded |",
        "",
        "In scope: the spiked key spent at least the minimum per window before the spike "
        "(smaller keys are the small teams the minimum keeps quiet; their spikes are caught "
        "only once the spike itself crosses the minimum). Delay is the event time of the call "
        "that crossed the threshold minus the spike's first call.",
        "",
        "## Spend spikes by size",
        "",
        "| size | scope | spikes | detected | recall | delay p50 s | p95 s | max s | <= 60 s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sc.spend_rows:
        lines.append(
            f"| {r['size']:g}x | {r['scope']} | {r['n']} | {r['detected']} | "
            f"{_f(r['recall'], 3)} | {_f(r['p50'])} | {_f(r['p95'])} | {_f(r['max'])} | "
            f"{r['within_60s']} |"
        )
    late = [
        i for i in sc.in_scope_2x if i.detected_ms is None or i.detected_ms - i.start_ms > 60_000
    ]
    if late:
        lines += ["", "In-scope spikes of 2x or more not signalled within 60 s:", ""]
        for i in late:
            d = (
                "missed"
                if i.detected_ms is None
                else f"{(i.detected_ms - i.start_ms) / 1000:.0f} s"
            )
            lines.append(
                f"- {d}: {i.team} {i.dim} `{i.target}`, {i.factor:g}x {i.mode} "
                f"({'pricier calls' if i.mode == 'cost' else 'more calls'}), "
                f"{i.base_calls_per_min:.0f} calls/min, ${i.base_usd_per_min:.2f}/min before, "
                f"starting {datetime.fromtimestamp(i.start_ms / 1000, UTC):%a %d %H:%M} UTC"
            )
    lines += [
        "",
        "## False signals by team",
        "",
        "| team | mean spend USD/min | false signals | per week |",
        "|---|---|---|---|",
    ]
    weeks = res.cfg.days / 7.0
    for t in res.cfg.teams:
        usd = sum(v for (tm, _), v in res.rates.items() if tm == t.name)
        n = sc.false_by_team[t.name]
        lines.append(f"| {t.name} | {usd:.2f} | {n} | {n / weeks:.2f} |")
    if chart:
        lines += ["", f"![spike detection]({chart})"]
    lines += [
        "",
        "## Limits",
        "",
        "- The 60-s guarantee is statistical: within one window a doubling must stand out "
        "from the key's own noise at under one false alarm a week. More calls are the easy "
        "case (counts are Poisson-quiet). Pricier calls are judged by the mean log cost per "
        "call; with widely spread prices (log-normal sigma 1.1) and ~100 calls a minute that "
        "test has roughly 85 % power within the first window, so such a doubling is sometimes "
        "signalled in the second minute (listed above when it happened). Keys under the "
        "minimum are not expected to fire until the spike itself crosses it.",
        "- The seasonal profile has hourly resolution (the rollup's), interpolated between "
        "hours. A scheduled job that jumps from nothing to full rate on the minute is not "
        "expected by it and fires on its first minutes; give such a job its own tool name "
        "or a higher minimum. The cost per call is not seasonally adjusted.",
        "- After a restart the level comes from the hourly rollup until a key has 3 live "
        "minutes (only 2.5x fires then); the call-count test uses its Poisson bound until 10 "
        "live minutes give a noise estimate. A key with no rollup history stays silent for its "
        "first 3 minutes.",
        "- State is per aggregator process. The redacted topic is keyed by team, so a team's "
        "calls meet in one process; after a rebalance the new owner knows that team only from "
        "its own start-up rebuild (hourly history), not the last minutes.",
    ]
    return "\n".join(lines) + "\n"


def bytes_per_key(n: int = 500) -> float:
    """Memory of one key's detector state, measured: n keys, one call each."""
    import tracemalloc

    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    d = SpikeDetector(SpikeConfig(task_dimension=False, max_keys=n + 10))
    for i in range(n):
        d.observe("team", f"tool-{i}", "other", 1_780_000_000_000 + i, 0.01)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    total = sum(s.size_diff for s in after.compare_to(before, "filename"))
    return total / n


def make_chart(res: Results, sc: Score, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = res.cfg.spike
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    # (a) recall of >= 2x spend spikes against the key's spend rate before the spike
    ax = axes[0][0]
    spend = [i for i in res.injections if i.kind == "spend" and i.factor >= 2.0]
    edges = [0, 0.5, 1, 2, 5, 10, 20, 1e9]
    xs, ys, ns = [], [], []
    for lo, hi in itertools.pairwise(edges):
        g = [i for i in spend if lo <= i.base_usd_per_min * c.window_s / 60 < hi]
        if g:
            xs.append(f"{lo:g}-{hi:g}" if hi < 1e9 else f">{lo:g}")
            ys.append(sum(i.detected_ms is not None for i in g) / len(g))
            ns.append(len(g))
    colors = [
        "#4c72b0" if float(x.split("-")[0].lstrip(">")) >= c.min_usd else "#a0a0a0" for x in xs
    ]
    ax.bar(xs, ys, color=colors)
    for x, y, n in zip(xs, ys, ns, strict=False):
        ax.text(x, y + 0.02, f"n={n}", ha="center", fontsize=8)
    ax.set_ylim(0, 1.15)
    ax.set_title(
        f"Recall of >= 2x spend spikes by spend before the spike (grey: under ${c.min_usd:g})",
        fontsize=10,
    )
    ax.set_xlabel("USD per 60 s of the spiked key before the spike")
    ax.tick_params(axis="x", labelsize=8)
    # (b) delay CDF
    ax = axes[0][1]
    d = sorted(sc.delays_2x)
    if d:
        ax.step(d, [(i + 1) / len(d) for i in range(len(d))], where="post", label=">= 2x in scope")
    d15 = sorted(
        (i.detected_ms - i.start_ms) / 1000
        for i in res.injections
        if i.kind == "spend" and i.factor < 2.0 and i.detected_ms
    )
    if d15:
        ax.step(d15, [(i + 1) / len(d15) for i in range(len(d15))], where="post", label="1.5x")
    ax.axvline(60, color="red", ls="--", label="60 s target")
    ax.set_xlabel("delay from spike start to signal, event time (s)")
    ax.set_ylabel("share of detected spikes")
    ax.set_title("Detection delay")
    ax.legend()
    # (c) one key around one of its spikes
    ax = axes[1][0]
    if res.trace and res.cfg.trace is not None:
        team, tool = res.cfg.trace
        day0 = res.trace[0][0] - 5_000
        spikes = [
            i
            for i in res.injections
            if (i.team, i.dim, i.target, i.kind) == (team, "tool", tool, "spend")
            and day0 <= i.start_ms < day0 + DAY_MS
        ]
        t0 = spikes[0].start_ms if spikes else day0 + DAY_MS // 2
        pts = [(t, st) for t, st in res.trace if -90 * MIN_MS <= t - t0 <= 90 * MIN_MS]
        mins = [(t - t0) / MIN_MS for t, _ in pts]
        ax.plot(mins, [st["spend"] for _, st in pts], lw=0.6, label="spend, last 60 s")
        ax.plot(mins, [st["expected"] for _, st in pts], lw=1.0, label="expected")
        for key, label in (
            ("threshold", "fires on spend alone"),
            ("gate", "fires if more or pricier calls"),
        ):
            ax.plot(
                mins,
                [st[key] if math.isfinite(st[key]) else None for _, st in pts],
                lw=0.9,
                label=label,
            )
        for inj in spikes:
            ax.axvspan(
                (inj.start_ms - t0) / MIN_MS, (inj.end_ms - t0) / MIN_MS, color="orange", alpha=0.3
            )
        for sig in res.signals:
            if sig["team"] == team and sig["tool"] == tool and KIND[sig["rule"]] == "spend":
                xm = (int(sig["window_end"]) - t0) / MIN_MS
                if -90 <= xm <= 90:
                    ax.plot([xm], [sig["observed"]], "rv", ms=7)
        what = f"a {spikes[0].factor:g}x {spikes[0].mode} spike" if spikes else "a day"
        ax.set_title(f"{team} x {tool} around {what} (orange; red: signals)", fontsize=10)
        ax.set_xlabel("minutes from the spike's start (event time)")
        ax.set_ylabel("USD per 60 s")
        ax.legend(fontsize=7)
    # (d) false signals per team-week
    ax = axes[1][1]
    weeks = res.cfg.days / 7.0
    names = [t.name for t in res.cfg.teams]
    ax.bar(names, [sc.false_by_team[n] / weeks for n in names], color="#dd8452")
    ax.axhline(1.0, color="red", ls="--", label="target < 1")
    ax.set_title("False signals per team-week (all rules)")
    ax.tick_params(axis="x", rotation=30, labelsize=8)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-chart", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS / "spike_detection.md")
    args = ap.parse_args()
    cfg = BenchConfig(days=args.days, seed=args.seed, trace=("engineering", "code-helper"))
    if args.days < 16:
        cfg.restart_at_day = args.days / 2
    t0 = time.perf_counter()
    res = run(cfg)
    sc = score(res)
    wall = time.perf_counter() - t0
    chart = None
    if not args.no_chart:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        png = args.out.with_suffix(".png")
        make_chart(res, sc, png)
        chart = png.name
    text = report(res, sc, wall, chart)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    print(f"written to {os.path.relpath(args.out)}")


if __name__ == "__main__":
    main()
