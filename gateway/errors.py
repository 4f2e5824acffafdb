"""The gateway's one error type, and handlers that answer every error in the contract's JSON shape.

Flask is imported by the handlers, not here: the parse zygote raises GatewayError without loading Flask
(zygote.py says why)."""

import logging

logger = logging.getLogger(__name__)

# Werkzeug's own refusals, in the contract's codes.
_HTTP_CODES = {400: "BAD_REQUEST", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "TOO_LARGE"}


class GatewayError(Exception):
    """A refusal or failure with its HTTP status and a short code; 4xx are final, 5xx transient.

    traceback: the text of the exception behind it, when there is one (a parse that raised in its child): the
    parent logs it with the request."""

    def __init__(self, status, code, message, traceback=None):
        super().__init__(message)
        self.status, self.code, self.message, self.traceback = status, code, message, traceback


def error_response(status, code, message):
    from flask import jsonify

    response = jsonify({"error": {"code": code, "message": " ".join(str(message).split())}})
    response.status_code = status
    return response


def _gateway_error(exc):
    from flask import g

    if exc.traceback:
        logger.error("%s %s: %s", exc.status, exc.code, exc.message,
                     extra={"correlation_id": g.get("correlation_id"), "traceback": exc.traceback})
    return error_response(exc.status, exc.code, exc.message)


def _http_error(exc):
    from flask import current_app

    status = exc.code or 500
    if status == 413:  # werkzeug's own cap, hit while streaming a body that had no Content-Length
        return error_response(413, "TOO_LARGE", f"the upload is over the {current_app.config['MAX_MB']} MiB limit")
    if status >= 500:
        return error_response(502, "GATEWAY_ERROR", exc.description)
    return error_response(status, _HTTP_CODES.get(status, "HTTP_%d" % status), exc.description)


def _unexpected(exc):
    logger.exception("unexpected error while handling a request")
    return error_response(502, "GATEWAY_ERROR", "the gateway failed on this request; retry later")


def init_app(app):
    from werkzeug.exceptions import HTTPException

    app.register_error_handler(GatewayError, _gateway_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
