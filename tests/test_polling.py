from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from aggregator.polling import (
    PollHints,
    PollLimits,
    cache_max_age,
    feed_hints,
    next_poll,
    poll_interval,
    publishing_gap,
    retry_after,
    skip_to_allowed,
)

NOW = datetime(2026, 11, 28, 10, 30, tzinfo=UTC)  # a Saturday
LIMITS = PollLimits(timedelta(minutes=30), None, timedelta(minutes=5), timedelta(hours=24))
M = timedelta(minutes=1)
H = timedelta(hours=1)


def dates(every: timedelta, count: int = 10) -> list[datetime]:
    return [NOW - every * i for i in range(count)]


@pytest.mark.parametrize(
    ("limits", "hints", "entry_dates", "expected"),
    [
        (LIMITS, PollHints(), [], 30 * M),
        # a feed that posts every few minutes is not polled more often than configured
        (LIMITS, PollHints(), dates(5 * M), 30 * M),
        # daily posts: a quarter of the gap
        (LIMITS, PollHints(), dates(24 * H), 6 * H),
        # weekly posts: capped at max_interval
        (LIMITS, PollHints(), dates(7 * 24 * H), 24 * H),
        # publisher hints are floors
        (LIMITS, PollHints(ttl=2 * H), [], 2 * H),
        (LIMITS, PollHints(max_age=90 * M, update_period=H), [], 90 * M),
        (LIMITS, PollHints(ttl=48 * H), [], 24 * H),
        # a per-feed interval wins over everything but the bounds
        (PollLimits(30 * M, 10 * M, 5 * M, 24 * H), PollHints(ttl=2 * H), dates(24 * H), 10 * M),
        (PollLimits(30 * M, 1 * M, 5 * M, 24 * H), PollHints(), [], 5 * M),
    ],
)
def test_poll_interval(
    limits: PollLimits, hints: PollHints, entry_dates: list[datetime], expected: timedelta
) -> None:
    assert poll_interval(limits, hints, entry_dates) == expected


def test_skip_hours_and_days() -> None:
    # 10:30 + 30 min = 11:00; hours 11 and 12 skipped -> 13:00
    hints = PollHints(skip_hours=frozenset({11, 12}))
    assert next_poll(NOW, LIMITS, hints) == datetime(2026, 11, 28, 13, 0, tzinfo=UTC)
    # Saturday and Sunday skipped -> Monday 00:00
    weekend = skip_to_allowed(NOW, frozenset(), frozenset({5, 6}))
    assert weekend == datetime(2026, 11, 30, 0, 0, tzinfo=UTC)
    # skipping every hour is ignored rather than never polling
    assert skip_to_allowed(NOW, frozenset(range(24)), frozenset()) == NOW


def test_publishing_gap_needs_two_dates() -> None:
    assert publishing_gap([NOW]) is None
    assert publishing_gap([NOW, NOW - 2 * H, NOW - 4 * H]) == 2 * H


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", timedelta(seconds=120)),
        ("Sat, 28 Nov 2026 11:30:00 GMT", H),
        ("soon", None),
        (None, None),
        ("Sat, 28 Nov 2026 09:00:00 GMT", timedelta(0)),
    ],
)
def test_retry_after(header: str | None, expected: timedelta | None) -> None:
    assert retry_after(header, NOW) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("public, max-age=3600", H),
        ("s-maxage=600", 10 * M),
        ("no-cache, max-age=60", None),
        ("max-age=0", None),
        (None, None),
    ],
)
def test_cache_max_age(header: str | None, expected: timedelta | None) -> None:
    assert cache_max_age(header) == expected


def test_feed_hints_from_raw_values() -> None:
    hints = feed_hints("max-age=60", "90", "daily", "4", ["0", "1", "25", "x"], ["Sunday", "Funday"])
    assert hints.ttl == 90 * M
    assert hints.update_period == 6 * H
    assert hints.max_age == M
    assert hints.skip_hours == {0, 1}
    assert hints.skip_days == {6}
    assert feed_hints(None, "-5", "sometimes", "0", [], []).floor is None
