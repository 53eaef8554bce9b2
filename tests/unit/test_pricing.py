"""Pricing: genai-prices equivalence, token semantics, dated prices, overrides and credits."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from genai_prices import Usage, calc_price, data

from services.aggregator.pricing import (
    GENAI_PRICES_VERSION,
    PriceConfigError,
    Pricer,
    load_overrides,
    parse_overrides,
)
from trustlog.settings import CONFIG_DIR

M = 1_000_000


def _ref(
    provider: str, model: str, i: int, o: int, c: int, r: int, at: datetime | None = None
) -> Decimal:
    return calc_price(
        Usage(
            input_tokens=i,
            output_tokens=o,
            cache_read_tokens=c or None,
            output_reasoning_tokens=r or None,
        ),
        model_ref=model,
        provider_id=provider,
        genai_request_timestamp=at,
    ).total_price


def test_every_genai_prices_model_is_priced_exactly_as_genai_prices() -> None:
    """The fast path (and the per-call fallback) equals genai-prices for every model it knows.

    Sampled across the whole price table, with cached and reasoning tokens and event times
    over two years (dated price changes), so a price key the fast path does not model (a
    per-request fee, a reasoning rate, a tier) would show up as a mismatch.
    """
    p, rng = Pricer(), random.Random(11)
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    checked = 0
    for prov in data.providers:
        for m in prov.models:
            i, o = rng.randint(0, 400_000), rng.randint(0, 9_000)
            c, r = rng.randint(0, i), rng.randint(0, o)
            at = t0 + timedelta(seconds=rng.randint(0, 700 * 86_400))
            try:
                ref = _ref(prov.id, m.id, i, o, c, r, at)
            except (LookupError, ValueError):
                continue  # a model genai-prices itself cannot price by this id
            got = p.price(prov.id, m.id, i, o, c, r, at=at)
            assert got.priced and got.cost_usd == ref, (prov.id, m.id, got, ref)
            assert got.version == GENAI_PRICES_VERSION
            checked += 1
    assert checked > 1000


def test_reasoning_is_part_of_output_unless_the_model_prices_it_apart() -> None:
    p = Pricer()
    # gpt-4o-mini has no reasoning rate: reasoning tokens are inside output_tokens already.
    plain = p.price("openai", "gpt-4o-mini", 10_000, 4_000, 0, 0)
    with_reasoning = p.price("openai", "gpt-4o-mini", 10_000, 4_000, 0, 3_000)
    assert with_reasoning.cost_usd == plain.cost_usd
    assert plain.cost_usd == (10_000 * Decimal("0.15") + 4_000 * Decimal("0.6")) / M
    # sonar-deep-research: $8 output, $3 reasoning, $2 input.
    deep = p.price("perplexity", "sonar-deep-research", 1_000, 1_000, 0, 600)
    assert deep.cost_usd == (1_000 * 2 + 400 * 8 + 600 * 3) / Decimal(M)
    assert deep.cost_usd == _ref("perplexity", "sonar-deep-research", 1_000, 1_000, 0, 600)


def test_cached_input_is_a_subset_of_input_at_the_cache_rate() -> None:
    got = Pricer().price("openai", "gpt-4o-mini", 10_000, 0, 4_000)
    assert got.cost_usd == (6_000 * Decimal("0.15") + 4_000 * Decimal("0.075")) / M


def test_a_subset_larger_than_its_total_raises_the_total() -> None:
    """Anthropic/Gemini-style counts (cache reads or thoughts reported apart) are not dropped."""
    p = Pricer()
    assert (
        p.price("openai", "gpt-4o-mini", 100, 10, 5_000).cost_usd
        == p.price("openai", "gpt-4o-mini", 5_000, 10, 5_000).cost_usd
    )
    assert (
        p.price("openai", "gpt-4o-mini", 0, 10, 0, 900).cost_usd
        == p.price("openai", "gpt-4o-mini", 0, 900, 0, 900).cost_usd
    )


def test_per_request_fee_is_charged() -> None:
    got = Pricer().price("perplexity", "sonar", 1_000, 1_000, 0)
    assert got.cost_usd == Decimal("0.001") + Decimal("0.001") + Decimal("0.012")


def test_price_is_taken_at_the_event_time() -> None:
    p = Pricer()
    before = datetime(2025, 6, 1, 12, tzinfo=UTC)  # o3 cost $10/$40 until 2025-06-10
    after = datetime(2025, 6, 20, 12, tzinfo=UTC)  # then $2/$8
    old = p.price("openai", "o3", M, M, 0, at=before)
    new = p.price("openai", "o3", M, M, 0, at=after)
    assert old.cost_usd == 50 and new.cost_usd == 10
    assert "[from 2025-06-10]" in new.source and new.source != old.source
    # tiered before its change (long-context surcharge), flat after
    big = 300_000
    t1, t2 = datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)
    tiered = p.price("anthropic", "claude-sonnet-4-6", big, 1_000, 0, at=t1)
    flat = p.price("anthropic", "claude-sonnet-4-6", big, 1_000, 0, at=t2)
    assert tiered.cost_usd == _ref("anthropic", "claude-sonnet-4-6", big, 1_000, 0, 0, t1)
    assert flat.cost_usd == _ref("anthropic", "claude-sonnet-4-6", big, 1_000, 0, 0, t2)
    assert tiered.cost_usd > flat.cost_usd


def test_unknown_model_is_flagged_not_free() -> None:
    price = Pricer().price("acme", "no-such-model-xyz", 1000, 1000, 0)
    assert not price.priced and price.source == "unknown" and price.cost_usd == 0


def test_gateway_provider_falls_back_to_the_model() -> None:
    got = Pricer().price("my-gateway", "gpt-4o-mini", 1_000, 0, 0)
    assert got.priced and got.source == "genai-prices:openai/gpt-4o-mini"


OVERRIDES = """
version: contracts-test
tools:
  internal-search: {source: flat-rate:search}
  translator: {per_request_usd: 0.002, output_per_mtok: 1, source: flat-rate:translator}
models:
  openai/gpt-4o-mini: {input_per_mtok: 0.10, output_per_mtok: 0.40, cached_per_mtok: 0.05, source: contract}
  azure/gpt-4o-mini: {input_per_mtok: 0.11, output_per_mtok: 0.44, source: azure-contract}
  thinker: {input_per_mtok: 1, output_per_mtok: 4, reasoning_per_mtok: 2, source: thinker-contract}
providers:
  anthropic: {discount_pct: 12.5, source: commit-2026}
credits:
  - {name: oa, provider: openai, amount_usd: 5000, starts: 2026-01-01, expires: 2026-12-31}
  - {name: research, team: research, provider: anthropic, amount_usd: 1500, starts: 2026-06-01}
"""


@pytest.fixture()
def priced(tmp_path: Path) -> Pricer:
    f = tmp_path / "prices.yaml"
    f.write_text(OVERRIDES)
    return Pricer(load_overrides(f))


def test_flat_rate_tool_wins_over_any_model(priced: Pricer) -> None:
    free = priced.price("", "self-hosted-unknown", 50_000, 5_000, 0, tool="internal-search")
    assert free.priced and free.cost_usd == 0 and free.source == "flat-rate:search"
    assert free.version == "contracts-test"
    paid = priced.price("openai", "gpt-4o-mini", 50_000, 5_000, 0, tool="translator")
    assert paid.cost_usd == Decimal("0.002") + Decimal(5_000) / M


def test_negotiated_model_rate_by_provider_then_model(priced: Pricer) -> None:
    oa = priced.price("openai", "gpt-4o-mini", M, M, M // 2)
    assert oa.cost_usd == Decimal("0.05") + Decimal("0.025") + Decimal("0.40")
    assert oa.source == "contract"
    az = priced.price("azure", "gpt-4o-mini", M, 0, 0)
    assert az.cost_usd == Decimal("0.11") and az.source == "azure-contract"
    # reasoning at its own negotiated rate: 1M out of which 400k reasoning
    th = priced.price("", "thinker", 0, M, 0, 400_000)
    assert th.cost_usd == Decimal("0.6") * 4 + Decimal("0.4") * 2


def test_provider_discount_applies_to_the_list_price(priced: Pricer) -> None:
    at = datetime(2026, 6, 1, tzinfo=UTC)
    list_price = _ref("anthropic", "claude-haiku-4-5", 20_000, 3_000, 5_000, 0, at)
    got = priced.price("anthropic", "claude-haiku-4-5", 20_000, 3_000, 5_000, at=at)
    assert got.cost_usd == list_price * Decimal("0.875")
    assert "-12.5% (commit-2026)" in got.source
    assert got.version == f"{GENAI_PRICES_VERSION};contracts-test"
    # other providers pay list price
    assert priced.price("google", "gemini-2.5-flash", 1000, 100, 0).source.startswith(
        "genai-prices:google/"
    )


def test_credits_are_parsed(priced: Pricer) -> None:
    oa, research = priced.o.credits
    assert (oa.name, oa.provider, oa.team, oa.amount_usd) == ("oa", "openai", "", 5000)
    assert oa.expires == date(2026, 12, 31) and research.expires is None
    assert research.team == "research" and research.starts == date(2026, 6, 1)


@pytest.mark.parametrize(
    ("credits", "message"),
    [
        (
            "[{name: a, provider: openai, amount_usd: 1, starts: 2026-01-01},"
            " {name: b, team: x, amount_usd: 1, starts: 2026-06-01}]",
            "overlaps credit 'a'",
        ),
        (
            "[{name: a, amount_usd: 1, starts: 2026-01-01, expires: 2025-01-01}]",
            "expires before it starts",
        ),
        ("[{name: a, amount_usd: -5, starts: 2026-01-01}]", "non-negative"),
        ("[{name: a, amount_usd: 1, starts: soon}]", "not an ISO date"),
        ("[{amount_usd: 1, starts: 2026-01-01}]", "needs a name"),
        (
            "[{name: a, team: x, amount_usd: 1, starts: 2026-01-01},"
            " {name: a, team: y, amount_usd: 1, starts: 2026-01-01}]",
            "duplicate credit name",
        ),
    ],
)
def test_bad_credits_are_refused(credits: str, message: str) -> None:
    import yaml

    with pytest.raises(PriceConfigError, match=message):
        parse_overrides({"credits": yaml.safe_load(credits)})


def test_credits_in_separate_scopes_or_periods_may_coexist() -> None:
    o = parse_overrides(
        {
            "credits": [
                {"name": "a", "provider": "openai", "amount_usd": 1, "starts": "2026-01-01"},
                {"name": "b", "provider": "anthropic", "amount_usd": 1, "starts": "2026-01-01"},
                {
                    "name": "c",
                    "team": "x",
                    "amount_usd": 1,
                    "starts": "2025-01-01",
                    "expires": "2025-12-31",
                },
            ]
        }
    )
    assert [c.name for c in o.credits] == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"models": {"m": {"output_per_mtok": 1}}}, r"models\.m: input_per_mtok is required"),
        ({"models": {"m": {"input_per_mtok": "x", "output_per_mtok": 1}}}, "not a number"),
        ({"providers": {"openai": {"discount_pct": 120}}}, "above 100"),
        ({"tools": {"t": "free"}}, r"tools\.t: expected a mapping"),
    ],
)
def test_malformed_overrides_name_the_entry(doc: dict[str, object], message: str) -> None:
    with pytest.raises(PriceConfigError, match=message):
        parse_overrides(doc)


def test_example_config_loads() -> None:
    o = load_overrides(CONFIG_DIR / "prices.example.yaml")
    assert o.version and o.tools and o.models and o.providers and o.credits
    p = Pricer(o)
    assert p.price("openai", "gpt-4o-mini", 1000, 100, 0).source == "openai-enterprise-2026"
