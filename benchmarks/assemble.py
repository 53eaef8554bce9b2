"""Build BENCHMARKS.md from the files the benchmarks write into benchmarks/results/."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {
    "detection.md": "Sensitive-data detection vs Presidio (issue 3)",
    "clickhouse.md": "ClickHouse: 10 million events, finance views (issue 4)",
    "spike_detection.md": "Spike detection accuracy (issue 4)",
    "alert_latency.md": "Alert latency, raw event to Slack (issue 5)",
    "pipeline.md": "Pipeline stage rates: is detection the bottleneck? (issue 3)",
}
INTRO = """# BENCHMARKS

Measured on this project's development machine: 2 vCPU AMD EPYC, 24 GiB, Python 3.11.7,
2026-11-28, with other engineers' jobs running at the same time (load average 1-5), so
absolute numbers drift by 30% or more between runs; comparisons are made side by side in
the same run and given as ratios. Each section below is the file a benchmark writes into
`benchmarks/results/`; rerun the command named in it, then
`.venv/bin/python -m benchmarks.assemble`.

| benchmark | command | headline |
|---|---|---|
| detection | `.venv/bin/python -m benchmarks.detect_bench` (needs `pip install -e '.[bench]'`) | native core 168 MB/s on the labelled corpus, 1,236x Presidio's six shared pattern recognizers (1,455x its default English registry; 910x on documents without sensitive data, 566x on plain prose); the Python paths in the same run: 40.6 MB/s with Hyperscan (298x), 16.9 MB/s pure `re`; precision and recall 1.000 per class on our labelled corpus vs Presidio micro-F1 0.844 |
| ClickHouse | `.venv/bin/python -m benchmarks.load_bench` | 10M events in 62.5 s; monthly spend by team and tool 11.1 ms median / 16.1 ms p95; 44.1 compressed bytes per stored event (+9.0 for rollups) |
| spike detection | `.venv/bin/python -m benchmarks.spike_accuracy` | recall 39/39 for in-scope doublings, delay p50/p95/max 25/53/53 s of event time, 0.23 false signals per team-week, observe() ~2.5 us/event |
| alert latency | `.venv/bin/python -m benchmarks.alert_latency` | raw event -> Slack p50 0.73 s, p99 1.27 s with the default 1 s aggregator flush (0.24 / 0.44 s with 0.2 s) |
| pipeline stages | `.venv/bin/python -m benchmarks.pipeline_bench` | one process per service, medians of 5: redactor 27.1k events/s on the dense corpus content with detection (38.7k stubbed out), ahead of ingest 25.4k/s; aggregator 32.0k/s; detection 10 us of CPU per event on dense content (1 on prose), the cheapest part per core: not the bottleneck by either reading |
"""


def main() -> None:
    out = [INTRO]
    for name, title in SECTIONS.items():
        lines = (ROOT / "benchmarks" / "results" / name).read_text().strip().splitlines()
        if lines and lines[0].startswith("# "):
            lines = lines[1:]
        body = ["#" + ln if ln.startswith("## ") else ln for ln in lines]
        body = [
            ln.replace("](spike_detection.png)", "](benchmarks/results/spike_detection.png)")
            for ln in body
        ]
        out.append(f"## {title}\n\n" + "\n".join(body).strip() + "\n")
    (ROOT / "BENCHMARKS.md").write_text("\n".join(out))


if __name__ == "__main__":
    main()
