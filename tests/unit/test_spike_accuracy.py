"""Spike detection meets its targets on two generated days of realistic traffic (pure, ~10 s).

The same generator and scoring as ``benchmarks/spike_accuracy.py`` (which runs a full month):
six teams in four time zones, office-hour cycles, day-to-day and minute-to-minute activity
noise, Poisson arrivals, log-normal call costs, about two million individual calls fed one by
one. Every injected spend spike is an exact doubling (more calls or pricier calls, of a team x
tool or a team x task label), placed in office hours where most teams are above the minimum;
a few error and retry storms ride along. The detector is warm-started from four weeks of
hourly rollup and restarted halfway, as after a deploy.
"""

from __future__ import annotations

from datetime import UTC, datetime

from benchmarks.spike_accuracy import TEAMS, BenchConfig, run, score

TEAM_NAMES = ("support", "engineering", "data", "research", "legal", "sales")


def test_every_doubling_within_60s_and_under_one_false_signal_per_team_week() -> None:
    cfg = BenchConfig(
        days=2,
        start=datetime(2026, 6, 4, tzinfo=UTC),  # Thursday and Friday
        seed=11,
        teams=tuple(t for t in TEAMS if t.name in TEAM_NAMES),
        spend_sizes=(2.0,),
        kind_weights=(0.8, 0.1, 0.1),
        office_share=1.0,
        spike_gap_hours=1.0,
        min_gap_hours=1.0,
        restart_at_day=1.0,
        measure_overhead=False,
    )
    res = run(cfg)
    sc = score(res)
    assert res.events > 1_000_000  # individual calls, not minute totals

    doublings = sc.in_scope_2x
    assert len(doublings) >= 8, "too few doublings above the minimum to say anything"
    missed = [i for i in doublings if i.detected_ms is None]
    assert not missed, f"doublings not signalled: {missed}"
    delays = [(i.detected_ms - i.start_ms) / 1000 for i in doublings if i.detected_ms]
    assert max(delays) <= 60.0, f"delays {sorted(delays)}"

    false = sum(sc.false_by_team.values())
    assert false / sc.team_weeks < 1.0, sc.false_by_team
    assert sc.per_kind["spend"]["false_signals"] / sc.team_weeks < 1.0
    assert sc.budget_ok, sc.budget_detail
    # no signal names a person
    assert all(s["user_pseudonym"] is None for s in res.signals + res.budget_signals)
