"""When to poll a feed next: pure functions of what the last poll saw and the clock.

Order of precedence (each step within ``[fetch.min_interval, fetch.max_interval]``):
1. a per-feed ``interval`` in feeds.yaml is used as given;
2. otherwise the configured ``fetch.interval``, lengthened for a feed that publishes rarely
   (a quarter of the average gap between its recent entries: a weekly feed is polled about every
   other day, capped by ``max_interval``);
3. the publisher's own hints are floors: ``Cache-Control: max-age``, RSS ``<ttl>`` and
   ``sy:updatePeriod``/``sy:updateFrequency``;
4. ``skipHours``/``skipDays`` push the time past the hours and days the publisher asked us to skip;
5. ``Retry-After`` (on 429/503) is honoured even beyond ``max_interval`` (up to the back-off cap).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

_SY_PERIODS = {
    "hourly": timedelta(hours=1),
    "daily": timedelta(days=1),
    "weekly": timedelta(weeks=1),
    "monthly": timedelta(days=30),
    "yearly": timedelta(days=365),
}
_DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]


@dataclass(frozen=True, slots=True)
class PollHints:
    """What a feed and its response say about polling, parsed from headers and XML."""

    max_age: timedelta | None = None
    ttl: timedelta | None = None
    update_period: timedelta | None = None
    skip_hours: frozenset[int] = frozenset()
    skip_days: frozenset[int] = frozenset()  # 0 = Monday

    @property
    def floor(self) -> timedelta | None:
        values = [v for v in (self.max_age, self.ttl, self.update_period) if v]
        return max(values) if values else None


@dataclass(frozen=True, slots=True)
class PollLimits:
    default: timedelta
    per_feed: timedelta | None
    minimum: timedelta
    maximum: timedelta


def next_poll(
    now: datetime,
    limits: PollLimits,
    hints: PollHints = PollHints(),
    entry_dates: Sequence[datetime] = (),
) -> datetime:
    """Return when to poll again after a successful poll at ``now``."""
    interval = poll_interval(limits, hints, entry_dates)
    return skip_to_allowed(now + interval, hints.skip_hours, hints.skip_days)


def poll_interval(
    limits: PollLimits, hints: PollHints = PollHints(), entry_dates: Sequence[datetime] = ()
) -> timedelta:
    """Return the time between polls, before skipHours/skipDays are applied."""
    if limits.per_feed is not None:
        interval = limits.per_feed
    else:
        interval = limits.default
        gap = publishing_gap(entry_dates)
        if gap is not None:
            interval = max(interval, gap / 4)
        if hints.floor is not None:
            interval = max(interval, hints.floor)
    return min(max(interval, limits.minimum), limits.maximum)


def publishing_gap(dates: Sequence[datetime], recent: int = 10) -> timedelta | None:
    """Return the average gap between the ``recent`` newest distinct entry dates, or None."""
    ordered = sorted(set(dates), reverse=True)[:recent]
    if len(ordered) < 2:
        return None
    return (ordered[0] - ordered[-1]) / (len(ordered) - 1)


def skip_to_allowed(when: datetime, skip_hours: frozenset[int], skip_days: frozenset[int]) -> datetime:
    """Return ``when`` or the start of the first later UTC hour not in skipHours/skipDays."""
    if len(skip_hours) >= 24 or len(skip_days) >= 7:
        return when  # a feed that skips everything is misconfigured: ignore the hints
    moment = when.astimezone(UTC)
    for _ in range(24 * 8):  # bounded: at most a week and a day of hours
        if moment.hour not in skip_hours and moment.weekday() not in skip_days:
            return moment
        moment = moment.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    return when


def retry_after(value: str | None, now: datetime) -> timedelta | None:
    """Return the wait a Retry-After header asks for (seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return timedelta(seconds=int(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(when - now, timedelta(0))


def cache_max_age(cache_control: str | None) -> timedelta | None:
    """Return max-age (or s-maxage) from a Cache-Control header; None for no-cache or none."""
    if not cache_control:
        return None
    directives = cache_control.lower()
    if "no-cache" in directives or "no-store" in directives:
        return None
    match = re.search(r"(?:s-maxage|max-age)\s*=\s*\"?(\d+)", directives)
    return timedelta(seconds=int(match.group(1))) if match and int(match.group(1)) > 0 else None


def feed_hints(
    cache_control: str | None,
    ttl: str | None,
    update_period: str | None,
    update_frequency: str | None,
    skip_hours: Sequence[str],
    skip_days: Sequence[str],
) -> PollHints:
    """Return PollHints from raw header and feed values, ignoring what does not parse."""
    ttl_delta = None
    if ttl and ttl.strip().isdigit() and int(ttl) > 0:
        ttl_delta = timedelta(minutes=int(ttl))
    period = None
    base = _SY_PERIODS.get((update_period or "").strip().lower())
    if base is not None:
        frequency = (update_frequency or "1").strip()
        count = int(frequency) if frequency.isdigit() and int(frequency) > 0 else 1
        period = base / count
    hours = frozenset(int(h) % 24 for h in skip_hours if h.strip().isdigit() and int(h) <= 24)
    days = frozenset(_DAYS.index(d.strip().lower()) for d in skip_days if d.strip().lower() in _DAYS)
    return PollHints(cache_max_age(cache_control), ttl_delta, period, hours, days)
