"""ClickHouse for the local stack: the server embedded in the pinned ``chdb-core`` wheel.

chdb is an in-process ClickHouse; :mod:`trustlog.stack._ch_server` turns it into a long-running
HTTP server by running one endless query after ``SYSTEM START LISTEN HTTP``. That internal query
runs as the passwordless ``default`` user, so ``default`` cannot get a password; instead it is
locked down to the few privileges the serving query needs, and real work uses named users with
SHA-256 passwords.

Config rendering here is pure so it can be unit-tested and extended (``extra_users``) with the
finance/manager/security roles that a later change reads from a config file.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

ADMIN_USER = "trustlog_admin"
SERVER_MODULE = "trustlog.stack._ch_server"
LOOPBACK_NETWORKS: tuple[str, ...] = ("127.0.0.1", "::1")
# Exactly what the internal serving query needs (verified: anything else as `default`, e.g. a
# SELECT on a user table, is refused with code 497).
DEFAULT_USER_GRANTS: tuple[str, ...] = (
    "GRANT SYSTEM LISTEN ON *.*",
    "GRANT CREATE TEMPORARY TABLE, TABLE ENGINE ON *.*",
    "GRANT KILL QUERY ON *.*",
)
ADMIN_GRANTS: tuple[str, ...] = ("GRANT ALL ON *.* WITH GRANT OPTION",)

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class UserDef:
    """A ClickHouse user declared in users.xml.

    ``grants`` are GRANT statements; ClickHouse does not allow ``access_management`` together
    with them (``GRANT ALL`` covers access management anyway).

    ``row_filters`` maps ``"database.table"`` to a boolean SQL expression; rows for which it is
    false are invisible to this user (ClickHouse row policies declared in users.xml).
    """

    name: str
    password_sha256_hex: str
    grants: Sequence[str]
    networks: Sequence[str] = LOOPBACK_NETWORKS
    row_filters: Mapping[str, str] = field(default_factory=dict)
    access_management: bool = False
    profile: str = "default"
    quota: str = "default"


def sha256_hex(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def admin_user(password: str) -> UserDef:
    return UserDef(
        name=ADMIN_USER,
        password_sha256_hex=sha256_hex(password),
        grants=ADMIN_GRANTS,
    )


def _check_ident(kind: str, value: str) -> None:
    # These end up as XML element names (users, databases, tables), so be strict.
    if not _IDENT.match(value):
        raise ValueError(f"invalid {kind} name {value!r}: use letters, digits and _")


def _user_xml(user: UserDef) -> list[str]:
    _check_ident("user", user.name)
    _check_ident("profile", user.profile)
    _check_ident("quota", user.quota)
    if not _SHA256_HEX.match(user.password_sha256_hex):
        raise ValueError(f"user {user.name!r}: password_sha256_hex must be 64 lowercase hex chars")
    if not user.networks:
        raise ValueError(f"user {user.name!r}: at least one network is required")
    out = [
        f"    <{user.name}>",
        f"      <password_sha256_hex>{user.password_sha256_hex}</password_sha256_hex>",
        "      <networks>",
        *(f"        <ip>{escape(ip)}</ip>" for ip in user.networks),
        "      </networks>",
        f"      <profile>{user.profile}</profile>",
        f"      <quota>{user.quota}</quota>",
    ]
    # ClickHouse rejects <access_management> next to <grants> ("Any other access control
    # settings can't be specified with `grants`"); GRANT ALL already includes it.
    if user.access_management and user.grants:
        raise ValueError(f"user {user.name!r}: access_management and grants are exclusive")
    if user.access_management:
        out.append("      <access_management>1</access_management>")
    if user.grants:
        out.append("      <grants>")
        out += [f"        <query>{escape(q)}</query>" for q in user.grants]
        out.append("      </grants>")
    if user.row_filters:
        by_db: dict[str, list[tuple[str, str]]] = {}
        for target, expr in user.row_filters.items():
            db, sep, table = target.partition(".")
            if not sep:
                raise ValueError(f"user {user.name!r}: row filter key {target!r} is not db.table")
            _check_ident("database", db)
            _check_ident("table", table)
            by_db.setdefault(db, []).append((table, expr))
        out.append("      <databases>")
        for db, tables in by_db.items():
            out.append(f"        <{db}>")
            for table, expr in tables:
                out.append(f"          <{table}><filter>{escape(expr)}</filter></{table}>")
            out.append(f"        </{db}>")
        out.append("      </databases>")
    out.append(f"    </{user.name}>")
    return out


def _profile_xml(name: str, settings: Mapping[str, str | int]) -> list[str]:
    _check_ident("profile", name)
    if name == "default":
        raise ValueError("the `default` profile is reserved (the internal serving query uses it)")
    out = [f"    <{name}>"]
    for key, value in settings.items():
        _check_ident("setting", key)
        out.append(f"      <{key}>{escape(str(value))}</{key}>")
    out.append(f"    </{name}>")
    return out


def render_users_xml(
    extra_users: Sequence[UserDef] = (),
    profiles: Mapping[str, Mapping[str, str | int]] | None = None,
) -> str:
    """users.xml with the locked-down ``default`` user plus ``extra_users`` (admin, roles...).

    ``profiles`` adds settings profiles next to the empty ``default`` one, e.g. a
    ``readonly = 1`` profile for role accounts (they may then change no setting at all).
    """
    profiles = profiles or {}
    seen: set[str] = set()
    for user in extra_users:
        if user.name == "default":
            raise ValueError("the `default` user is reserved for the internal serving query")
        if user.name in seen:
            raise ValueError(f"user {user.name!r} is declared twice")
        if user.profile != "default" and user.profile not in profiles:
            raise ValueError(f"user {user.name!r}: unknown profile {user.profile!r}")
        seen.add(user.name)
    lines = [
        '<?xml version="1.0"?>',
        "<!-- Generated by trustlog.stack.clickhouse; regenerated on every `stack up`. -->",
        "<clickhouse>",
        "  <profiles>",
        "    <default/>",
        *(line for name, st in profiles.items() for line in _profile_xml(name, st)),
        "  </profiles>",
        "  <quotas>",
        "    <default/>",
        "  </quotas>",
        "  <users>",
        # Passwordless because chdb's serving query authenticates as `default`; safe because
        # it may only listen, kill queries and use temporary tables, and only from loopback.
        "    <default>",
        "      <password></password>",
        "      <networks>",
        *(f"        <ip>{ip}</ip>" for ip in LOOPBACK_NETWORKS),
        "      </networks>",
        "      <profile>default</profile>",
        "      <quota>default</quota>",
        "      <grants>",
        *(f"        <query>{q}</query>" for q in DEFAULT_USER_GRANTS),
        "      </grants>",
        "    </default>",
    ]
    for user in extra_users:
        lines += _user_xml(user)
    lines += ["  </users>", "</clickhouse>", ""]
    return "\n".join(lines)


def render_config_xml(*, http_port: int, users_xml: Path) -> str:
    """Server config: HTTP on loopback only; users from our users.xml; fast query_log flush.

    No <logger> section: chdb's server mode accepts one but writes nothing to it (checked with
    chdb-core 26.9), so the process's stderr (stdout.log) and system.query_log are the logs.
    No TCP port either: only HTTP is ever started (`SYSTEM START LISTEN HTTP`).
    """
    if not users_xml.is_absolute():
        raise ValueError("users_xml must be an absolute path (the server chdirs)")
    return "\n".join(
        [
            '<?xml version="1.0"?>',
            "<!-- Generated by trustlog.stack.clickhouse; regenerated on every start. -->",
            "<clickhouse>",
            f"  <http_port>{int(http_port)}</http_port>",
            "  <listen_host>127.0.0.1</listen_host>",
            "  <keep_alive_timeout>1</keep_alive_timeout>",
            "  <user_directories>",
            f"    <users_xml><path>{escape(str(users_xml))}</path></users_xml>",
            "  </user_directories>",
            "  <query_log>",
            "    <database>system</database>",
            "    <table>query_log</table>",
            "    <flush_interval_milliseconds>1000</flush_interval_milliseconds>",
            # query text can hold pseudonyms: keep it only as long as the monthly access
            # review needs to copy reads into read_audit (a month plus two weeks of slack)
            "    <ttl>event_date + INTERVAL 45 DAY DELETE</ttl>",
            "  </query_log>",
            # Default is 4 h: TTL deletes of expired detail rows should show up within a minute.
            "  <merge_tree>",
            "    <merge_with_ttl_timeout>60</merge_with_ttl_timeout>",
            "  </merge_tree>",
            "</clickhouse>",
            "",
        ]
    )


def load_or_create_password(path: Path) -> str:
    """The admin password, generated once and kept owner-readable only."""
    if path.exists():
        os.chmod(path, 0o600)  # tighten if someone loosened it
        password = path.read_text().strip()
        if password:
            return password
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
    return password


def server_command(ch_dir: Path) -> list[str]:
    return [sys.executable, "-m", SERVER_MODULE, str(ch_dir)]


def process_markers(ch_dir: Path) -> tuple[str, ...]:
    """Strings that must appear in the server's argv; the dir makes it unique per state dir."""
    return (SERVER_MODULE, str(ch_dir))


def ping(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/ping", timeout=timeout) as resp:
            return bool(resp.status == 200 and resp.read().strip() == b"Ok.")
    except (OSError, urllib.error.URLError):
        return False


def query_as(host: str, port: int, user: str, password: str, sql: str, timeout: float = 5.0) -> str:
    """Run one query over HTTP with basic auth and return the body; raises on HTTP errors.

    Deliberately dependency-free (no clickhouse_connect import) so status checks stay cheap.
    """
    request = urllib.request.Request(
        f"http://{host}:{port}/",
        data=sql.encode(),
        headers={
            "Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        },
    )
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return str(resp.read().decode())


def admin_can_query(host: str, port: int, password: str, timeout: float = 5.0) -> bool:
    """True if *our* server answers: the admin password only works against our users.xml."""
    try:
        return query_as(host, port, ADMIN_USER, password, "SELECT 1", timeout).strip() == "1"
    except (OSError, urllib.error.URLError):
        return False
