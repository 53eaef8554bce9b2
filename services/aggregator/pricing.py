"""Cost per call from genai-prices, with overrides for negotiated rates, flat-rate tools, credits.

Token semantics (OpenAI's, and genai-prices'): ``input_tokens`` includes cached input and
``output_tokens`` includes reasoning output; ``cached_tokens`` and ``reasoning_tokens`` are
subsets of them. Cached input is billed at the model's cache-read rate. Reasoning tokens are
billed at the model's reasoning rate where it has one (genai-prices ``output_reasoning_mtok``,
e.g. perplexity sonar-deep-research) and otherwise as ordinary output, so for most models the
reasoning count changes nothing: it is already in ``output_tokens``. A subset larger than its
total (a producer counting Anthropic- or Gemini-style, where cache reads or thoughts are
reported apart) is taken as the lower bound of the total: the total is raised to the subset, so
what is known to have been billed is never dropped.

Prices are picked at the call's event time (genai-prices has dated price changes), so a replay
or a late event is priced as it was billed. An unknown model is priced as unknown (``priced``
False, cost 0, source ``unknown``) and reported as a signal, never silently counted as free.

Overrides (``TRUSTLOG_PRICE_OVERRIDES_FILE``, see ``config/prices.example.yaml``), first match
wins: ``tools`` (flat-rate internal tools: every call of the tool at a fixed per-request and/or
per-token rate, whatever model it uses), ``models`` (negotiated per-token rates, keyed by
``provider/model`` or ``model``), ``providers`` (a negotiated percentage off the genai-prices
list price). ``credits`` (prepaid balances per team and/or provider) are not applied per call:
a balance drawn down call by call would depend on processing order and on every aggregator
instance agreeing on what is left, so the aggregator stores them in ClickHouse and the finance
views net them off the rollups by day (schemas/clickhouse/0002_*.sql).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import yaml
from genai_prices import Usage, calc_price
from genai_prices.types import ModelInfo, ModelPrice, StartDateConstraint, TimeOfDateConstraint

MTOK = Decimal(1_000_000)
ZERO = Decimal(0)
HUNDRED = Decimal(100)
GENAI_PRICES_VERSION = f"genai-prices=={genai_prices.__version__}"
# Price keys the fast path models itself; any other priced key on a model is checked by the
# probes in _fast_rate (keys for units a redacted event never reports cost nothing either way).
_FAST_KEYS = ("input_mtok", "output_mtok", "cache_read_mtok", "output_reasoning_mtok")
_PROBES = ((1_234_567, 345_678, 234_567, 45_678), (7, 3, 0, 0), (0, 0, 0, 0))


class PriceConfigError(ValueError):
    """The overrides file is malformed; the message names the entry."""


@dataclass(frozen=True)
class Price:
    cost_usd: Decimal
    priced: bool
    source: str
    version: str


@dataclass(frozen=True)
class Rate:
    """Linear price: per-request fee plus per-million-token rates.

    ``cached_mtok`` None bills cached input as input; ``reasoning_mtok`` None bills reasoning
    as output (it is part of ``output_tokens``).
    """

    input_mtok: Decimal
    output_mtok: Decimal
    cached_mtok: Decimal | None = None
    reasoning_mtok: Decimal | None = None
    request_usd: Decimal = ZERO
    source: str = "override"
    version: str = ""

    def cost(self, inp: int, out: int, cached: int, reasoning: int = 0) -> Decimal:
        """Cost of one call; counts must already be normalised (see ``normalise``)."""
        cached_rate = self.input_mtok if self.cached_mtok is None else self.cached_mtok
        reasoning_rate = self.output_mtok if self.reasoning_mtok is None else self.reasoning_mtok
        tokens = (
            (inp - cached) * self.input_mtok
            + cached * cached_rate
            + (out - reasoning) * self.output_mtok
            + reasoning * reasoning_rate
        )
        return self.request_usd + tokens / MTOK


@dataclass(frozen=True)
class Discount:
    """A negotiated percentage off the genai-prices list price of one provider."""

    percent: Decimal
    source: str


@dataclass(frozen=True)
class Credit:
    """A prepaid balance that reduces billed cost, applied by the finance views.

    ``team`` / ``provider`` empty means any. ``expires`` is the last day (inclusive) the
    balance can be drawn; None means it never expires.
    """

    name: str
    amount_usd: Decimal
    starts: date
    expires: date | None = None
    team: str = ""
    provider: str = ""

    def overlaps(self, other: Credit) -> bool:
        far = date.max
        same_time = self.starts <= (other.expires or far) and other.starts <= (self.expires or far)
        same_team = not self.team or not other.team or self.team == other.team
        same_provider = not self.provider or not other.provider or self.provider == other.provider
        return same_time and same_team and same_provider


@dataclass(frozen=True)
class Overrides:
    version: str = ""
    tools: dict[str, Rate] = field(default_factory=dict)
    models: dict[str, Rate] = field(default_factory=dict)
    providers: dict[str, Discount] = field(default_factory=dict)
    credits: tuple[Credit, ...] = ()


def normalise(inp: int, out: int, cached: int, reasoning: int) -> tuple[int, int, int, int]:
    """Subsets are lower bounds of their totals (see the module doc); negatives count as 0."""
    cached, reasoning = max(cached, 0), max(reasoning, 0)
    return max(inp, cached), max(out, reasoning), cached, reasoning


def _dec(spec: dict[str, Any], key: str, where: str, default: Decimal | None = None) -> Decimal:
    value = spec.get(key)
    if value is None:
        if default is None:
            raise PriceConfigError(f"{where}: {key} is required")
        return default
    try:
        out = Decimal(str(value))
    except ArithmeticError as exc:
        raise PriceConfigError(f"{where}: {key} is not a number: {value!r}") from exc
    if not out.is_finite() or out < 0:
        raise PriceConfigError(f"{where}: {key} must be a non-negative number, got {value!r}")
    return out


def _opt_dec(spec: dict[str, Any], key: str, where: str) -> Decimal | None:
    return None if spec.get(key) is None else _dec(spec, key, where)


def _rate(spec: dict[str, Any], where: str, version: str, *, flat: bool) -> Rate:
    if not isinstance(spec, dict):
        raise PriceConfigError(f"{where}: expected a mapping")
    # A flat-rate tool may charge only per request; a model override must name token rates.
    token_default = ZERO if flat else None
    return Rate(
        input_mtok=_dec(spec, "input_per_mtok", where, token_default),
        output_mtok=_dec(spec, "output_per_mtok", where, token_default),
        cached_mtok=_opt_dec(spec, "cached_per_mtok", where),
        reasoning_mtok=_opt_dec(spec, "reasoning_per_mtok", where),
        request_usd=_dec(spec, "per_request_usd", where, ZERO),
        source=str(spec.get("source", "flat-rate" if flat else "override")),
        version=version,
    )


def _date(value: Any, where: str) -> date:
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError as exc:
        raise PriceConfigError(f"{where}: not an ISO date: {value!r}") from exc


def _credits(items: Any) -> tuple[Credit, ...]:
    if not isinstance(items, list):
        raise PriceConfigError("credits: expected a list")
    out: list[Credit] = []
    for i, spec in enumerate(items):
        where = f"credits[{i}]"
        if not isinstance(spec, dict) or not spec.get("name"):
            raise PriceConfigError(f"{where}: needs a name")
        where = f"credits[{i}] ({spec['name']})"
        credit = Credit(
            name=str(spec["name"]),
            amount_usd=_dec(spec, "amount_usd", where),
            starts=_date(spec.get("starts"), where),
            expires=None if spec.get("expires") is None else _date(spec["expires"], where),
            team=str(spec.get("team") or ""),
            provider=str(spec.get("provider") or ""),
        )
        if credit.expires is not None and credit.expires < credit.starts:
            raise PriceConfigError(f"{where}: expires before it starts")
        for other in out:
            if other.name == credit.name:
                raise PriceConfigError(f"{where}: duplicate credit name")
            # Overlapping balances would need a rule for which one pays first; finance can
            # always split them so that they do not overlap.
            if credit.overlaps(other):
                raise PriceConfigError(
                    f"{where}: overlaps credit {other.name!r} in team, provider and time"
                )
        out.append(credit)
    return tuple(out)


def parse_overrides(data: dict[str, Any], default_version: str = "overrides") -> Overrides:
    version = str(data.get("version", default_version))
    tools = {
        str(k): _rate(v, f"tools.{k}", version, flat=True)
        for k, v in (data.get("tools") or {}).items()
    }
    models = {
        str(k): _rate(v, f"models.{k}", version, flat=False)
        for k, v in (data.get("models") or {}).items()
    }
    providers: dict[str, Discount] = {}
    for k, v in (data.get("providers") or {}).items():
        where = f"providers.{k}"
        if not isinstance(v, dict):
            raise PriceConfigError(f"{where}: expected a mapping")
        pct = _dec(v, "discount_pct", where)
        if pct > HUNDRED:
            raise PriceConfigError(f"{where}: discount_pct above 100")
        providers[str(k)] = Discount(pct, str(v.get("source", f"{k}-discount")))
    return Overrides(version, tools, models, providers, _credits(data.get("credits") or []))


def load_overrides(path: Path | None) -> Overrides:
    """Read the overrides YAML (``config/prices.example.yaml`` documents every key)."""
    if path is None:
        return Overrides()
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise PriceConfigError(f"{path}: expected a mapping at the top level")
    return parse_overrides(data, default_version=path.name)


def _genai_usage(inp: int, out: int, cached: int, reasoning: int) -> Usage:
    return Usage(
        input_tokens=inp,
        output_tokens=out,
        cache_read_tokens=cached or None,
        output_reasoning_tokens=reasoning or None,
    )


def _fast_rate(mp: ModelPrice, source: str) -> Rate | None:
    """The model price as a Rate if that is provably the same function, else None.

    genai-prices' per-call ``calc_price`` costs ~70 us, too much for the sink's hot path.
    Tiered prices are not linear, so they stay on genai-prices. For the rest the Rate is
    built from the known keys and checked against genai-prices on probe usages: a price key
    the Rate does not model (a per-request fee it missed, a text-only rate) shows up there.
    """
    values = {k: v for k, v in mp.__dict__.items() if v is not None and not k.startswith("_")}
    if not all(isinstance(v, Decimal) for v in values.values()):
        return None
    if "input_mtok" not in values or "output_mtok" not in values:
        return None
    req = values.get("requests_kcount")
    rate = Rate(
        input_mtok=values["input_mtok"],
        output_mtok=values["output_mtok"],
        cached_mtok=values.get("cache_read_mtok"),
        reasoning_mtok=values.get("output_reasoning_mtok"),
        request_usd=ZERO if req is None else req / 1000,
        source=source,
        version=GENAI_PRICES_VERSION,
    )
    for probe in _PROBES:
        if rate.cost(*probe) != mp.calc_price(_genai_usage(*probe))["total_price"]:
            return None
    return rate


def _condition_label(model: ModelInfo, index: int) -> str:
    if not isinstance(model.prices, list):
        return ""
    c = model.prices[index].constraint
    if isinstance(c, StartDateConstraint):
        return f" [from {c.start_date.isoformat()}]"
    if isinstance(c, TimeOfDateConstraint):
        return f" [{c.start_time.isoformat('minutes')}-{c.end_time.isoformat('minutes')}]"
    return ""


class Pricer:
    """Prices calls; caches one genai-prices lookup per (provider, model) and one rate per price.

    Flat-rate models are computed here from cached rates (unit tests check this equals
    genai-prices exactly); only tiered models go through genai-prices per call.
    """

    def __init__(self, overrides: Overrides | None = None) -> None:
        self.o = overrides or Overrides()
        self._models: dict[tuple[str, str], tuple[ModelInfo, str] | None] = {}
        self._rates: dict[tuple[int, int], tuple[Rate | None, ModelPrice, str]] = {}

    def _lookup(self, provider: str, model: str) -> tuple[ModelInfo, str] | None:
        key = (provider, model)
        if key in self._models:
            return self._models[key]
        probe = Usage(input_tokens=1, output_tokens=1)
        try:
            res = calc_price(probe, model_ref=model, provider_id=provider or None)
        except LookupError:
            res = None
            if provider:
                # The producer may name a reseller or gateway; fall back to the model alone.
                try:
                    res = calc_price(probe, model_ref=model)
                except LookupError:
                    res = None
        found = None if res is None else (res.model, res.provider.id)
        self._models[key] = found
        return found

    def _active_price(
        self, info: ModelInfo, provider_id: str, at: datetime | None
    ) -> tuple[Rate | None, ModelPrice, str]:
        index = 0
        if isinstance(info.prices, list):
            ts = at or datetime.now(UTC)
            # genai-prices' rule: the last active conditional price wins, else the first.
            for i in range(len(info.prices) - 1, -1, -1):
                c = info.prices[i].constraint
                if c is None or c.active(ts):
                    index = i
                    break
        key = (id(info), index)
        cached = self._rates.get(key)
        if cached is None:
            mp = info.prices if isinstance(info.prices, ModelPrice) else info.prices[index].prices
            source = f"genai-prices:{provider_id}/{info.id}{_condition_label(info, index)}"
            cached = (_fast_rate(mp, source), mp, source)
            self._rates[key] = cached
        return cached

    def price(
        self,
        provider: str,
        model: str,
        inp: int,
        out: int,
        cached: int,
        reasoning: int = 0,
        *,
        tool: str = "",
        at: datetime | None = None,
    ) -> Price:
        inp, out, cached, reasoning = normalise(inp, out, cached, reasoning)
        rate = self.o.tools.get(tool) if tool else None
        if rate is None:
            rate = self.o.models.get(f"{provider}/{model}") or self.o.models.get(model)
        if rate is not None:
            return Price(rate.cost(inp, out, cached, reasoning), True, rate.source, rate.version)
        found = self._lookup(provider, model)
        if found is None:
            return Price(ZERO, False, "unknown", GENAI_PRICES_VERSION)
        info, provider_id = found
        fast, mp, source = self._active_price(info, provider_id, at)
        if fast is not None:
            cost = fast.cost(inp, out, cached, reasoning)
        else:
            cost = mp.calc_price(_genai_usage(inp, out, cached, reasoning))["total_price"]
        discount = self.o.providers.get(provider_id)
        if discount is None:
            return Price(cost, True, source, GENAI_PRICES_VERSION)
        return Price(
            cost * (HUNDRED - discount.percent) / HUNDRED,
            True,
            f"{source} -{discount.percent}% ({discount.source})",
            f"{GENAI_PRICES_VERSION};{self.o.version}",
        )
