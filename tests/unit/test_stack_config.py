"""Pure tests of the local stack's generated config, port choice, pid handling and migration parsing.

No servers, no network: at most files under tmp_path.
"""

from __future__ import annotations

import os
import stat
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

from trustlog import migrate
from trustlog.stack import clickhouse, kafka, manager
from trustlog.stack.manager import Ports, StackError, choose_ports

# --------------------------------------------------------------------------- kafka


def _props(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def test_server_properties_single_node_kraft_on_loopback(tmp_path: Path) -> None:
    props = _props(
        kafka.render_server_properties(port=19500, controller_port=19501, data_dir=tmp_path / "d")
    )
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19500,CONTROLLER://127.0.0.1:19501"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19500"
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:19501"
    assert props["log.dirs"] == str(tmp_path / "d")
    assert props["auto.create.topics.enable"] == "false"
    assert props["num.partitions"] == "3"
    assert props["log.retention.check.interval.ms"] == "60000"
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "share.coordinator.state.topic.replication.factor",
        "share.coordinator.state.topic.min.isr",
    ):
        assert props[key] == "1", key
    assert "0.0.0.0" not in str(props)


def test_log4j2_writes_kafka_info_to_the_given_file(tmp_path: Path) -> None:
    props = _props(kafka.render_log4j2_properties(tmp_path / "server.log"))
    assert props["appender.f.fileName"] == str(tmp_path / "server.log")
    assert props["rootLogger.level"] == "WARN"
    assert props["logger.kafka.name"] == "kafka"
    assert props["logger.kafka.level"] == "INFO"


def test_pom_pins_kafka_and_log4j() -> None:
    root = ET.fromstring(kafka.render_pom())
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    assert root.findtext("m:packaging", namespaces=ns) == "pom"
    deps = {
        (d.findtext("m:artifactId", namespaces=ns), d.findtext("m:version", namespaces=ns))
        for d in root.iterfind("m:dependencies/m:dependency", ns)
    }
    assert deps == {
        ("kafka_2.13", "4.1.1"),
        ("log4j-core", "2.24.3"),
        ("log4j-slf4j-impl", "2.24.3"),
    }


def test_cache_dir_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TRUSTLOG_CACHE_DIR", str(tmp_path / "c"))
    assert kafka.libs_dir() == (tmp_path / "c" / "kafka" / "4.1.1" / "libs").resolve()


def test_missing_tool_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka.shutil, "which", lambda _name: None)
    with pytest.raises(
        kafka.KafkaSetupError, match="apt-get install openjdk-17-jdk-headless maven"
    ):
        kafka.require_tool("mvn")


def test_cluster_id_looks_like_kafka_uuid() -> None:
    for _ in range(200):
        cid = kafka.random_cluster_id()
        assert len(cid) == 22 and not cid.startswith("-")
        assert set(cid) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_read_cluster_id(tmp_path: Path) -> None:
    assert kafka.read_cluster_id(tmp_path) is None
    (tmp_path / "meta.properties").write_text("#\nnode.id=1\ncluster.id=abcDEF123\nversion=1\n")
    assert kafka.read_cluster_id(tmp_path) == "abcDEF123"


def test_kafka_command_is_marked_by_its_properties_file(tmp_path: Path) -> None:
    props = tmp_path / "server.properties"
    cmd = kafka.server_command(tmp_path / "libs", props, tmp_path / "log4j2.properties")
    assert cmd[-2:] == ["kafka.Kafka", str(props)]
    assert f"{tmp_path / 'libs'}/*" in cmd
    assert all(marker in cmd for marker in kafka.process_markers(props))


# --------------------------------------------------------------------------- clickhouse


def _users(xml: str) -> ET.Element:
    users = ET.fromstring(xml).find("users")
    assert users is not None
    return users


def test_default_user_is_passwordless_but_locked_down() -> None:
    default = _users(clickhouse.render_users_xml()).find("default")
    assert default is not None
    assert default.findtext("password") in ("", None)
    grants = [q.text for q in default.iterfind("grants/query")]
    assert grants == [
        "GRANT SYSTEM LISTEN ON *.*",
        "GRANT CREATE TEMPORARY TABLE, TABLE ENGINE ON *.*",
        "GRANT KILL QUERY ON *.*",
    ]
    assert [ip.text for ip in default.iterfind("networks/ip")] == ["127.0.0.1", "::1"]


def test_admin_user_has_hashed_password_loopback_and_all_grants() -> None:
    xml = clickhouse.render_users_xml([clickhouse.admin_user("s3cret")])
    assert "s3cret" not in xml
    admin = _users(xml).find("trustlog_admin")
    assert admin is not None
    assert admin.findtext("password_sha256_hex") == clickhouse.sha256_hex("s3cret")
    assert [ip.text for ip in admin.iterfind("networks/ip")] == ["127.0.0.1", "::1"]
    assert [q.text for q in admin.iterfind("grants/query")] == [
        "GRANT ALL ON *.* WITH GRANT OPTION"
    ]
    # ClickHouse refuses access_management next to grants; GRANT ALL includes it.
    assert admin.find("access_management") is None


def test_extra_users_with_row_filters() -> None:
    finance = clickhouse.UserDef(
        name="finance",
        password_sha256_hex=clickhouse.sha256_hex("pw"),
        grants=["GRANT SELECT ON trustlog.*"],
        row_filters={"trustlog.usage": "team = 'a' AND cost > 0", "trustlog.spend": "1"},
    )
    users = _users(clickhouse.render_users_xml([clickhouse.admin_user("x"), finance]))
    user = users.find("finance")
    assert user is not None
    assert user.findtext("databases/trustlog/usage/filter") == "team = 'a' AND cost > 0"
    assert user.findtext("databases/trustlog/spend/filter") == "1"
    assert [q.text for q in user.iterfind("grants/query")] == ["GRANT SELECT ON trustlog.*"]


@pytest.mark.parametrize(
    "user, message",
    [
        (clickhouse.UserDef("default", "0" * 64, []), "reserved"),
        (clickhouse.UserDef("bad-name", "0" * 64, []), "invalid user"),
        (clickhouse.UserDef("u", "not-a-hash", []), "64 lowercase hex"),
        (clickhouse.UserDef("u", "0" * 64, [], networks=()), "network"),
        (clickhouse.UserDef("u", "0" * 64, [], row_filters={"nodot": "1"}), "db.table"),
        (clickhouse.UserDef("u", "0" * 64, [], row_filters={"d.t<x>": "1"}), "invalid table"),
        (clickhouse.UserDef("u", "0" * 64, ["GRANT ALL ON *.*"], access_management=True), "excl"),
    ],
)
def test_invalid_users_are_rejected(user: clickhouse.UserDef, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        clickhouse.render_users_xml([user])


def test_duplicate_users_are_rejected() -> None:
    admin = clickhouse.admin_user("x")
    with pytest.raises(ValueError, match="twice"):
        clickhouse.render_users_xml([admin, admin])


def test_grant_text_is_xml_escaped() -> None:
    user = clickhouse.UserDef("u", "0" * 64, ["GRANT SELECT(a) ON d.t WHERE x < 1 & y"])
    users = _users(clickhouse.render_users_xml([user]))
    assert users.findtext("u/grants/query") == "GRANT SELECT(a) ON d.t WHERE x < 1 & y"


def test_config_xml(tmp_path: Path) -> None:
    root = ET.fromstring(
        clickhouse.render_config_xml(http_port=18999, users_xml=tmp_path / "users.xml")
    )
    assert root.findtext("http_port") == "18999"
    assert root.findtext("listen_host") == "127.0.0.1"
    assert root.findtext("user_directories/users_xml/path") == str(tmp_path / "users.xml")
    assert root.findtext("query_log/flush_interval_milliseconds") == "1000"
    assert root.findtext("merge_tree/merge_with_ttl_timeout") == "60"
    assert root.find("tcp_port") is None
    with pytest.raises(ValueError, match="absolute"):
        clickhouse.render_config_xml(http_port=1, users_xml=Path("users.xml"))


def test_admin_password_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "ch" / "admin_password"
    first = clickhouse.load_or_create_password(path)
    assert len(first) >= 24
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    os.chmod(path, 0o644)
    assert clickhouse.load_or_create_password(path) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_ch_command_is_marked_by_its_dir(tmp_path: Path) -> None:
    cmd = clickhouse.server_command(tmp_path)
    assert cmd[1:] == ["-m", "trustlog.stack._ch_server", str(tmp_path)]
    assert all(marker in cmd for marker in clickhouse.process_markers(tmp_path))


# --------------------------------------------------------------------------- ports


def _picker(start: int = 40000) -> Callable[[set[int]], int]:
    ports = iter(range(start, start + 100))

    def pick(taken: set[int]) -> int:
        return next(p for p in ports if p not in taken)

    return pick


def test_ports_prefer_well_known_defaults_when_free() -> None:
    ports = choose_ports(
        requested_kafka=None,
        requested_ch=None,
        remembered=None,
        is_free=lambda _p: True,
        pick_free=_picker(),
    )
    assert ports == Ports(kafka=9092, kafka_controller=9093, ch_http=8123)


def test_ports_fall_back_to_free_ones_when_defaults_are_taken() -> None:
    ports = choose_ports(
        requested_kafka=None,
        requested_ch=None,
        remembered=None,
        is_free=lambda p: p not in (9092, 8123),
        pick_free=_picker(),
    )
    assert ports == Ports(kafka=40000, kafka_controller=40001, ch_http=40002)


def test_remembered_ports_win_over_defaults_and_explicit_ports_win_over_remembered() -> None:
    remembered = Ports(kafka=30000, kafka_controller=30001, ch_http=30002)
    ports = choose_ports(
        requested_kafka=None,
        requested_ch=None,
        remembered=remembered,
        is_free=lambda _p: True,
        pick_free=_picker(),
    )
    assert ports == remembered
    moved = choose_ports(
        requested_kafka=31000,
        requested_ch=31001,
        remembered=remembered,
        is_free=lambda _p: True,
        pick_free=_picker(),
    )
    # The controller port is baked into the KRaft log, so it never moves.
    assert moved == Ports(kafka=31000, kafka_controller=30001, ch_http=31001)


def test_explicit_ports_must_differ() -> None:
    with pytest.raises(StackError, match="twice"):
        choose_ports(
            requested_kafka=31000,
            requested_ch=31000,
            remembered=None,
            is_free=lambda _p: True,
            pick_free=_picker(),
        )


def test_controller_port_skips_a_taken_neighbour() -> None:
    ports = choose_ports(
        requested_kafka=31000,
        requested_ch=31001,
        remembered=None,
        is_free=lambda _p: True,
        pick_free=_picker(),
    )
    assert ports.kafka_controller not in (31000, 31001)


def test_ports_json_round_trip() -> None:
    ports = Ports(kafka=1, kafka_controller=2, ch_http=3)
    assert Ports.from_json(ports.to_json()) == ports


def test_parse_port() -> None:
    assert manager.parse_port(None, "X") is None
    assert manager.parse_port("", "X") is None
    assert manager.parse_port("9092", "X") == 9092
    with pytest.raises(StackError, match="TRUSTLOG_STACK_KAFKA_PORT"):
        manager.parse_port("abc", "TRUSTLOG_STACK_KAFKA_PORT")
    with pytest.raises(StackError, match="valid"):
        manager.parse_port("70000", "X")


# --------------------------------------------------------------------------- pids


def test_read_pid(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    assert manager.read_pid(pid_file) is None
    for junk in ("", "abc", "-5", "0", "12 34"):
        pid_file.write_text(junk)
        assert manager.read_pid(pid_file) is None, junk
    pid_file.write_text("4242\n")
    assert manager.read_pid(pid_file) == 4242


def test_cmdline_must_contain_every_marker_as_a_whole_argument() -> None:
    cmdline = b"/usr/bin/java\0-cp\0/x/*\0kafka.Kafka\0/state/kafka/server.properties\0"
    assert manager.cmdline_matches(cmdline, ("kafka.Kafka", "/state/kafka/server.properties"))
    # Another stack's broker, or the same pid reused by something else, is not ours.
    assert not manager.cmdline_matches(cmdline, ("kafka.Kafka", "/other/kafka/server.properties"))
    assert not manager.cmdline_matches(cmdline, ("kafka.Kafka", "/state/kafka"))
    assert not manager.cmdline_matches(b"/bin/sleep\x00100\x00", ("kafka.Kafka",))
    assert not manager.cmdline_matches(b"", ())  # zombie: empty cmdline


def test_pid_matches_reads_proc_cmdline(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "77").mkdir(parents=True)
    (proc / "77" / "cmdline").write_bytes(b"python\0-m\0trustlog.stack._ch_server\0/s/clickhouse\0")
    markers = ("trustlog.stack._ch_server", "/s/clickhouse")
    assert manager.pid_matches(77, markers, proc_root=proc)
    assert not manager.pid_matches(78, markers, proc_root=proc)


def test_empty_cmdline_is_never_ours(tmp_path: Path) -> None:
    # Zombies and processes tearing down after a kill have an empty cmdline.
    proc = tmp_path / "proc"
    (proc / "90").mkdir(parents=True)
    (proc / "90" / "cmdline").write_bytes(b"")
    (proc / "90" / "stat").write_text("90 (python) Z 1 90 90 0 -1")
    assert not manager.pid_matches(90, ("x",), proc_root=proc)
    (proc / "90" / "stat").write_text("90 (python) R 1 90 90 0 -1")
    assert not manager.pid_matches(90, ("x",), proc_root=proc, settle=0)


def test_proc_state_survives_odd_process_names(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "5").mkdir(parents=True)
    (proc / "5" / "stat").write_text("5 (my (odd) proc) S 1 5 5 0 -1 4194560")
    assert manager.proc_state(5, proc_root=proc) == "S"
    assert manager.proc_state(6, proc_root=proc) is None


def test_layout_puts_everything_under_the_state_dir(tmp_path: Path) -> None:
    layout = manager.Layout(tmp_path)
    for path in (
        layout.kafka_data,
        layout.kafka_properties,
        layout.kafka_log4j,
        layout.kafka_log,
        layout.kafka_stdout,
        layout.kafka_pid,
        layout.ch_data,
        layout.ch_config,
        layout.ch_users,
        layout.ch_stdout,
        layout.ch_pid,
        layout.ch_password,
        layout.stack_env,
        layout.ports_file,
    ):
        assert path.is_relative_to(tmp_path)
    assert layout.kafka_markers() == ("kafka.Kafka", str(tmp_path / "kafka" / "server.properties"))


def test_tail_returns_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert manager.tail(log, 3) == "line 97\nline 98\nline 99"
    assert "no log" in manager.tail(tmp_path / "missing.log")


def test_stack_env_lines_and_private_write(tmp_path: Path) -> None:
    info = manager.StackInfo(
        kafka_bootstrap="127.0.0.1:9092",
        ch_host="127.0.0.1",
        ch_http_port=8123,
        ch_user="trustlog_admin",
        ch_password="pw",
        state_dir=tmp_path,
    )
    text = manager.render_stack_env(info)
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert lines == [
        "TRUSTLOG_KAFKA_BOOTSTRAP=127.0.0.1:9092",
        "TRUSTLOG_CH_HOST=127.0.0.1",
        "TRUSTLOG_CH_PORT=8123",
        "TRUSTLOG_CH_USER=trustlog_admin",
        "TRUSTLOG_CH_PASSWORD=pw",
    ]
    assert "pw" not in repr(info)
    target = tmp_path / "stack.env"
    manager._write_private(target, text)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_text() == text


# --------------------------------------------------------------------------- migrations


def test_split_statements_on_line_end_and_lone_semicolon() -> None:
    sql = """
-- header comment; with a semicolon
CREATE TABLE a (x String DEFAULT 'p;q') ENGINE = Memory;

CREATE TABLE b (
    y UInt8
) ENGINE = Memory
;
-- only a comment
;
  -- indented comment ending in ;
SELECT 1"""
    assert migrate.split_statements(sql) == [
        "-- header comment; with a semicolon\n"
        "CREATE TABLE a (x String DEFAULT 'p;q') ENGINE = Memory",
        "CREATE TABLE b (\n    y UInt8\n) ENGINE = Memory",
        "-- indented comment ending in ;\nSELECT 1",
    ]


def test_split_statements_ignores_comment_only_and_empty_input() -> None:
    assert migrate.split_statements("") == []
    assert migrate.split_statements("-- nothing;\n\n;\n;\n") == []


def test_render_substitutes_placeholders_literally() -> None:
    sql = "CREATE TABLE {db}.t (m Map(String, UInt8)) TTL d + INTERVAL {detail_ttl_days} DAY -- {x}"
    out = migrate.render(sql, database="tl", detail_ttl_days=7, rollup_ttl_days=30)
    assert out == "CREATE TABLE tl.t (m Map(String, UInt8)) TTL d + INTERVAL 7 DAY -- {x}"
    assert "400" in migrate.render(
        "{rollup_ttl_days}", database="x", detail_ttl_days=1, rollup_ttl_days=400
    )


def test_discover_orders_by_version_and_rejects_bad_names(tmp_path: Path) -> None:
    (tmp_path / "0002_b.sql").write_text("SELECT 2")
    (tmp_path / "0001_a.sql").write_text("SELECT 1")
    (tmp_path / "README.md").write_text("ignored")
    found = migrate.discover(tmp_path)
    assert [(m.version, m.name) for m in found] == [(1, "0001_a.sql"), (2, "0002_b.sql")]
    assert found[0].checksum == migrate.checksum("SELECT 1")

    (tmp_path / "0002_dup.sql").write_text("SELECT 3")
    with pytest.raises(migrate.MigrationError, match="share version"):
        migrate.discover(tmp_path)
    (tmp_path / "0002_dup.sql").unlink()
    (tmp_path / "3_bad.sql").write_text("SELECT 3")
    with pytest.raises(migrate.MigrationError, match=r"NNNN_name\.sql"):
        migrate.discover(tmp_path)


def test_controller_never_takes_the_requested_clickhouse_port() -> None:
    ports = choose_ports(
        requested_kafka=31000,
        requested_ch=None,
        remembered=Ports(kafka=1, kafka_controller=2, ch_http=31001),
        is_free=lambda _p: True,
        pick_free=_picker(),
    )
    assert ports == Ports(kafka=31000, kafka_controller=2, ch_http=31001)
    fresh = choose_ports(
        requested_kafka=31000,
        requested_ch=31001,
        remembered=None,
        is_free=lambda _p: True,
        pick_free=_picker(),
    )
    assert fresh.kafka_controller == 40000
