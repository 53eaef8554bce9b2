"""Cost per call from genai-prices, with overrides for negotiated and internal rates.

Token semantics (as OpenAI and genai-prices count them): ``input_tokens`` includes cached
input, ``output_tokens`` includes reasoning output; ``cached_tokens`` and
``reasoning_tokens`` are the subsets. An unknown model is priced as unknown (``priced`` False,
cost 0 with a trace) and reported, never silently counted as free.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import yaml
from genai_prices import Usage, calc_price

MTOK = Decimal(1_000_000)
ZERO = Decimal(0)
GENAI_PRICES_VERSION = f"genai-prices=={genai_prices.__version__}"


@dataclass(frozen=True)
class Price:
    cost_usd: Decimal
    priced: bool
    source: str
    version: str


@dataclass(frozen=True)
class Rate:
    """Flat per-million-token rates (an override, or a genai-prices model without tiers)."""

    input_mtok: Decimal
    output_mtok: Decimal
    cached_mtok: Decimal | None
    source: str
    version: str

    def cost(self, inp: int, out: int, cached: int) -> Decimal:
        cached = min(cached, inp)
        cached_rate = self.input_mtok if self.cached_mtok is None else self.cached_mtok
        return (
            (inp - cached) * self.input_mtok + cached * cached_rate + out * self.output_mtok
        ) / MTOK


def load_overrides(path: Path | None) -> dict[str, Rate]:
    """YAML: ``models: {name: {input_per_mtok, output_per_mtok, cached_per_mtok?, source?}}``.

    A flat-rate internal tool is a model with zero rates and its own source label, so its
    calls are counted and traceable but cost nothing per token.
    """
    if path is None:
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    version = str(data.get("version", path.name))
    out: dict[str, Rate] = {}
    for model, spec in (data.get("models") or {}).items():
        cached = spec.get("cached_per_mtok")
        out[str(model)] = Rate(
            input_mtok=Decimal(str(spec["input_per_mtok"])),
            output_mtok=Decimal(str(spec["output_per_mtok"])),
            cached_mtok=None if cached is None else Decimal(str(cached)),
            source=str(spec.get("source", "override")),
            version=version,
        )
    return out


class Pricer:
    """Prices calls; caches one lookup per (provider, model).

    genai-prices' per-call ``calc_price`` costs ~70 us, too much for the sink's hot path, so
    flat-rate models are computed here from the cached rates (a unit test checks this equals
    genai-prices exactly) and only tiered models go through genai-prices per call.
    """

    def __init__(self, overrides: dict[str, Rate] | None = None) -> None:
        self.overrides = overrides or {}
        self._cache: dict[tuple[str, str], Rate | Any | None] = {}

    def _lookup(self, provider: str, model: str) -> Rate | Any | None:
        key = (provider, model)
        if key in self._cache:
            return self._cache[key]
        found: Rate | Any | None = None
        try:
            res = calc_price(
                Usage(input_tokens=1, output_tokens=1),
                model_ref=model,
                provider_id=provider or None,
            )
        except LookupError:
            res = None
            if provider:
                # The producer may name a reseller or gateway; fall back to the model alone.
                try:
                    res = calc_price(Usage(input_tokens=1, output_tokens=1), model_ref=model)
                except LookupError:
                    res = None
        if res is not None:
            mp = res.model_price
            source = f"genai-prices:{res.provider.id}/{res.model.id}"
            inp, out, cached = mp.input_mtok, mp.output_mtok, mp.cache_read_mtok
            if (
                isinstance(inp, Decimal)
                and isinstance(out, Decimal)
                and (cached is None or isinstance(cached, Decimal))
            ):
                found = Rate(inp, out, cached, source, GENAI_PRICES_VERSION)
            else:
                found = (mp, source)
        self._cache[key] = found
        return found

    def price(self, provider: str, model: str, inp: int, out: int, cached: int) -> Price:
        rate = self.overrides.get(model)
        if rate is not None:
            return Price(rate.cost(inp, out, cached), True, rate.source, rate.version)
        found = self._lookup(provider, model)
        if found is None:
            return Price(ZERO, False, "unknown", GENAI_PRICES_VERSION)
        if isinstance(found, Rate):
            return Price(found.cost(inp, out, cached), True, found.source, found.version)
        mp, source = found
        total = mp.calc_price(
            Usage(input_tokens=inp, output_tokens=out, cache_read_tokens=min(cached, inp) or None)
        )["total_price"]
        return Price(Decimal(total), True, source, GENAI_PRICES_VERSION)
