"""How batchrun's log lines look on stderr: dated text for a person, one JSON object a
line for a program (``--log-format json``).

Every line is a ``logging`` record of the ``batchrun`` logger. A record names its event
and carries its figures as ``extra`` fields::

    log.info("%d/%d rows", done, total, extra={"event": "progress", "rows_done": done})

The text line shows the message; the JSON line has ``ts`` (ISO 8601, UTC offset),
``level``, ``event``, ``message`` and every extra field.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

__all__ = ["FINAL_EVENT", "LOG_FORMATS", "setup_logging"]

LOG_FORMATS = ("text", "json")
FINAL_EVENT = "run_finished"
"""The last line of a run, written even under ``--quiet``."""

# What every LogRecord has; the rest of a record's attributes are its extra fields.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "event",
    "taskName",
}


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


def _event(record: logging.LogRecord) -> str:
    event = getattr(record, "event", None)
    if isinstance(event, str):
        return event
    return "warning" if record.name == "py.warnings" else "log"


class TextFormatter(logging.Formatter):
    """``2026-12-08T03:00:01.250+00:00 batchrun: warning: message``."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} batchrun: {record.levelname.lower()}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``ts``, ``level``, ``event``, ``message``, the figures."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "event": _event(record),
            "message": record.getMessage(),
        }
        if record.name not in ("batchrun", "py.warnings"):
            data["logger"] = record.name
        data.update((k, v) for k, v in vars(record).items() if k not in _STANDARD)
        if record.exc_info:
            data["traceback"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


class _Threshold(logging.Filter):
    """Records at ``level`` or above, and a run's last line whatever its level."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level or getattr(record, "event", None) == FINAL_EVENT


def setup_logging(log_format: str = "text", *, quiet: bool = False) -> logging.Handler:
    """The one stderr handler: batchrun's lines at INFO (WARNING when ``quiet``; a run's
    last line always), other libraries' at WARNING, Python warnings through it too."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(_Threshold(logging.WARNING if quiet else logging.INFO))
    handler.set_name("batchrun")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "batchrun"]:
        root.removeHandler(old)  # main() called again in one process (tests)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # httpx logs every request at INFO
    logging.getLogger("batchrun").setLevel(logging.INFO)
    logging.captureWarnings(True)
    return handler
