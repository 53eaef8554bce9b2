"""The aggregator's memory of recently stored event ids (producer retries are dropped)."""

from __future__ import annotations

import pytest

from services.aggregator.dedup import RecentIds


def test_a_repeat_is_seen_and_a_new_id_is_not() -> None:
    r = RecentIds(3)
    assert [r.seen(x) for x in ("a", "b", "a", "c", "b")] == [False, False, True, False, True]
    assert len(r) == 3


def test_the_oldest_id_is_forgotten_first() -> None:
    r = RecentIds(2)
    r.remember(["a", "b", "c"])  # "a" evicted
    assert "a" not in r and "b" in r and "c" in r
    assert r.seen("a") is False  # remembered again, evicting "b"
    assert "b" not in r and r.seen("c") is True


def test_capacity_zero_turns_deduplication_off() -> None:
    r = RecentIds(0)
    assert r.seen("a") is False and r.seen("a") is False
    assert len(r) == 0


def test_negative_capacity_is_refused() -> None:
    with pytest.raises(ValueError):
        RecentIds(-1)
