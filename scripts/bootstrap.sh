#!/usr/bin/env bash
# Make this checkout runnable on a fresh machine: venv, Python packages, JDK/Maven check,
# Kafka jars (resolved from Maven Central into ~/.cache/trustlog, outside the repo).
# Idempotent: a second run only re-installs when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

if ! command -v java >/dev/null 2>&1 || ! command -v mvn >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing JDK and Maven with apt-get" >&2
    apt-get update -qq && apt-get install -y -qq openjdk-17-jdk-headless maven >/dev/null
  else
    echo "bootstrap: Kafka needs a JDK (17+) and Maven: install them, e.g." >&2
    echo "  sudo apt-get install openjdk-17-jdk-headless maven" >&2
    exit 1
  fi
fi

# Reports (`trustlog report`) are checked in a real headless browser: Debian's chromium,
# driven by playwright (a dev dependency) through executable_path, so no browser download.
# Only the test command asks for it (--with-browser); the main job does not need it.
if [ "${1:-}" = "--with-browser" ]; then
  CHROMIUM=${TRUSTLOG_CHROMIUM:-/usr/bin/chromium}
  if [ ! -x "$CHROMIUM" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "bootstrap: installing chromium with apt-get (report browser tests)" >&2
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
        || echo "bootstrap: apt-get could not install chromium; the report browser tests will skip and say so" >&2
    else
      echo "bootstrap: chromium is missing; the report browser tests will be skipped. Install it:" >&2
      echo "  sudo apt-get install chromium   (or set TRUSTLOG_CHROMIUM to a chromium binary)" >&2
    fi
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv" >&2
  "$PY" -m venv .venv
fi
stamp=.venv/.trustlog-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "bootstrap: installing Python packages" >&2
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  echo "$want" > "$stamp"
fi

# The sensitive-data detector's native core (native/: Rust + PCRE2), built by cargo through
# maturin into the venv. Rebuilt only when its sources change; cargo caches its crates.
native_stamp=.venv/.trustlog-native
native_want=$(cat native/Cargo.toml native/Cargo.lock native/pyproject.toml native/src/*.rs | sha256sum | cut -d' ' -f1)
if [ ! -f "$native_stamp" ] || [ "$(cat "$native_stamp")" != "$native_want" ]; then
  command -v cargo >/dev/null 2>&1 || PATH="$HOME/.cargo/bin:$PATH"
  if ! command -v cargo >/dev/null 2>&1; then
    echo "bootstrap: the detector's native core needs Rust (cargo 1.80+). Install it with" >&2
    echo "  curl --proto '=https' -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal" >&2
    exit 1
  fi
  echo "bootstrap: building the detector's native core (cargo, about a minute the first time)" >&2
  .venv/bin/python -m pip install -q ./native
  echo "$native_want" > "$native_stamp"
fi

echo "bootstrap: resolving Kafka jars (cached after the first run)" >&2
.venv/bin/python -m trustlog.stack.kafka fetch
