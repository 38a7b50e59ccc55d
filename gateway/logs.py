"""Structured logging: one JSON object per line, written by a background thread."""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import time
from typing import Any

import orjson


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


class _RecordQueueHandler(logging.handlers.QueueHandler):
    """Hands records to the writer thread as they are: formatting (and the write) happen there, not on the
    event loop. (The stock ``prepare`` formats in the caller, for queues that cross processes.)"""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


_listener: logging.handlers.QueueListener | None = None


@atexit.register  # flush what is queued when the process ends
def _stop_listener() -> None:
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None


def configure_logging(level: str = "info") -> None:
    """JSON lines on stderr; the request path only puts records on a queue (one access line per request
    must not cost the event loop a formatted write)."""
    global _listener
    _stop_listener()
    # The JSON line has no caller, thread or process fields: skip collecting them for every record (the
    # logging docs' "Optimization" switches; finding the caller walks the stack on each access-log line).
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    _listener = logging.handlers.QueueListener(records, handler, respect_handler_level=True)
    _listener.start()
    root = logging.getLogger()
    root.handlers[:] = [_RecordQueueHandler(records)]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
