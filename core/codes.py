"""Every error code pdfqueue says, in one place: the API's answers and a job's error_code.

The codes are contracts (../shared/spec/api.md): scripts branch on them, so they are only ever added.
"""

# -- on a job (its error_code) --------------------------------------------------------------------
GW_4XX = "GW_4XX"  # the gateway refused the file: final
GW_5XX = "GW_5XX"  # the gateway failed or broke off: retried
GW_TIMEOUT = "GW_TIMEOUT"  # the gateway did not answer in time: retried
GW_OVER_LIMITS = "GW_OVER_LIMITS"  # the gateway's parse ran past its limits (a PDF bomb): final, after one call
GW_PARSE_FAILED = "GW_PARSE_FAILED"  # the gateway's parse raised on the file (a pdfium or mapping bug): final
IO_ERROR = "IO_ERROR"  # our own storage failed: retried (final when the uploaded PDF is gone)
CIRCUIT_OPEN = "CIRCUIT_OPEN"  # held by the open breaker: still queued, nothing spent
LEASE_EXPIRED = "LEASE_EXPIRED"  # the worker stopped answering mid-job: retried like a transient failure
# Also on a job: TOO_LARGE (the gateway answered 413: final) and UNKNOWN_MAPPING (its mapping was taken out of
# MAPPINGS after the upload: final), both below.

# -- answers of the API (error.code) ------------------------------------------------------------
BAD_REQUEST = "BAD_REQUEST"
CSRF = "CSRF"
EMPTY = "EMPTY"
EXPIRED = "EXPIRED"
INSUFFICIENT_STORAGE = "INSUFFICIENT_STORAGE"
INTERNAL = "INTERNAL"
METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
CONFLICT = "CONFLICT"
FORBIDDEN = "FORBIDDEN"
NO_FILE = "NO_FILE"
NOT_FOUND = "NOT_FOUND"
NOT_PDF = "NOT_PDF"
NOT_QUEUED = "NOT_QUEUED"
NOT_READY = "NOT_READY"
NOT_RETRYABLE = "NOT_RETRYABLE"
RATE_LIMITED = "RATE_LIMITED"
TOO_LARGE = "TOO_LARGE"
UNAUTHENTICATED = "UNAUTHENTICATED"
UNAVAILABLE = "UNAVAILABLE"
UNKNOWN_MAPPING = "UNKNOWN_MAPPING"
WEBHOOK_URL = "WEBHOOK_URL"  # a webhook URL that is malformed, not https:// (and not an allowed host), or unresolvable
PRIVATE_ADDRESS = "PRIVATE_ADDRESS"  # a webhook host on a loopback, link-local or private address, not allowed
EMAIL_OFF = "EMAIL_OFF"  # an email choice while the service has no SMTP_URL
REQUEST_TIMEOUT = "REQUEST_TIMEOUT"  # 408: the body took longer than BODY_TIMEOUT_SECONDS to arrive
RANGE_NOT_SATISFIABLE = "RANGE_NOT_SATISFIABLE"  # 416: a Range outside the file (GET /api/jobs/<id>/pdf)

# Every code above, in order: the ErrorCode enum of GET /api/openapi.json (webapp/apidoc.py).
CATALOGUE = tuple(value for name, value in dict(globals()).items() if name.isupper() and isinstance(value, str))
