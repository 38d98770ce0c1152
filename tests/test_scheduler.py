from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from aggregator.pipeline import retry_delay
from aggregator.scheduler import last_slot, missed_digest

PARIS = ZoneInfo("Europe/Paris")


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        # 07:00 in Paris is 06:00 UTC in winter
        (datetime(2026, 11, 28, 6, 30, tzinfo=UTC), datetime(2026, 11, 28, 6, 0, tzinfo=UTC)),
        (datetime(2026, 11, 28, 5, 59, tzinfo=UTC), datetime(2026, 11, 27, 6, 0, tzinfo=UTC)),
        # and 05:00 UTC in summer
        (datetime(2026, 7, 1, 5, 0, tzinfo=UTC), datetime(2026, 7, 1, 5, 0, tzinfo=UTC)),
        # the night the clocks go back (25 Oct 2026) still has one 07:00
        (datetime(2026, 10, 25, 12, 0, tzinfo=UTC), datetime(2026, 10, 25, 6, 0, tzinfo=UTC)),
    ],
)
def test_last_slot(now: datetime, expected: datetime) -> None:
    assert last_slot(now, time(7, 0), PARIS) == expected


def test_missed_digest_is_caught_up_once_and_only_recently() -> None:
    slot = datetime(2026, 11, 28, 6, 0, tzinfo=UTC)
    at = time(7, 0)
    since = slot - timedelta(days=3)  # the service first ran then
    assert missed_digest(slot + timedelta(hours=2), at, PARIS, None, running_since=since)
    assert missed_digest(slot + timedelta(hours=2), at, PARIS, slot - timedelta(days=1), running_since=since)
    assert not missed_digest(
        slot + timedelta(hours=2), at, PARIS, slot + timedelta(minutes=1), running_since=since
    )
    # back in the evening, or days later: sent once (only the latest slot counts)
    assert missed_digest(slot + timedelta(hours=13), at, PARIS, None, running_since=since)
    # a brand-new install missed nothing: it first ran after the send time, or never ran
    assert not missed_digest(
        slot + timedelta(hours=2), at, PARIS, None, running_since=slot + timedelta(hours=1)
    )
    assert not missed_digest(slot + timedelta(hours=2), at, PARIS, None, running_since=None)


def test_retry_delay_backs_off_exponentially_with_a_cap() -> None:
    interval = timedelta(minutes=30)
    delays = [retry_delay(interval, n).total_seconds() for n in range(1, 12)]
    assert 0.9 * 1800 <= delays[0] <= 1.1 * 1800
    assert 0.9 * 3600 <= delays[1] <= 1.1 * 3600
    assert all(d <= 24 * 3600 for d in delays)
    assert delays[-1] >= 0.9 * 24 * 3600


def test_weekly_slot() -> None:
    friday = 4
    # Saturday 28 Nov 2026: the last Friday 07:00 in Paris was the 27th, 06:00 UTC
    now = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    assert last_slot(now, time(7, 0), PARIS, friday) == datetime(2026, 11, 27, 6, 0, tzinfo=UTC)
    # on the Friday itself, before the time: the week before
    early = datetime(2026, 11, 27, 5, 0, tzinfo=UTC)
    assert last_slot(early, time(7, 0), PARIS, friday) == datetime(2026, 11, 20, 6, 0, tzinfo=UTC)
    # down at Friday's send time: caught up when back, the same morning or the next day
    since = now - timedelta(days=30)
    assert missed_digest(datetime(2026, 11, 27, 10, 0, tzinfo=UTC), time(7, 0), PARIS, None, friday, since)
    assert missed_digest(now, time(7, 0), PARIS, None, friday, since)
    # ...but only once: after it went out, nothing until the next Friday
    assert not missed_digest(now, time(7, 0), PARIS, now - timedelta(hours=2), friday, since)


def test_claims_under_our_own_name_at_start_up_are_a_predecessors(sqlite_url: str) -> None:
    """A restarted container's service is PID 1 again, with the hostname of the one that died."""
    from aggregator.config import Settings
    from aggregator.scheduler import Service
    from aggregator.storage import Store

    now = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
    urls = ["https://a.example/feed", "https://b.example/feed"]
    service = Service(Settings(database_url=sqlite_url))
    store = Store.open(sqlite_url)
    try:
        store.ensure_feeds(urls, now)
        store.claim_due_feeds(urls[:1], now, service._owner, timedelta(minutes=15))
        store.claim_due_feeds(urls[1:], now, "elsewhere:1", timedelta(minutes=15))
        assert store.release_claims(service._is_dead_owner) == 1
        assert store.claim_due_feeds(urls, now, "next:2", timedelta(minutes=15)) == urls[:1]
    finally:
        store.close()
