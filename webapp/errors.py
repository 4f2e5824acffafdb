"""One place that turns every failure into the right answer: JSON under /api, a page elsewhere."""
import logging
import math
import time

from flask import jsonify, make_response, render_template, request
from flask_babel import lazy_gettext as _l
from flask_limiter.errors import RateLimitExceeded
from flask_wtf.csrf import CSRFError
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from core import codes
from core.db import db
from core.errors import ApiError, from_os_error, unavailable
from .htmx import is_htmx
from .limits import limiter

logger = logging.getLogger(__name__)

_CODES_BY_STATUS = {400: codes.BAD_REQUEST, 401: codes.UNAUTHENTICATED, 403: codes.FORBIDDEN, 404: codes.NOT_FOUND,
                    405: codes.METHOD_NOT_ALLOWED, 408: codes.REQUEST_TIMEOUT, 409: codes.CONFLICT,
                    410: codes.EXPIRED, 413: codes.TOO_LARGE, 415: codes.NOT_PDF, 416: codes.RANGE_NOT_SATISFIABLE,
                    429: codes.RATE_LIMITED, 503: codes.UNAVAILABLE}


def code_of_status(status):
    """The catalogue's code for an HTTP error werkzeug raised: its own, else the plain one of its class (the
    catalogue is complete: a script never meets a code that core/codes.py does not list)."""
    return _CODES_BY_STATUS.get(status) or (codes.BAD_REQUEST if status < 500 else codes.INTERNAL)


def render(error):
    """Answer with error: JSON for /api (and scripts), an HTML page for browsers elsewhere."""
    wants_json = request.path.startswith("/api/") or request.path.startswith("/d/") or not request.accept_mimetypes.accept_html
    if wants_json:
        response = jsonify(error.to_dict())
    else:
        template = "partials/_error.html" if is_htmx() else "error.html"
        response = render_template(template, error=error), error.status
        response = _as_response(response)
    response.status_code = error.status
    response.headers.update(error.headers)
    return response


def _as_response(value):
    return make_response(value)


def _seconds_until_free(limit):
    """Seconds until the breached limit takes a request again: in a moving window, when its oldest hit expires
    (not the whole window, so that a page sending files a few at a time waits no longer than it must)."""
    breached = limiter.current_limit
    if breached is None:
        return int(limit.limit.get_expiry())
    return max(1, math.ceil(breached.window[0] - time.time()))


def init_app(app):
    """Register the error handlers."""

    @app.errorhandler(ApiError)
    def _api_error(exc):
        return render(exc)

    @app.errorhandler(CSRFError)
    def _csrf(exc):
        return render(ApiError(codes.CSRF, 400, _l("The CSRF token is missing or wrong; reload the page and try again.")))

    @app.errorhandler(RateLimitExceeded)
    def _rate_limited(exc):
        retry_after = None
        limit = getattr(exc, "limit", None)
        if limit is not None:
            retry_after = str(_seconds_until_free(limit))
        # A limit with its own message says it (sign-ins); the upload limits say what was counted.
        own = limit is not None and limit.error_message
        message = exc.description if own else _l("Too many uploads (%(limit)s); wait and try again.", limit=exc.description)
        error = ApiError(codes.RATE_LIMITED, 429, message, {"Retry-After": retry_after} if retry_after else {})
        return render(error)

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(exc):
        limit = app.config["MAX_UPLOAD_MB"]
        response = render(ApiError(codes.TOO_LARGE, 413, _l("The upload is over the %(mb)s MB limit.", mb=limit)))
        response.headers["Connection"] = "close"  # we stopped reading; the rest of the body is not wanted
        return response

    @app.errorhandler(OperationalError)
    def _database_down(exc):
        db.session.rollback()
        logger.exception("database unavailable")
        return render(unavailable())

    @app.errorhandler(OSError)
    def _storage(exc):
        logger.exception("storage failure")
        return render(from_os_error(exc))

    @app.errorhandler(HTTPException)
    def _http(exc):
        message = _l("Not found.") if exc.code == 404 else exc.description
        # What the exception says beyond its page: a 405's Allow (RFC 9110 requires it), a 416's Content-Range.
        headers = {name: value for name, value in exc.get_headers() if name.lower() != "content-type"}
        return render(ApiError(code_of_status(exc.code), exc.code, message, headers))

    @app.errorhandler(Exception)
    def _unexpected(exc):
        db.session.rollback()
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return render(ApiError(codes.INTERNAL, 500, _l("Something went wrong on our side; it has been logged.")))
