"""Demo traffic: realistic AI usage from a few teams, through both the SDK and the HTTP endpoint.

Prompts are synthetic; a few carry planted sensitive data (test card numbers, fake keys) so
the redactor has something to flag, and every few minutes one team's spend bursts so the
spike rule has something to catch. Nothing here is real personal data.
"""

from __future__ import annotations

import random
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

TEAMS = {
    "support": ("support-drafts", "support", ["gpt-4o-mini", "claude-haiku-4-5"]),
    "engineering": ("code-helper", "coding", ["claude-sonnet-4-5", "gpt-4.1-mini"]),
    "marketing": ("chat-assistant", "drafting", ["gpt-4o-mini", "gemini-2.5-flash"]),
    "finance-ops": ("chat-assistant", "data_cleanup", ["gpt-4o-mini"]),
}
PROVIDERS = {
    "gpt-4o-mini": "openai",
    "gpt-4.1-mini": "openai",
    "claude-haiku-4-5": "anthropic",
    "claude-sonnet-4-5": "anthropic",
    "gemini-2.5-flash": "google",
    "internal-llm-v0": "",
}
PROMPTS = [
    "Summarise this refund request and propose a polite reply.",
    "Rewrite the paragraph below to be shorter and friendlier.",
    "Why does this Python function raise KeyError on the second call?",
    "Draft three subject lines for the spring newsletter.",
    "Clean up this CSV header and normalise the date column.",
]
SENSITIVE = [
    "Customer paid with 4111 1111 1111 1111, please check the refund.",
    "Use key AKIAIOSFODNN7EXAMPLE for the staging bucket.",
    "Transfer to DE89 3704 0044 0532 0130 00 was rejected.",
]


def make_event(
    rng: random.Random, team: str, *, burst: bool = False, now: datetime | None = None
) -> dict[str, Any]:
    tool, label, models = TEAMS[team]
    model = rng.choice(models)
    if rng.random() < 0.01:
        model = "internal-llm-v0"  # no public price: must be flagged, not priced at zero
    prompt = rng.choice(PROMPTS)
    if rng.random() < 0.02:
        prompt += " " + rng.choice(SENSITIVE)
    user = f"{team}-user-{rng.randint(1, 12)}@example.com"
    inp = rng.randint(200, 4000) * (100 if burst else 1)
    status = "error" if rng.random() < 0.02 else "ok"
    return {
        "event_id": str(uuid.uuid4()),
        "event_time": (now or datetime.now(UTC)).isoformat(),
        "tool": tool,
        "model": model,
        "provider": PROVIDERS[model] or None,
        "workspace": f"{team}-ws",
        "user_id": user,
        "user_email": user,
        "team": team,
        "task_label": label,
        "input_tokens": inp,
        "output_tokens": rng.randint(50, 800),
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "status": status,
        "retry_count": 1 if status == "error" else 0,
        "prompt": prompt,
        "reply": "Here is a draft you can adapt.",
        "latency_ms": rng.randint(300, 4000),
    }


def post_batch(url: str, api_key: str, events: list[dict[str, Any]]) -> int:
    import urllib.request

    req = urllib.request.Request(
        url.rstrip("/") + "/v1/events",
        data=orjson.dumps({"events": events}),
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return int(r.status)


def run(
    bootstrap: str,
    ingest_url: str,
    api_key: str,
    *,
    rate: float = 20.0,
    duration_s: float | None = None,
    burst_every_s: float = 300.0,
    seed: int | None = None,
) -> None:
    """Send ``rate`` events/s until ``duration_s`` (forever when None): half SDK, half HTTP."""
    from services.ingest.sdk import Recorder

    rng = random.Random(seed)
    rec = Recorder(bootstrap, producer="demo-sdk")
    start = time.monotonic()
    next_burst = start + min(60.0, burst_every_s)
    burst_team: str | None = None
    burst_until = 0.0
    pending_http: list[dict[str, Any]] = []
    try:
        while duration_s is None or time.monotonic() - start < duration_s:
            tick = time.monotonic()
            if tick >= next_burst:
                # one team's workflow goes wild for 20 s: enough to cross the spike minimum
                burst_team = rng.choice(list(TEAMS))
                burst_until = tick + 20.0
                next_burst = tick + burst_every_s
            elif tick >= burst_until:
                burst_team = None
            n = max(1, int(rate))
            for i in range(n):
                team = burst_team if burst_team and i % 2 == 0 else rng.choice(list(TEAMS))
                ev = make_event(rng, team, burst=burst_team is not None and team == burst_team)
                if i % 2 == 0:
                    rec.record(**ev)
                else:
                    pending_http.append(ev)
            if pending_http:
                try:
                    post_batch(ingest_url, api_key, pending_http)
                    pending_http = []
                except OSError:
                    pending_http = pending_http[-1000:]  # ingest restarting: keep a bounded backlog
            time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
    finally:
        rec.close(10.0)


def main() -> None:
    import os

    from trustlog.settings import IngestSettings

    s = IngestSettings()
    key = next(iter(s.api_keys), "")
    run(
        s.kafka_bootstrap,
        f"http://{s.http_host}:{s.http_port}",
        key,
        rate=float(os.environ.get("TRUSTLOG_DEMO_RATE", "20")),
    )


if __name__ == "__main__":
    main()
