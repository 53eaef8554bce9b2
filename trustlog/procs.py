"""Start and stop trustlog's own service processes for the local stack.

Each service runs as ``python -m services.<name>`` in its own session, logging to
``<state>/logs/<name>.log``; its pid file is checked against /proc before any signal is sent,
so a recycled pid never gets killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

SERVICES = ("ingest", "redactor", "aggregator", "alerts")
MARKER = "trustlog-proc"


@dataclass(frozen=True)
class ProcStatus:
    name: str
    pid: int | None
    running: bool
    health_url: str | None
    healthy: bool
    log: Path


def _dirs(state: Path) -> tuple[Path, Path]:
    logs, pids = state / "logs", state / "procs"
    logs.mkdir(parents=True, exist_ok=True)
    pids.mkdir(parents=True, exist_ok=True)
    return logs, pids


def _alive(pid: int, name: str) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
        return False
    if not cmd:
        # Right after fork/exec the kernel can show an empty cmdline for a live process.
        return True
    parts = cmd.split(b"\0")
    # pid files can outlive their process; only a process started for this name counts
    return any(name.encode() in part for part in parts) and b"-m" in parts


def _pid(state: Path, name: str) -> int | None:
    _, pids = _dirs(state)
    try:
        return int((pids / f"{name}.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def start(state: Path, name: str, module: str, env: dict[str, str] | None = None) -> int:
    """Start ``python -m module`` detached unless it already runs. Returns its pid.

    A service with a ClickHouse account of its own (aggregator, alerts) logs in as it;
    ``env`` still wins.
    """
    logs, pids = _dirs(state)
    pid = _pid(state, name)
    if pid is not None and _alive(pid, module):
        return pid
    from trustlog.governance.roles import service_env

    full_env = {
        **os.environ,
        "TRUSTLOG_STATE_DIR": str(state),
        "TRUSTLOG_INSTANCE": name,
        "PYTHONUNBUFFERED": "1",
        # The service's own ClickHouse account, not the admin of stack.env: its reads are
        # its own in query_log and it can read nothing it does not need.
        **service_env(state, module.removeprefix("services.")),
    }
    full_env.update(env or {})
    with open(logs / f"{name}.log", "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", module],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            start_new_session=True,
        )
    (pids / f"{name}.pid").write_text(f"{proc.pid}\n")
    (pids / f"{name}.module").write_text(module)
    return proc.pid


def stop(state: Path, name: str, timeout: float = 20.0) -> bool:
    """SIGTERM, wait, then SIGKILL. Returns True if something was stopped."""
    _, pids = _dirs(state)
    pid = _pid(state, name)
    module_file = pids / f"{name}.module"
    module = module_file.read_text().strip() if module_file.exists() else name
    stopped = False
    if pid is not None and _alive(pid, module):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid, module) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid, module):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        stopped = True
    for f in (pids / f"{name}.pid", module_file):
        with contextlib.suppress(FileNotFoundError):
            f.unlink()
    return stopped


def health_url(state: Path, name: str) -> str | None:
    f = state / "services" / f"{name}.health"
    return f.read_text().strip() if f.exists() else None


def healthy(url: str | None) -> bool:
    if not url:
        return False
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def status(state: Path, name: str) -> ProcStatus:
    logs, pids = _dirs(state)
    pid = _pid(state, name)
    module_file = pids / f"{name}.module"
    module = module_file.read_text().strip() if module_file.exists() else name
    running = pid is not None and _alive(pid, module)
    url = health_url(state, name) if running else None
    return ProcStatus(
        name, pid if running else None, running, url, healthy(url), logs / f"{name}.log"
    )


def wait_healthy(state: Path, name: str, timeout: float = 60.0) -> bool:
    start = time.monotonic()
    deadline = start + timeout
    while time.monotonic() < deadline:
        st = status(state, name)
        # between fork and exec /proc still shows the parent's command line: give a just
        # started process a moment before calling it dead
        if not st.running and time.monotonic() - start > 5.0:
            return False
        if st.healthy:
            return True
        time.sleep(0.3)
    return False
