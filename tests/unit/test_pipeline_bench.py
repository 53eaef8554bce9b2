"""The arithmetic and the verdict of benchmarks/pipeline_bench.py (pure, no stack).

The benchmark itself needs the running services; what can be wrong without them is how a
rate is read from the offset samples and which sentence the numbers produce.
"""

from __future__ import annotations

import pytest

from benchmarks.pipeline_bench import Drain, Results, Sample, components, drain_from, verdict


def _drain(rate: float, cpu_us: float, stage: str = "s", kind: str = "k") -> Drain:
    # one second, `rate` events, cpu_us per event in the service, nothing elsewhere
    return Drain(stage, kind, int(rate), 1.0, cpu_us * rate / 1e6, 0.0, 0.0)


def test_rate_counts_from_first_to_last_commit_and_leaves_out_startup() -> None:
    samples = [
        Sample(0.0, 0, 0.0, 0.0, 0.0),  # process starting, group joining: no progress
        Sample(5.0, 0, 1.0, 0.5, 0.0),
        Sample(5.5, 2000, 1.4, 0.6, 0.0),  # first commit seen
        Sample(6.0, 2000, 1.8, 0.7, 0.0),
        Sample(7.5, 8000, 3.2, 1.0, 0.1),  # last commit seen
        Sample(7.6, 8000, 3.2, 1.0, 0.1),
    ]
    d = drain_from(samples, "redactor", "corpus")
    assert d.events == 6000
    assert d.seconds == pytest.approx(2.0)
    assert d.rate == pytest.approx(3000.0)
    assert d.cpu_us == pytest.approx(1.8e6 / 6000)
    assert d.broker_us == pytest.approx(0.4e6 / 6000)
    assert d.ch_us == pytest.approx(0.1e6 / 6000)
    assert d.busy == pytest.approx(0.9)


def test_a_single_commit_is_no_measurement() -> None:
    samples = [Sample(0.0, 0, 0, 0, 0), Sample(1.0, 40000, 1, 0, 0), Sample(1.1, 40000, 1, 0, 0)]
    with pytest.raises(SystemExit, match="fewer than two commits"):
        drain_from(samples, "redactor", "prose")


def _runs(*rates: float, cpu_us: float = 30) -> list[Drain]:
    return [_drain(r, cpu_us) for r in rates]


def _results(
    dense_on: tuple[float, ...],
    dense_off: tuple[float, ...],
    prose_on: tuple[float, ...] = (21_000, 23_000),
    prose_off: tuple[float, ...] = (22_000, 24_000),
) -> Results:
    res = Results(ingest=_runs(18_000, 26_000, cpu_us=35), aggregator=_runs(29_000, 33_000))
    res.redactor = {
        ("corpus", "on"): _runs(*dense_on, cpu_us=85),
        ("corpus", "off"): _runs(*dense_off),
        ("prose", "on"): _runs(*prose_on, cpu_us=34),
        ("prose", "off"): _runs(*prose_off, cpu_us=31),
    }
    return res


def test_verdict_names_detection_when_only_the_stub_keeps_up() -> None:
    res = _results(dense_on=(9_000, 11_000), dense_off=(26_000, 28_000))
    text = verdict(res, {"corpus": 0.65, "prose": 0.09})
    assert text[0].startswith("Median events/s, slowest first: redactor on dense")
    assert "not told apart" not in text[0]
    assert "detection makes the redactor the slowest stage" in text[1]
    assert "at 10,000/s 0.45x the ingest" in text[1]
    # prose: on and stub runs overlap, and so do the redactor's and ingest's
    assert "detection is not the bottleneck" in text[2]
    assert "overlap with those of the ingest" in text[2]


def test_verdict_does_not_blame_detection_when_the_stub_is_as_slow() -> None:
    res = _results(dense_on=(9_000, 11_000), dense_off=(12_000, 13_000))
    text = verdict(res, {"corpus": 0.65, "prose": 0.09})
    assert "slowest stage with detection (10,000/s) and without it (12,500/s)" in text[1]
    assert "detection makes the redactor the slowest stage" not in " ".join(text)


def test_verdict_does_not_tell_apart_runs_that_overlap() -> None:
    res = _results(dense_on=(17_000, 21_000), dense_off=(26_000, 28_000))
    text = verdict(res, {"corpus": 0.3, "prose": 0.09})
    assert "overlap with those of the ingest: the two are not told apart" in text[0]
    assert "still keeps up with the ingest" in text[1]


def test_verdict_when_detection_costs_nothing_measurable_but_the_redactor_is_slowest() -> None:
    res = _results(dense_on=(9_000, 11_000), dense_off=(26_000, 28_000), prose_on=(14_000, 15_000),
                   prose_off=(14_500, 15_500))  # fmt: skip
    text = verdict(res, {"corpus": 0.65, "prose": 0.03})
    assert (
        "detection is not the bottleneck; the redactor is still slower than the ingest" in (text[2])
    )


def test_parts_per_core_name_detection_only_when_it_costs_the_most() -> None:
    # _drain gives the broker and ClickHouse no CPU: the parts are the services' own
    res = _results(dense_on=(9_000, 11_000), dense_off=(26_000, 28_000))
    rows, text = components(res)
    table = "\n".join(rows)
    assert "| ingest (service + broker) | 35 | 28,571 |" in table
    assert "| **detection**, dense labelled corpus | 55 | 18,182 |" in table  # 85 - 30
    assert "| **detection**, plain prose | 3 | 333,333 |" in table  # 34 - 31
    res.redactor[("prose", "on")] = _runs(21_000, 23_000, cpu_us=31.5)
    assert "| **detection**, plain prose | <1 | over 1,000,000 |" in "\n".join(components(res)[0])
    assert "detection on dense labelled corpus content (55 us/event) costs more" in text[0]
    assert "is the pipeline's bottleneck" in text[0]
    assert "detection is not what limits the pipeline" in text[1]
    assert "costliest other part, ingest (service + broker) (35 us/event" in text[1]
