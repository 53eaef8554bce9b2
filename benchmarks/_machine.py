"""Where a benchmark ran: every results file records it, since absolute numbers drift."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def describe_machine() -> str:
    """``2 CPUs (nproc), AMD EPYC ..., Python 3.11.7`` (no date: callers add their own)."""
    return f"{os.cpu_count()} CPUs (nproc), {cpu_model()}, Python {platform.python_version()}"
