"""Logging to stderr: readable lines on a terminal, JSON lines with --log-format json."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        payload.update({k: v for k, v in record.__dict__.items() if k not in _RESERVED})
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str, ensure_ascii=False)


def configure_logging(level: str, fmt: str) -> None:
    """Send log records to stderr at ``level``, as text or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
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
