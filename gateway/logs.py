"""JSON log lines on stderr: one per request from the access logger, plus any error tracebacks."""

import logging
import sys
import time

from flask import g, request

from webapp.logs import formatter  # pdfqueue's one log format, shared by every process

access_logger = logging.getLogger("gateway.access")


def init_app(app):
    gateway_logger = logging.getLogger("gateway")
    if not gateway_logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter())
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
