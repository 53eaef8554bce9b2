from __future__ import annotations

import random
from decimal import Decimal
from pathlib import Path

from genai_prices import Usage, calc_price

from services.aggregator.pricing import Pricer, load_overrides
from services.aggregator.signals import OncePerWindow, SpikeDetector


def test_fast_path_equals_genai_prices_exactly() -> None:
    p, rng = Pricer(), random.Random(7)
    for provider, model in [
        ("openai", "gpt-4o-mini"),
        ("anthropic", "claude-sonnet-4-5"),  # tiered: goes through genai-prices per call
        ("google", "gemini-2.5-flash"),
        ("", "claude-haiku-4-5"),
    ]:
        for _ in range(100):
            i, o = rng.randint(0, 400_000), rng.randint(0, 8000)
            c = rng.randint(0, i)
            ours = p.price(provider, model, i, o, c)
            ref = calc_price(
                Usage(input_tokens=i, output_tokens=o, cache_read_tokens=c or None),
                model_ref=model,
                provider_id=provider or None,
            ).total_price
            assert ours.priced and ours.cost_usd == ref


def test_unknown_model_is_flagged_not_free() -> None:
    price = Pricer().price("acme", "no-such-model-xyz", 1000, 1000, 0)
    assert not price.priced and price.source == "unknown"


def test_overrides_win(tmp_path: Path) -> None:
    f = tmp_path / "prices.yaml"
    f.write_text(
        "version: negotiated-2026\nmodels:\n"
        "  gpt-4o-mini: {input_per_mtok: 0.10, output_per_mtok: 0.40, source: contract}\n"
        "  internal-llm: {input_per_mtok: 0, output_per_mtok: 0, source: flat-rate-internal}\n"
    )
    p = Pricer(load_overrides(f))
    got = p.price("openai", "gpt-4o-mini", 1_000_000, 1_000_000, 0)
    assert got.cost_usd == Decimal("0.50") and got.source == "contract"
    assert got.version == "negotiated-2026"
    internal = p.price("", "internal-llm", 5000, 5000, 0)
    assert internal.priced and internal.cost_usd == 0 and internal.source == "flat-rate-internal"


def test_spike_fires_once_per_window_and_only_over_min() -> None:
    d = SpikeDetector(window_s=60, baseline_windows=5, factor=2.0, min_usd=5.0)
    t0 = 1_700_000_000_000 - 1_700_000_000_000 % 60_000
    for w in range(5):  # steady $3 per minute
        d.observe("a", "chat", t0 + w * 60_000, Decimal(3))
    assert d.evaluate() == []  # $3 < $5 minimum: small teams are not noise
    for _ in range(3):
        d.observe("a", "chat", t0 + 5 * 60_000 + 1000, Decimal(3))  # $9 >= max(2*3, 5)
    sigs = d.evaluate()
    assert len(sigs) == 1
    s = sigs[0]
    assert s["rule"] == "cost_spike" and s["baseline"] == 3.0 and s["observed"] == 9.0
    assert s["user_pseudonym"] is None
    d.observe("a", "chat", t0 + 5 * 60_000 + 2000, Decimal(30))
    assert d.evaluate() == []  # same window: already fired


def test_once_per_window() -> None:
    o = OncePerWindow(60)
    t = 1_700_000_000_000
    first = o.hit("sensitive_data", "a", "chat", t, detail="email", user_pseudonym="p_x")
    assert first is not None and first["user_pseudonym"] == "p_x"
    assert o.hit("sensitive_data", "a", "chat", t + 1, detail="email") is None
    cost = o.hit("unknown_model", "a", "chat", t, detail="m", user_pseudonym="p_x")
    assert cost is not None and cost["user_pseudonym"] is None
