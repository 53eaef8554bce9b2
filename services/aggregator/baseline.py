"""Robust baselines for the streaming rules and their warm start from the hourly rollup. Pure.

Two kinds of history feed the spend baseline of one key (team x tool or team x task label):

- the last minutes, one total per minute, kept by the detector itself (``signals.py``): the
  median of them says what the key spends *now*, the median absolute deviation how noisy it is;
- hourly totals of the last ``weeks`` weeks (:class:`HourlyHistory`): the median of the same
  hour of the week says how the rate usually moves over the day and the week, so that a
  Monday-morning ramp is expected instead of alarming.

Nothing here reads a clock or does I/O. After a restart the detector rebuilds the hourly
history from ClickHouse ``spend_hourly`` rows, which :func:`history_rows` turns into
:class:`HourlyRow` tuples; the aggregator does the query, this module only the arithmetic.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple

WEEK_HOURS = 168
HOUR_MS = 3_600_000
MINUTE_MS = 60_000
MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation


def median(values: list[float]) -> float:
    """Median of a non-empty list (sorts a copy)."""
    s = sorted(values)
    n = len(s)
    mid = n // 2
    return s[mid] if n % 2 else (s[mid - 1] + s[mid]) / 2.0


def median_mad(values: list[float]) -> tuple[float, float]:
    """Median and median absolute deviation: both ignore up to half of the values being wild."""
    m = median(values)
    return m, median([abs(v - m) for v in values])


class HourlyHistory:
    """Hourly spend of one key for the current week and ``weeks`` weeks before, in a ring.

    Memory is fixed at ``168 * (weeks + 1)`` doubles plus as many hour tags, whatever the
    traffic. A slot whose tag is not the hour asked for holds an older week: that hour had no
    spend (it counts as zero if the key was already known then, see :meth:`seasonal`).
    """

    __slots__ = ("first_hour", "size", "tags", "values", "weeks")

    def __init__(self, weeks: int) -> None:
        self.weeks = max(1, weeks)
        self.size = WEEK_HOURS * (self.weeks + 1)
        self.values = array("d", bytes(8 * self.size))
        self.tags = array("q", [-1]) * self.size
        self.first_hour: int | None = None  # first hour this key is known to exist

    def add(self, hour: int, value: float) -> None:
        i = hour % self.size
        if self.tags[i] != hour:
            if self.tags[i] > hour:
                return  # older than the ring: nothing to update
            self.tags[i] = hour
            self.values[i] = 0.0
        self.values[i] += value
        if self.first_hour is None or hour < self.first_hour:
            self.first_hour = hour

    def get(self, hour: int) -> float:
        i = hour % self.size
        return self.values[i] if self.tags[i] == hour else 0.0

    def known_weeks(self, hour: int) -> int:
        """How many previous weeks of ``hour``'s hour-of-week lie inside the known history."""
        if self.first_hour is None:
            return 0
        return max(0, min(self.weeks, (hour - self.first_hour) // WEEK_HOURS))

    def seasonal(self, hour: int) -> float | None:
        """Median spend of the same hour of the week over the known previous weeks."""
        k = self.known_weeks(hour)
        if k == 0:
            return None
        return median([self.get(hour - WEEK_HOURS * j) for j in range(1, k + 1)])

    def mean_last_week(self, hour: int) -> float:
        """Mean hourly spend over the 168 hours before ``hour`` (the profile's floor scale)."""
        return sum(self.get(h) for h in range(hour - WEEK_HOURS, hour)) / WEEK_HOURS


class SeasonalProfile:
    """Expected spend per minute of one key from its :class:`HourlyHistory`, or None.

    The same-hour-of-week medians are taken as the rate at the middle of each hour and
    interpolated linearly in between, so the expected rate ramps smoothly instead of jumping on
    the hour. A floor of ``floor_share`` of the key's mean rate keeps the quiet hours from
    dividing by (almost) zero. Medians are cached per hour; the cache is pruned as time moves.
    """

    __slots__ = ("_cache", "_floor", "_floor_hour", "floor_share", "history", "min_weeks")

    def __init__(self, history: HourlyHistory, floor_share: float = 0.05, min_weeks: int = 1):
        self.history = history
        self.floor_share = floor_share
        self.min_weeks = min_weeks
        self._cache: dict[int, float] = {}
        self._floor = 0.0
        self._floor_hour = -1

    def available(self, hour: int) -> bool:
        """Whether the hours the baseline looks at (the last hour or two) have ``min_weeks``."""
        return self.history.known_weeks(hour - 2) >= self.min_weeks

    def _hour_value(self, hour: int) -> float:
        v = self._cache.get(hour)
        if v is None:
            s = self.history.seasonal(hour)
            v = 0.0 if s is None else s
            if len(self._cache) > 16:
                self._cache = {h: x for h, x in self._cache.items() if h >= hour - 4}
            self._cache[hour] = v
        return v

    def per_minute(self, minute: int) -> float:
        """Expected spend in minute ``minute`` (minutes since the epoch), floored above zero."""
        hour = minute // 60
        if hour != self._floor_hour:
            self._floor_hour = hour
            self._floor = max(self.history.mean_last_week(hour) * self.floor_share, 1e-12)
        pos = (minute % 60 + 0.5) / 60.0  # position of the minute's middle inside its hour
        here = self._hour_value(hour)
        if pos < 0.5:
            other, w = self._hour_value(hour - 1), 0.5 - pos
        else:
            other, w = self._hour_value(hour + 1), pos - 0.5
        return max((here * (1.0 - w) + other * w) / 60.0, self._floor / 60.0)

    def invalidate(self) -> None:
        self._cache.clear()
        self._floor_hour = -1


class HourlyRow(NamedTuple):
    """One hour of one team x tool x task label from ``spend_hourly`` (no pseudonyms there)."""

    hour_ms: int
    team: str
    tool: str
    task_label: str
    cost_usd: float
    requests: int
    errors: int
    retries: int


def _epoch_ms(value: Any) -> int:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)  # ClickHouse DateTime('UTC') comes back naive
        return int(value.timestamp() * 1000)
    return int(value) * 1000  # toUnixTimestamp(): seconds


def history_rows(rows: Iterable[Sequence[Any]]) -> list[HourlyRow]:
    """Typed rows from ``(hour, team, tool, task_label, cost, requests, errors, retries)``.

    ``hour`` may be epoch seconds or a datetime, ``cost`` a Decimal: whatever the ClickHouse
    client returns for the query in the aggregator.
    """
    out = []
    for hour, team, tool, label, cost, requests, errors, retries in rows:
        out.append(
            HourlyRow(
                _epoch_ms(hour),
                str(team),
                str(tool),
                str(label),
                float(cost) if isinstance(cost, Decimal) else float(cost or 0.0),
                int(requests or 0),
                int(errors or 0),
                int(retries or 0),
            )
        )
    return out


def history_since(now: datetime, weeks: int, period_starts: Iterable[datetime] = ()) -> datetime:
    """How far back the warm start must read: the seasonal weeks and every open budget period."""
    since = now - timedelta(weeks=weeks, hours=2)
    for start in period_starts:
        since = min(since, start)
    return since.replace(minute=0, second=0, microsecond=0)
