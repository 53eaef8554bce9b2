"""The streaming signal rules (services/aggregator/signals.py, baseline.py), pure."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from services.aggregator.app import RowBuilder
from services.aggregator.baseline import (
    HOUR_MS,
    HourlyHistory,
    HourlyRow,
    history_rows,
    median_mad,
)
from services.aggregator.pricing import Pricer
from services.aggregator.signals import (
    Budget,
    BudgetConfig,
    BudgetTracker,
    OncePerWindow,
    SpikeConfig,
    SpikeDetector,
    load_budgets,
    parse_budgets,
    period_bounds,
)
from trustlog.settings import CONFIG_DIR

MIN = 60_000
# Monday 2026-06-01 00:00 UTC
T0 = int(datetime(2026, 6, 1, tzinfo=UTC).timestamp() * 1000)


def steady(
    d: SpikeDetector,
    start: int,
    minutes: float,
    per_min: int,
    cost: float,
    *,
    team: str = "a",
    tool: str = "chat",
    label: str = "coding",
    error_every: int = 0,
    retries: int = 0,
) -> list[dict[str, Any]]:
    """Evenly spaced calls; returns what fired."""
    n = int(minutes * per_min)
    gap = MIN / per_min
    out: list[dict[str, Any]] = []
    for i in range(n):
        err = bool(error_every) and i % error_every == 0
        d.observe(team, tool, label, start + int(i * gap), cost, err, retries)
        out.extend(d.take())
    return out


def warm(d: SpikeDetector, per_min: int = 100, cost: float = 0.05, minutes: int = 70) -> int:
    """An hour of steady traffic so level and noise are known; returns where it ended."""
    assert steady(d, T0, minutes, per_min, cost) == []
    return T0 + minutes * MIN


def test_doubling_fires_within_the_window_once_and_names_no_one() -> None:
    d = SpikeDetector(SpikeConfig(min_usd=5.0))
    t = warm(d, per_min=100, cost=0.05)  # $5 a minute
    sigs = steady(d, t, 3, 200, 0.05)  # doubled call rate
    spikes = [s for s in sigs if s["rule"] == "cost_spike"]
    assert len(spikes) >= 1
    s = spikes[0]
    assert s["window_end"] - t <= 60_000  # event time from the spike's start
    assert s["user_pseudonym"] is None and s["team"] == "a" and s["tool"] == "chat"
    assert s["baseline"] == pytest.approx(5.0, rel=0.02)
    assert s["observed"] >= s["threshold"] >= 1.3 * s["baseline"] - 1e-9
    ev = s["evidence"]
    assert ev["expected_usd"] == "5.0000" and ev["baseline_method"] == "recent"
    assert int(ev["calls"]) > 100 and ev["trigger"] in ("calls", "spend")
    assert all(isinstance(v, str) for v in ev.values())
    # once per key and 60 s of event time: at most one per minute while it lasts
    ends = [x["window_end"] for x in spikes]
    assert all(b - a >= 60_000 for a, b in itertools.pairwise(ends))


def test_small_rise_and_small_team_do_not_fire() -> None:
    d = SpikeDetector(SpikeConfig(min_usd=5.0))
    t = warm(d, per_min=100, cost=0.05)
    assert steady(d, t, 5, 120, 0.05) == []  # +20%: below the factor
    small = SpikeDetector(SpikeConfig(min_usd=5.0))
    steady(small, T0, 30, 20, 0.05)  # $1 a minute
    # tripled, but $3 a minute is under the minimum: a small team is not noise
    assert steady(small, T0 + 30 * MIN, 5, 60, 0.05) == []


def test_one_or_two_giant_calls_are_not_a_spike_but_three_are() -> None:
    d = SpikeDetector(SpikeConfig(min_usd=5.0))
    t = warm(d, per_min=100, cost=0.05)
    d.observe("a", "chat", "coding", t + 1000, 40.0)  # one 1M-token prompt
    d.observe("a", "chat", "coding", t + 2000, 40.0)
    assert [s for s in d.take() if s["rule"] == "cost_spike"] == []
    d.observe("a", "chat", "coding", t + 3000, 40.0)
    assert [s["rule"] for s in d.take()] == ["cost_spike"]


def test_seasonal_baseline_expects_the_morning_ramp() -> None:
    """Two weeks of history say spend ramps 10x between 08:00 and 09:00. Replaying the same
    ramp is quiet with the seasonal baseline; the recent-minutes baseline alone fires."""

    def rate(minute_of_day: int) -> float:  # USD per minute: $2 at night, $20 from 09:00
        h = minute_of_day / 60
        return 2.0 if h < 8 else 20.0 if h >= 9 else 2.0 + 18.0 * (h - 8)

    day = T0 + 14 * 24 * HOUR_MS  # Monday two weeks later
    hourly = [sum(rate((h % 24) * 60 + m) for m in range(60)) for h in range(14 * 24 + 6)]
    rows = [  # the rollup up to the restart at 06:00, $0.05 a call
        HourlyRow(T0 + h * HOUR_MS, "a", "chat", "coding", usd, round(usd / 0.05), 0, 0)
        for h, usd in enumerate(hourly)
    ]
    fired = {}
    for weeks in (4, 0):
        d = SpikeDetector(SpikeConfig(seasonal_weeks=weeks, min_usd=1.0))
        d.warm_start(rows, day + 6 * HOUR_MS)
        out = []
        for minute in range(6 * 60, 10 * 60):
            per_min = round(rate(minute) / 0.05)  # the ramp is people arriving: more calls
            for i in range(per_min):
                d.observe("a", "chat", "coding", day + minute * MIN + i * MIN // per_min, 0.05)
            out += d.take()
        fired[weeks] = [s for s in out if s["rule"] == "cost_spike"]
    assert fired[4] == []
    assert fired[0], "the recent-minutes baseline should have mistaken the ramp for a spike"


def test_task_label_dimension_and_its_suppression() -> None:
    d = SpikeDetector(SpikeConfig(min_usd=1.0))

    def second(t: int, coding: int) -> None:
        # coding is a quarter of each of two tools' calls
        for tool in ("ide", "chat"):
            for j in range(coding):
                d.observe("a", tool, "coding", t + j, 0.05)
            for j in range(3):
                d.observe("a", tool, "drafting", t + 10 + j, 0.05)

    for i in range(70 * 60):
        second(T0 + i * 1000, 1)
    assert d.take() == []
    t1 = T0 + 70 * MIN
    for i in range(60):  # coding doubles on both tools: each tool rises by a quarter only
        second(t1 + i * 1000, 2)
    got = d.take()
    assert [(s["rule"], s["tool"]) for s in got] == [("task_spend_spike", "task:coding")]
    assert got[0]["evidence"]["task_label"] == "coding" and got[0]["user_pseudonym"] is None
    assert got[0]["window_end"] - t1 <= 60_000
    # One runaway tool whose calls are all one label: the tool's signal goes out, the
    # label's echo of the same calls is suppressed.
    e = SpikeDetector(SpikeConfig(min_usd=1.0))
    steady(e, T0, 70, 100, 0.05, tool="ide", label="drafting")
    out = steady(e, T0 + 70 * MIN, 2, 400, 0.05, tool="ide", label="drafting")
    assert [s["rule"] for s in out] == ["cost_spike", "cost_spike"]  # one per minute
    assert e.suppressed >= 1
    # calls arrive a little out of event-time order: the echo may cross at an earlier time
    f = SpikeDetector(SpikeConfig(min_usd=5.0))
    steady(f, T0, 30, 10, 0.01, tool="ide", label="drafting")
    burst = T0 + 30 * MIN
    for i in range(40):
        f.observe("a", "ide", "drafting", burst - (i % 5) * 1000, 1.0)
    assert [s["rule"] for s in f.take()] == ["cost_spike"]


def test_error_and_retry_storms_need_a_count_and_a_rise() -> None:
    d = SpikeDetector(SpikeConfig(min_usd=1000.0))
    steady(d, T0, 40, 200, 0.01, error_every=100)  # 1% errors
    out = steady(d, T0 + 40 * MIN, 1, 200, 0.01, error_every=5)  # 20% errors
    storms = [s for s in out if s["rule"] == "error_storm"]
    assert len(storms) == 1
    s = storms[0]
    assert s["baseline"] == pytest.approx(0.01, abs=0.002) and s["observed"] >= 0.1
    assert int(s["evidence"]["errors"]) >= 20 and s["user_pseudonym"] is None
    quiet = SpikeDetector(SpikeConfig(min_usd=1000.0))
    steady(quiet, T0, 40, 10, 0.01)
    # every call failing, but 10 errors a minute stay under the minimum count
    assert steady(quiet, T0 + 40 * MIN, 1, 10, 0.01, error_every=1) == []
    r = SpikeDetector(SpikeConfig(min_usd=1000.0))
    steady(r, T0, 40, 100, 0.01)
    out = steady(r, T0 + 40 * MIN, 1, 100, 0.01, retries=2)
    assert [s["rule"] for s in out] == ["retry_storm"]


def test_late_and_out_of_order_events() -> None:
    d = SpikeDetector(SpikeConfig(min_usd=5.0))
    t = warm(d, per_min=100, cost=0.05)
    # an hour-old backlog lands in history only: it never fires and never moves the window
    for i in range(500):
        d.observe("a", "chat", "coding", t - 50 * MIN + i, 1.0)
    assert d.take() == []
    state = d.state("a", "chat")
    assert state is not None and state["spend"] < 6.0
    # a few seconds late but inside the window: it counts there
    d.observe("a", "chat", "coding", t - 2000, 30.0)
    d.observe("a", "chat", "coding", t - 1000, 30.0)
    d.observe("a", "chat", "coding", t - 3000, 30.0)
    assert [s["rule"] for s in d.take()] == ["cost_spike"]


def test_cold_start_is_quiet_and_warm_start_knows_the_level() -> None:
    cold = SpikeDetector(SpikeConfig(min_usd=5.0))
    assert steady(cold, T0, 2, 400, 0.05) == []  # $20 a minute from nowhere: no baseline yet
    rows = [
        HourlyRow(T0 - h * HOUR_MS, "a", "chat", "coding", 300.0, 6000, 60, 0) for h in range(1, 3)
    ]
    warm_d = SpikeDetector(SpikeConfig(min_usd=5.0))
    warm_d.warm_start(rows, T0)  # $5 a minute for the last two hours
    assert steady(warm_d, T0, 3, 100, 0.05) == []  # as usual
    out = steady(warm_d, T0 + 3 * MIN, 2, 300, 0.05)  # 3x: clear even before noise is known
    assert [s["rule"] for s in out][:1] == ["cost_spike"]
    assert out[0]["evidence"]["baseline_method"] == "warmup"
    # history, but nothing in the last two hours: no level to trust, so no spike yet
    idle = SpikeDetector(SpikeConfig(min_usd=5.0))
    idle.warm_start([HourlyRow(T0 - 5 * HOUR_MS, "a", "chat", "coding", 900.0, 9000, 0, 0)], T0)
    assert steady(idle, T0, 2, 400, 0.05) == []


def test_state_is_bounded() -> None:
    d = SpikeDetector(SpikeConfig(max_keys=50, task_dimension=False))
    for i in range(500):
        d.observe("team", f"tool-{i}", "other", T0 + i * 1000, 0.01)
    assert d.key_count() <= 50 and d.evicted >= 450
    h = HourlyHistory(weeks=4)
    for hour in range(10 * 168):
        h.add(hour, 1.0)
    assert len(h.values) == 168 * 5  # the ring never grows
    assert h.seasonal(10 * 168) == 1.0 and h.known_weeks(10 * 168) == 4


def test_hourly_history_median_ignores_one_bad_week() -> None:
    h = HourlyHistory(weeks=4)
    for w, v in enumerate([10.0, 10.0, 500.0, 10.0]):
        h.add(9 + w * 168, v)
    assert h.seasonal(9 + 4 * 168) == 10.0
    assert h.seasonal(9) is None  # no earlier week known
    assert median_mad([1.0, 2.0, 3.0, 100.0]) == (2.5, 1.0)


def test_history_rows_from_clickhouse_types() -> None:
    rows = history_rows(
        [
            (1_780_000_000, "a", "chat", "coding", Decimal("1.25"), 10, 1, 2),
            (datetime(2026, 6, 1, 9), "a", "chat", "coding", Decimal(0), 0, 0, 0),
        ]
    )
    assert rows[0] == HourlyRow(1_780_000_000_000, "a", "chat", "coding", 1.25, 10, 1, 2)
    assert rows[1].hour_ms == T0 + 9 * HOUR_MS  # a naive datetime is UTC


def test_budget_thresholds_fire_once_per_period_at_the_crossing() -> None:
    b = BudgetTracker(BudgetConfig((Budget("a", "month", 100.0),), (80.0, 90.0, 100.0)))
    fired = []
    t = T0
    for i in range(300):  # $1 per call through June, then into July
        t = T0 + i * 3 * HOUR_MS
        b.observe("a", t, 1.0)
        b.observe("other-team", t, 50.0)  # no budget: nothing
        fired += [(s["evidence"]["threshold_percent"], s["window_end"]) for s in b.take()]
    july = period_bounds("month", T0 + 31 * 24 * HOUR_MS)[0]
    june = [f for f in fired if f[1] < july]
    assert june == [
        ("80", T0 + 79 * 3 * HOUR_MS),
        ("90", T0 + 89 * 3 * HOUR_MS),
        ("100", T0 + 99 * 3 * HOUR_MS),
    ]
    assert [f[0] for f in fired if f[1] >= july] == []  # 60 calls in July: under 80 %
    s = BudgetTracker(BudgetConfig((Budget("a", "week", 10.0),)))
    s.observe("a", T0, 25.0)  # one call over every threshold: each fires, once
    got = s.take()
    assert [x["evidence"]["threshold_percent"] for x in got] == ["80", "90", "100"]
    assert all(x["rule"] == "budget_threshold" and x["user_pseudonym"] is None for x in got)
    assert got[0]["evidence"]["period_start"] == "2026-06-01" and got[0]["tool"] == ""


def test_budget_warm_start_does_not_fire_again_after_a_restart() -> None:
    cfg = BudgetConfig((Budget("a", "month", 100.0),))
    rows = [HourlyRow(T0 + h * HOUR_MS, "a", "chat", "coding", 8.5, 1, 0, 0) for h in range(10)]
    b = BudgetTracker(cfg)
    b.warm_start(rows)  # $85 already spent this month: 80 % was signalled before the restart
    b.observe("a", T0 + 11 * HOUR_MS, 5.0)
    assert [x["evidence"]["threshold_percent"] for x in b.take()] == ["90"]
    b.observe("a", T0 + 12 * HOUR_MS, 10.0)
    assert [x["evidence"]["threshold_percent"] for x in b.take()] == ["100"]


def test_period_bounds() -> None:
    wed = T0 + 2 * 24 * HOUR_MS + 5
    assert period_bounds("week", wed) == (T0, T0 + 7 * 24 * HOUR_MS)  # weeks start Monday
    assert period_bounds("day", wed)[0] == T0 + 2 * 24 * HOUR_MS
    feb = int(datetime(2028, 2, 29, 23, tzinfo=UTC).timestamp() * 1000)
    lo, hi = period_bounds("month", feb)
    assert (hi - lo) == 29 * 24 * HOUR_MS


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"budgets": [{"team": "a", "period": "year", "usd": 1}]}, "period must be one of"),
        ({"budgets": [{"team": "a", "usd": -5}]}, "usd must be a positive"),
        ({"budgets": [{"usd": 5}]}, "team must be"),
        ({"budgets": [{"team": "a", "usd": 5}, {"team": "a", "usd": 6}]}, "a second month"),
        ({"thresholds_percent": []}, "non-empty list"),
    ],
)
def test_bad_budgets_are_refused(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_budgets(doc)


def test_shipped_budgets_file_loads(tmp_path: Path) -> None:
    cfg = load_budgets(CONFIG_DIR / "budgets.yaml")
    assert cfg.budgets and cfg.thresholds_percent == (80.0, 90.0, 100.0)
    assert load_budgets(tmp_path / "missing.yaml").budgets == ()
    assert load_budgets(None).budgets == ()


def test_once_per_window() -> None:
    o = OncePerWindow(60)
    t = 1_700_000_000_000
    first = o.hit("sensitive_data", "a", "chat", t, detail="email", user_pseudonym="p_x")
    assert first is not None and first["user_pseudonym"] == "p_x"
    assert o.hit("sensitive_data", "a", "chat", t + 1, detail="email") is None
    cost = o.hit("unknown_model", "a", "chat", t, detail="m", user_pseudonym="p_x")
    assert cost is not None and cost["user_pseudonym"] is None


def _redacted(i: int, when: datetime, input_tokens: int) -> dict[str, Any]:
    return {
        "event_id": f"e{i}",
        "event_time": when,
        "producer": "p",
        "tool": "chat",
        "model": "gpt-4o-mini",
        "provider": "openai",
        "workspace": "w",
        "user_pseudonym": "p_secret_person",
        "pseudonym_key_version": "1",
        "team": "t",
        "task_label": "coding",
        "input_tokens": input_tokens,
        "output_tokens": 10,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "status": "ok",
        "retry_count": 0,
        "policy_flags": [],
        "sensitive_classes": {},
        "content_chars": 0,
    }


def test_row_builder_feeds_spikes_and_budgets() -> None:
    rb = RowBuilder(
        Pricer(),
        SpikeDetector(SpikeConfig(min_usd=5.0)),
        OncePerWindow(60),
        BudgetTracker(BudgetConfig((Budget("t", "month", 20.0),), (50.0,))),
    )
    rng = random.Random(1)
    base = datetime(2026, 6, 1, 9, tzinfo=UTC).timestamp()
    # gpt-4o-mini input is $0.15 per million tokens: 1M tokens = $0.15 a call
    for i in range(70 * 40):  # 40 calls a minute, $6 a minute, for 70 minutes
        rb.build(_redacted(i, datetime.fromtimestamp(base + i * 1.5, UTC), 1_000_000), 0, i)
    first = rb.take_signals()
    assert [s["rule"] for s in first] == ["budget_threshold"]  # $10 of $20 spent
    t1 = base + 70 * 60
    for i in range(120):  # 120 calls a minute: tripled
        when = datetime.fromtimestamp(t1 + i * 0.5 + rng.random() * 0.1, UTC)
        rb.build(_redacted(10_000 + i, when, 1_000_000), 0, 10_000 + i)
    sigs = rb.take_signals()
    spikes = [s for s in sigs if s["rule"] == "cost_spike"]
    assert len(spikes) == 1 and spikes[0]["user_pseudonym"] is None
    assert "p_secret_person" not in repr(sigs)
