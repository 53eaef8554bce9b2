"""Process entry that serves ClickHouse over HTTP from the chdb wheel, until killed.

Usage: ``python -m trustlog.stack._ch_server <dir holding config.xml>``; data goes to ``<dir>/data``.

This relies on chdb's private ``_chdb.query`` (the only entry point that can start listeners):
``SYSTEM START LISTEN HTTP`` opens the port configured in config.xml, and the endless
``sleepEachRow`` query keeps the embedded server (and so the listener) alive. The integration
smoke test fails loudly if a chdb upgrade breaks this.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

SERVE_SQL = (
    "SYSTEM START LISTEN HTTP; "
    "SELECT sleepEachRow(1) AS serve_forever FROM numbers(1000000000000) "
    "SETTINGS max_block_size=1, max_threads=1 FORMAT Null"
)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m trustlog.stack._ch_server <clickhouse dir>", file=sys.stderr)
        return 2
    ch_dir = Path(argv[1]).resolve()
    if not (ch_dir / "config.xml").is_file():
        print(f"no config.xml in {ch_dir}", file=sys.stderr)
        return 2
    # Import BEFORE chdir: importing chdb opens a throwaway in-memory session that reads
    # config.xml from the cwd; only the serving query below may see our config.
    from chdb import _chdb

    os.chdir(ch_dir)
    print(f"serving ClickHouse from {ch_dir} (pid {os.getpid()})", file=sys.stderr, flush=True)
    # "TSV" is the output format this serving path was verified with; keep it.
    # query() is missing from chdb's stubs but present at runtime (the smoke test checks it).
    _chdb.query(SERVE_SQL, "TSV", path=str(ch_dir / "data"))  # type: ignore[attr-defined]
    # Start-up failures (bad config, port taken) do not raise: chdb prints them to stderr
    # (our stdout.log) and returns, so reaching this line always means the server is down.
    print("serving query returned; exiting", file=sys.stderr, flush=True)
    return 1  # it should never end on its own


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
