"""Who owns an incident: rules, the owner registry, team routes, escalation.

Pure: reads ``config/routing.yaml`` once and answers lookups from memory.

- ``owners``: the registry. Every owner is a named person or group with a Slack channel, and
  may name a second owner (``escalate_to``) for incidents nobody acknowledges in time.
- ``rules``: every signal rule with its category (cost, security, reliability), severity,
  title and default owner. A rule ``base.detail`` (``sensitive_data.payment_card``) that has
  no entry of its own falls back to ``base``, so a new sensitive-data class still routes.
- ``routes``: team x category -> owner, overriding the rule's default owner for that team.
- ``fallback``: the owner of a rule the file does not know (as reliability/low), because a
  detector that ships before its routing entry must not make alerts disappear or crash.
- ``escalation.after``: how long an incident may stay unacknowledged, per severity.
- ``pseudonym_channels``: the only channels whose messages may show a security incident's
  pseudonym.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from trustlog.settings import CONFIG_DIR

# The enum symbols of schemas/incident.v1.avsc: a value outside them could not be published.
CATEGORIES = ("cost", "security", "reliability")
SEVERITIES = ("low", "medium", "high", "critical")
OWNER_KINDS = ("person", "group")

DEFAULT_ROUTING_FILE = CONFIG_DIR / "routing.yaml"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_CHANNEL = re.compile(r"^#[a-z0-9_.-]{1,80}$")


@dataclass(frozen=True)
class Owner:
    id: str
    name: str
    kind: str  # person | group
    channel: str
    escalate_to: str | None = None


@dataclass(frozen=True)
class RuleSpec:
    category: str
    severity: str
    title: str
    owner: str


@dataclass(frozen=True)
class TeamRoute:
    team: str
    category: str
    owner: str
    escalate_to: str | None = None


@dataclass(frozen=True)
class Route:
    """Everything the incident book needs to open an incident for one rule and team."""

    owner: str
    channel: str
    category: str
    severity: str
    title: str
    escalate_to: str | None = None
    escalate_channel: str | None = None
    escalate_after_s: float | None = None


class RoutingError(ValueError):
    """routing.yaml is malformed; raised at load time so a bad deploy fails at start."""


def _str(d: Mapping[str, Any], key: str, where: str) -> str:
    v = d.get(key)
    if not isinstance(v, str) or not v:
        raise RoutingError(f"{where}: '{key}' must be a non-empty string")
    return v


def _opt_str(d: Mapping[str, Any], key: str, where: str) -> str | None:
    return None if d.get(key) is None else _str(d, key, where)


def parse_duration(value: Any, where: str) -> float:
    """Seconds from ``90``, ``"90s"``, ``"15m"``, ``"2h"`` or ``"1d"``."""
    if isinstance(value, bool):
        raise RoutingError(f"{where}: not a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise RoutingError(f"{where}: {value!r} is not a duration like 30s, 15m, 2h, 1d")
        seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    if seconds <= 0:
        raise RoutingError(f"{where}: duration must be positive")
    return seconds


def _mapping(v: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(v, Mapping):
        raise RoutingError(f"{where}: must be a mapping")
    return v


def _choice(d: Mapping[str, Any], key: str, where: str, options: tuple[str, ...]) -> str:
    v = _str(d, key, where)
    if v not in options:
        raise RoutingError(f"{where}: unknown {key} {v!r} (one of {', '.join(options)})")
    return v


class Routing:
    def __init__(
        self,
        owners: Mapping[str, Owner],
        rules: Mapping[str, RuleSpec],
        routes: list[TeamRoute],
        fallback_owner: str,
        escalate_after_s: Mapping[str, float],
        pseudonym_channels: frozenset[str],
    ) -> None:
        self.owners = dict(owners)
        self.rules = dict(rules)
        self.routes = list(routes)
        self.fallback_owner = fallback_owner
        self.escalate_after_s = dict(escalate_after_s)
        self.pseudonym_channels = pseudonym_channels
        self._check_references()

    def _check_references(self) -> None:
        def known(owner: str | None, where: str) -> None:
            if owner is not None and owner not in self.owners:
                raise RoutingError(f"{where}: owner {owner!r} is not in the owners registry")

        for o in self.owners.values():
            known(o.escalate_to, f"owners.{o.id}.escalate_to")
            if o.escalate_to == o.id:
                raise RoutingError(f"owners.{o.id}: cannot escalate to itself")
        for name, r in self.rules.items():
            known(r.owner, f"rules.{name}")
        for i, t in enumerate(self.routes):
            known(t.owner, f"routes[{i}]")
            known(t.escalate_to, f"routes[{i}].escalate_to")
        known(self.fallback_owner, "fallback")

    @classmethod
    def from_dict(cls, data: Any) -> Routing:
        data = _mapping(data, "routing config")
        owners: dict[str, Owner] = {}
        for oid, spec in _mapping(data.get("owners") or {}, "owners").items():
            where = f"owners.{oid}"
            spec = _mapping(spec, where)
            channel = _str(spec, "channel", where)
            if not _CHANNEL.match(channel):
                raise RoutingError(f"{where}: channel {channel!r} must look like #name")
            owners[str(oid)] = Owner(
                id=str(oid),
                name=_str(spec, "name", where),
                kind=_choice(spec, "kind", where, OWNER_KINDS),
                channel=channel,
                escalate_to=_opt_str(spec, "escalate_to", where),
            )
        rules: dict[str, RuleSpec] = {}
        for name, spec in _mapping(data.get("rules") or {}, "rules").items():
            where = f"rules.{name}"
            spec = _mapping(spec, where)
            rules[str(name)] = RuleSpec(
                category=_choice(spec, "category", where, CATEGORIES),
                severity=_choice(spec, "severity", where, SEVERITIES),
                title=_str(spec, "title", where),
                owner=_str(spec, "owner", where),
            )
        routes: list[TeamRoute] = []
        raw_routes = data.get("routes") or []
        if not isinstance(raw_routes, list):
            raise RoutingError("routes: must be a list")
        for i, entry in enumerate(raw_routes):
            where = f"routes[{i}]"
            entry = _mapping(entry, where)
            if entry.get("team") == "*":
                raise RoutingError(f"{where}: every team is the rule's own owner; name a team")
            routes.append(
                TeamRoute(
                    team=_str(entry, "team", where),
                    category=_choice(entry, "category", where, CATEGORIES),
                    owner=_str(entry, "owner", where),
                    escalate_to=_opt_str(entry, "escalate_to", where),
                )
            )
        fallback = data.get("fallback")
        if not isinstance(fallback, Mapping):
            raise RoutingError("fallback: an owner is required")
        after: dict[str, float] = {}
        escalation = _mapping(data.get("escalation") or {}, "escalation")
        for sev, value in _mapping(escalation.get("after") or {}, "escalation.after").items():
            if sev not in SEVERITIES:
                raise RoutingError(f"escalation.after: unknown severity {sev!r}")
            after[str(sev)] = parse_duration(value, f"escalation.after.{sev}")
        channels = data.get("pseudonym_channels") or []
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            raise RoutingError("pseudonym_channels: must be a list of channel names")
        return cls(
            owners,
            rules,
            routes,
            _str(fallback, "owner", "fallback"),
            after,
            frozenset(channels),
        )

    @classmethod
    def load(cls, path: Path = DEFAULT_ROUTING_FILE) -> Routing:
        return cls.from_dict(yaml.safe_load(Path(path).read_text()) or {})

    def spec_for(self, rule: str) -> RuleSpec | None:
        """The rule's own entry, else its base rule's (``a.b`` -> ``a``), else None."""
        spec = self.rules.get(rule)
        if spec is None and "." in rule:
            base, detail = rule.split(".", 1)
            parent = self.rules.get(base)
            if parent is not None:
                spec = RuleSpec(
                    parent.category, parent.severity, f"{parent.title} ({detail})", parent.owner
                )
        return spec

    def route(self, rule: str, team: str) -> Route:
        spec = self.spec_for(rule)
        if spec is None:
            return self._route_to(
                self.fallback_owner,
                None,
                category="reliability",
                severity="low",
                title=f"Unrouted signal rule {rule}"[:120],
            )
        owner_id, escalate_to = spec.owner, None
        # A route naming the team beats the rule's default owner; the first match wins, as a
        # reader of the file would expect.
        for r in self.routes:
            if r.team == team and r.category == spec.category:
                owner_id, escalate_to = r.owner, r.escalate_to
                break
        return self._route_to(
            owner_id, escalate_to, category=spec.category, severity=spec.severity, title=spec.title
        )

    def _route_to(
        self, owner_id: str, escalate_to: str | None, *, category: str, severity: str, title: str
    ) -> Route:
        owner = self.owners[owner_id]
        second_id = escalate_to or owner.escalate_to
        second = self.owners.get(second_id) if second_id else None
        after = self.escalate_after_s.get(severity)
        if second is None or after is None:
            return Route(owner.id, owner.channel, category, severity, title)
        return Route(
            owner.id, owner.channel, category, severity, title, second.id, second.channel, after
        )

    def shows_pseudonym(self, category: str, channel: str) -> bool:
        """Only security incidents, and only in the channels listed for it."""
        return category == "security" and channel in self.pseudonym_channels

    def channels(self) -> set[str]:
        return {o.channel for o in self.owners.values()}


@cache
def default_routing() -> Routing:
    return Routing.load(DEFAULT_ROUTING_FILE)


def route(rule: str, team: str, routing: Routing | None = None) -> Route:
    """Route with the given table, or with the repository's ``config/routing.yaml``."""
    return (routing or default_routing()).route(rule, team)
