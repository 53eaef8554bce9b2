"""The one-page policy, built from the field registry and the role config at render time.

Nothing on the page is typed twice: which fields are kept and why, who reads which of them,
how long each class lives, what nobody uses the records for. Change ``schemas/fields.yaml``
or ``config/roles.yaml`` and the next render says so (tests/unit/test_reports_policy.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trustlog.governance.roles import ROLES, RolesConfig, detail_columns
from trustlog.registry import ColumnSpec, FieldSpec, Registry


@dataclass(frozen=True)
class KeptItem:
    name: str
    why: str
    also: tuple[str, ...]  # further purposes besides the one it is listed under
    retention: str  # class name
    roles: tuple[str, ...]


@dataclass(frozen=True)
class PurposeGroup:
    purpose: str
    description: str
    items: tuple[KeptItem, ...]


@dataclass(frozen=True)
class NotKept:
    name: str
    what_happens: str
    why: str


@dataclass(frozen=True)
class RetentionClass:
    name: str
    period: str  # "60 days", "6 hours"
    what: str
    items: tuple[str, ...]


@dataclass(frozen=True)
class RoleView:
    role: str
    who: str
    sees: str
    limits: str
    columns: tuple[str, ...]


@dataclass(frozen=True)
class PolicyPage:
    purposes: tuple[PurposeGroup, ...]
    not_kept: tuple[NotKept, ...]
    rollup_columns: tuple[str, ...]
    rollup_retention: str
    retention: tuple[RetentionClass, ...]
    roles: tuple[RoleView, ...]
    never_used_for: tuple[str, ...]
    min_group_size: int
    case_max_days: int
    case_max_period_days: int

    def period_of(self, retention_class: str) -> str:
        return next(r.period for r in self.retention if r.name == retention_class)


_DISPOSITION = {
    "pseudonymize": "replaced by a keyed pseudonym before anything is stored",
    "scan_then_drop": "checked for kinds of sensitive data and measured, then thrown away",
    "drop": "thrown away on arrival",
}


def retention_period(spec: dict[str, Any]) -> str:
    if "days" in spec:
        d = int(spec["days"])
        return f"{d} day" + ("s" if d != 1 else "")
    if "hours" in spec:
        h = int(spec["hours"])
        return f"{h} hour" + ("s" if h != 1 else "")
    if "max_days" in spec:  # `hold`: no fixed age, the hold's own expiry under a cap
        return f"until the hold ends, at most {int(spec['max_days'])} days"
    return "as long as the configuration lists it"  # `configured`: mirrors of config files


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _role_views(reg: Registry, cfg: RolesConfig) -> tuple[RoleView, ...]:
    rollups = tuple(reg.rollup_columns)
    security = cfg.by_role("security")
    managers = cfg.by_role("manager")
    teams = sorted({t for m in managers for t in m.teams})
    who = {
        "finance": f"Finance ({_plural(len(cfg.by_role('finance')), 'account')})",
        "manager": (
            f"Team leads ({_plural(len(managers), 'account')}: "
            f"{', '.join(teams) if teams else 'no teams yet'}), each for their own teams only"
        ),
        "security": (
            f"{len(security)} named "
            + ("person" if len(security) == 1 else "people")
            + ": "
            + (", ".join(a.title or a.name for a in security) or "nobody yet")
        ),
        "employee": "each employee, about themself only",
    }
    sees = {
        "finance": "Spend totals by team, tool, model, provider and day or month, and prepaid credits.",
        "manager": "Their own team's weekly totals by tool: people behind each number, calls, tokens, spend, errors, blocked and unpriced calls.",
        "security": "Detail records, only while an approved case covers them; rollups and incidents to know where to look.",
        "employee": "Their own detail records.",
    }
    limits = {
        "finance": "No single call, no pseudonym, no record id.",
        "manager": (
            f"No individual records and no pseudonyms. A number is shown only when at least "
            f"{cfg.min_group_size} people are behind it; tools used by fewer people are merged "
            "into '(other)', or left out when that is still too few. Weeks appear once settled."
        ),
        "security": (
            f"A case names a reason, one person (by pseudonym), team or tool, at most "
            f"{cfg.cases.max_period_days} days of records and lasts at most "
            f"{cfg.cases.max_days} days. A second person on the list must approve it, the "
            "people concerned are told why, and every read is logged for the monthly review."
        ),
        "employee": "Nobody else's records.",
    }
    out = []
    for role in ROLES:
        # finance reads the rollups; managers one fixed weekly view (its columns are in
        # "sees"); security and employees detail columns, as the registry grants them
        cols: tuple[str, ...] = detail_columns(role, reg)
        if role == "finance":
            cols = tuple(c for c in rollups if role in reg.rollup_columns[c].roles)
        elif role == "manager":
            cols = ()
        out.append(RoleView(role, who[role], sees[role], limits[role], cols))
    return tuple(out)


def policy_page(reg: Registry, cfg: RolesConfig) -> PolicyPage:
    groups: dict[str, list[KeptItem]] = {p: [] for p in reg.purposes}
    kept: list[FieldSpec | ColumnSpec] = [*reg.fields.values(), *reg.storage_columns.values()]
    for f in kept:
        primary = f.purpose[0]
        groups.setdefault(primary, []).append(
            KeptItem(f.name, f.why, tuple(f.purpose[1:]), f.retention, f.roles)
        )
    purposes = tuple(
        PurposeGroup(p, reg.purposes.get(p, ""), tuple(items))
        for p, items in groups.items()
        if items
    )
    not_kept = tuple(
        NotKept(f.name, _DISPOSITION[f.disposition], f.why) for f in reg.raw_fields.values()
    )
    by_class: dict[str, list[str]] = {c: [] for c in reg.retention}
    for f in kept:
        by_class[f.retention].append(f.name)
    for c in reg.rollup_columns.values():
        by_class[c.retention].append(f"totals: {c.name}")
    for f in reg.raw_fields.values():
        by_class[f.retention].append(f"arriving: {f.name}")
    retention = tuple(
        RetentionClass(
            name, retention_period(spec), str(spec.get("what", "")), tuple(by_class[name])
        )
        for name, spec in reg.retention.items()
    )
    rollup_classes = {c.retention for c in reg.rollup_columns.values()}
    return PolicyPage(
        purposes=purposes,
        not_kept=not_kept,
        rollup_columns=tuple(reg.rollup_columns),
        rollup_retention=", ".join(
            retention_period(reg.retention[c]) for c in sorted(rollup_classes)
        ),
        retention=retention,
        roles=_role_views(reg, cfg),
        never_used_for=reg.never_used_for,
        min_group_size=cfg.min_group_size,
        case_max_days=cfg.cases.max_days,
        case_max_period_days=cfg.cases.max_period_days,
    )
