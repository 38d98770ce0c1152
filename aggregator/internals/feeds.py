"""feedparser internals for the parser: its date parser, which knows dozens of broken date
formats seen in feeds, is not public (``feedparser.datetimes._parse_date``)."""

from __future__ import annotations

import time

import feedparser

__all__ = ["loose_date"]


def loose_date(value: str) -> time.struct_time | None:
    """The UTC time feedparser reads in ``value``, or None."""
    try:
        parsed: time.struct_time | None = feedparser.datetimes._parse_date(value)
    except (AttributeError, ValueError, TypeError, OverflowError):
        return None
    return parsed
