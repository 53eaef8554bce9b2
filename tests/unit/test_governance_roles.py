"""Pure tests of role accounts: config validation, the access model, and its two renderings.

users.xml (local server) and SQL (production server) are both rendered from the same
AccessSpec; the tests parse both back and require them to say exactly the same thing.
The integration test (tests/integration/test_governance_access.py) proves the users.xml side
on a real server and parses every SQL statement there.
"""

from __future__ import annotations

import json
import os
import re
import stat
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from trustlog.governance import roles
from trustlog.registry import registry
from trustlog.settings import CONFIG_DIR
from trustlog.stack import clickhouse

DB = "trustlog"


def _config(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "version": 1,
        "min_group_size": 5,
        "cases": {"max_days": 14, "max_period_days": 31},
        "accounts": [
            {"name": "fin", "role": "finance"},
            {"name": "mgr", "role": "manager", "teams": ["support", "o'brien <ops>"]},
            {"name": "sec_a", "role": "security", "title": "Security lead"},
            {"name": "sec_b", "role": "security", "title": "System owner"},
            {"name": "emp", "role": "employee", "user_id": "u-1"},
        ],
    }
    base.update(over)
    return base


HASHES = {n: clickhouse.sha256_hex(f"pw-{n}") for n in ("fin", "mgr", "sec_a", "sec_b", "emp")}

SECURITY_COLUMNS = (
    "event_id, event_time, producer, tool, model, provider, workspace, user_pseudonym, "
    "pseudonym_key_version, team, task_label, input_tokens, output_tokens, cached_tokens, "
    "reasoning_tokens, status, retry_count, policy_flags, sensitive_classes, content_chars, "
    "cost_usd, priced, ingested_at, kafka_topic, kafka_partition, kafka_offset"
)
EMPLOYEE_INCIDENT_COLUMNS = (
    "incident_id, rule, category, severity, state, team, tool, first_seen, last_seen, "
    "signal_count, summary, user_pseudonym"
)
EMPLOYEE_COLUMNS = (
    "event_id, event_time, tool, model, provider, workspace, user_pseudonym, team, task_label, "
    "input_tokens, output_tokens, cached_tokens, reasoning_tokens, status, retry_count, "
    "policy_flags, sensitive_classes, content_chars, cost_usd, priced"
)


# --------------------------------------------------------------------------- config


def test_repository_config_is_valid_and_small() -> None:
    config = roles.load_roles(CONFIG_DIR / "roles.yaml")
    assert {a.role for a in config.accounts} == set(roles.ROLES)
    assert 2 <= len(config.security_names) <= roles.MAX_SECURITY_ACCOUNTS
    assert config.min_group_size == 5 and config.cases.max_days == 14
    # No password (or hash) in the repository's example: they are generated per state dir.
    assert all(a.password_sha256_hex is None for a in config.accounts)


def test_every_problem_is_reported_at_once() -> None:
    bad = _config(
        version=2,
        min_group_size=2,
        cases={"max_days": 60},
        accounts=[
            {"name": "ok_fin", "role": "finance", "teams": ["x"]},
            {"name": "bad-name", "role": "finance"},
            {"name": "default", "role": "finance"},
            {"name": "m", "role": "manager"},
            {"name": "e", "role": "employee"},
            {"name": "r", "role": "auditor"},
            {"name": "h", "role": "finance", "password_sha256_hex": "nothex"},
            {"name": "n", "role": "finance", "networks": ["not-an-ip"]},
            {"name": "ok_fin", "role": "finance"},
            *({"name": f"s{i}", "role": "security"} for i in range(6)),
        ],
    )
    with pytest.raises(roles.RolesError) as info:
        roles.parse_roles(bad)
    message = str(info.value)
    for expected in (
        "version must be 1",
        "min_group_size: must be an integer in 3..1000",
        "cases.max_days: must be an integer in 1..30",
        "account 'ok_fin': only managers have `teams`",
        "name 'bad-name' must be letters",
        "account 'default': the name is reserved",
        "account 'm': a manager needs `teams`",
        "account 'e': an employee needs `user_id`",
        "account 'r': role must be one of",
        "account 'h': password_sha256_hex must be 64 lowercase hex",
        "account 'n': network 'not-an-ip' is not an IP address or CIDR",
        "accounts declared twice: ['ok_fin']",
        "6 security accounts; detail access is for a small named list",
    ):
        assert expected in message, expected


def test_user_id_is_kept_out_of_repr() -> None:
    config = roles.parse_roles(_config())
    assert "u-1" not in repr(config)


# --------------------------------------------------------------------------- access model


def _specs() -> dict[str, roles.AccessSpec]:
    config = roles.parse_roles(_config())
    return {s.account: s for s in roles.access_specs(config, DB)}


def test_detail_columns_follow_the_field_registry() -> None:
    reg = registry()
    assert ", ".join(roles.detail_columns("security")) == SECURITY_COLUMNS
    assert ", ".join(roles.detail_columns("employee")) == EMPLOYEE_COLUMNS
    for role in ("security", "employee"):
        for col in roles.detail_columns(role):
            spec = reg.fields.get(col) or reg.storage_columns[col]
            assert role in spec.roles
    # Finance-only billing bookkeeping is not detail anyone else reads.
    assert "price_source" not in roles.detail_columns("security")


def test_what_each_role_is_granted() -> None:
    specs = _specs()
    assert specs["fin"].grants == tuple(
        f"GRANT SELECT ON {DB}.{o}" for o in roles.ROLE_OBJECTS["finance"]
    )
    assert specs["fin"].row_filters == {}
    assert specs["mgr"].grants == (
        f"GRANT SELECT ON {DB}.manager_team_weekly",
        f"GRANT SELECT ON {DB}.contest_annotations",
    )
    assert specs["mgr"].row_filters == {
        f"{DB}.manager_team_weekly": "team IN ('support', 'o\\'brien <ops>')",
        # own teams, and never a contest in a group smaller than min_group_size
        f"{DB}.contest_annotations": "team IN ('support', 'o\\'brien <ops>') AND group_ok = 1",
    }
    assert specs["sec_a"].grants == (
        f"GRANT SELECT({SECURITY_COLUMNS}) ON {DB}.events",
        f"GRANT SELECT ON {DB}.security_events",
        f"GRANT SELECT ON {DB}.my_cases",
        f"GRANT SELECT ON {DB}.spend_daily",
        f"GRANT SELECT ON {DB}.spend_hourly",
        f"GRANT SELECT ON {DB}.incidents",
        f"GRANT SELECT ON {DB}.contests",
        f"GRANT SELECT ON {DB}.contests_current",
        # held copies of legal holds on records: hold columns plus the security columns
        f"GRANT SELECT(hold_id, hold_expires_at, held_at, {SECURITY_COLUMNS}) ON {DB}.held_events",
    )
    assert specs["sec_a"].row_filters == {
        f"{DB}.events": roles.security_row_filter(DB),
        f"{DB}.held_events": "has(hold_readers, currentUser()) AND hold_expires_at > now()",
    }
    assert f"FROM {DB}.my_cases" in roles.security_row_filter(DB)
    assert specs["emp"].grants == (
        f"GRANT SELECT({EMPLOYEE_COLUMNS}) ON {DB}.events",
        f"GRANT SELECT({EMPLOYEE_INCIDENT_COLUMNS}) ON {DB}.incidents",
        f"GRANT SELECT ON {DB}.employee_events",
        f"GRANT SELECT ON {DB}.my_pseudonyms",
        f"GRANT SELECT ON {DB}.employee_incidents",
        f"GRANT SELECT ON {DB}.contests",
        f"GRANT SELECT ON {DB}.contests_current",
        f"GRANT SELECT ON {DB}.notifications",
    )
    own = f"IN (SELECT pseudonym FROM {DB}.my_pseudonyms)"
    assert specs["emp"].row_filters == {
        f"{DB}.events": f"user_pseudonym {own}",
        f"{DB}.incidents": f"user_pseudonym {own}",
        f"{DB}.contests": f"pseudonym {own}",
        f"{DB}.notifications": roles.employee_notice_filter(DB),
    }
    # Notices: to one of their pseudonyms, or to a team/tool of their own records (events,
    # read under their row policy) within the case period; any other kind reaches nobody.
    notice_filter = roles.employee_notice_filter(DB)
    assert notice_filter.startswith(f"multiIf(recipient_kind = 'pseudonym', recipient {own}, ")
    assert f"FROM {DB}.events" in notice_filter and notice_filter.endswith(", 0)")
    assert "period_start" in notice_filter and "period_end" in notice_filter
    # Notices are for the people they concern: employees only, never finance or managers.
    for name, spec in specs.items():
        reads_notices = any(g.endswith(f"{DB}.notifications") for g in spec.grants)
        assert reads_notices == (spec.role == "employee"), name
        assert reads_notices == (f"{DB}.notifications" in spec.row_filters), name
    # Contests (with the employee's own words) are for the employee and the security group;
    # reports get the annotation view, which has no person in it.
    for name, spec in specs.items():
        reads_contests = any(g.endswith(f"{DB}.contests") for g in spec.grants)
        assert reads_contests == (spec.role in ("security", "employee")), name
        reads_annotations = any(g.endswith(f"{DB}.contest_annotations") for g in spec.grants)
        assert reads_annotations == (spec.role in ("finance", "manager")), name


def test_no_role_gets_a_wildcard_or_an_admin_table() -> None:
    # notifications: employees only, under their row policy (test_what_each_role_is_granted)
    admin_only = ("cases", "employee_pseudonyms", "read_audit",
                  "governance_settings", "schema_migrations")  # fmt: skip
    for spec in _specs().values():
        for grant in spec.grants:
            assert re.fullmatch(rf"GRANT SELECT(\([a-z_, ]+\))? ON {DB}\.[a-z_]+", grant), grant
            assert not any(grant.endswith(f".{t}") for t in admin_only), grant
        touches_detail = any(g.endswith(f"{DB}.events") for g in spec.grants)
        # Whoever may read detail is always limited by a row policy on it.
        assert touches_detail == (spec.role in roles.DETAIL_ROLES)
        assert touches_detail == (f"{DB}.events" in spec.row_filters)


def test_invalid_database_name_is_refused() -> None:
    config = roles.parse_roles(_config())
    with pytest.raises(roles.RolesError):
        roles.access_specs(config, "trust log")


# --------------------------------------------------------------------------- two renderings


def _from_users_xml(text: str) -> dict[str, dict[str, Any]]:
    root = ET.fromstring(text)
    profiles = {p.tag: {s.tag: s.text for s in p} for p in root.find("profiles")}  # type: ignore[union-attr]
    out = {}
    for user in root.find("users"):  # type: ignore[union-attr]
        if user.tag in ("default", clickhouse.ADMIN_USER):
            continue
        filters = {}
        for db in user.find("databases") or []:
            for table in db:
                filters[f"{db.tag}.{table.tag}"] = table.find("filter").text  # type: ignore[union-attr]
        out[user.tag] = {
            "hash": user.findtext("password_sha256_hex"),
            "networks": sorted(ip.text or "" for ip in user.find("networks")),  # type: ignore[union-attr]
            "grants": sorted(q.text or "" for q in user.find("grants")),  # type: ignore[union-attr]
            "filters": filters,
            "settings": profiles[user.findtext("profile") or ""],
        }
    return out


_CREATE_USER = re.compile(
    r"^CREATE USER OR REPLACE (\w+) IDENTIFIED WITH sha256_hash BY '([0-9a-f]{64})' "
    r"HOST (.+) SETTINGS PROFILE '(\w+)'$"
)
_POLICY = re.compile(
    r"^CREATE ROW POLICY OR REPLACE (\w+) ON (\w+\.\w+) FOR SELECT USING (.+) AS PERMISSIVE TO (.+)$"
)
_PROFILE = re.compile(r"^CREATE SETTINGS PROFILE OR REPLACE (\w+) SETTINGS (.+)$")


def _unquote(literal: str) -> str:
    assert literal[0] == literal[-1] == "'"
    return literal[1:-1].replace("\\'", "'").replace("\\\\", "\\")


def _from_sql(stmts: list[str]) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]]]:
    profiles: dict[str, dict[str, str]] = {"default": {}}  # the server's own, empty in users.xml
    users: dict[str, dict[str, Any]] = {}
    others: dict[str, list[str]] = {}
    for stmt in stmts:
        if m := _PROFILE.match(stmt):
            profiles[m[1]] = dict(kv.split(" = ") for kv in m[2].split(", "))
        elif m := _CREATE_USER.match(stmt):
            nets = sorted(_unquote(h.removeprefix("IP ")) for h in m[3].split(", "))
            users[m[1]] = {"hash": m[2], "networks": nets, "grants": [], "filters": {},
                           "settings": profiles[m[4]]}  # fmt: skip
        elif stmt.startswith("GRANT "):
            grant, _, grantee = stmt.rpartition(" TO ")
            users[grantee]["grants"].append(grant)
        elif m := _POLICY.match(stmt):
            if m[4].startswith("ALL EXCEPT "):
                others[m[2]] = sorted(m[4].removeprefix("ALL EXCEPT ").split(", "))
                assert m[3] == "1"
            else:
                assert m[1] == roles.policy_name(m[4], m[2].split(".")[1])
                users[m[4]]["filters"][m[2]] = m[3]
        else:
            pytest.fail(f"unexpected statement: {stmt}")
    for u in users.values():
        u["grants"].sort()
    return users, others


def test_users_xml_and_sql_grant_exactly_the_same() -> None:
    config = roles.parse_roles(_config())
    xml_side = _from_users_xml(
        clickhouse.render_users_xml(
            [clickhouse.admin_user("x"), *roles.users_xml_users(config, DB, HASHES)],
            roles.users_xml_profiles(),
        )
    )
    sql_side, others = _from_sql(roles.render_sql(config, DB, HASHES))
    assert xml_side == sql_side
    assert set(xml_side) == {a.name for a in config.accounts}
    assert xml_side["mgr"]["settings"] == {"readonly": "1"}
    assert xml_side["sec_a"]["hash"] == HASHES["sec_a"]
    assert xml_side["mgr"]["filters"][f"{DB}.manager_team_weekly"].endswith("'o\\'brien <ops>')")
    # Everyone without a policy keeps reading (admin, services), whatever the server default.
    assert others == {
        f"{DB}.events": ["emp", "sec_a", "sec_b"],
        f"{DB}.manager_team_weekly": ["mgr"],
        f"{DB}.incidents": ["emp"],
        f"{DB}.contests": ["emp"],
        f"{DB}.notifications": ["emp"],
        f"{DB}.contest_annotations": ["mgr"],
        f"{DB}.held_events": ["sec_a", "sec_b"],
    }


SERVICE_HASHES = {n: clickhouse.sha256_hex(f"pw-{n}") for n in roles.SERVICE_ACCOUNTS.values()}


def test_service_accounts_in_users_xml_and_sql_are_the_same() -> None:
    config = roles.parse_roles(_config())
    nets = ["10.0.0.0/8", "127.0.0.1"]
    xml_side = _from_users_xml(
        clickhouse.render_users_xml(
            [
                clickhouse.admin_user("x"),
                *roles.service_users_xml(DB, SERVICE_HASHES, nets),
                *roles.users_xml_users(config, DB, HASHES),
            ],
            roles.users_xml_profiles(),
        )
    )
    sql = roles.render_sql(config, DB, HASHES, service_hashes=SERVICE_HASHES, service_networks=nets)
    sql_side, others = _from_sql(sql)
    assert xml_side == sql_side
    assert set(xml_side) == {a.name for a in config.accounts} | set(SERVICE_HASHES)
    for name in SERVICE_HASHES:
        assert xml_side[name]["settings"] == {}  # server default: inserts set settings
        assert xml_side[name]["filters"] == {}
        assert xml_side[name]["networks"] == sorted(nets)
    # Services are outside every row policy: they see all rows of what they are granted.
    assert not set(SERVICE_HASHES) & {a for accs in others.values() for a in accs}
    assert roles.service_sql(DB, SERVICE_HASHES, nets) == [s for s in sql if "trustlog_a" in s]


def test_service_grants_are_exactly_their_job() -> None:
    agg = set(roles.service_grants("aggregator", DB))
    assert agg == {
        "GRANT INSERT ON trustlog.events",
        "GRANT SELECT(event_id, event_time, ingested_at, kafka_topic, kafka_partition, "
        "kafka_offset) ON trustlog.events",
        "GRANT SELECT ON trustlog.spend_hourly",
        "GRANT SELECT, INSERT ON trustlog.credits",
        "GRANT SELECT(query_id) ON system.processes",
    }
    assert set(roles.service_grants("alerts", DB)) == {
        "GRANT SELECT, INSERT ON trustlog.incidents",
        "GRANT SELECT, INSERT ON trustlog.incident_history",
        "GRANT SELECT, INSERT ON trustlog.incident_commands",
        "GRANT SELECT ON trustlog.spend_hourly",
    }
    # The aggregator's columns of events say nothing about a person or their work: no field
    # of the registry that a reader role sees besides these bookkeeping ones.
    reg = registry()
    persons = {"user_pseudonym", "team", "tool", "model", "sensitive_classes", "policy_flags"}
    assert not persons & set(roles.AGGREGATOR_EVENT_COLUMNS)
    assert set(roles.AGGREGATOR_EVENT_COLUMNS) <= set(reg.fields) | set(reg.storage_columns)
    for service in roles.SERVICE_ACCOUNTS:
        for grant in roles.service_grants(service, DB):
            assert " ALL" not in grant and "*" not in grant
            assert not re.search(r"ALTER|DROP|CREATE|TRUNCATE|OPTION", grant), grant
    with pytest.raises(roles.RolesError):
        roles.service_grants("ingest", DB)  # ingest and redactor have no account
    with pytest.raises(roles.RolesError, match="not an IP"):
        roles.service_sql(DB, SERVICE_HASHES, ["everywhere"])


def test_service_account_names_are_reserved() -> None:
    data = _config()
    data["accounts"].append({"name": "trustlog_aggregator", "role": "finance"})
    with pytest.raises(roles.RolesError, match="reserved"):
        roles.parse_roles(data)


def test_service_env_and_passwords(tmp_path: Path) -> None:
    assert roles.service_env(tmp_path, "aggregator") == {}  # no stack here: no account yet
    passwords = roles.local_service_passwords(tmp_path)
    assert set(passwords) == set(roles.SERVICE_ACCOUNTS.values())
    path = roles.service_passwords_file(tmp_path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert roles.service_env(tmp_path, "aggregator") == {
        "TRUSTLOG_CH_USER": "trustlog_aggregator",
        "TRUSTLOG_CH_PASSWORD": passwords["trustlog_aggregator"],
    }
    assert roles.service_env(tmp_path, "alerts")["TRUSTLOG_CH_USER"] == "trustlog_alerts"
    assert roles.service_env(tmp_path, "ingest") == {}
    assert roles.service_env(tmp_path, "redactor") == {}
    hashes = roles.service_password_hashes(tmp_path, {"alerts": "given", "aggregator": None})
    assert hashes == {
        "trustlog_aggregator": clickhouse.sha256_hex(passwords["trustlog_aggregator"]),
        "trustlog_alerts": clickhouse.sha256_hex("given"),
    }
    assert roles.local_service_passwords(tmp_path) == passwords  # generated once


def test_config_hash_and_networks_reach_both_outputs() -> None:
    digest = clickhouse.sha256_hex("given")
    data = _config()
    data["accounts"][0] |= {"password_sha256_hex": digest, "networks": ["10.1.0.0/16"]}
    config = roles.parse_roles(data)
    users = roles.users_xml_users(config, DB, {k: v for k, v in HASHES.items() if k != "fin"})
    assert (users[0].password_sha256_hex, tuple(users[0].networks)) == (digest, ("10.1.0.0/16",))
    sql = roles.render_sql(config, DB, {k: v for k, v in HASHES.items() if k != "fin"})
    assert (
        f"CREATE USER OR REPLACE fin IDENTIFIED WITH sha256_hash BY '{digest}' HOST IP '10.1.0.0/16'"
        in sql[1]
    )


def test_an_account_without_any_password_is_refused() -> None:
    config = roles.parse_roles(_config())
    with pytest.raises(roles.RolesError, match="no password_sha256_hex"):
        roles.render_sql(config, DB, {})


def test_render_users_xml_refuses_an_unknown_profile() -> None:
    user = clickhouse.UserDef("a", clickhouse.sha256_hex("x"), ["GRANT SELECT ON d.t"], profile="p")
    with pytest.raises(ValueError, match="unknown profile"):
        clickhouse.render_users_xml([user])
    assert "<readonly>1</readonly>" in clickhouse.render_users_xml([user], {"p": {"readonly": 1}})
    with pytest.raises(ValueError, match="reserved"):
        clickhouse.render_users_xml([], {"default": {"readonly": 1}})


# --------------------------------------------------------------------------- passwords, stack


def test_passwords_are_generated_once_private_and_pruned(tmp_path: Path) -> None:
    path = roles.passwords_file(tmp_path)
    first = roles.load_or_create_passwords(path, ["a", "b"])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(set(first.values())) == 2 and all(len(v) >= 24 for v in first.values())
    assert roles.load_or_create_passwords(path, ["a", "b"]) == first
    os.chmod(path, 0o644)
    assert roles.load_or_create_passwords(path, ["a"]) == {"a": first["a"]}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert json.loads(path.read_text()) == {"a": first["a"]}


def test_stack_users_xml_holds_hashes_never_passwords(tmp_path: Path) -> None:
    roles_file = tmp_path / "roles.yaml"
    roles_file.write_text((CONFIG_DIR / "roles.yaml").read_text())
    text = roles.stack_users_xml(tmp_path, "admin-secret", roles_file=roles_file, database=DB)
    config = roles.load_roles(roles_file)
    users = _from_users_xml(text)
    assert set(users) == {a.name for a in config.accounts} | set(roles.SERVICE_ACCOUNTS.values())
    passwords = roles.load_or_create_passwords(
        roles.passwords_file(tmp_path), [a.name for a in config.accounts]
    ) | roles.local_service_passwords(tmp_path)
    for name, password in passwords.items():
        assert password not in text
        assert users[name]["hash"] == clickhouse.sha256_hex(password)
    assert "admin-secret" not in text
    # Same config, same state dir: byte-identical, so a restart is only needed on change.
    assert (
        roles.stack_users_xml(tmp_path, "admin-secret", roles_file=roles_file, database=DB) == text
    )
