"""The failure every entry point answers with: a stable code, an HTTP status and one line a person can read.

The core's operations raise it; the web turns it into JSON or a page (webapp/errors.py), the CLI prints it.
"""
import errno

from flask_babel import force_locale, lazy_gettext as _l

from core import codes


class ApiError(Exception):
    """A failure with a stable code, an HTTP status and one line a person can read."""

    def __init__(self, code, status, message, headers=None):
        super().__init__(english(message))
        # message may be lazy (lazy_gettext): a page shows it in its reader's language, the API says it in English.
        self.code, self.status, self.message, self.headers = code, status, message, headers or {}

    def to_dict(self):
        return {"error": {"code": self.code, "message": english(self.message)}}


def english(message):
    """The message as the API says it, in English whatever the reader's language (codes are the contract)."""
    with force_locale("en"):
        return str(message)


def not_found():
    return ApiError(codes.NOT_FOUND, 404, _l("No such job."))


def unavailable(message=_l("Storage or database is unavailable; try again shortly.")):
    return ApiError(codes.UNAVAILABLE, 503, message, {"Retry-After": "5"})


def insufficient_storage():
    return ApiError(codes.INSUFFICIENT_STORAGE, 507, _l("The server's disk is full; nothing of the upload was kept."))


def from_os_error(exc):
    """Map a storage failure to the answer the API promises."""
    return insufficient_storage() if exc.errno in (errno.ENOSPC, errno.EDQUOT) else unavailable()
