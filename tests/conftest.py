"""Shared fixtures. Integration tests share ONE real local stack (Kafka + ClickHouse) per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The real local stack in a private state dir, migrated. Stopped at the end of the session."""
    from trustlog.stack import manager

    state = Path(os.environ.get("TRUSTLOG_TEST_STATE_DIR") or tmp_path_factory.mktemp("stack"))
    os.environ["TRUSTLOG_STATE_DIR"] = str(state)
    try:
        info = manager.up(state)
    except BaseException:
        manager.down(state)  # a half-started stack (e.g. Kafka's port taken) must not linger
        raise
    from trustlog.storage import admin_client, migrate_all

    migrate_all(admin_client())
    yield info
    manager.down(state)


from tests.slack_receiver import slack_receiver, slack_receiver_server  # noqa: E402,F401  (fixtures)
