"""The one JSON log format of every pdfqueue process (web, worker, gateway, and both gunicorns): one event a line,
with the same keys everywhere (ts, level, logger, message, plus each event's own fields). In a terminal
(LOG_FORMAT=text, or auto with stderr a terminal) the same events are short readable lines instead."""
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


# Fields of an event worth showing on a readable line, after its message.
TEXT_FIELDS = ("job_id", "correlation_id", "event_id", "attempts", "error_code")


def wants_text(log_format, stream=None):
    """True if logs should be readable lines: LOG_FORMAT=text, or auto with the stream (stderr) a terminal."""
    if log_format == "auto":
        stream = stream or sys.stderr
        return hasattr(stream, "isatty") and stream.isatty()
    return log_format == "text"


class TextFormatter(logging.Formatter):
    """`12:03:04 WARNING worker.run: message  job_id=… correlation_id=…`: one short line an event."""

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")

    def format(self, record):
        line = super().format(record)
        extras = " ".join(f"{name}={getattr(record, name)}" for name in TEXT_FIELDS
                          if getattr(record, name, None) is not None)
        return f"{line}  {extras}" if extras and "\n" not in line else line


class TextAccessFormatter(logging.Formatter):
    """gunicorn's access lines as `12:03:04 GET /api/jobs 200 3.1 ms 127.0.0.1`."""

    def format(self, record):
        atoms = record.args if isinstance(record.args, dict) else {}
        query = f"?{atoms['q']}" if atoms.get("q") else ""
        return (f"{self.formatTime(record, '%H:%M:%S')} {atoms.get('m', '-')} {atoms.get('U', '-')}{query} "
                f"{atoms.get('s', '-')} {atoms.get('D', 0) / 1000:.1f} ms {atoms.get('h', '-')}")


def formatter(log_format="json"):
    """A formatter writing records in the one format (or, in a terminal, as readable lines)."""
    return TextFormatter() if wants_text(log_format) else JsonFormatter(FIELDS, rename_fields=RENAMED)


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


def gunicorn_logconfig(level, access=True, log_format="json"):
    """gunicorn's logconfig_dict: its own lines (start-up, worker exits; the access log on stdout, one JSON object
    of fields a request) in the one format, or as readable lines (log_format, see wants_text)."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    loggers = {"gunicorn.error": {"level": "INFO", "handlers": ["json"], "propagate": False}}
    if access:
        loggers["gunicorn.access"] = {"level": "INFO", "handlers": ["access"], "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "pythonjsonlogger.json.JsonFormatter", "fmt": FIELDS, "rename_fields": RENAMED},
                       "access": {"()": "core.logs.AccessFormatter", "fmt": FIELDS, "rename_fields": RENAMED}}
        if not wants_text(log_format) else {"json": {"()": "core.logs.TextFormatter"},
                                             "access": {"()": "core.logs.TextAccessFormatter"}},
        "filters": {"redact": {"()": "core.logs.RedactSecretPaths"}},
        "handlers": {"json": handler, "access": {**handler, "formatter": "access", "stream": "ext://sys.stdout",
                                                 "filters": ["redact"]}},
        "root": {"level": level, "handlers": []},
        "loggers": loggers,
    }


def configure(level=None, log_format="json"):
    """Send this process's logs to stderr as JSON lines, or readable ones (once)."""
    # Alembic announces each of its plugins at INFO whenever it loads: noise before every admin command's answer.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    root = logging.getLogger()
    if any(getattr(h, "_pdfqueue", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    handler._pdfqueue = True
    root.addHandler(handler)
    root.setLevel(level or "INFO")


def init_app(app):
    """Configure logging unless testing (pytest captures plain records)."""
    if not app.testing:
        configure(app.config["LOG_LEVEL"], app.config["LOG_FORMAT"])
