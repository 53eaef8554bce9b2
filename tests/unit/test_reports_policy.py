"""The policy page is generated from the registry and the role config: it cannot drift."""

from __future__ import annotations

import copy
import html
from typing import Any

import pytest
import yaml

from trustlog.governance.roles import ROLES, load_roles, parse_roles
from trustlog.registry import RegistryError, parse_registry
from trustlog.reports.policy import policy_page, retention_period
from trustlog.reports.render import render_policy
from trustlog.settings import CONFIG_DIR, SCHEMAS_DIR


def _reg_yaml() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((SCHEMAS_DIR / "fields.yaml").read_text())
    return data


def _roles_yaml() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((CONFIG_DIR / "roles.yaml").read_text())
    return data


def _render(reg: dict[str, Any], roles: dict[str, Any], fmt: str) -> str:
    text = render_policy(policy_page(parse_registry(reg), parse_roles(roles)), fmt)
    return html.unescape(text) if fmt == "html" else text


@pytest.mark.parametrize("fmt", ["html", "md"])
def test_every_kept_field_role_retention_and_promise_appears(fmt: str) -> None:
    reg = parse_registry(_reg_yaml())
    text = _render(_reg_yaml(), _roles_yaml(), fmt)
    for f in [*reg.fields.values(), *reg.storage_columns.values()]:
        assert f"`{f.name}`" in text or f"<code>{f.name}</code>" in text, f.name
        assert f.why in text, f.name
    for name in reg.raw_fields:
        assert f"**{name}**" in text or f"<strong>{name}</strong>" in text, name
    for role in ROLES:
        assert f"**{role}**" in text or f"<strong>{role}</strong>" in text, role
    for purpose, sentence in reg.purposes.items():
        assert f"For {purpose}: {sentence}" in text
    for sentence in reg.never_used_for:
        assert sentence in text
    for spec in reg.retention.values():
        assert retention_period(spec) in text, spec
    for acc in load_roles(CONFIG_DIR / "roles.yaml").by_role("security"):
        assert acc.title in text
    assert "trustlog contest open" in text
    # the kinds the page offers are exactly the ones `trustlog contest open` accepts
    from trustlog.governance.contests import KINDS

    offered = text.split("--kind ", 1)[1].split(" ", 1)[0]
    assert offered.split("|") == list(KINDS)
    # nothing the page says is a user id from the config
    for acc in load_roles(CONFIG_DIR / "roles.yaml").by_role("employee"):
        assert acc.user_id and acc.user_id not in text


@pytest.mark.parametrize("fmt", ["html", "md"])
def test_a_registry_change_changes_the_page(fmt: str) -> None:
    base = _render(_reg_yaml(), _roles_yaml(), fmt)
    changed = copy.deepcopy(_reg_yaml())
    changed["retention"]["detail"]["days"] = 45
    changed["fields"]["producer"]["purpose"] = ["legal"]
    changed["fields"]["producer"]["why"] = "Which integration sent it, for an audit."
    changed["never_used_for"].append("Deciding anyone's bonus.")
    changed["fields"].pop("content_chars")
    text = _render(changed, _roles_yaml(), fmt)
    assert text != base
    assert "45 days" in text and "60 days" in base and "60 days" not in text
    assert "Which integration sent it, for an audit." in text
    assert "Deciding anyone's bonus." in text
    assert "content_chars" in base and "content_chars" not in text
    # producer moved from the security group to the legal group
    legal = text.split("For legal:")[1]
    security = text.split("For security:")[1].split("For legal:")[0]
    names = ("`producer`", "<code>producer</code>")
    assert any(n in legal for n in names)
    assert not any(n in security for n in names)


@pytest.mark.parametrize("fmt", ["html", "md"])
def test_a_roles_change_changes_the_page(fmt: str) -> None:
    roles = copy.deepcopy(_roles_yaml())
    roles["min_group_size"] = 8
    roles["cases"]["max_days"] = 5
    roles["accounts"].append({"name": "mgr_sales", "role": "manager", "teams": ["sales"]})
    roles["accounts"] = [a for a in roles["accounts"] if a["name"] != "sec_backup"]
    text = _render(_reg_yaml(), roles, fmt)
    assert "at least 8 people" in text and "at least 5 people" not in text
    assert "lasts at most 5 days" in text
    assert "sales" in text
    assert "Security backup" not in text and "2 named people" in text


def test_registry_refuses_a_missing_promise_or_purpose_text() -> None:
    data = _reg_yaml()
    data["never_used_for"] = []
    data["purposes"].pop("legal")
    with pytest.raises(RegistryError) as err:
        parse_registry(data)
    assert "never_used_for" in str(err.value) and "'legal' is not described" in str(err.value)
