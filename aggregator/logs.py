"""Logging to stderr: readable lines on a terminal, JSON lines with --log-format json."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from aggregator.controls import json_safe, printable
from aggregator.links import redact_secrets

_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class TextFormatter(logging.Formatter):
    """Readable lines in which text from a feed or a server cannot act on the terminal or forge
    a line (controls shown as escapes), and no URL shows its password."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(redact_secrets(record.message))
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return printable(redact_secrets(super().formatException(ei)), keep_newlines=True)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact_secrets(record.getMessage()),
        }
        payload.update({k: v for k, v in record.__dict__.items() if k not in _RESERVED})
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
