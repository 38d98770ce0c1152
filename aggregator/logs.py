"""Logging to stderr: readable lines on a terminal, JSON lines with --log-format json.

A line's facts go in ``extra=fields(feed=..., status=...)``: text lines show them as
``key=value`` after the message, JSON lines as keys of their own; durations as seconds.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from aggregator.controls import json_safe, printable
from aggregator.links import redact_secrets

_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "fields"}


def fields(**values: object) -> dict[str, object]:
    """The ``extra=`` of a log call whose facts are ``values`` (None values left out)."""
    return {"fields": {key: value for key, value in values.items() if value is not None}}


def _plain(value: object) -> object:
    """A field's value as JSON takes it: a duration in seconds, a time in ISO 8601."""
    if isinstance(value, timedelta):
        return round(value.total_seconds(), 3)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    return str(value)


def _text_value(value: object) -> str:
    plain = _plain(value)
    if isinstance(value, timedelta):
        return f"{plain:g}s"
    text = str(plain)
    # Quoted when it would not read as one value (logfmt's rule).
    return json.dumps(text, ensure_ascii=False) if not text or any(c in text for c in ' "=') else text


class TextFormatter(logging.Formatter):
    """Readable lines in which text from a feed or a server cannot act on the terminal or forge
    a line (controls shown as escapes), and no URL shows its password."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        message = record.message
        extra = getattr(record, "fields", None)
        if extra:
            message += "".join(f" {key}={_text_value(value)}" for key, value in extra.items())
        record.message = printable(redact_secrets(message))
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return printable(redact_secrets(super().formatException(ei)), keep_newlines=True)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact_secrets(record.getMessage()),
        }
        payload.update({k: v for k, v in record.__dict__.items() if k not in _RESERVED})
        for key, value in (getattr(record, "fields", None) or {}).items():
            plain = _plain(value)
            payload[key] = redact_secrets(plain) if isinstance(plain, str) else plain
        if record.exc_info:
            payload["exception"] = redact_secrets(self.formatException(record.exc_info))
        # json.dumps escapes C0 controls; DEL, C1 and the bidirectional overrides it leaves raw.
        return json_safe(json.dumps(payload, default=str, ensure_ascii=False))


def configure_logging(level: str, fmt: str) -> None:
    """Send log records to stderr at ``level``, as text or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    handler.set_name("aggregator")
    root = logging.getLogger()
    # Replace only our own handler: a host program's (or pytest's) handlers stay.
    root.handlers[:] = [h for h in root.handlers if h.get_name() != "aggregator"] + [handler]
    root.setLevel(level.upper())
    # Libraries chatter at INFO about every request; our own lines say what matters.
    for noisy in (
        "httpx",
        "httpcore",
        "apscheduler",
        "trafilatura",
        "htmldate",
        "courlan",
        "charset_normalizer",
        "alembic",
    ):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
