"""Who owns an incident: signal rule -> category/severity/title, team x category -> owner.

Pure: reads ``config/routing.yaml`` once and answers lookups from memory. A rule the file
does not know still routes somewhere (reliability/low to the fallback owner), because a
detector that ships before its routing entry must not make alerts disappear or crash.
"""

from __future__ import annotations

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
WILDCARD = "*"

DEFAULT_ROUTING_FILE = CONFIG_DIR / "routing.yaml"


@dataclass(frozen=True)
class Route:
    owner: str
    channel: str
    category: str
    severity: str
    title: str


@dataclass(frozen=True)
class RuleSpec:
    category: str
    severity: str
    title: str


@dataclass(frozen=True)
class OwnerEntry:
    team: str
    category: str
    owner: str
    channel: str


class RoutingError(ValueError):
    """routing.yaml is malformed; raised at load time so a bad deploy fails at start."""


def _str(d: Mapping[str, Any], key: str, where: str) -> str:
    v = d.get(key)
    if not isinstance(v, str) or not v:
        raise RoutingError(f"{where}: '{key}' must be a non-empty string")
    return v


class Routing:
    def __init__(
        self,
        rules: Mapping[str, RuleSpec],
        owners: list[OwnerEntry],
        fallback_owner: str,
        fallback_channel: str,
    ) -> None:
        self.rules = dict(rules)
        self.owners = list(owners)
        self.fallback_owner = fallback_owner
        self.fallback_channel = fallback_channel

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Routing:
        if not isinstance(data, Mapping):
            raise RoutingError("routing config must be a mapping")
        rules: dict[str, RuleSpec] = {}
        for name, spec in (data.get("rules") or {}).items():
            where = f"rules.{name}"
            if not isinstance(spec, Mapping):
                raise RoutingError(f"{where}: must be a mapping")
            category = _str(spec, "category", where)
            severity = _str(spec, "severity", where)
            if category not in CATEGORIES:
                raise RoutingError(f"{where}: unknown category {category!r}")
            if severity not in SEVERITIES:
                raise RoutingError(f"{where}: unknown severity {severity!r}")
            rules[str(name)] = RuleSpec(category, severity, _str(spec, "title", where))
        owners: list[OwnerEntry] = []
        for i, entry in enumerate(data.get("owners") or []):
            where = f"owners[{i}]"
            if not isinstance(entry, Mapping):
                raise RoutingError(f"{where}: must be a mapping")
            category = _str(entry, "category", where)
            if category not in CATEGORIES:
                raise RoutingError(f"{where}: unknown category {category!r}")
            owners.append(
                OwnerEntry(
                    team=_str(entry, "team", where),
                    category=category,
                    owner=_str(entry, "owner", where),
                    channel=_str(entry, "channel", where),
                )
            )
        fallback = data.get("fallback")
        if not isinstance(fallback, Mapping):
            raise RoutingError("fallback: owner and channel are required")
        return cls(
            rules,
            owners,
            _str(fallback, "owner", "fallback"),
            _str(fallback, "channel", "fallback"),
        )

    @classmethod
    def load(cls, path: Path = DEFAULT_ROUTING_FILE) -> Routing:
        return cls.from_dict(yaml.safe_load(Path(path).read_text()) or {})

    def _owner_for(self, team: str, category: str) -> tuple[str, str]:
        # An entry naming the team beats a wildcard, whatever the order in the file; among
        # equals the first one listed wins, as a reader of the file would expect.
        wildcard: OwnerEntry | None = None
        for e in self.owners:
            if e.category != category:
                continue
            if e.team == team:
                return e.owner, e.channel
            if e.team == WILDCARD and wildcard is None:
                wildcard = e
        if wildcard is not None:
            return wildcard.owner, wildcard.channel
        return self.fallback_owner, self.fallback_channel

    def route(self, rule: str, team: str) -> Route:
        spec = self.rules.get(rule)
        if spec is None:
            return Route(
                owner=self.fallback_owner,
                channel=self.fallback_channel,
                category="reliability",
                severity="low",
                title=f"Unrouted signal rule {rule}"[:120],
            )
        owner, channel = self._owner_for(team, spec.category)
        return Route(owner, channel, spec.category, spec.severity, spec.title)


@cache
def default_routing() -> Routing:
    return Routing.load(DEFAULT_ROUTING_FILE)


def route(rule: str, team: str, routing: Routing | None = None) -> Route:
    """Route with the given table, or with the repository's ``config/routing.yaml``."""
    return (routing or default_routing()).route(rule, team)
