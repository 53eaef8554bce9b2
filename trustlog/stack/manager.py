"""Start, stop and inspect the local stack: one Kafka node and one ClickHouse server, both real.

Everything a stack owns lives under its state dir::

    state_dir/
      ports.json            ports chosen on first `up`, reused by every later `up`
      stack.env             connection settings for trustlog.settings (mode 0600)
      kafka/{data,server.properties,log4j2.properties,server.log,stdout.log,pid}
      clickhouse/{data,config.xml,users.xml,admin_password,stdout.log,pid}

Processes run in their own session so they outlive the `trustlog stack up` that started them;
pid files are only trusted when /proc/<pid>/cmdline still names this state dir, so a recycled
pid never gets a signal from us.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from trustlog.stack import StackError, clickhouse, kafka

ENV_KAFKA_PORT = "TRUSTLOG_STACK_KAFKA_PORT"
ENV_CH_PORT = "TRUSTLOG_STACK_CH_PORT"
DEFAULT_KAFKA_PORT = 9092
DEFAULT_CH_HTTP_PORT = 8123
HOST = "127.0.0.1"
KAFKA_READY_TIMEOUT = 60.0
CH_READY_TIMEOUT = 30.0
# A component that is running but not answering gets this long before it is restarted.
RUNNING_GRACE = 15.0
STOP_TIMEOUT = 20.0
LOG_TAIL_LINES = 40

Progress = Callable[[str], None]
__all__ = [
    "ComponentStatus",
    "StackError",
    "StackInfo",
    "StackStatus",
    "down",
    "ensure_kafka_jars",
    "status",
    "up",
]


# --------------------------------------------------------------------------- data types


@dataclass(frozen=True)
class StackInfo:
    kafka_bootstrap: str
    ch_host: str
    ch_http_port: int
    ch_user: str
    ch_password: str = field(repr=False)
    state_dir: Path


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    running: bool
    pid: int | None
    port: int | None
    healthy: bool
    log_path: Path


@dataclass(frozen=True)
class StackStatus:
    state_dir: Path
    kafka: ComponentStatus
    clickhouse: ComponentStatus

    @property
    def healthy(self) -> bool:
        return self.kafka.healthy and self.clickhouse.healthy

    @property
    def components(self) -> tuple[ComponentStatus, ComponentStatus]:
        return (self.kafka, self.clickhouse)


@dataclass(frozen=True)
class Ports:
    kafka: int
    kafka_controller: int
    ch_http: int

    def to_json(self) -> str:
        data = {
            "kafka": self.kafka,
            "kafka_controller": self.kafka_controller,
            "clickhouse_http": self.ch_http,
        }
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Ports:
        data = json.loads(text)
        return cls(
            kafka=int(data["kafka"]),
            kafka_controller=int(data["kafka_controller"]),
            ch_http=int(data["clickhouse_http"]),
        )


@dataclass(frozen=True)
class Layout:
    """Every path of one stack, derived from its (resolved) state dir."""

    state_dir: Path

    @property
    def ports_file(self) -> Path:
        return self.state_dir / "ports.json"

    @property
    def stack_env(self) -> Path:
        return self.state_dir / "stack.env"

    @property
    def lock_file(self) -> Path:
        return self.state_dir / ".stack.lock"

    @property
    def kafka_dir(self) -> Path:
        return self.state_dir / "kafka"

    @property
    def kafka_data(self) -> Path:
        return self.kafka_dir / "data"

    @property
    def kafka_properties(self) -> Path:
        return self.kafka_dir / "server.properties"

    @property
    def kafka_log4j(self) -> Path:
        return self.kafka_dir / "log4j2.properties"

    @property
    def kafka_log(self) -> Path:
        return self.kafka_dir / "server.log"

    @property
    def kafka_stdout(self) -> Path:
        return self.kafka_dir / "stdout.log"

    @property
    def kafka_pid(self) -> Path:
        return self.kafka_dir / "pid"

    @property
    def ch_dir(self) -> Path:
        return self.state_dir / "clickhouse"

    @property
    def ch_data(self) -> Path:
        return self.ch_dir / "data"

    @property
    def ch_config(self) -> Path:
        return self.ch_dir / "config.xml"

    @property
    def ch_users(self) -> Path:
        return self.ch_dir / "users.xml"

    @property
    def ch_password(self) -> Path:
        return self.ch_dir / "admin_password"

    @property
    def ch_stdout(self) -> Path:
        return self.ch_dir / "stdout.log"

    @property
    def ch_pid(self) -> Path:
        return self.ch_dir / "pid"

    def kafka_markers(self) -> tuple[str, ...]:
        return kafka.process_markers(self.kafka_properties)

    def ch_markers(self) -> tuple[str, ...]:
        return clickhouse.process_markers(self.ch_dir)


# --------------------------------------------------------------------------- pure helpers


def choose_ports(
    *,
    requested_kafka: int | None,
    requested_ch: int | None,
    remembered: Ports | None,
    is_free: Callable[[int], bool],
    pick_free: Callable[[set[int]], int],
) -> Ports:
    """Explicit request > remembered > well-known default if free > any free port.

    The controller port is never moved once remembered: with `format --standalone` its
    endpoint is written into the KRaft metadata log.
    """
    old_kafka = remembered.kafka if remembered else None
    old_ch = remembered.ch_http if remembered else None
    old_controller = remembered.kafka_controller if remembered else None
    # Ports that are already decided may not be handed out as a default or a free pick.
    fixed = {
        p
        for p in (
            requested_kafka if requested_kafka is not None else old_kafka,
            requested_ch if requested_ch is not None else old_ch,
            old_controller,
        )
        if p is not None
    }
    taken: set[int] = set()

    def choose(requested: int | None, remembered_port: int | None, preferred: int) -> int:
        if requested is not None:
            port = requested
        elif remembered_port is not None:
            port = remembered_port
        elif preferred not in taken | fixed and is_free(preferred):
            port = preferred
        else:
            port = pick_free(taken | fixed)
        if port in taken:
            raise StackError(f"port {port} was chosen twice; pass distinct ports")
        if not 0 < port < 65536:
            raise StackError(f"invalid port {port}")
        taken.add(port)
        return port

    # Controller right after the broker so a fresh stack gets neighbouring ports (9092/9093).
    kafka_port = choose(requested_kafka, old_kafka, DEFAULT_KAFKA_PORT)
    controller = choose(None, old_controller, kafka_port + 1)
    ch_port = choose(requested_ch, old_ch, DEFAULT_CH_HTTP_PORT)
    return Ports(kafka=kafka_port, kafka_controller=controller, ch_http=ch_port)


def render_stack_env(info: StackInfo) -> str:
    """The file trustlog.settings reads as a fallback for TRUSTLOG_* variables."""
    return "\n".join(
        [
            "# Written by `trustlog stack up`; real environment variables override these.",
            f"TRUSTLOG_KAFKA_BOOTSTRAP={info.kafka_bootstrap}",
            f"TRUSTLOG_CH_HOST={info.ch_host}",
            f"TRUSTLOG_CH_PORT={info.ch_http_port}",
            f"TRUSTLOG_CH_USER={info.ch_user}",
            f"TRUSTLOG_CH_PASSWORD={info.ch_password}",
            "",
        ]
    )


def cmdline_matches(cmdline: bytes, markers: Sequence[str]) -> bool:
    """True if every marker is one whole argument of a NUL-separated /proc cmdline."""
    args = {arg.decode(errors="replace") for arg in cmdline.split(b"\0") if arg}
    return bool(args) and all(marker in args for marker in markers)


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def proc_state(pid: int, *, proc_root: Path = Path("/proc")) -> str | None:
    """The one-letter state from /proc/<pid>/stat (R, S, Z...), or None if there is no such pid."""
    try:
        text = (proc_root / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[-1].split()  # comm, in parentheses, may contain spaces
    return fields[0] if fields else None


def pid_matches(
    pid: int, markers: Sequence[str], *, proc_root: Path = Path("/proc"), settle: float = 1.0
) -> bool:
    """Is `pid` alive and still the process we started (judged by its cmdline)?"""
    deadline = time.monotonic() + settle
    while True:
        try:
            raw = (proc_root / str(pid) / "cmdline").read_bytes()
        except OSError:
            return False
        if raw:
            return cmdline_matches(raw, markers)
        # Empty cmdline: a zombie, a process tearing down its memory after a signal, or
        # (seen with the chdb server) a short window in a live process. Only the last is
        # worth waiting for; giving up means "not ours", never "kill it".
        if proc_state(pid, proc_root=proc_root) in (None, "Z", "X"):
            return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def parse_port(value: str | None, source: str) -> int | None:
    if value is None or value.strip() == "":
        return None
    try:
        port = int(value)
    except ValueError:
        raise StackError(f"{source}={value!r} is not a port number") from None
    if not 0 < port < 65536:
        raise StackError(f"{source}={value!r} is not a valid port")
    return port


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            data = fh.read().decode(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(data.splitlines()[-lines:]) or f"({path} is empty)"


# --------------------------------------------------------------------------- process plumbing

# Popen objects of children started by this interpreter: kept so they can be reaped (no
# zombies while a long-lived parent such as pytest keeps running).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def port_is_free(port: int, host: str = HOST) -> bool:
    """Can a server bind host:port now? SO_REUSEADDR so TIME_WAIT leftovers do not count.

    Also nobody may answer there: Java listens on an IPv6 socket ([::ffff:127.0.0.1]), and an
    IPv4 bind test next to it can succeed (seen with two test stacks starting at once).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return not _tcp_open(port, timeout=0.2)


def pick_free_port(taken: Collection[int] = ()) -> int:
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        if port not in taken:
            return port
    raise StackError("could not find a free port on 127.0.0.1")


def _tcp_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def running_pid(pid_file: Path, markers: Sequence[str]) -> int | None:
    pid = read_pid(pid_file)
    proc = _CHILDREN.get(pid) if pid is not None else None
    if proc is not None and proc.poll() is None:
        return pid  # our unreaped child: its pid cannot have been reused
    if pid is not None and pid_matches(pid, markers):
        return pid
    if pid is not None:
        _reap(pid)
    return None


def _reap(pid: int) -> int | None:
    """Collect the exit status of a child of ours, if it is one and has exited."""
    proc = _CHILDREN.get(pid)
    if proc is None:
        return None
    code = proc.poll()
    if code is not None:
        _CHILDREN.pop(pid, None)
    return code


def _spawn(cmd: list[str], *, cwd: Path, log_path: Path, pid_file: Path) -> int:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"\n=== {stamp} trustlog stack starting: {' '.join(cmd)}\n".encode())
        log.flush()
        # New session: Ctrl-C / SIGHUP of the starting terminal must not reach the server.
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    _CHILDREN[proc.pid] = proc
    _write_private(pid_file, f"{proc.pid}\n", mode=0o644)
    return proc.pid


def _is_alive(pid: int) -> bool:
    """Liveness for waiting: our own children via Popen (exact), others via /proc state."""
    proc = _CHILDREN.get(pid)
    if proc is not None:
        return proc.poll() is None
    return proc_state(pid) not in (None, "Z", "X")


def _signal(pid: int, markers: Sequence[str], sig: signal.Signals) -> None:
    proc = _CHILDREN.get(pid)
    if proc is not None:
        if proc.poll() is None:
            proc.send_signal(sig)
    elif pid_matches(pid, markers):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait_gone(pid: int, timeout: float) -> bool:
    # Not judged by cmdline: a killed process loses it while still holding its ports.
    deadline = time.monotonic() + timeout
    while _is_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    _reap(pid)
    return True


def _stop_all(targets: Sequence[tuple[Path, tuple[str, ...]]], timeout: float) -> None:
    """SIGTERM every live target at once, then SIGKILL whatever outlives `timeout`."""
    live: list[tuple[int, tuple[str, ...], Path]] = []
    for pid_file, markers in targets:
        pid = running_pid(pid_file, markers)
        if pid is not None:
            _signal(pid, markers, signal.SIGTERM)
            live.append((pid, markers, pid_file))
    deadline = time.monotonic() + timeout
    for pid, markers, _ in live:
        if not _wait_gone(pid, max(0.0, deadline - time.monotonic())):
            _signal(pid, markers, signal.SIGKILL)
            if not _wait_gone(pid, 10.0):
                raise StackError(f"pid {pid} survived SIGKILL")
    for pid_file, _ in targets:
        pid_file.unlink(missing_ok=True)


def _write_private(path: Path, text: str, *, mode: int = 0o600) -> None:
    """Atomic write with the final mode set at creation (no window where it is readable)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(layout: Layout) -> Iterator[None]:
    """Serialise up/down on one state dir (two `up`s must not both start a server)."""
    with layout.lock_file.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _logs_excerpt(paths: Sequence[Path]) -> str:
    return "\n".join(f"--- last lines of {p} ---\n{tail(p)}" for p in paths)


# --------------------------------------------------------------------------- health checks


def _kafka_answers(layout: Layout, port: int, timeout: float = 5.0) -> bool:
    if not _tcp_open(port):
        return False
    try:
        cluster_id = kafka.probe(f"{HOST}:{port}", timeout=timeout)
    except Exception:
        return False
    expected = kafka.read_cluster_id(layout.kafka_data)
    if expected and cluster_id and cluster_id != expected:
        raise StackError(
            f"a different Kafka cluster ({cluster_id}) answers on {HOST}:{port}; "
            f"ours is {expected}. Stop the other broker or choose another port."
        )
    return True


def _ch_answers(port: int, password: str, timeout: float = 3.0) -> bool:
    # /ping alone would also accept somebody else's ClickHouse; our admin password would not.
    return clickhouse.ping(HOST, port, timeout) and clickhouse.admin_can_query(
        HOST, port, password, timeout
    )


def _wait_ready(
    name: str,
    pid: int,
    check: Callable[[], bool],
    timeout: float,
    logs: Sequence[Path],
) -> float:
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        if not _is_alive(pid):
            code = _reap(pid)
            how = f" with exit code {code}" if code is not None else ""
            raise StackError(
                f"{name} (pid {pid}) exited during startup{how}.\n{_logs_excerpt(logs)}"
            )
        if time.monotonic() - start > timeout:
            raise StackError(
                f"{name} (pid {pid}) did not become ready within {timeout:.0f}s.\n"
                f"{_logs_excerpt(logs)}"
            )
        time.sleep(0.2)


# --------------------------------------------------------------------------- components


def _require_port_free(port: int, what: str, env_name: str | None, wait: float = 10.0) -> None:
    # Waits a little: a server we just killed can hold its port for a moment while exiting.
    deadline = time.monotonic() + wait
    while not port_is_free(port):
        if time.monotonic() >= deadline:
            hint = f" or set {env_name}" if env_name else ""
            raise StackError(
                f"{what} port {port} on {HOST} is in use by another process; stop it{hint} to "
                f"use a different port (the port is remembered in ports.json)"
            )
        time.sleep(0.2)


def _start_kafka(layout: Layout, ports: Ports, say: Progress) -> int:
    libs = kafka.ensure_kafka_jars(progress=say)
    layout.kafka_data.mkdir(parents=True, exist_ok=True)
    layout.kafka_properties.write_text(
        kafka.render_server_properties(
            port=ports.kafka, controller_port=ports.kafka_controller, data_dir=layout.kafka_data
        )
    )
    layout.kafka_log4j.write_text(kafka.render_log4j2_properties(layout.kafka_log))
    if kafka.read_cluster_id(layout.kafka_data) is None:
        say("formatting Kafka storage (first start of this state dir)")
        kafka.format_storage(libs, layout.kafka_properties, layout.kafka_data)
    _require_port_free(ports.kafka, "Kafka", ENV_KAFKA_PORT)
    _require_port_free(ports.kafka_controller, "Kafka controller", None)
    say(f"starting Kafka on {HOST}:{ports.kafka}")
    return _spawn(
        kafka.server_command(libs, layout.kafka_properties, layout.kafka_log4j),
        cwd=layout.kafka_dir,
        log_path=layout.kafka_stdout,
        pid_file=layout.kafka_pid,
    )


def _start_clickhouse(layout: Layout, ports: Ports, say: Progress) -> int:
    layout.ch_data.mkdir(parents=True, exist_ok=True)
    layout.ch_config.write_text(
        clickhouse.render_config_xml(http_port=ports.ch_http, users_xml=layout.ch_users)
    )
    _require_port_free(ports.ch_http, "ClickHouse HTTP", ENV_CH_PORT)
    say(f"starting ClickHouse on http://{HOST}:{ports.ch_http}")
    # cwd is the state dir, not the clickhouse dir: see _ch_server on why chdb must not see
    # config.xml at import time.
    return _spawn(
        clickhouse.server_command(layout.ch_dir),
        cwd=layout.state_dir,
        log_path=layout.ch_stdout,
        pid_file=layout.ch_pid,
    )


@dataclass
class _Component:
    name: str
    pid_file: Path
    markers: tuple[str, ...]
    start: Callable[[], int]
    check: Callable[[], bool]
    timeout: float
    logs: tuple[Path, ...]
    pid: int | None = None
    started_at: float | None = None  # monotonic time of our spawn; None if it was running


def _ensure_running(comp: _Component, say: Progress) -> None:
    """Start `comp` unless a healthy instance already runs; a hung one is restarted."""
    pid = running_pid(comp.pid_file, comp.markers)
    if pid is not None:
        try:
            _wait_ready(comp.name, pid, comp.check, RUNNING_GRACE, comp.logs)
            say(f"{comp.name} already running (pid {pid})")
            comp.pid = pid
            return
        except StackError as exc:
            say(f"{comp.name} (pid {pid}) is not answering; restarting it: {exc.args[0][:200]}")
            _stop_all([(comp.pid_file, comp.markers)], STOP_TIMEOUT)
    else:
        comp.pid_file.unlink(missing_ok=True)  # stale: process gone or pid reused
    comp.pid = comp.start()
    comp.started_at = time.monotonic()  # after jar resolution and formatting: spawn time


# --------------------------------------------------------------------------- public API


def up(
    state_dir: Path,
    *,
    kafka_port: int | None = None,
    ch_http_port: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> StackInfo:
    """Bring Kafka and ClickHouse up (idempotent) and write ``state_dir/stack.env``."""
    say: Progress = progress or (lambda _msg: None)
    layout = Layout(Path(state_dir).expanduser().resolve())
    layout.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _locked(layout):
        remembered = _load_ports(layout)
        requested_kafka = (
            kafka_port
            if kafka_port is not None
            else parse_port(os.environ.get(ENV_KAFKA_PORT), ENV_KAFKA_PORT)
        )
        requested_ch = (
            ch_http_port
            if ch_http_port is not None
            else parse_port(os.environ.get(ENV_CH_PORT), ENV_CH_PORT)
        )
        ports = choose_ports(
            requested_kafka=requested_kafka,
            requested_ch=requested_ch,
            remembered=remembered,
            is_free=port_is_free,
            pick_free=pick_free_port,
        )
        if remembered is not None:
            _refuse_port_change(layout, remembered, ports)
        _write_private(layout.ports_file, ports.to_json(), mode=0o644)

        password = clickhouse.load_or_create_password(layout.ch_password)
        layout.ch_dir.mkdir(parents=True, exist_ok=True)
        # The embedded server reads users.xml only when it starts (checked on chdb-core 26.9:
        # no reload after a change, SYSTEM RELOAD USERS is a no-op), so restart it on a change.
        from trustlog.governance.roles import stack_users_xml

        users_xml = stack_users_xml(layout.state_dir, password)
        changed = not layout.ch_users.exists() or layout.ch_users.read_text() != users_xml
        _write_private(layout.ch_users, users_xml)
        if changed:
            _stop_all([(layout.ch_pid, layout.ch_markers())], STOP_TIMEOUT)

        components = [
            _Component(
                name="Kafka",
                pid_file=layout.kafka_pid,
                markers=layout.kafka_markers(),
                start=lambda: _start_kafka(layout, ports, say),
                check=lambda: _kafka_answers(layout, ports.kafka),
                timeout=KAFKA_READY_TIMEOUT,
                logs=(layout.kafka_log, layout.kafka_stdout),
            ),
            _Component(
                name="ClickHouse",
                pid_file=layout.ch_pid,
                markers=layout.ch_markers(),
                start=lambda: _start_clickhouse(layout, ports, say),
                check=lambda: _ch_answers(ports.ch_http, password),
                timeout=CH_READY_TIMEOUT,
                logs=(layout.ch_stdout,),
            ),
        ]
        # Start both before waiting on either: their start-up times overlap.
        for comp in components:
            _ensure_running(comp, say)
        # Wait on the quick one (ClickHouse) first so both reported times are accurate.
        for comp in reversed(components):
            if comp.started_at is None or comp.pid is None:
                continue
            try:
                _wait_ready(comp.name, comp.pid, comp.check, comp.timeout, comp.logs)
            except StackError:
                # Leave nothing half-started behind; the next `up` starts it afresh.
                _stop_all([(comp.pid_file, comp.markers)], STOP_TIMEOUT)
                raise
            took = time.monotonic() - comp.started_at
            say(f"{comp.name} ready {took:.1f}s after start (pid {comp.pid})")

        info = StackInfo(
            kafka_bootstrap=f"{HOST}:{ports.kafka}",
            ch_host=HOST,
            ch_http_port=ports.ch_http,
            ch_user=clickhouse.ADMIN_USER,
            ch_password=password,
            state_dir=layout.state_dir,
        )
        _write_private(layout.stack_env, render_stack_env(info))
    return info


def _load_ports(layout: Layout) -> Ports | None:
    if not layout.ports_file.exists():
        return None
    try:
        return Ports.from_json(layout.ports_file.read_text())
    except (ValueError, KeyError, TypeError) as exc:
        raise StackError(
            f"{layout.ports_file} is unreadable ({exc}); fix or delete it (ports are re-chosen)"
        ) from None


def _refuse_port_change(layout: Layout, remembered: Ports, ports: Ports) -> None:
    checks = [
        ("Kafka", layout.kafka_pid, layout.kafka_markers(), remembered.kafka, ports.kafka),
        ("ClickHouse", layout.ch_pid, layout.ch_markers(), remembered.ch_http, ports.ch_http),
    ]
    for name, pid_file, markers, old, new in checks:
        if old != new and running_pid(pid_file, markers) is not None:
            raise StackError(
                f"{name} is running on port {old}; run `trustlog stack down` before moving it "
                f"to port {new}"
            )


def down(state_dir: Path) -> None:
    """Stop ClickHouse and Kafka of this state dir (SIGTERM, SIGKILL after 20 s). Idempotent."""
    layout = Layout(Path(state_dir).expanduser().resolve())
    if not layout.state_dir.is_dir():
        return
    with _locked(layout):
        _stop_all(
            [(layout.ch_pid, layout.ch_markers()), (layout.kafka_pid, layout.kafka_markers())],
            STOP_TIMEOUT,
        )


def status(state_dir: Path) -> StackStatus:
    """What runs, on which port, and whether it answers. Read-only; takes no lock."""
    layout = Layout(Path(state_dir).expanduser().resolve())
    ports: Ports | None = None
    with contextlib.suppress(OSError, ValueError, KeyError):
        ports = Ports.from_json(layout.ports_file.read_text())

    kafka_pid = running_pid(layout.kafka_pid, layout.kafka_markers())
    kafka_ok = False
    if kafka_pid is not None and ports is not None:
        with contextlib.suppress(StackError):
            kafka_ok = _kafka_answers(layout, ports.kafka)

    ch_pid = running_pid(layout.ch_pid, layout.ch_markers())
    ch_ok = False
    if ch_pid is not None and ports is not None and layout.ch_password.exists():
        password = layout.ch_password.read_text().strip()
        ch_ok = _ch_answers(ports.ch_http, password)

    return StackStatus(
        state_dir=layout.state_dir,
        kafka=ComponentStatus(
            name="kafka",
            running=kafka_pid is not None,
            pid=kafka_pid,
            port=ports.kafka if ports else None,
            healthy=kafka_ok,
            log_path=layout.kafka_log,
        ),
        clickhouse=ComponentStatus(
            name="clickhouse",
            running=ch_pid is not None,
            pid=ch_pid,
            port=ports.ch_http if ports else None,
            healthy=ch_ok,
            log_path=layout.ch_stdout,
        ),
    )


def ensure_kafka_jars(progress: Callable[[str], None] | None = None) -> Path:
    """Resolve (once) and return the directory of Kafka runtime jars; see trustlog.stack.kafka."""
    return kafka.ensure_kafka_jars(progress=progress)
