"""Alert latency: a policy-flagged event entering the raw topic -> its Slack post.

Runs the real pipeline on the local stack: redactor, aggregator and alerts as separate
processes (exactly as `trustlog up` starts them), plus a local Slack receiver that validates
Block Kit. N raw events, each with a policy flag and its own team (so each opens its own
incident and gets its own post), are produced to the raw topic at a steady pace. Latency is
the receiver's arrival time minus the raw record's broker timestamp (the raw topic uses
LogAppendTime), both on this machine's clock.

Stages, from the record timestamps of the intermediate topics: raw -> redacted (redactor
transaction), redacted -> signal (aggregator: ClickHouse insert, then signals; it flushes at
most every ``TRUSTLOG_BATCH_MAX_SECONDS``), signal -> Slack (alerts: batch, ClickHouse,
outbox, post).

Two phases in one run, side by side: the defaults, then the aggregator restarted with a
shorter flush interval, to show what the default flush interval costs.

    .venv/bin/python -m benchmarks.alert_latency [--n 300] [--interval 0.1] [--fast-flush 0.2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks._machine import describe_machine

RESULTS = Path(__file__).resolve().parent / "results"
SERVICES = ("redactor", "aggregator", "alerts")
FLAG = "bench_latency_flag"


@dataclass
class Phase:
    name: str
    batch_max_seconds: float
    teams: list[str] = field(default_factory=list)
    raw_ms: dict[str, int] = field(default_factory=dict)
    redacted_ms: dict[str, int] = field(default_factory=dict)
    signal_ms: dict[str, int] = field(default_factory=dict)
    slack_ms: dict[str, int] = field(default_factory=dict)

    def latencies(self, start: dict[str, int], end: dict[str, int]) -> list[float]:
        return [(end[t] - start[t]) / 1000 for t in self.teams if t in start and t in end]


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    # nearest rank: p99 of 300 samples is the 297th value
    return s[max(0, min(len(s) - 1, round(q / 100 * len(s) + 0.5) - 1))]


def _machine() -> str:
    return f"{describe_machine()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"


def _raw_event(team: str) -> dict[str, Any]:
    now = int(time.time() * 1000)
    return {
        "event_id": str(uuid.uuid4()),
        "event_time": now,
        "producer": "bench-latency",
        "tool": "chat-assistant",  # approved, so no unapproved-tool incident joins in
        "model": "gpt-4o-mini",  # priced, so no unknown-model incident either
        "provider": "openai",
        "workspace": "bench",
        "user_id": f"user-{team}",
        "user_email": None,
        "team": team,
        "task_label": "other",
        "input_tokens": 100,
        "output_tokens": 20,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "status": "ok",
        "retry_count": 0,
        "policy_flags": [FLAG],
        "latency_ms": None,
        "client_ip": None,
        "prompt": "Summarise the meeting notes.",
        "reply": "Here is a summary.",
        "attributes": {},
    }


async def _produce(bootstrap: str, topic: str, teams: list[str], interval: float) -> dict[str, int]:
    from aiokafka import AIOKafkaProducer

    from trustlog.avro import raw_codec

    codec = raw_codec()
    out: dict[str, int] = {}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    try:
        next_at = time.monotonic()
        for team in teams:
            md = await producer.send_and_wait(
                topic, codec.encode(_raw_event(team)), key=team.encode()
            )
            # LogAppendTime on the raw topic: the moment the event entered it
            out[team] = int(md.timestamp)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    finally:
        await producer.stop()
    return out


async def _topic_times(
    bootstrap: str, topic: str, codec_name: str, teams: set[str], rule: str | None = None
) -> dict[str, int]:
    """First record timestamp per bench team on ``topic`` (read from the beginning)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from trustlog.avro import DecodeError, codec

    c = codec(codec_name)
    out: dict[str, int] = {}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed"
    )
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
            batch = await consumer.getmany(*tps, timeout_ms=1000, max_records=5000)
            for records in batch.values():
                for r in records:
                    try:
                        rec = c.decode(r.value or b"")
                    except DecodeError:
                        continue
                    team = rec.get("team")
                    if team in teams and (rule is None or rec.get("rule") == rule):
                        out.setdefault(team, int(r.timestamp))
    finally:
        await consumer.stop()
    return out


def _slack_times(receiver: Any, teams: set[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in receiver.attempts():
        if r.status != 200 or not isinstance(r.payload, dict):
            continue
        text = str(r.payload.get("text", ""))
        if "policy_flag" not in json.dumps(r.payload):
            continue
        for word in text.replace(",", " ").split():
            if word in teams:
                out.setdefault(word, int(r.at * 1000))
    return out


def _wait_posts(receiver: Any, teams: set[str], timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        got = _slack_times(receiver, teams)
        if len(got) >= len(teams) or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def _env(receiver_url: str, batch_max_seconds: float) -> dict[str, str]:
    return {
        "TRUSTLOG_PSEUDONYM_KEYS": json.dumps({"1": "bench-latency-key-" + "k" * 16}),
        "TRUSTLOG_PSEUDONYM_KEY_VERSION": "1",
        "TRUSTLOG_SLACK_WEBHOOK_URL": receiver_url,
        "TRUSTLOG_HEALTH_PORT": "0",
        "TRUSTLOG_BATCH_MAX_SECONDS": str(batch_max_seconds),
    }


def _start(state: Path, names: tuple[str, ...], env: dict[str, str]) -> None:
    from trustlog import procs

    for name in names:
        procs.start(state, f"bench-{name}", f"services.{name}", env)
    for name in names:
        # procs.wait_healthy gives up at once if /proc still shows the forked parent's
        # command line (the child has not exec'd yet); give the child a moment first.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not procs.status(state, f"bench-{name}").running:
            time.sleep(0.1)
        if not procs.wait_healthy(state, f"bench-{name}", max(1.0, deadline - time.monotonic())):
            log = state / "logs" / f"bench-{name}.log"
            tail = log.read_text(errors="replace").splitlines()[-20:] if log.exists() else []
            raise SystemExit(f"{name} did not become healthy:\n" + "\n".join(tail))


def run_phase(
    phase: Phase,
    bootstrap: str,
    raw_topic: str,
    receiver: Any,
    n: int,
    interval: float,
    run: str,
) -> None:
    # Warm-up: the first events after a (re)start pay for group joins and connections.
    warm = [f"lat-{run}-{phase.name}-warm-{i}" for i in range(3)]
    asyncio.run(_produce(bootstrap, raw_topic, warm, 0.2))
    if len(_wait_posts(receiver, set(warm), 90)) < len(warm):
        raise SystemExit("warm-up events never reached Slack; see the service logs")
    phase.teams = [f"lat-{run}-{phase.name}-{i}" for i in range(n)]
    phase.raw_ms = asyncio.run(_produce(bootstrap, raw_topic, phase.teams, interval))
    phase.slack_ms = _wait_posts(receiver, set(phase.teams), 60)


def collect_stages(phases: list[Phase], bootstrap: str, redacted: str, signals: str) -> None:
    teams = {t for p in phases for t in p.teams}
    red = asyncio.run(_topic_times(bootstrap, redacted, "redacted_event.v1", teams))
    sig = asyncio.run(_topic_times(bootstrap, signals, "signal.v1", teams, "policy_flag"))
    for p in phases:
        p.redacted_ms = {t: red[t] for t in p.teams if t in red}
        p.signal_ms = {t: sig[t] for t in p.teams if t in sig}


def _row(label: str, values: list[float]) -> list[str]:
    if not values:
        return [label, "0", "-", "-", "-", "-", "-"]
    return [
        label,
        str(len(values)),
        f"{_pct(values, 50):.3f}",
        f"{_pct(values, 90):.3f}",
        f"{_pct(values, 99):.3f}",
        f"{max(values):.3f}",
        f"{statistics.fmean(values):.3f}",
    ]


def _dominates(p: Phase) -> list[str]:
    total = p.latencies(p.raw_ms, p.slack_ms)
    stages = {
        "redactor (raw -> redacted)": p.latencies(p.raw_ms, p.redacted_ms),
        "aggregator (redacted -> signal)": p.latencies(p.redacted_ms, p.signal_ms),
        "alerts (signal -> Slack)": p.latencies(p.signal_ms, p.slack_ms),
    }
    if not total or not all(stages.values()):
        return []
    med = _pct(total, 50)
    parts = ", ".join(
        f"{name} {_pct(v, 50):.3f} s ({100 * _pct(v, 50) / med:.0f} %)"
        for name, v in stages.items()
    )
    top = max(stages, key=lambda k: _pct(stages[k], 50))
    return [
        "## What dominates",
        "",
        f"With the defaults, p50 {med:.3f} s end to end; stage p50s: {parts}. The largest is the "
        f"{top.split(' (')[0]}. The aggregator emits signals only after a batch is in "
        f"ClickHouse, and it flushes at most every {p.batch_max_seconds} s "
        "(`TRUSTLOG_BATCH_MAX_SECONDS`): an event waits for the rest of the current interval "
        "(half of it on average) plus the insert. The alerts service adds its batch wait "
        "(at most `TRUSTLOG_SIGNAL_BATCH_WAIT_SECONDS`, 0.05 s), the ClickHouse insert, the "
        "outbox write (acks=all) and the webhook post.",
        "",
    ]


def report(phases: list[Phase], args: argparse.Namespace, wall_s: float) -> str:
    head = ["", "n", "p50 s", "p90 s", "p99 s", "max s", "mean s"]
    lines = [
        "# Alert latency: policy-flagged raw event -> Slack post",
        "",
        f"Machine: {_machine()}. Command: `.venv/bin/python -m benchmarks.alert_latency "
        f"--n {args.n} --interval {args.interval} --fast-flush {args.fast_flush}` "
        f"({wall_s:.0f} s wall). The machine is shared with other engineers' work.",
        "",
        "Real processes on the local stack (Kafka 4.1.1, ClickHouse 26.9): redactor, "
        "aggregator, alerts, and a local Slack receiver that validates Block Kit. Each event "
        "carries a policy flag and its own team, so each opens its own incident and gets its "
        f"own post; one event every {args.interval} s. Latency = receiver arrival time minus "
        "the raw record's broker timestamp (LogAppendTime); stages from the record timestamps "
        "of the redacted and signals topics.",
        "",
    ]
    for p in phases:
        total = p.latencies(p.raw_ms, p.slack_ms)
        lines += [
            f"## {p.name}: aggregator flush every {p.batch_max_seconds} s "
            "(`TRUSTLOG_BATCH_MAX_SECONDS`)",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "---|" * len(head),
        ]
        rows = [
            _row("**raw -> Slack**", total),
            _row("raw -> redacted", p.latencies(p.raw_ms, p.redacted_ms)),
            _row("redacted -> signal", p.latencies(p.redacted_ms, p.signal_ms)),
            _row("signal -> Slack", p.latencies(p.signal_ms, p.slack_ms)),
        ]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        missing = len(p.teams) - len(total)
        lines += [
            "",
            f"Posts received: {len(total)} of {len(p.teams)}"
            + (f" ({missing} missing)" if missing else "")
            + ".",
            "",
        ]
    lines += _dominates(phases[0])
    if len(phases) == 2:
        a = phases[0].latencies(phases[0].raw_ms, phases[0].slack_ms)
        b = phases[1].latencies(phases[1].raw_ms, phases[1].slack_ms)
        if a and b:
            lines += [
                "## Side by side",
                "",
                "| | p50 s | p99 s |",
                "|---|---|---|",
                f"| flush {phases[0].batch_max_seconds} s (default) | {_pct(a, 50):.3f} | "
                f"{_pct(a, 99):.3f} |",
                f"| flush {phases[1].batch_max_seconds} s | {_pct(b, 50):.3f} | "
                f"{_pct(b, 99):.3f} |",
                f"| ratio default / fast | {_pct(a, 50) / _pct(b, 50):.2f}x | "
                f"{_pct(a, 99) / _pct(b, 99):.2f}x |",
                "",
            ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=300, help="flagged events per phase")
    ap.add_argument("--interval", type=float, default=0.1, help="seconds between events")
    ap.add_argument(
        "--fast-flush",
        type=float,
        default=0.2,
        help="aggregator flush interval of the second phase (0: skip it)",
    )
    ap.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="stack state dir (default: a fresh temporary one, stopped at the end)",
    )
    args = ap.parse_args()

    state = (args.state_dir or Path(tempfile.mkdtemp(prefix="trustlog-bench-"))).resolve()
    os.environ["TRUSTLOG_STATE_DIR"] = str(state)
    # imported after TRUSTLOG_STATE_DIR is set: settings read the stack's ports from there
    from tests.slack_receiver import SlackReceiver
    from trustlog import procs
    from trustlog.kafka import ensure_topics
    from trustlog.settings import AggregatorSettings, AlertsSettings, KafkaSettings
    from trustlog.stack import manager
    from trustlog.storage import admin_client, migrate_all

    t_wall = time.monotonic()
    print(f"stack in {state} ...", flush=True)
    manager.up(state)
    migrate_all(admin_client())
    # Topics first, as a deploy step would: three services creating them at once race.
    asyncio.run(ensure_topics(AlertsSettings()))
    k = KafkaSettings()
    default_flush = AggregatorSettings.model_fields["batch_max_seconds"].default
    receiver = SlackReceiver().start()
    run = uuid.uuid4().hex[:6]
    phases = [Phase("defaults", default_flush)]
    if args.fast_flush > 0:
        phases.append(Phase("fast-flush", args.fast_flush))
    try:
        for i, phase in enumerate(phases):
            env = _env(receiver.url, phase.batch_max_seconds)
            if i == 0:
                _start(state, SERVICES, env)
            else:
                procs.stop(state, "bench-aggregator")
                _start(state, ("aggregator",), env)
            print(f"phase {phase.name}: {args.n} events, one every {args.interval} s", flush=True)
            run_phase(phase, k.kafka_bootstrap, k.topic_raw, receiver, args.n, args.interval, run)
        collect_stages(phases, k.kafka_bootstrap, k.topic_redacted, k.topic_signals)
    finally:
        for name in reversed(SERVICES):
            procs.stop(state, f"bench-{name}")
        receiver.stop()
        if args.state_dir is None:
            manager.down(state)
    text = report(phases, args, time.monotonic() - t_wall)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "alert_latency.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
