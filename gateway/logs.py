"""JSON log lines on stderr: one per request from the access logger, plus any error tracebacks.

The gateway stands alone (it may run on a box of its own), so it keeps its own copy of pdfqueue's one log format:
the same keys as every other process (ts, level, logger, message, plus each event's fields); a test holds the two
formats together (tests/core/test_logs.py).
"""

import logging
import sys
import time

from flask import g, request
from pythonjsonlogger.json import JsonFormatter

FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s"
RENAMED = {"asctime": "ts", "levelname": "level", "name": "logger"}

access_logger = logging.getLogger("gateway.access")


# An event's fields worth showing on a readable line, after its message.
TEXT_FIELDS = ("method", "path", "status", "duration_ms", "mapping", "pages", "correlation_id", "error")


def wants_text(log_format):
    """True if logs should be readable lines: GATEWAY_LOG_FORMAT=text, or auto with stderr a terminal."""
    return log_format == "text" or (log_format == "auto" and sys.stderr.isatty())


class TextFormatter(logging.Formatter):
    """`12:03:04 INFO    gateway.access: request  method=POST path=/process status=200 …`: one short line."""

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")

    def format(self, record):
        line = super().format(record)
        extras = " ".join(f"{name}={getattr(record, name)}" for name in TEXT_FIELDS
                          if getattr(record, name, None) is not None)
        return f"{line}  {extras}" if extras and "\n" not in line else line


def formatter(log_format="json"):
    """A formatter writing records in the one format (or, in a terminal, as readable lines)."""
    return TextFormatter() if wants_text(log_format) else JsonFormatter(FIELDS, rename_fields=RENAMED)


def gunicorn_logconfig(level, log_format="json"):
    """gunicorn's logconfig_dict: its own lines (start-up, worker exits) in the one format, on stderr."""
    json_formatter = {"()": "pythonjsonlogger.json.JsonFormatter", "fmt": FIELDS, "rename_fields": RENAMED}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "gateway.logs.TextFormatter"} if wants_text(log_format) else json_formatter},
        "handlers": {"json": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "root": {"level": level, "handlers": []},
        "loggers": {"gunicorn.error": {"level": "INFO", "handlers": ["json"], "propagate": False}},
    }


def init_app(app):
    gateway_logger = logging.getLogger("gateway")
    if not gateway_logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter(app.config.get("LOG_FORMAT", "json")))
        gateway_logger.addHandler(handler)
        gateway_logger.propagate = False
    gateway_logger.setLevel(app.config["LOG_LEVEL"])
    app.after_request(_finish_request)


def _finish_request(response):
    """Echo the correlation id and log the request as one JSON line."""
    correlation_id = g.get("correlation_id")
    if correlation_id:
        response.headers["X-Correlation-ID"] = correlation_id
    details = g.get("log", {})
    record = {
        "correlation_id": correlation_id,
        "method": request.method,
        "path": request.path,
        "mapping": details.get("mapping"),
        "bytes": details.get("bytes"),
        "pages": details.get("pages"),
        "status": response.status_code,
        "duration_ms": round((time.perf_counter() - g.get("started", time.perf_counter())) * 1000, 1),
    }
    if response.status_code >= 400 and response.is_json:
        error = (response.get_json(silent=True) or {}).get("error", {})
        record["error"], record["error_message"] = error.get("code"), error.get("message")
    level = logging.WARNING if response.status_code >= 500 else logging.INFO
    access_logger.log(level, "request", extra=record)
    return response
