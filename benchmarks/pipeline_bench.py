"""Stage rates of the running pipeline: does sensitive-data detection limit it?

    .venv/bin/python -m benchmarks.pipeline_bench [--events 40000] [--reps 3]
                                                  [--agg-events 60000] [--ingest-events 30000]
                                                  [--state-dir DIR]

Starts a fresh local stack (Kafka + ClickHouse) in a temporary state dir unless
``--state-dir`` names a running one, and runs every service as a real process on topics of
this run only (``TRUSTLOG_TOPIC_*``), with the services' default batch settings:

* redactor: a backlog of ``--events`` raw events (prompt + reply: 600 B - 2 KB of text from
  tests/corpus, the same events as benchmarks/detect_bench.py) is produced first, then the
  service drains it. Two content kinds: the dense labelled corpus documents and plain prose.
  Each backlog is drained alternately by ``services.redactor`` and by
  ``benchmarks._redactor_nodetect`` (the same service with ``scan_all`` replaced by a stub,
  started the same way), ``--reps`` times each; the group's offsets are reset between runs.
* aggregator: a backlog of ``--agg-events`` redacted events (made by the real Redactor) on a
  fresh topic per run, drained into ClickHouse (default batches: 10,000 rows or 1 s).
* ingest: a load generator in this process (aiohttp, 8 connections, batches of 250 events
  with the dense corpus content) posts ``--ingest-events`` events per round; a 202 means
  Kafka acknowledged all of them (acks=all).

A drain rate is measured from the group's committed offsets, sampled every 50 ms: events
committed between the first and the last sample that saw progress, over the time between
them (process start, group join and warm-up are left out). CPU seconds come from /proc for
the service process and the Kafka broker over the same interval. Writes
benchmarks/results/pipeline.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import socket
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks._machine import describe_machine
from services.redactor import detect

RESULTS = Path(__file__).resolve().parent / "results" / "pipeline.md"
REDACTOR_GROUP = "trustlog-redactor"  # services.redactor.app.GROUP_ID (fixed in the service)
POLL_S = 0.05
CLK_TCK = os.sysconf("SC_CLK_TCK")
KEYS = {"1": "pipeline-bench-key-" + "k" * 16}


# ---- measuring ------------------------------------------------------------------------
def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process (0 if it is gone)."""
    if pid is None:
        return 0.0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14 and 15)


@dataclass
class Sample:
    t: float
    done: int
    cpu: float  # service process
    broker: float  # Kafka broker
    ch: float  # ClickHouse server


@dataclass
class Drain:
    stage: str
    kind: str
    events: int  # counted between the first and the last sample with progress
    seconds: float
    cpu_s: float
    broker_s: float
    ch_s: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_us(self) -> float:
        return 1e6 * self.cpu_s / self.events if self.events else float("nan")

    @property
    def broker_us(self) -> float:
        return 1e6 * self.broker_s / self.events if self.events else float("nan")

    @property
    def ch_us(self) -> float:
        return 1e6 * self.ch_s / self.events if self.events else float("nan")

    @property
    def busy(self) -> float:
        """Share of one core the service process used while draining."""
        return self.cpu_s / self.seconds if self.seconds > 0 else float("nan")


def drain_from(samples: list[Sample], stage: str, kind: str) -> Drain:
    moved = [i for i in range(1, len(samples)) if samples[i].done > samples[i - 1].done]
    if len(moved) < 2:
        raise SystemExit(f"{stage}/{kind}: fewer than two commits seen; raise the event count")
    a, b = samples[moved[0]], samples[moved[-1]]
    return Drain(
        stage, kind, b.done - a.done, b.t - a.t, b.cpu - a.cpu, b.broker - a.broker, b.ch - a.ch
    )


async def committed(admin: Any, group: str, topic: str) -> int:
    offsets = await admin.list_consumer_group_offsets(group)
    return sum(max(o.offset, 0) for tp, o in offsets.items() if tp.topic == topic)


async def watch(
    bootstrap: str, group: str, topic: str, target: int, pid: int, state: Path, timeout: float
) -> list[Sample]:
    """Samples of the group's committed offsets until ``target`` events are committed."""
    from aiokafka.admin import AIOKafkaAdminClient

    broker, ch = stack_pid(state, "kafka"), stack_pid(state, "clickhouse")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    out: list[Sample] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            done = await committed(admin, group, topic)
            out.append(
                Sample(
                    time.monotonic(),
                    done,
                    cpu_seconds(pid),
                    cpu_seconds(broker),
                    cpu_seconds(ch),
                )
            )
            if done >= target:
                return out
            await asyncio.sleep(POLL_S)
    finally:
        await admin.close()
    raise SystemExit(f"{group} committed {out[-1].done if out else 0} of {target} in {timeout} s")


# ---- Kafka helpers -------------------------------------------------------------------
async def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    from aiokafka import AIOKafkaProducer

    p = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=20,
        max_batch_size=512 * 1024,
        max_request_size=8 * 1024 * 1024,
    )
    await p.start()
    try:
        futs = [await p.send(topic, v) for v in values]
        await p.flush()
        for f in futs:
            await f
    finally:
        await p.stop()


async def reset_offsets(bootstrap: str, group: str, topic: str) -> None:
    """Commit offset 0 on every partition of ``topic`` for ``group`` (no member is running),
    so the next redactor run drains the same backlog from the start."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await c.start()
    try:
        parts = c.partitions_for_topic(topic) or set()
        if not parts:
            await c._client.force_metadata_update()
            parts = c.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        c.assign(tps)
        await c.commit({tp: 0 for tp in tps})
    finally:
        await c.stop()


# ---- services ------------------------------------------------------------------------
def start(state: Path, name: str, module: str, env: dict[str, str]) -> int:
    from trustlog import procs

    pid = procs.start(state, name, module, env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not procs.status(state, name).running:
        time.sleep(0.1)  # wait_healthy gives up on a child that has not exec'd yet
    if not procs.wait_healthy(state, name, max(1.0, deadline - time.monotonic())):
        log = state / "logs" / f"{name}.log"
        tail = log.read_text(errors="replace").splitlines()[-20:] if log.exists() else []
        procs.stop(state, name)
        raise SystemExit(f"{name} did not become healthy:\n" + "\n".join(tail))
    return pid


def stack_pid(state: Path, server: str) -> int | None:
    """Pid of the stack's ``kafka`` or ``clickhouse`` server (trustlog.stack.manager layout)."""
    try:
        return int((state / server / "pid").read_text().strip())
    except (OSError, ValueError):
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- events ----------------------------------------------------------------------------
def corpus_raw_events(kind: str, n: int) -> list[bytes]:
    from benchmarks.detect_bench import prose_docs, raw_events
    from tests.corpus import SEED, build_corpus

    docs = build_corpus(1200) if kind == "corpus" else prose_docs(300, SEED)
    return raw_events(docs, n)


def redacted_events(n: int) -> list[bytes]:
    """Real redacted records (from the corpus raw events), each with a new event id."""
    from services.redactor.redact import Pseudonymizer, Redacted, Redactor
    from trustlog.avro import raw_codec

    codec = raw_codec()
    red = Redactor(Pseudonymizer({"1": b"k" * 32}, "1"))
    teams = [f"bench-team-{i}" for i in range(20)]
    out: list[bytes] = []
    for i, raw in enumerate(corpus_raw_events("corpus", n)):
        ev = codec.decode(raw)
        ev["event_id"] = str(uuid.uuid4())
        ev["team"] = teams[i % len(teams)]
        res = red(codec.encode(ev))
        assert isinstance(res, Redacted)
        out.append(res.value)
    return out


def ingest_bodies(n: int, batch: int) -> list[bytes]:
    import orjson

    from trustlog.avro import raw_codec

    codec = raw_codec()
    keep = ("tool", "model", "provider", "user_id", "team", "task_label", "input_tokens",
            "output_tokens", "status", "latency_ms", "prompt", "reply")  # fmt: skip
    evs = []
    for raw in corpus_raw_events("corpus", n):
        ev = codec.decode(raw)
        out = {k: ev[k] for k in keep}
        out["event_id"] = str(uuid.uuid4())
        out["event_time"] = datetime.now(UTC).isoformat()
        evs.append(out)
    return [orjson.dumps({"events": evs[i : i + batch]}) for i in range(0, n, batch)]


# ---- stages --------------------------------------------------------------------------
@dataclass
class Results:
    redactor: dict[tuple[str, str], list[Drain]] = field(default_factory=dict)
    aggregator: list[Drain] = field(default_factory=list)
    ingest: list[Drain] = field(default_factory=list)
    event_bytes: dict[str, float] = field(default_factory=dict)
    generator_busy: list[float] = field(default_factory=list)  # load generator, share of a core


def run_redactor(state: Path, bootstrap: str, args: argparse.Namespace, res: Results) -> None:
    from trustlog import procs
    from trustlog.kafka import ensure_topics
    from trustlog.settings import KafkaSettings

    run = uuid.uuid4().hex[:6]
    modules = {"on": "services.redactor", "off": "benchmarks._redactor_nodetect"}
    for kind in ("corpus", "prose"):
        raw_topic = f"bench-{run}-{kind}.raw"
        asyncio.run(ensure_topics(KafkaSettings(topic_raw=raw_topic)))
        values = corpus_raw_events(kind, args.events)
        res.event_bytes[kind] = statistics.fmean(len(v) for v in values)
        print(f"redactor/{kind}: producing {len(values):,} raw events ...", flush=True)
        asyncio.run(produce(bootstrap, raw_topic, values))
        for rep in range(args.reps):
            for mode, module in modules.items():
                name = f"bench-redactor-{mode}"
                asyncio.run(reset_offsets(bootstrap, REDACTOR_GROUP, raw_topic))
                env = {
                    "TRUSTLOG_PSEUDONYM_KEYS": json.dumps(KEYS),
                    "TRUSTLOG_PSEUDONYM_KEY_VERSION": "1",
                    "TRUSTLOG_HEALTH_PORT": "0",
                    "TRUSTLOG_TOPIC_RAW": raw_topic,
                    # a fresh output topic per run: every run writes into an empty one
                    "TRUSTLOG_TOPIC_REDACTED": f"bench-{run}-{kind}-{mode}{rep}.redacted",
                    "TRUSTLOG_TOPIC_DEADLETTER": f"bench-{run}-{kind}-{mode}{rep}.deadletter",
                }
                pid = start(state, name, module, env)
                try:
                    samples = asyncio.run(
                        watch(bootstrap, REDACTOR_GROUP, raw_topic, len(values), pid,
                              state, 600)
                    )  # fmt: skip
                finally:
                    procs.stop(state, name)
                d = drain_from(samples, f"redactor detection {mode}", kind)
                res.redactor.setdefault((kind, mode), []).append(d)
                print(f"  rep {rep + 1} detection {mode}: {d.rate:,.0f} events/s, "
                      f"{d.cpu_us:.0f} us CPU/event, busy {d.busy:.0%}", flush=True)  # fmt: skip


def run_aggregator(state: Path, bootstrap: str, args: argparse.Namespace, res: Results) -> None:
    from trustlog import procs
    from trustlog.kafka import ensure_topics
    from trustlog.settings import KafkaSettings

    run = uuid.uuid4().hex[:6]
    for rep in range(args.reps):
        topic, group = f"bench-{run}-agg{rep}.redacted", f"bench-{run}-agg{rep}"
        asyncio.run(ensure_topics(KafkaSettings(topic_redacted=topic)))
        values = redacted_events(args.agg_events)
        res.event_bytes["redacted"] = statistics.fmean(len(v) for v in values)
        print(f"aggregator: producing {len(values):,} redacted events ...", flush=True)
        asyncio.run(produce(bootstrap, topic, values))
        env = {
            "TRUSTLOG_HEALTH_PORT": "0",
            "TRUSTLOG_TOPIC_REDACTED": topic,
            "TRUSTLOG_TOPIC_SIGNALS": f"bench-{run}-agg{rep}.signals",
            "TRUSTLOG_CONSUMER_GROUP": group,
        }
        pid = start(state, "bench-aggregator", "services.aggregator", env)
        try:
            samples = asyncio.run(watch(bootstrap, group, topic, len(values), pid, state, 600))
        finally:
            procs.stop(state, "bench-aggregator")
        d = drain_from(samples, "aggregator", "redacted")
        res.aggregator.append(d)
        print(f"  rep {rep + 1}: {d.rate:,.0f} events/s, {d.cpu_us:.0f} us CPU/event, "
              f"busy {d.busy:.0%}", flush=True)  # fmt: skip


async def post_all(url: str, key: str, bodies: list[bytes], conns: int) -> int:
    """Posts every body over ``conns`` connections; the number of events accepted (202)."""
    import aiohttp

    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    accepted = 0
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal accepted
        while not queue.empty():
            body = queue.get_nowait()
            async with session.post(url, data=body, headers=headers) as r:
                reply = await r.json()
                if r.status != 202:
                    raise SystemExit(f"ingest answered {r.status}: {reply}")
                accepted += int(reply["accepted"])

    conn = aiohttp.TCPConnector(limit=conns)
    async with aiohttp.ClientSession(connector=conn) as session:
        await asyncio.gather(*(worker(session) for _ in range(conns)))
    return accepted


def run_ingest(state: Path, args: argparse.Namespace, res: Results) -> None:
    from trustlog import procs

    run = uuid.uuid4().hex[:6]
    key = uuid.uuid4().hex
    port = free_port()
    env = {
        "TRUSTLOG_HEALTH_PORT": "0",
        "TRUSTLOG_HTTP_PORT": str(port),
        "TRUSTLOG_API_KEYS": json.dumps({key: "pipeline-bench"}),
        "TRUSTLOG_TOPIC_RAW": f"bench-{run}-ingest.raw",
    }
    url = f"http://127.0.0.1:{port}/v1/events"
    warm = ingest_bodies(2 * args.batch, args.batch)
    rounds = [ingest_bodies(args.ingest_events, args.batch) for _ in range(args.reps)]
    broker, ch = stack_pid(state, "kafka"), stack_pid(state, "clickhouse")
    pid = start(state, "bench-ingest", "services.ingest", env)
    try:
        asyncio.run(post_all(url, key, warm, args.conns))
        for i, bodies in enumerate(rounds):
            t0, g0 = time.monotonic(), time.process_time()
            c0, b0, h0 = cpu_seconds(pid), cpu_seconds(broker), cpu_seconds(ch)
            n = asyncio.run(post_all(url, key, bodies, args.conns))
            d = Drain("ingest", "corpus", n, time.monotonic() - t0, cpu_seconds(pid) - c0,
                      cpu_seconds(broker) - b0, cpu_seconds(ch) - h0)  # fmt: skip
            res.ingest.append(d)
            res.generator_busy.append((time.process_time() - g0) / d.seconds)
            print(f"  ingest round {i + 1}: {d.rate:,.0f} events/s accepted, "
                  f"{d.cpu_us:.0f} us CPU/event, busy {d.busy:.0%}", flush=True)  # fmt: skip
    finally:
        procs.stop(state, "bench-ingest")


# ---- report --------------------------------------------------------------------------
KINDS = {"corpus": "dense labelled corpus", "prose": "plain prose"}


def med(ds: list[Drain], attr: str) -> float:
    return statistics.median(getattr(d, attr) for d in ds)


def runs(ds: list[Drain]) -> str:
    return ", ".join(f"{d.rate:,.0f}" for d in ds)


def total_us(ds: list[Drain]) -> float:
    """CPU per event of the service, the broker and ClickHouse together (medians)."""
    return med(ds, "cpu_us") + med(ds, "broker_us") + med(ds, "ch_us")


def stage_table(res: Results, args: argparse.Namespace) -> list[str]:
    rows: list[tuple[str, str, list[Drain]]] = [
        ("ingest (HTTP -> raw topic)", f"{args.batch}-event POSTs, corpus content", res.ingest)
    ]
    for kind, label in KINDS.items():
        for mode in ("on", "off"):
            what = "detection ON (the service)" if mode == "on" else "detection stubbed out"
            rows.append((f"redactor (raw -> redacted), {label}", what,
                         res.redactor.get((kind, mode), [])))  # fmt: skip
    rows.append(("aggregator (redacted -> ClickHouse)", "default batches", res.aggregator))
    out = [
        "| stage | run | events/s (median) | runs | service CPU us/event | service busy "
        "(share of 1 core) | broker CPU us/event | ClickHouse CPU us/event |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for stage, what, ds in rows:
        if ds:
            out.append(
                f"| {stage} | {what} | {med(ds, 'rate'):,.0f} | {runs(ds)} | "
                f"{med(ds, 'cpu_us'):.0f} | {med(ds, 'busy'):.0%} | {med(ds, 'broker_us'):.0f} "
                f"| {med(ds, 'ch_us'):.0f} |"
            )
    return out


def ratio_table(res: Results) -> tuple[list[str], dict[str, float]]:
    out = [
        "| content | events/s detection on | events/s stubbed | on / stubbed | service CPU "
        "us/event on | stubbed | detection's share of the service's CPU |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    share: dict[str, float] = {}
    for kind, label in KINDS.items():
        on, off = res.redactor.get((kind, "on")), res.redactor.get((kind, "off"))
        if not on or not off:
            continue
        c_on, c_off = med(on, "cpu_us"), med(off, "cpu_us")
        share[kind] = max(0.0, c_on - c_off) / c_on
        out.append(
            f"| {label} ({res.event_bytes[kind]:,.0f} B/event) | {med(on, 'rate'):,.0f} | "
            f"{med(off, 'rate'):,.0f} | {med(on, 'rate') / med(off, 'rate'):.2f} | "
            f"{c_on:.0f} | {c_off:.0f} | {share[kind]:.0%} |"
        )
    return out, share


def pipeline_cpu(res: Results) -> list[str]:
    """All stages on one machine share its cores: CPU per event summed over the stages."""
    if not res.ingest or not res.aggregator:
        return []
    ncpu = os.cpu_count() or 1
    base = total_us(res.ingest) + total_us(res.aggregator)
    out = [
        "| content | ingest + redactor + aggregator, CPU us/event (services, broker, "
        f"ClickHouse) | of which detection | at most events/s on {ncpu} cores |",
        "|---|---:|---:|---:|",
    ]
    for kind, label in KINDS.items():
        on, off = res.redactor.get((kind, "on")), res.redactor.get((kind, "off"))
        if not on or not off:
            continue
        full = base + total_us(on)
        det = max(0.0, total_us(on) - total_us(off))
        out.append(f"| {label} | {full:.0f} | {det:.0f} ({det / full:.0%}) | "
                   f"{ncpu * 1e6 / full:,.0f} |")  # fmt: skip
    return [
        "## The whole pipeline on one machine",
        "",
        "The rates above are each stage alone. Run together on one machine, the stages, the "
        "broker and ClickHouse share its cores, so the CPU each event costs across all of "
        "them bounds what the machine can sustain end to end (sum of the medians above; the "
        "redactor's detection part is its CPU with detection minus stubbed, broker included; "
        "the bound assumes every core goes to the pipeline, which a shared machine never "
        "gives it). Not measured here: the alerts service (it reads signals, not events).",
        "",
        *out,
        "",
    ]


def us(v: float) -> str:
    """CPU us/event; below 1 us the difference of two medians is noise, not a cost."""
    return f"{v:.0f}" if v >= 1 else "<1"


def per_core(v: float) -> str:
    return f"{1e6 / v:,.0f}" if v >= 1 else "over 1,000,000"


def components(res: Results) -> tuple[list[str], list[str]]:
    """CPU per event of each part of the pipeline, detection on its own: how many events per
    second one core gives each part. The part that gives the fewest is the pipeline's
    bottleneck (scaled out, every part gets cores in proportion to its cost)."""
    parts: dict[str, float] = {}
    if res.ingest:
        parts["ingest (service + broker)"] = total_us(res.ingest)
    if res.aggregator:
        parts["aggregator (service + broker + ClickHouse)"] = total_us(res.aggregator)
    detection: dict[str, float] = {}
    for kind, label in KINDS.items():
        on, off = res.redactor.get((kind, "on")), res.redactor.get((kind, "off"))
        if not on or not off:
            continue
        parts[f"redactor without detection, {label} (service + broker)"] = total_us(off)
        detection[label] = max(0.01, total_us(on) - total_us(off))
    if not detection or len(parts) < 2:
        return [], []
    rows = [
        "| part | CPU us/event | events/s per core |",
        "|---|---:|---:|",
        *(f"| {k} | {v:.0f} | {1e6 / v:,.0f} |" for k, v in parts.items()),
        *(f"| **detection**, {k} | {us(v)} | {per_core(v)} |" for k, v in detection.items()),
    ]
    slowest = max(parts, key=lambda k: parts[k])
    out = []
    for label, d in detection.items():
        if d < parts[slowest]:
            out.append(
                f"Per core, detection on {label} content ({us(d)} us/event, {per_core(d)} "
                f"events/s) is cheaper than the costliest other part, {slowest} "
                f"({parts[slowest]:.0f} us/event, {1e6 / parts[slowest]:,.0f} events/s): given "
                "cores in proportion to cost, detection is not what limits the pipeline."
            )
        else:
            out.append(
                f"Per core, detection on {label} content ({d:.0f} us/event) costs more than "
                f"every other part (costliest: {slowest}, {parts[slowest]:.0f} us/event): it "
                "is the pipeline's bottleneck."
            )
    return rows, out


def report(res: Results, args: argparse.Namespace, wall_s: float) -> str:
    ratios, share = ratio_table(res)
    parts, part_verdict = components(res)
    cmd = shlex.join(["python", "-m", "benchmarks.pipeline_bench", *sys.argv[1:]])
    gen = (
        f" The load generator used {statistics.median(res.generator_busy):.0%} of a core."
        if res.generator_busy
        else ""
    )
    return "\n".join(
        [
            "# Pipeline stage rates: is detection the bottleneck?",
            "",
            f"Machine: {describe_machine()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; shared "
            "with other engineers' jobs, so absolute rates drift; the detection on/off "
            "comparison alternates runs (on, off, on, off ...) and takes medians.",
            f"Command: `.venv/bin/{cmd}` ({wall_s:.0f} s wall).",
            "",
            "Every service runs as one real process against the local stack (Kafka 4.1.1, "
            "ClickHouse via chdb) on topics of this run, with its default batch settings. The "
            f"redactor and aggregator drain a pre-produced backlog ({args.events:,} raw events "
            f"per content kind; {args.agg_events:,} redacted events); the rate is the events "
            "committed by the service's consumer group between the first and the last commit "
            "seen (offsets sampled every 50 ms), over that time, so start-up is left out. "
            "Ingest is fed by a load generator in the benchmark process "
            f"({args.conns} connections, {args.batch} events per POST, {args.ingest_events:,} "
            "events per round); a 202 means Kafka acknowledged every event (acks=all)." + gen,
            "CPU columns: /proc user+system time of the service process, the Kafka broker and "
            'the ClickHouse server over the same interval, per event. "Detection stubbed '
            'out" is `benchmarks/_redactor_nodetect.py`: the same service, started the same '
            "way, with `scan_all` replaced by a function returning no classes (benchmark only; "
            "no setting turns detection off). Raw events are those of "
            "benchmarks/detect_bench.py: 600 B - 2 KB of prompt + reply from tests/corpus; "
            f"detection engine: {detect.engine()} (services/redactor/detect.py).",
            "",
            "## Stage rates",
            "",
            *stage_table(res, args),
            "",
            "## Redactor service: detection on vs stubbed out",
            "",
            *ratios,
            "",
            *pipeline_cpu(res),
            "## Per part, per core",
            "",
            "Each stage above runs as one process. Scaled out (more partitions, more "
            "processes) every part of the pipeline gets cores in proportion to its CPU per "
            "event, so the part that costs the most per event limits what a given number of "
            "cores sustains. Detection's cost is the redactor's CPU with detection minus "
            "without (service and broker).",
            "",
            *parts,
            "",
            "## Verdict",
            "",
            "Two readings. Per stage, each one process as measured above: does detection make "
            "the redactor the slowest stage, which without it would not be? Per part, per "
            "core: does detection cost more per event than any other part of the pipeline? "
            "The second decides whether detection is the bottleneck of a deployment: scaled "
            "out, every part gets cores in proportion to its cost. The first is what one "
            "process per stage, as on this machine, gets.",
            "",
            *verdict(res, share),
            *part_verdict,
            "",
        ]
    )


def slower(a: list[Drain], b: list[Drain]) -> bool:
    """Every run of ``a`` was slower than every run of ``b``. Runs that overlap are not told
    apart: on this shared machine one stage's runs move by 30% or more."""
    return max(d.rate for d in a) < min(d.rate for d in b)


def verdict(res: Results, share: dict[str, float]) -> list[str]:
    others = {k: v for k, v in (("ingest", res.ingest), ("aggregator", res.aggregator)) if v}
    stages = dict(others)
    for kind, label in KINDS.items():
        if (kind, "on") in res.redactor:
            stages[f"redactor on {label} content"] = res.redactor[(kind, "on")]
    if len(stages) < 2 or not others:
        return ["Not enough stages measured for a verdict."]
    order = sorted(stages, key=lambda k: med(stages[k], "rate"))
    slow, second = order[0], order[1]
    text = ", ".join(f"{k} {med(stages[k], 'rate'):,.0f}" for k in order)
    head = f"Median events/s, slowest first: {text}. The slowest stage is the {slow}"
    if not slower(stages[slow], stages[second]):
        head += f", but its runs overlap with those of the {second}: the two are not told apart"
    out = [head + "."]
    name = min(others, key=lambda k: med(others[k], "rate"))
    lim_runs, lim = others[name], med(others[name], "rate")
    for kind, label in KINDS.items():
        on, off = res.redactor.get((kind, "on")), res.redactor.get((kind, "off"))
        if not on or not off:
            continue
        r_on, r_off = med(on, "rate"), med(off, "rate")
        cost = (f"detection takes {share[kind]:.0%} of the redactor service's CPU per event "
                f"and the service drains at {r_on / r_off:.2f}x its rate with detection "
                "stubbed out")  # fmt: skip
        if not slower(on, off):
            if slower(on, lim_runs):
                tail = (f"the redactor is still slower than the {name} ({lim:,.0f}/s), "
                        "limited by its own per-event work (decode, validate, pseudonymise, "
                        "encode, Kafka transactions), not by detection")  # fmt: skip
            elif slower(lim_runs, on):
                tail = f"the {name} ({lim:,.0f}/s) is slower than the redactor"
            else:
                tail = (f"the redactor's runs overlap with those of the {name} "
                        f"({lim:,.0f}/s): about the same rate")  # fmt: skip
            out.append(
                f"On {label} content {cost}, within the spread of the runs: detection is not "
                f"the bottleneck; {tail}."
            )
        elif not slower(on, lim_runs):
            out.append(f"On {label} content {cost}, but the redactor still keeps up with the "
                       f"{name} ({lim:,.0f}/s): detection is not the bottleneck.")  # fmt: skip
        elif not slower(off, lim_runs):
            out.append(
                f"On {label} content {cost}: detection makes the redactor the slowest stage, "
                f"at {r_on:,.0f}/s {r_on / lim:.2f}x the {name} ({lim:,.0f}/s); stubbed out it "
                f"would drain {r_off:,.0f}/s."
            )
        else:
            out.append(
                f"On {label} content {cost}: the redactor is the slowest stage with detection "
                f"({r_on:,.0f}/s) and without it ({r_off:,.0f}/s), so detection is a large part "
                "of the bottleneck but not all of it."
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=40_000, help="raw backlog per content kind")
    ap.add_argument("--reps", type=int, default=3, help="runs per stage and detection mode")
    ap.add_argument("--agg-events", type=int, default=60_000, help="redacted backlog per run")
    ap.add_argument("--ingest-events", type=int, default=30_000, help="events per ingest round")
    ap.add_argument("--batch", type=int, default=250, help="events per ingest POST")
    ap.add_argument("--conns", type=int, default=8, help="concurrent ingest connections")
    ap.add_argument(
        "--stages",
        default="ingest,redactor,aggregator",
        help="comma-separated subset (a partial run still rewrites the results file)",
    )
    ap.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="a running stack's state dir (default: a fresh temporary stack, stopped at the end)",
    )
    args = ap.parse_args()
    stages = set(args.stages.split(","))

    state = (args.state_dir or Path(tempfile.mkdtemp(prefix="trustlog-pipebench-"))).resolve()
    os.environ["TRUSTLOG_STATE_DIR"] = str(state)
    # imported after TRUSTLOG_STATE_DIR is set: settings read the stack's ports from there
    from trustlog.settings import KafkaSettings
    from trustlog.stack import manager
    from trustlog.storage import admin_client, migrate_all

    t_wall = time.monotonic()
    res = Results()
    try:
        if args.state_dir is None:
            print(f"stack in {state} ...", flush=True)
            manager.up(state)
        bootstrap = KafkaSettings().kafka_bootstrap
        if "ingest" in stages:
            run_ingest(state, args, res)
        if "redactor" in stages:
            run_redactor(state, bootstrap, args, res)
        if "aggregator" in stages:
            migrate_all(admin_client())
            run_aggregator(state, bootstrap, args, res)
    finally:
        if args.state_dir is None:
            manager.down(state)
            shutil.rmtree(state, ignore_errors=True)  # ~0.5 GB of Kafka logs and parts
    text = report(res, args, time.monotonic() - t_wall)
    print(text)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(text + "\n")


if __name__ == "__main__":
    main()
