"""The one JSON log format of every pdfqueue process (web, worker, gateway, and both gunicorns): one event a line,
with the same keys everywhere (ts, level, logger, message, plus each event's own fields)."""
import logging
import re
import sys

from pythonjsonlogger.json import JsonFormatter

FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s"
RENAMED = {"asctime": "ts", "levelname": "level", "name": "logger"}


# A share link's token, an invitation's, a reset's and the first-run set-up link's are credentials: whoever reads
# an access log line must not be able to download, join, or take an account over.
SECRET_PATH = re.compile(r"/(d|link|setup)/[^\s\"?/]+")
MARKERS = ("/d/", "/link/", "/setup/")


def redact(text):
    """text with the secret of every /d/, /link/ and /setup/ path replaced by [redacted]."""
    return SECRET_PATH.sub(r"/\1/[redacted]", text) if any(marker in text for marker in MARKERS) else text


class RedactSecretPaths(logging.Filter):
    """Replace the secret of every /d/<token>, /link/<secret> and /setup/<secret> path in a record's message
    (gunicorn's access lines)."""

    def filter(self, record):
        if isinstance(record.args, dict):  # gunicorn's atoms: redact each, so AccessFormatter's fields are too
            for key, value in list(record.args.items()):
                if isinstance(value, str):
                    record.args[key] = redact(value)
            return True
        message = record.getMessage()
        redacted = redact(message)
        if redacted is not message:
            record.msg, record.args = redacted, None
        return True


def formatter():
    """A formatter writing records in the one format."""
    return JsonFormatter(FIELDS, rename_fields=RENAMED)


class AccessFormatter(JsonFormatter):
    """gunicorn's access lines as fields (method, path, status, bytes, duration_ms, …) rather than one
    Apache-style string: gunicorn hands its atoms to the record as its args (glogging.Logger.access)."""

    ATOMS = {"method": "m", "path": "U", "query": "q", "status": "s", "bytes": "B", "remote_addr": "h", "user_agent": "a",
             "protocol": "H"}

    def add_fields(self, log_record, record, message_dict):
        super().add_fields(log_record, record, message_dict)
        atoms = record.args if isinstance(record.args, dict) else None
        if atoms is None:
            return
        for field, atom in self.ATOMS.items():
            log_record[field] = atoms.get(atom)
        log_record["status"] = int(log_record["status"]) if str(log_record["status"]).isdigit() else log_record["status"]
        log_record["duration_ms"] = round(atoms.get("D", 0) / 1000, 1)
        log_record["message"] = "request"


def gunicorn_logconfig(level, access=True):
    """gunicorn's logconfig_dict: its own lines (start-up, worker exits; the access log on stdout, one JSON object
    of fields a request) in the one format."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    loggers = {"gunicorn.error": {"level": "INFO", "handlers": ["json"], "propagate": False}}
    if access:
        loggers["gunicorn.access"] = {"level": "INFO", "handlers": ["access"], "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "pythonjsonlogger.json.JsonFormatter", "fmt": FIELDS, "rename_fields": RENAMED},
                       "access": {"()": "core.logs.AccessFormatter", "fmt": FIELDS, "rename_fields": RENAMED}},
        "filters": {"redact": {"()": "core.logs.RedactSecretPaths"}},
        "handlers": {"json": handler, "access": {**handler, "formatter": "access", "stream": "ext://sys.stdout",
                                                 "filters": ["redact"]}},
        "root": {"level": level, "handlers": []},
        "loggers": loggers,
    }


def configure(level=None):
    """Send this process's logs to stderr as JSON lines (once)."""
    root = logging.getLogger()
    if any(getattr(h, "_pdfqueue", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter())
    handler._pdfqueue = True
    root.addHandler(handler)
    root.setLevel(level or "INFO")


def init_app(app):
    """Configure JSON logging unless testing (pytest captures plain records)."""
    if not app.testing:
        configure(app.config["LOG_LEVEL"])
