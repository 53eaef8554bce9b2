"""The real local stack (Kafka + ClickHouse processes) in a private state dir on free ports.

Started once for this module, independent of the session-wide `stack` fixture, because the
tests here also restart, kill and stop it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.error
from collections.abc import Callable, Iterator
from pathlib import Path

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from trustlog import migrate
from trustlog.stack import clickhouse, manager
from trustlog.stack.manager import StackInfo

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    """True unless the process is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


class _Stack:
    def __init__(self, state_dir: Path, info: StackInfo, cold_seconds: float) -> None:
        self.state_dir = state_dir
        self.info = info
        self.cold_seconds = cold_seconds
        self.layout = manager.Layout(state_dir.resolve())

    def admin(self) -> Client:
        return clickhouse_connect.get_client(
            host=self.info.ch_host,
            port=self.info.ch_http_port,
            username=self.info.ch_user,
            password=self.info.ch_password,
        )


@pytest.fixture(scope="module")
def smoke_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Stack]:
    state_dir = tmp_path_factory.mktemp("stack-smoke")
    kafka_port = manager.pick_free_port()
    ch_port = manager.pick_free_port({kafka_port})
    messages: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        # this module tests remembered ports; ports pinned for the session stack would win
        mp.delenv("TRUSTLOG_STACK_KAFKA_PORT", raising=False)
        mp.delenv("TRUSTLOG_STACK_CH_PORT", raising=False)
        started = time.monotonic()
        info = manager.up(
            state_dir, kafka_port=kafka_port, ch_http_port=ch_port, progress=messages.append
        )
        cold = time.monotonic() - started
        print(f"stack up from cold in {cold:.1f}s: {messages}")
        try:
            yield _Stack(state_dir, info, cold)
        finally:
            manager.down(state_dir)


# --------------------------------------------------------------------------- chdb private API


def test_chdb_private_server_entry_point_still_exists() -> None:
    """Fails loudly if a chdb upgrade removes the private API the ClickHouse server relies on."""
    from chdb import _chdb

    query = getattr(_chdb, "query", None)
    assert callable(query), (
        "chdb._chdb.query is gone: trustlog.stack._ch_server cannot serve ClickHouse. "
        "Keep chdb-core pinned to 26.9.0 or port _ch_server to the new API."
    )
    assert "path" in (query.__doc__ or ""), f"chdb._chdb.query changed signature: {query.__doc__}"


def test_chdb_server_path_serves_http_standalone(tmp_path: Path) -> None:
    """The bare `_ch_server` process (no manager) must answer /ping: isolates chdb breakage.

    Also checks that extra users with row filters (for later roles) are accepted by the server.
    """
    port = manager.pick_free_port()
    finance = clickhouse.UserDef(
        name="finance",
        password_sha256_hex=clickhouse.sha256_hex("fin-pw"),
        grants=["GRANT SELECT ON rdb.*"],
        row_filters={"rdb.t": "team = 'a'"},
    )
    users = [clickhouse.admin_user("admin-pw"), finance]
    (tmp_path / "users.xml").write_text(clickhouse.render_users_xml(users))
    (tmp_path / "config.xml").write_text(
        clickhouse.render_config_xml(http_port=port, users_xml=tmp_path / "users.xml")
    )
    log = tmp_path / "stdout.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            clickhouse.server_command(tmp_path),
            cwd=tmp_path.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 30
        while not clickhouse.ping("127.0.0.1", port, 1.0):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    "chdb's private `_chdb.query(..., path=...)` server path is broken: "
                    f"no /ping answer on port {port} (exit code {proc.poll()}).\n"
                    f"{log.read_text()[-3000:]}"
                )
            time.sleep(0.1)
        # The locked-down default user may run trivial queries but sees no user data.
        assert clickhouse.query_as("127.0.0.1", port, "default", "", "SELECT 1").strip() == "1"

        # Extra users from render_users_xml work, row filters included.
        def admin(sql: str) -> str:
            return clickhouse.query_as("127.0.0.1", port, "trustlog_admin", "admin-pw", sql)

        admin("CREATE DATABASE rdb")
        admin("CREATE TABLE rdb.t (team String) ENGINE = MergeTree ORDER BY team")
        admin("INSERT INTO rdb.t VALUES ('a'), ('b')")
        assert admin("SELECT count() FROM rdb.t").strip() == "2"
        sql = "SELECT team FROM rdb.t"
        assert clickhouse.query_as("127.0.0.1", port, "finance", "fin-pw", sql).strip() == "a"
    finally:
        proc.terminate()
        proc.wait(20)


# --------------------------------------------------------------------------- up


def test_up_reports_a_working_stack(smoke_stack: _Stack) -> None:
    info = smoke_stack.info
    assert info.kafka_bootstrap.startswith("127.0.0.1:")
    assert info.ch_host == "127.0.0.1"
    assert info.ch_user == "trustlog_admin"
    assert info.state_dir == smoke_stack.state_dir.resolve()
    assert smoke_stack.cold_seconds < 120


def test_kafka_answers_admin_requests(smoke_stack: _Stack) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    async def roundtrip() -> list[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=smoke_stack.info.kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic("smoke", num_partitions=3, replication_factor=1)])
            return list(await admin.list_topics())
        finally:
            await admin.close()

    topics = asyncio.run(roundtrip())
    assert "smoke" in topics


def test_kafka_does_not_auto_create_topics(
    smoke_stack: _Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="aiokafka")  # "topic not found" is the point
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaTimeoutError, UnknownTopicOrPartitionError

    async def produce() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=smoke_stack.info.kafka_bootstrap, request_timeout_ms=2000
        )
        await producer.start()
        try:
            await producer.send_and_wait("no-such-topic", b"x")
        finally:
            await producer.stop()

    with pytest.raises((KafkaTimeoutError, UnknownTopicOrPartitionError)):
        asyncio.run(produce())


def test_kafka_listens_on_loopback_only(smoke_stack: _Stack) -> None:
    props = smoke_stack.layout.kafka_properties.read_text()
    assert "0.0.0.0" not in props and "PLAINTEXT://127.0.0.1:" in props


def test_clickhouse_default_user_is_locked_down(smoke_stack: _Stack) -> None:
    admin = smoke_stack.admin()
    admin.command("CREATE DATABASE IF NOT EXISTS smoke")
    admin.command("CREATE TABLE IF NOT EXISTS smoke.secret (x UInt8) ENGINE = MergeTree ORDER BY x")
    port = smoke_stack.info.ch_http_port
    assert clickhouse.ping("127.0.0.1", port)
    with pytest.raises(urllib.error.HTTPError) as denied:
        clickhouse.query_as("127.0.0.1", port, "default", "", "SELECT * FROM smoke.secret")
    assert "Code: 497" in denied.value.read().decode()
    with pytest.raises(urllib.error.HTTPError):
        clickhouse.query_as("127.0.0.1", port, "default", "", "CREATE DATABASE nope")


def test_clickhouse_admin_user(smoke_stack: _Stack) -> None:
    admin = smoke_stack.admin()
    assert admin.command("SELECT currentUser()") == "trustlog_admin"
    grants = str(admin.command("SHOW GRANTS"))
    assert "GRANT ALL ON *.* TO trustlog_admin WITH GRANT OPTION" in grants
    with pytest.raises(DatabaseError, match=r"516|Authentication failed"):
        clickhouse_connect.get_client(
            host="127.0.0.1",
            port=smoke_stack.info.ch_http_port,
            username="trustlog_admin",
            password="wrong",
        )


def test_clickhouse_server_settings_applied(smoke_stack: _Stack) -> None:
    value = smoke_stack.admin().command(
        "SELECT value FROM system.merge_tree_settings WHERE name = 'merge_with_ttl_timeout'"
    )
    assert str(value) == "60"


def test_secrets_are_private_and_stack_env_matches(smoke_stack: _Stack) -> None:
    layout = smoke_stack.layout
    for path in (layout.stack_env, layout.ch_password, layout.ch_users):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    env = dict(
        line.split("=", 1)
        for line in layout.stack_env.read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert env == {
        "TRUSTLOG_KAFKA_BOOTSTRAP": smoke_stack.info.kafka_bootstrap,
        "TRUSTLOG_CH_HOST": "127.0.0.1",
        "TRUSTLOG_CH_PORT": str(smoke_stack.info.ch_http_port),
        "TRUSTLOG_CH_USER": "trustlog_admin",
        "TRUSTLOG_CH_PASSWORD": smoke_stack.info.ch_password,
    }
    assert smoke_stack.info.ch_password not in layout.ch_users.read_text()


def test_settings_read_stack_env(smoke_stack: _Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    from trustlog.settings import ClickHouseSettings, KafkaSettings

    monkeypatch.setenv("TRUSTLOG_STATE_DIR", str(smoke_stack.state_dir))
    for var in ("KAFKA_BOOTSTRAP", "CH_HOST", "CH_PORT", "CH_USER", "CH_PASSWORD"):
        monkeypatch.delenv(f"TRUSTLOG_{var}", raising=False)
    ch = ClickHouseSettings()
    assert ch.ch_port == smoke_stack.info.ch_http_port
    assert ch.ch_password.get_secret_value() == smoke_stack.info.ch_password
    assert KafkaSettings().kafka_bootstrap == smoke_stack.info.kafka_bootstrap


def test_status_reports_both_healthy(smoke_stack: _Stack) -> None:
    st = manager.status(smoke_stack.state_dir)
    assert st.healthy
    assert (
        st.kafka.running
        and st.kafka.pid
        and st.kafka.port == int(smoke_stack.info.kafka_bootstrap.rsplit(":", 1)[1])
    )
    assert st.clickhouse.running and st.clickhouse.port == smoke_stack.info.ch_http_port
    assert st.kafka.log_path.is_file() and "Kafka Server started" in st.kafka.log_path.read_text()
    assert st.clickhouse.log_path.is_file()


def test_up_is_idempotent_and_fast_when_running(smoke_stack: _Stack) -> None:
    before = manager.status(smoke_stack.state_dir)
    started = time.monotonic()
    # No ports passed: the remembered ones are reused.
    again = manager.up(smoke_stack.state_dir)
    warm = time.monotonic() - started
    after = manager.status(smoke_stack.state_dir)
    assert again == smoke_stack.info
    assert (after.kafka.pid, after.clickhouse.pid) == (before.kafka.pid, before.clickhouse.pid)
    assert warm < 10, f"idempotent up took {warm:.1f}s"


def test_up_refuses_to_move_a_running_component(smoke_stack: _Stack) -> None:
    with pytest.raises(manager.StackError, match="stack down"):
        manager.up(smoke_stack.state_dir, ch_http_port=manager.pick_free_port())


def test_up_restarts_only_the_component_that_died(smoke_stack: _Stack) -> None:
    before = manager.status(smoke_stack.state_dir)
    assert before.clickhouse.pid is not None
    os.kill(before.clickhouse.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while manager.status(smoke_stack.state_dir).clickhouse.running:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    messages: list[str] = []
    info = manager.up(smoke_stack.state_dir, progress=messages.append)
    after = manager.status(smoke_stack.state_dir)
    assert info == smoke_stack.info
    assert after.healthy
    assert after.kafka.pid == before.kafka.pid
    assert after.clickhouse.pid != before.clickhouse.pid
    assert any("starting ClickHouse" in m for m in messages), messages
    assert not any("starting Kafka" in m for m in messages), messages
    # Data survives a crash of the server process.
    assert smoke_stack.admin().command("EXISTS TABLE smoke.secret") == 1


def test_stack_survives_the_process_that_started_it(tmp_path: Path) -> None:
    """`up` from a short-lived interpreter (like the CLI) leaves servers running after it exits."""
    state = tmp_path / "detached"
    kafka_port = manager.pick_free_port()
    ch_port = manager.pick_free_port({kafka_port})
    script = (
        "import sys; from pathlib import Path; from trustlog.stack import manager; "
        "manager.up(Path(sys.argv[1]), kafka_port=int(sys.argv[2]), ch_http_port=int(sys.argv[3]))"
    )
    try:
        subprocess.run(
            [sys.executable, "-c", script, str(state), str(kafka_port), str(ch_port)],
            check=True,
            timeout=180,
            capture_output=True,
        )
        st = manager.status(state)
        assert st.healthy, st
    finally:
        manager.down(state)
    st = manager.status(state)
    assert not st.kafka.running and not st.clickhouse.running


# --------------------------------------------------------------------------- migrations


MIGRATION_1 = """\
-- Example migration used only by this test.
CREATE TABLE IF NOT EXISTS {db}.events (
    ts DateTime64(3),
    note String DEFAULT 'a;b'
) ENGINE = MergeTree
ORDER BY ts
TTL toDateTime(ts) + INTERVAL {detail_ttl_days} DAY;

-- comment-only chunk;
;
CREATE TABLE IF NOT EXISTS {db}.daily (d Date, n UInt64)
ENGINE = SummingMergeTree ORDER BY d
TTL d + INTERVAL {rollup_ttl_days} DAY
;
"""


def _applier(client: Client, db: str, migrations_dir: Path) -> Callable[[], list[str]]:
    def apply() -> list[str]:
        return migrate.apply_migrations(
            client,
            database=db,
            detail_ttl_days=3,
            rollup_ttl_days=30,
            migrations_dir=migrations_dir,
        )

    return apply


def test_migrations_apply_once_record_and_refuse_edits(smoke_stack: _Stack, tmp_path: Path) -> None:
    client = smoke_stack.admin()
    db = "mig_smoke"
    apply = _applier(client, db, tmp_path)
    (tmp_path / "0001_init.sql").write_text(MIGRATION_1)

    status = migrate.migration_status(client, db, migrations_dir=tmp_path)
    assert [(s.name, s.state) for s in status] == [("0001_init.sql", "pending")]

    assert apply() == ["0001_init.sql"]
    assert apply() == []
    ddl = str(client.command(f"SHOW CREATE TABLE {db}.events"))
    assert "toIntervalDay(3)" in ddl and "a;b" in ddl  # the ';' inside a literal did not split
    assert "toIntervalDay(30)" in str(client.command(f"SHOW CREATE TABLE {db}.daily"))

    (tmp_path / "0002_more.sql").write_text(
        "ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS n UInt8\n;\n"
        "INSERT INTO {db}.events (ts, n) VALUES (now64(3), 1);\n"
    )
    assert apply() == ["0002_more.sql"]
    assert client.command(f"SELECT sum(n) FROM {db}.events") == 1
    rows = client.query(f"SELECT version, name FROM {db}.schema_migrations FINAL ORDER BY version")
    assert rows.result_rows == [(1, "0001_init.sql"), (2, "0002_more.sql")]
    states = migrate.migration_status(client, db, migrations_dir=tmp_path)
    assert [s.state for s in states] == ["applied", "applied"]

    (tmp_path / "0001_init.sql").write_text(MIGRATION_1 + "-- edited\n")
    with pytest.raises(migrate.MigrationError, match="changed after it was applied"):
        apply()
    assert migrate.migration_status(client, db, migrations_dir=tmp_path)[0].state == "changed"


def test_failed_migration_is_not_recorded(smoke_stack: _Stack, tmp_path: Path) -> None:
    client = smoke_stack.admin()
    db = "mig_fail"
    (tmp_path / "0001_bad.sql").write_text("CREATE TABLE {db}.t (x UInt8) ENGINE = NoSuchEngine;\n")
    with pytest.raises(migrate.MigrationError, match=r"0001_bad\.sql: statement 1/1 failed"):
        _applier(client, db, tmp_path)()
    assert migrate.migration_status(client, db, migrations_dir=tmp_path)[0].state == "pending"


# --------------------------------------------------------------------------- down (runs last)


def test_down_never_signals_a_process_that_reused_a_pid(
    smoke_stack: _Stack, tmp_path: Path
) -> None:
    # Point a scratch state dir's pid file at an unrelated live process.
    impostor = subprocess.Popen(["sleep", "60"])
    try:
        scratch = manager.Layout(tmp_path)
        scratch.kafka_dir.mkdir()
        scratch.ch_dir.mkdir()
        scratch.kafka_pid.write_text(f"{impostor.pid}\n")
        scratch.ch_pid.write_text(f"{impostor.pid}\n")
        manager.down(tmp_path)
        assert impostor.poll() is None, "down() killed a process it did not start"
        assert not scratch.kafka_pid.exists() and not scratch.ch_pid.exists()
    finally:
        impostor.kill()
        impostor.wait()


def test_down_stops_everything(smoke_stack: _Stack) -> None:
    before = manager.status(smoke_stack.state_dir)
    pids = [p for p in (before.kafka.pid, before.clickhouse.pid) if p]
    assert len(pids) == 2
    started = time.monotonic()
    manager.down(smoke_stack.state_dir)
    took = time.monotonic() - started
    print(f"stack down in {took:.1f}s")
    assert not any(_alive(pid) for pid in pids)
    after = manager.status(smoke_stack.state_dir)
    assert not after.kafka.running and not after.clickhouse.running and not after.healthy
    assert not smoke_stack.layout.kafka_pid.exists() and not smoke_stack.layout.ch_pid.exists()
    manager.down(smoke_stack.state_dir)  # safe when nothing runs
    assert took < manager.STOP_TIMEOUT, "a component ignored SIGTERM"
