"""Streaming signal rules over priced, redacted events. Pure logic: events in, signal dicts out.

Rules, all on event time (a replay or a late batch lands where it belongs):

- ``cost_spike`` / ``task_spend_spike``: the spend of one team x tool / team x task label over
  the last 60 s (a window sliding in 5-s steps) against what the key is expected to spend.
  Checked on every call, so a doubling of the spend rate is signalled while it happens:
  a doubled window is 2x the expectation and the thresholds sit lower.
- ``error_storm`` / ``retry_storm`` (and ``task_error_storm`` / ``task_retry_storm``): the
  share of calls that failed / the retries per call over the last 60 s against the key's
  rate over the previous half hour (storm minutes left out), with a minimum count.
- ``budget_threshold`` (:class:`BudgetTracker`): period-to-date spend of a team crossing 80 /
  90 / 100 % (configurable) of its budget, each threshold once per period.

Expected spend of a key: the median of its last ``level_minutes`` one-minute totals, seasonally
adjusted once the key has a week of hourly history. Each minute is divided by what that minute
usually costs (same hour of the week, median over up to ``seasonal_weeks`` weeks, interpolated
between hours: :mod:`services.aggregator.baseline`) and the median ratio is multiplied by what
the current minute usually costs; a morning ramp is expected, a rise the key never makes at
that hour is not. Noise: the median absolute error this level made over the last hour, so it
holds Poisson arrivals, price spread and activity swings together. The same is kept for the
call count.

A spend spike fires on the call that brings the window to ``min_usd`` and to
``corroborated_factor`` (1.3) x the expected spend when more calls than usual are certain
(count >= ``factor`` x and z sigmas above its expectation, with a Poisson floor) or pricier
calls are certain (mean log cost per call z + 1 sigmas up: for heavy-tailed prices it is far
less noisy than the spend sum); otherwise at ``factor`` (1.5) x the expected spend and z sigmas
above it. The spend tests leave the window's two largest calls out: one or two giant prompts
are not a spike. The minimum keeps small teams from being noise.

State is bounded: per key a 60-s ring of 5-s buckets, a ring of the last hour's minutes and
``168 * (seasonal_weeks + 1)`` hourly totals (about 23 KiB, measured); at most ``max_keys``
keys, the least recently active evicted. ``observe`` is O(1) amortised: a few additions and one
comparison per key; medians are recomputed once per key and minute. After a restart
:meth:`SpikeDetector.warm_start` rebuilds the hourly history and a starting level from
ClickHouse ``spend_hourly`` rows. Until a key has 3 live minutes the level comes from that seed
(no seed: no spend spike at all, a cold start) and only a rise of ``warmup_factor`` x fires;
until it has 10 (no noise estimate yet) the call-count test uses its Poisson bound.

Signals name a team, a tool (``task:<label>`` for the task-label rules, evidence
``task_label``) and numbers; never a person (``user_pseudonym`` is only set on security rules,
which live in :class:`OncePerWindow`). Each rule fires at most once per key per 60 s of event
time; the alerts service folds repeats into one incident. A task-label signal is dropped when
the same team's tool-level rule of the same kind fired within 60 s: both name the same calls.
"""

from __future__ import annotations

import calendar
import math
import time
import uuid
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from services.aggregator.baseline import (
    HOUR_MS,
    MAD_TO_SIGMA,
    HourlyHistory,
    HourlyRow,
    SeasonalProfile,
    median,
    median_mad,
)

SECURITY_RULES = frozenset({"sensitive_data", "policy_flag", "blocked_action"})

# rule names per dimension and kind of rule
SPEND, ERRORS, RETRIES = 0, 1, 2
RULES = (
    ("cost_spike", "error_storm", "retry_storm"),  # team x tool
    ("task_spend_spike", "task_error_storm", "task_retry_storm"),  # team x task label
)
TASK_TOOL_PREFIX = "task:"
_ERR_FLAG, _RETRY_FLAG = 1, 2


def _signal(
    rule: str,
    team: str,
    tool: str,
    window_start_ms: int,
    window_end_ms: int,
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
        "window_end": window_end_ms,
        "observed": float(observed),
        "baseline": float(baseline),
        "threshold": float(threshold),
        "detected_at": int(time.time() * 1000),
        "user_pseudonym": user_pseudonym,
        "evidence": evidence or {},
    }


def _usd(x: float) -> str:
    return f"{x:.4f}"


@dataclass(frozen=True)
class SpikeConfig:
    window_s: int = 60
    bucket_s: int = 5  # the 60-s window slides in steps of this
    level_minutes: int = 10  # median of this many past minutes = the current level
    spread_minutes: int = 59  # noise = MAD of the level's errors over this many minutes
    factor: float = 1.5  # fire at this multiple of the expected spend...
    # ...or at this one when more calls or pricier calls than usual are certain (below)
    corroborated_factor: float = 1.3
    z: float = 4.5  # ...when the rise is also this many sigmas above the expected spend...
    min_usd: float = 5.0  # ...and never below this much spend per window
    warmup_factor: float = 2.5  # multiple used while the noise is not known yet
    seasonal_weeks: int = 4  # 0 = no seasonal adjustment
    seasonal_floor_share: float = 0.05
    storm_min_count: int = 20  # errors (retries) in the window before a storm can fire
    storm_factor: float = 2.0
    storm_z: float = 4.0
    error_min_delta: float = 0.05  # error share must rise by at least 5 percentage points
    retry_min_delta: float = 0.10  # retries per call must rise by at least 0.1
    storm_baseline_minutes: int = 30
    task_dimension: bool = True
    max_keys: int = 2000


_NAN = float("nan")


class _Key:
    """Streaming state of one team x tool or team x task label."""

    __slots__ = (
        "bc",
        "be",
        "bl",
        "bn",
        "br",
        "bs",
        "bucket",
        "bx",
        "bx2",
        "dim",
        "exp_calls",
        "expected",
        "hours",
        "live_since",
        "lvl_c",
        "lvl_s",
        "mad_c",
        "mad_s",
        "mc",
        "me",
        "method",
        "mflag",
        "minute",
        "ml",
        "mn",
        "mp",
        "mq",
        "mr",
        "ms",
        "mtag",
        "mu_log",
        "name",
        "profile",
        "rate_base",
        "rate_minute",
        "rc",
        "rearm",
        "rs",
        "sd_log",
        "seasonal_on",
        "seed_calls",
        "seed_err",
        "seed_level",
        "seed_retry",
        "sigma",
        "spread_at",
        "team",
        "thr",
        "thr_calls",
        "thr_gate",
        "wc",
        "we",
        "wl",
        "wn",
        "wr",
        "ws",
    )

    def __init__(self, dim: int, team: str, name: str, nb: int, ring: int, cfg: SpikeConfig):
        self.dim = dim
        self.team = team
        self.name = name
        self.bucket = -1  # no event yet
        self.minute = -1
        # the sliding window: per bucket spend, calls, errors, retries, two largest calls
        self.bs = [0.0] * nb
        self.bc = [0] * nb
        self.be = [0] * nb
        self.br = [0] * nb
        self.bx = [0.0] * nb
        self.bx2 = [0.0] * nb
        self.bl = [0.0] * nb  # sum of log(cost) of the calls with a cost, and their count
        self.bn = [0] * nb
        self.wl = 0.0
        self.wn = 0
        self.ws = 0.0
        self.wc = 0
        self.we = 0
        self.wr = 0
        # the last hour, one slot per minute: totals, the profile, the level's errors
        self.ms = array("d", bytes(8 * ring))
        self.mc = array("q", bytes(8 * ring))
        self.me = array("q", bytes(8 * ring))
        self.mr = array("q", bytes(8 * ring))
        self.ml = array("d", bytes(8 * ring))
        self.mq = array("d", bytes(8 * ring))  # sum of log(cost) squared
        self.mn = array("q", bytes(8 * ring))
        self.mp = array("d", [1.0]) * ring
        self.rs = array("d", [_NAN]) * ring
        self.rc = array("d", [_NAN]) * ring
        self.mtag = array("q", [-1]) * ring
        self.mflag = array("b", bytes(ring))
        self.live_since = -1
        self.hours = HourlyHistory(max(1, cfg.seasonal_weeks))
        self.profile = SeasonalProfile(self.hours, cfg.seasonal_floor_share)
        self.seasonal_on = False
        self.seed_level: float | None = None
        self.seed_calls: float | None = None
        self.seed_err: float | None = None
        self.seed_retry: float | None = None
        self.lvl_s = _NAN  # level of the current minute (spend, calls), profile-adjusted
        self.lvl_c = _NAN
        self.mad_s = _NAN
        self.mad_c = _NAN
        self.mu_log = _NAN  # typical mean log(cost) per call in a minute, and its noise
        self.sd_log = _NAN
        self.spread_at = -(10**9)
        self.thr = math.inf  # spend threshold
        self.thr_gate = math.inf  # below this spend nothing can fire: the hot path's test
        self.thr_calls = math.inf  # call-count threshold (corroborates a smaller spend rise)
        self.expected = 0.0
        self.exp_calls = 0.0
        self.sigma = 0.0
        self.method = "cold"
        self.rearm = [0, 0, 0]
        self.rate_minute = -1
        self.rate_base = [0.0, 0.0]


class SpikeDetector:
    """Spend spikes and error/retry storms per team x tool and team x task label."""

    def __init__(self, config: SpikeConfig | None = None) -> None:
        c = self.config = config or SpikeConfig()
        if c.window_s % c.bucket_s or 60 % c.bucket_s:
            raise ValueError("bucket_s must divide both window_s and 60")
        self.window_ms = c.window_s * 1000
        self._bucket_ms = c.bucket_s * 1000
        self._nb = c.window_s // c.bucket_s
        self._bpm = 60 // c.bucket_s
        self._ring = max(c.spread_minutes, c.level_minutes, c.storm_baseline_minutes) + 1
        self._keys: tuple[dict[tuple[str, str], _Key], dict[tuple[str, str], _Key]] = ({}, {})
        self._team_fired: dict[tuple[str, int], int] = {}
        self.pending: list[dict[str, Any]] = []
        self.suppressed = 0
        self.evicted = 0

    # ---------------------------------------------------------------- hot path

    def observe(
        self,
        team: str,
        tool: str,
        task_label: str,
        event_time_ms: int,
        cost: float,
        error: bool = False,
        retries: int = 0,
    ) -> None:
        """Account one priced call. Signals it triggers are queued for :meth:`take`."""
        lc = math.log(cost) if cost > 0.0 else _NAN
        k = self._keys[0].get((team, tool))
        if k is None:
            k = self._new_key(0, team, tool)
        self._feed(k, event_time_ms, cost, lc, error, retries)
        if self.config.task_dimension:
            k = self._keys[1].get((team, task_label))
            if k is None:
                k = self._new_key(1, team, task_label)
            self._feed(k, event_time_ms, cost, lc, error, retries)

    def _feed(self, k: _Key, t: int, cost: float, lc: float, error: bool, retries: int) -> None:
        b = t // self._bucket_ms
        if b != k.bucket:
            if b > k.bucket:
                self._advance(k, b)
            elif b <= k.bucket - self._nb:
                self._late(k, b, cost, lc, error, retries)
                return
        i = b % self._nb
        k.bs[i] += cost
        k.ws += cost
        k.bc[i] += 1
        k.wc += 1
        if cost > k.bx2[i]:
            if cost > k.bx[i]:
                k.bx2[i] = k.bx[i]
                k.bx[i] = cost
            else:
                k.bx2[i] = cost
        m = b // self._bpm
        j = m % self._ring
        k.ms[j] += cost
        k.mc[j] += 1
        if cost > 0.0:
            k.bl[i] += lc
            k.bn[i] += 1
            k.wl += lc
            k.wn += 1
            k.ml[j] += lc
            k.mq[j] += lc * lc
            k.mn[j] += 1
        if m != k.minute:  # previous minute, already pushed to the hourly history
            k.hours.add(m // 60, cost)
            if m < k.live_since:
                k.live_since = m
        if error:
            k.be[i] += 1
            k.we += 1
            k.me[j] += 1
        if retries:
            k.br[i] += retries
            k.wr += retries
            k.mr[j] += retries
        if k.ws >= k.thr_gate and t >= k.rearm[SPEND]:
            self._check_spend(k, t)
        if error and k.we >= self.config.storm_min_count and t >= k.rearm[ERRORS]:
            self._check_storm(k, t, ERRORS)
        if retries and k.wr >= self.config.storm_min_count and t >= k.rearm[RETRIES]:
            self._check_storm(k, t, RETRIES)

    def _late(self, k: _Key, b: int, cost: float, lc: float, error: bool, retries: int) -> None:
        """An event older than the sliding window: it only updates the minute/hour history."""
        m = b // self._bpm
        j = m % self._ring
        if k.mtag[j] == m:
            k.ms[j] += cost
            k.mc[j] += 1
            k.me[j] += int(error)
            k.mr[j] += retries
            if cost > 0.0:
                k.ml[j] += lc
                k.mq[j] += lc * lc
                k.mn[j] += 1
            if m < k.live_since:
                k.live_since = m  # the key existed earlier than its first event said
        k.hours.add(m // 60, cost)

    # ---------------------------------------------------------------- time moves

    def _advance(self, k: _Key, b: int) -> None:
        nb = self._nb
        if b - k.bucket >= nb:
            for i in range(nb):
                k.bs[i] = k.bx[i] = k.bx2[i] = k.bl[i] = 0.0
                k.bc[i] = k.be[i] = k.br[i] = k.bn[i] = 0
            k.ws, k.wc, k.we, k.wr, k.wl, k.wn = 0.0, 0, 0, 0, 0.0, 0
        else:
            for x in range(k.bucket + 1, b + 1):
                i = x % nb
                k.ws -= k.bs[i]
                k.wc -= k.bc[i]
                k.we -= k.be[i]
                k.wr -= k.br[i]
                k.wl -= k.bl[i]
                k.wn -= k.bn[i]
                k.bs[i] = k.bx[i] = k.bx2[i] = k.bl[i] = 0.0
                k.bc[i] = k.be[i] = k.br[i] = k.bn[i] = 0
        k.bucket = b
        m = b // self._bpm
        if m != k.minute:
            self._roll(k, m)

    def _init_minute(self, k: _Key, x: int) -> None:
        j = x % self._ring
        k.mtag[j] = x
        k.ms[j] = k.ml[j] = k.mq[j] = 0.0
        k.mc[j] = k.me[j] = k.mr[j] = k.mn[j] = 0
        k.mflag[j] = 0
        k.rs[j] = k.rc[j] = _NAN
        k.mp[j] = k.profile.per_minute(x) if k.seasonal_on else 1.0

    def _roll(self, k: _Key, m: int) -> None:
        """The key's newest minute moved to ``m``: close the old one, recompute thresholds."""
        ring = self._ring
        old = k.minute
        if old < 0:  # first event of this key
            k.live_since = m
            old = m - ring
        else:
            k.hours.add(old // 60, k.ms[old % ring])
        k.minute = m
        self._seasonal_switch(k, m)
        for x in range(max(old + 1, m - ring + 1), m + 1):
            self._init_minute(k, x)
        # How far off the level was for the minutes that just closed: the noise estimate.
        if k.lvl_s == k.lvl_s:  # not NaN
            for x in range(max(old, m - ring + 1), m):
                j = x % ring
                k.rs[j] = k.ms[j] / k.mp[j] - k.lvl_s
                k.rc[j] = k.mc[j] / k.mp[j] - k.lvl_c
        # exact sums once a minute: the running ones drift by float rounding
        k.ws, k.wl = math.fsum(k.bs), math.fsum(k.bl)
        k.wc, k.we, k.wr, k.wn = sum(k.bc), sum(k.be), sum(k.br), sum(k.bn)
        self._thresholds(k, m)

    def _seasonal_switch(self, k: _Key, m: int) -> None:
        if self.config.seasonal_weeks <= 0 or k.seasonal_on:
            return
        if k.profile.available(m // 60):
            # From now on minutes are compared with what they usually cost: re-express the
            # minutes already in the ring the same way so the median mixes like with like.
            k.seasonal_on = True
            k.profile.invalidate()
            for j in range(self._ring):
                if k.mtag[j] >= 0:
                    k.mp[j] = k.profile.per_minute(k.mtag[j])
                k.rs[j] = k.rc[j] = _NAN
            k.seed_level = k.seed_calls = None  # in the old units; live minutes take over
            k.lvl_s = k.lvl_c = k.mad_s = k.mad_c = _NAN
            k.spread_at = -(10**9)

    def _thresholds(self, k: _Key, m: int) -> None:
        c = self.config
        ring = self._ring
        live = min(m - k.live_since, ring - 1)
        p_now = k.mp[m % ring]
        n = min(c.level_minutes, live)
        mins = [x % ring for x in range(m - n, m)]
        ys = [k.ms[j] / k.mp[j] for j in mins]
        yc = [k.mc[j] / k.mp[j] for j in mins]
        self._log_cost_level(k, mins, m)
        if n < 3:
            # Too few live minutes: the level comes from the rollup seed, if there is one.
            # The call-count and cost-per-call tests wait for live minutes: an hourly seed
            # is too coarse for them during a steep morning ramp.
            if k.seed_level is None or k.seed_calls is None:
                k.lvl_s = k.lvl_c = _NAN
                k.thr = k.thr_gate = k.thr_calls = math.inf
                k.expected, k.exp_calls, k.sigma, k.method = 0.0, 0.0, 0.0, "cold"
                return
            ys.extend([k.seed_level] * (c.level_minutes - n))
            yc.extend([k.seed_calls] * (c.level_minutes - n))
        k.lvl_s, k.lvl_c = median(ys), median(yc)
        expected, exp_calls = k.lvl_s * p_now, k.lvl_c * p_now
        if m - k.spread_at >= 5:  # the noise moves slowly: every 5 minutes is enough
            k.spread_at = m
            rs = [r for r in (k.rs[x % ring] for x in range(m - c.spread_minutes, m)) if r == r]
            if len(rs) >= 10:
                rc = [r for r in (k.rc[x % ring] for x in range(m - c.spread_minutes, m)) if r == r]
                k.mad_s, k.mad_c = median_mad(rs)[1], median_mad(rc)[1]
            else:
                k.mad_s = k.mad_c = _NAN
        gate = max(c.factor * expected, c.min_usd)
        k.thr_gate = max(c.corroborated_factor * expected, c.min_usd)
        if k.mad_s == k.mad_s:
            sigma = MAD_TO_SIGMA * k.mad_s * p_now
            sigma_c = MAD_TO_SIGMA * k.mad_c * p_now
            k.thr = max(gate, expected + c.z * sigma)
            # Calls: the larger of the factor, z sigmas of the observed noise, and z sigmas of
            # Poisson noise on the square-root scale (where it is near-normal even for a
            # handful of calls, so a small key's count is not called a spike by chance).
            k.thr_calls = max(
                c.factor * exp_calls,
                exp_calls + c.z * sigma_c,
                (math.sqrt(exp_calls) + c.z / 2.0) ** 2,
            )
            k.method = "seasonal" if k.seasonal_on else "recent"
        else:
            # No noise estimate yet (the first minutes after a start): spend alone must rise
            # clearly; a call count needs only the Poisson bound, which holds without one.
            sigma = 0.0
            k.thr = max(c.warmup_factor * expected, c.min_usd)
            k.thr_calls = (
                max(c.factor * exp_calls, (math.sqrt(exp_calls) + c.z / 2.0) ** 2)
                if n >= 3
                else math.inf
            )
            k.method = "warmup"
        k.expected, k.exp_calls, k.sigma = expected, exp_calls, sigma

    def _log_cost_level(self, k: _Key, mins: list[int], m: int) -> None:
        """Typical log(cost) of a call: median of the per-minute means of the last minutes.
        Its noise per call: the spread (MAD) of those means over the last hour, each scaled
        by the square root of its minute's calls, so it holds the price spread and a shifting
        mix of cheap and dear tools alike and applies to a window of any size."""
        means = [k.ml[j] / k.mn[j] for j in mins if k.mn[j] >= 3]
        k.mu_log = median(means) if len(means) >= 3 else _NAN
        if m - k.spread_at >= 5 or k.sd_log != k.sd_log:
            ring = self._ring
            hour = [x % ring for x in range(m - self.config.spread_minutes, m)]
            hour = [j for j in hour if k.mn[j] >= 3 and k.mtag[j] >= 0]
            if len(hour) >= 10:
                mid = median([k.ml[j] / k.mn[j] for j in hour])
                scaled = [(k.ml[j] / k.mn[j] - mid) * math.sqrt(k.mn[j]) for j in hour]
                # The per-call spread pooled over every call of the hour is the precise part
                # (thousands of calls against a MAD of sixty minutes); the scaled MAD adds what
                # pooling misses, a mix that shifts from minute to minute. Floored: one model
                # at fixed prompt sizes must not make any change "certain".
                n = sum(k.mn[j] for j in hour)
                mean = sum(k.ml[j] for j in hour) / n
                pooled = math.sqrt(max(sum(k.mq[j] for j in hour) / n - mean * mean, 0.0))
                k.sd_log = max(MAD_TO_SIGMA * median([abs(x) for x in scaled]), pooled, 0.1)
            else:
                k.sd_log = _NAN

    # ---------------------------------------------------------------- firing

    def _window_start(self, k: _Key) -> int:
        return (k.bucket - self._nb + 1) * self._bucket_ms

    def _suppressed(self, k: _Key, kind: int, t: int) -> bool:
        if k.dim == 0:
            self._team_fired[(k.team, kind)] = t
            return False
        last = self._team_fired.get((k.team, kind))
        # either side: calls arrive a little out of event-time order
        if last is not None and abs(t - last) < self.window_ms:
            self.suppressed += 1
            return True
        return False

    def _tool_field(self, k: _Key) -> tuple[str, dict[str, str]]:
        if k.dim == 0:
            return k.name, {}
        return TASK_TOOL_PREFIX + k.name, {"task_label": k.name}

    def _check_spend(self, k: _Key, t: int) -> None:
        c = self.config
        if k.wc >= k.thr_calls:
            trigger = "calls"  # many more calls than usual: spend >= gate is enough
        else:
            # The window without its two largest calls: a giant prompt or two is not a spike.
            top = sorted(k.bx + k.bx2)
            a, b = top[-1], top[-2]
            n = k.wn - (a > 0.0) - (b > 0.0)
            pricier = False
            if n >= 10 and k.sd_log == k.sd_log and k.mu_log == k.mu_log:
                logs = k.wl - (math.log(a) if a > 0.0 else 0.0) - (math.log(b) if b > 0.0 else 0.0)
                # Calls are pricier than usual beyond doubt (a bigger model, longer prompts):
                # the mean log cost is far less noisy than the spend of a heavy-tailed key.
                # One sigma more than the other tests: measured on stationary traffic, this
                # statistic's maximum over a week of sliding windows reaches z + 0.5.
                pricier = logs / n - k.mu_log >= (c.z + 1.0) * k.sd_log / math.sqrt(n)
            if pricier:
                trigger = "cost_per_call"
            elif k.ws - a - b >= k.thr:
                trigger = "spend"
            else:
                return
        k.rearm[SPEND] = t + self.window_ms
        if self._suppressed(k, SPEND, t):
            return
        tool, extra = self._tool_field(k)
        start = self._window_start(k)
        ratio = k.ws / k.expected if k.expected > 0 else math.inf
        per_call = (
            f"{math.exp(k.wl / k.wn - k.mu_log):.2f}" if k.wn and k.mu_log == k.mu_log else "-"
        )
        self.pending.append(
            _signal(
                RULES[k.dim][SPEND],
                k.team,
                tool,
                start,
                t,
                k.ws,
                baseline=k.expected,
                threshold=k.thr if trigger == "spend" else k.thr_gate,
                evidence={
                    **extra,
                    "window_seconds": str((t - start) // 1000),
                    "spend_usd": _usd(k.ws),
                    "expected_usd": _usd(k.expected),
                    "threshold_usd": _usd(k.thr),
                    "ratio": f"{ratio:.2f}" if math.isfinite(ratio) else "inf",
                    "sigma_usd": _usd(k.sigma),
                    "calls": str(k.wc),
                    "expected_calls": f"{k.exp_calls:.1f}",
                    "cost_per_call_ratio": per_call,
                    "trigger": trigger,
                    "baseline_method": k.method,
                    "level_minutes": str(c.level_minutes),
                    "seasonal_weeks": str(k.hours.known_weeks(t // HOUR_MS))
                    if k.seasonal_on
                    else "0",
                },
            )
        )

    def _rate_base(self, k: _Key, kind: int) -> float:
        """Errors (retries) per call over the previous minutes, storm minutes left out."""
        m = k.minute
        if k.rate_minute != m:
            ring = self._ring
            n_min = self.config.storm_baseline_minutes
            calls = errs = rets = 0
            for x in range(max(m - n_min, k.live_since), m):
                j = x % ring
                if k.mtag[j] != x:
                    continue
                calls += k.mc[j]
                if not k.mflag[j] & _ERR_FLAG:
                    errs += k.me[j]
                if not k.mflag[j] & _RETRY_FLAG:
                    rets += k.mr[j]
            if calls >= 100 or (k.seed_err is None and calls > 0):
                k.rate_base = [errs / calls, rets / calls]
            elif k.seed_err is not None and k.seed_retry is not None:
                k.rate_base = [k.seed_err, k.seed_retry]
            else:
                k.rate_base = [0.0, 0.0]
            k.rate_minute = m
        return k.rate_base[kind - 1]

    def _check_storm(self, k: _Key, t: int, kind: int) -> None:
        c = self.config
        n = k.wc
        count = k.we if kind == ERRORS else k.wr
        base = self._rate_base(k, kind)
        if kind == ERRORS:
            noise = math.sqrt(base * (1.0 - base) / n)  # binomial
            thr = max(c.storm_factor * base, base + c.error_min_delta, base + c.storm_z * noise)
        else:
            noise = math.sqrt(base / n)  # Poisson
            thr = max(c.storm_factor * base, base + c.retry_min_delta, base + c.storm_z * noise)
        observed = count / n
        if observed < thr:
            return
        k.rearm[kind] = t + self.window_ms
        k.mflag[k.minute % self._ring] |= _ERR_FLAG if kind == ERRORS else _RETRY_FLAG
        if self._suppressed(k, kind, t):
            return
        tool, extra = self._tool_field(k)
        start = self._window_start(k)
        what = "errors" if kind == ERRORS else "retries"
        self.pending.append(
            _signal(
                RULES[k.dim][kind],
                k.team,
                tool,
                start,
                t,
                observed,
                baseline=base,
                threshold=thr,
                evidence={
                    **extra,
                    "window_seconds": str((t - start) // 1000),
                    what: str(count),
                    "calls": str(n),
                    f"{what}_per_call": f"{observed:.4f}",
                    f"baseline_{what}_per_call": f"{base:.4f}",
                    "baseline_minutes": str(c.storm_baseline_minutes),
                },
            )
        )

    # ---------------------------------------------------------------- keys, restart

    def _new_key(self, dim: int, team: str, name: str) -> _Key:
        keys = self._keys[dim]
        if len(self._keys[0]) + len(self._keys[1]) >= self.config.max_keys:
            self._evict()
        k = _Key(dim, team, name, self._nb, self._ring, self.config)
        keys[(team, name)] = k
        return k

    def _evict(self) -> None:
        """Drop the least recently active tenth of the keys (amortised O(1) per new key)."""
        every = [(k.bucket, d, key) for d in (0, 1) for key, k in self._keys[d].items()]
        every.sort()
        for _, d, key in every[: max(1, len(every) // 10)]:
            del self._keys[d][key]
            self.evicted += 1
        self._team_fired = {}

    def state(self, team: str, name: str, task: bool = False) -> dict[str, Any] | None:
        """The numbers one key is judged by right now, for reports and debugging."""
        k = self._keys[1 if task else 0].get((team, name))
        if k is None:
            return None
        return {
            "spend": k.ws,
            "expected": k.expected,
            "threshold": k.thr,
            "gate": k.thr_gate,
            "sigma": k.sigma,
            "calls": k.wc,
            "expected_calls": k.exp_calls,
            "calls_threshold": k.thr_calls,
            "method": k.method,
        }

    def key_count(self) -> int:
        return len(self._keys[0]) + len(self._keys[1])

    def warm_start(self, rows: Iterable[HourlyRow], now_ms: int, level_hours: int = 2) -> int:
        """Rebuild hourly history and starting levels from ``spend_hourly`` rows. Returns keys.

        The seasonal profile needs weeks of history, which only the rollup has after a
        restart. The level (what the key spends now) is seeded from the last ``level_hours``
        complete hours relative to what the profile expected then; live minutes replace it
        within ``level_minutes``. Error and retry shares are seeded the same way. A key with
        no weekly profile and no calls in those hours gets no seed: it starts cold.
        """
        now_hour = now_ms // HOUR_MS
        recent: dict[tuple[int, str, str], list[float]] = {}
        for r in rows:
            dims = [(0, r.tool)] + ([(1, r.task_label)] if self.config.task_dimension else [])
            h = r.hour_ms // HOUR_MS
            for dim, name in dims:
                k = self._keys[dim].get((r.team, name))
                if k is None:
                    k = self._new_key(dim, r.team, name)
                k.hours.add(h, r.cost_usd)
                if now_hour - level_hours <= h < now_hour:
                    acc = recent.setdefault((dim, r.team, name), [0.0, 0.0, 0.0, 0.0])
                    acc[0] += r.cost_usd
                    acc[1] += r.requests
                    acc[2] += r.errors
                    acc[3] += r.retries
        for d in (0, 1):
            for (team, name), k in self._keys[d].items():
                if k.bucket >= 0:
                    continue  # already live: its own minutes are better than the rollup
                acc = recent.get((d, team, name), [0.0, 0.0, 0.0, 0.0])
                minutes = range((now_hour - level_hours) * 60, now_hour * 60)
                if self.config.seasonal_weeks > 0 and k.profile.available(now_hour):
                    k.seasonal_on = True
                    expected = sum(k.profile.per_minute(x) for x in minutes)
                    # Ratio of what was spent to what was expected, pulled towards "as
                    # usual" (1) by half an hour at the key's mean rate, so that a quiet
                    # night (little expected, nothing spent) does not seed a level of zero.
                    prior = k.hours.mean_last_week(now_hour) / 2.0
                    k.seed_level = (acc[0] + prior) / (expected + prior) if prior else 1.0
                    calls_ratio = acc[1] / acc[0] if acc[0] > 0 else 0.0
                    k.seed_calls = k.seed_level * calls_ratio
                elif acc[1] > 0:
                    k.seed_level = acc[0] / len(minutes)
                    k.seed_calls = acc[1] / len(minutes)
                # else: idle in the last hours and no profile: no level to trust, cold start
                if acc[1] > 0:
                    k.seed_err, k.seed_retry = acc[2] / acc[1], acc[3] / acc[1]
        return self.key_count()

    def take(self) -> list[dict[str, Any]]:
        out, self.pending = self.pending, []
        return out


# -------------------------------------------------------------------- budgets

PERIODS = ("day", "week", "month")


def period_bounds(period: str, t_ms: int) -> tuple[int, int]:
    """UTC [start, end) in epoch millis of the day / week (Monday) / month holding ``t_ms``."""
    d = datetime.fromtimestamp(t_ms / 1000, UTC)
    if period == "day":
        start = datetime(d.year, d.month, d.day, tzinfo=UTC)
        end = start + timedelta(days=1)
    elif period == "week":
        start = datetime(d.year, d.month, d.day, tzinfo=UTC) - timedelta(days=d.weekday())
        end = start + timedelta(days=7)
    elif period == "month":
        start = datetime(d.year, d.month, 1, tzinfo=UTC)
        end = start + timedelta(days=calendar.monthrange(d.year, d.month)[1])
    else:
        raise ValueError(f"unknown budget period {period!r}")
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


@dataclass(frozen=True)
class Budget:
    team: str
    period: str
    usd: float


@dataclass(frozen=True)
class BudgetConfig:
    budgets: tuple[Budget, ...] = ()
    thresholds_percent: tuple[float, ...] = (80.0, 90.0, 100.0)


def parse_budgets(data: Mapping[str, Any] | None) -> BudgetConfig:
    """Validate the content of ``config/budgets.yaml``; a mistake fails the start, loudly."""
    if not data:
        return BudgetConfig()
    raw_t = data.get("thresholds_percent", [80, 90, 100])
    if not isinstance(raw_t, list) or not raw_t:
        raise ValueError("budgets: thresholds_percent must be a non-empty list")
    thresholds = tuple(sorted(float(x) for x in raw_t))
    if thresholds[0] <= 0:
        raise ValueError("budgets: thresholds must be positive percentages")
    budgets = []
    seen = set()
    for i, b in enumerate(data.get("budgets") or []):
        where = f"budgets[{i}]"
        if not isinstance(b, Mapping):
            raise ValueError(f"{where}: must be a mapping")
        team, period, usd = b.get("team"), b.get("period", "month"), b.get("usd")
        if not isinstance(team, str) or not team:
            raise ValueError(f"{where}: team must be a non-empty string")
        if period not in PERIODS:
            raise ValueError(f"{where}: period must be one of {', '.join(PERIODS)}")
        if not isinstance(usd, int | float) or isinstance(usd, bool) or usd <= 0:
            raise ValueError(f"{where}: usd must be a positive number")
        if (team, period) in seen:
            raise ValueError(f"{where}: a second {period} budget for team {team!r}")
        seen.add((team, period))
        budgets.append(Budget(team, period, float(usd)))
    return BudgetConfig(tuple(budgets), thresholds)


def load_budgets(path: Path | None) -> BudgetConfig:
    if path is None or not Path(path).exists():
        return BudgetConfig()
    return parse_budgets(yaml.safe_load(Path(path).read_text()))


class _Period:
    __slots__ = ("end", "fired", "spent", "start")

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end = start, end
        self.spent = 0.0
        self.fired = 0  # how many thresholds have fired (they are sorted)


class _BudgetState:
    __slots__ = ("budget", "levels", "periods")

    def __init__(self, budget: Budget, thresholds: tuple[float, ...]) -> None:
        self.budget = budget
        self.levels = [budget.usd * p / 100.0 for p in thresholds]
        self.periods: list[_Period] = []  # newest first, at most two


class BudgetTracker:
    """Period-to-date spend per team against its budgets; each threshold once per period.

    Keeps the current and the previous period per budget (late events of the previous period
    still count there), nothing older: memory is two numbers per budget.
    """

    def __init__(self, config: BudgetConfig | None = None) -> None:
        self.config = config or BudgetConfig()
        self.thresholds = self.config.thresholds_percent
        self._by_team: dict[str, list[_BudgetState]] = {}
        for b in self.config.budgets:
            self._by_team.setdefault(b.team, []).append(_BudgetState(b, self.thresholds))
        self.pending: list[dict[str, Any]] = []

    def observe(self, team: str, event_time_ms: int, cost: float) -> None:
        states = self._by_team.get(team)
        if states is None:
            return
        for st in states:
            p = self._period(st, event_time_ms)
            if p is None:
                continue
            p.spent += cost
            while p.fired < len(st.levels) and p.spent >= st.levels[p.fired]:
                self._fire(st, p, event_time_ms)

    def _period(self, st: _BudgetState, t: int) -> _Period | None:
        for p in st.periods:
            if p.start <= t < p.end:
                return p
        start, end = period_bounds(st.budget.period, t)
        p = _Period(start, end)
        kept = sorted([p, *st.periods], key=lambda x: -x.start)[:2]
        if p not in kept:
            return None  # older than what is kept: it cannot change a threshold any more
        st.periods = kept
        return p

    def _fire(self, st: _BudgetState, p: _Period, t: int) -> None:
        pct = self.thresholds[p.fired]
        level = st.levels[p.fired]
        p.fired += 1
        b = st.budget
        self.pending.append(
            _signal(
                "budget_threshold",
                b.team,
                "",
                p.start,
                t,
                p.spent,
                baseline=b.usd,
                threshold=level,
                evidence={
                    "period": b.period,
                    "period_start": datetime.fromtimestamp(p.start / 1000, UTC).date().isoformat(),
                    "threshold_percent": f"{pct:g}",
                    "budget_usd": f"{b.usd:.2f}",
                    "spent_usd": f"{p.spent:.2f}",
                    "spent_percent": f"{100.0 * p.spent / b.usd:.1f}",
                },
            )
        )

    def warm_start(self, rows: Iterable[HourlyRow]) -> None:
        """Period-to-date spend from ``spend_hourly`` rows; thresholds already crossed then are
        taken as signalled (they were, before the restart) and do not fire again."""
        for r in rows:
            for st in self._by_team.get(r.team, ()):
                p = self._period(st, r.hour_ms)
                if p is not None:
                    p.spent += r.cost_usd
        for states in self._by_team.values():
            for st in states:
                for p in st.periods:
                    while p.fired < len(st.levels) and p.spent >= st.levels[p.fired]:
                        p.fired += 1

    def period_starts(self, now_ms: int) -> list[int]:
        """Start of each budget's current period (how far back a warm start must read)."""
        return [period_bounds(b.period, now_ms)[0] for b in self.config.budgets]

    def take(self) -> list[dict[str, Any]]:
        out, self.pending = self.pending, []
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
            w + self.window_ms,
            1.0,
            model=model,
            user_pseudonym=user_pseudonym,
            evidence=evidence,
        )
