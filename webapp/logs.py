"""JSON log lines, one event a line, for every process."""
import logging
import os
import sys

from pythonjsonlogger.json import JsonFormatter


def configure(level=None):
    """Send this process's logs to stderr as JSON lines (once)."""
    root = logging.getLogger()
    if any(getattr(h, "_pdfqueue", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s",
                                       rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"}))
    handler._pdfqueue = True
    root.addHandler(handler)
    root.setLevel(level or os.environ.get("LOG_LEVEL", "INFO"))


def init_app(app):
    """Configure JSON logging unless testing (pytest captures plain records)."""
    if not app.testing:
        configure()
