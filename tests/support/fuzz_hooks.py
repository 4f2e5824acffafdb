"""Schemathesis hooks for fuzzing a stack of ours (tests/support/schemathesis.toml; tests/web/test_api_fuzz.py).

A webhook URL is resolved when it is made, and a webhook is called when a job finishes: a generated URL naming any
host could send DNS look-ups or deliveries off this machine. So every URL sent to POST /api/webhooks names an
address literal or localhost (nothing to look up): loopback on a port where nothing listens, the one host the
stack allows (WEBHOOK_ALLOWED_HOSTS), or it is refused before any connection (a private literal, a bad scheme).
"""
import ipaddress
import os
from urllib.parse import urlsplit

import schemathesis

SAFE_URL = "http://127.0.0.1:9/hook"  # discard port: a delivery there fails at once, on this machine


def _offline(url):
    """True if checking or calling url needs no name looked up: it has no host, or an address literal or localhost."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return True  # refused as malformed before any look-up
    if not host or host == "localhost":
        return True
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


@schemathesis.hook("before_call")
def keep_webhooks_here(context, case, kwargs):
    """Keep webhook URLs on this machine (see the module's docstring)."""
    if case.operation.path == "/api/webhooks" and isinstance(case.body, dict):
        url = case.body.get("url")
        if isinstance(url, str) and not _offline(url):
            case.body["url"] = SAFE_URL


@schemathesis.hook("before_call")
def keep_own_token(context, case, kwargs):
    """Never revoke the token the run itself signs in with (a 401 for the rest of it would test nothing)."""
    own = os.environ.get("PDFQUEUE_FUZZ_TOKEN_ID")
    if own and case.operation.path == "/api/tokens/{token_id}" and case.path_parameters.get("token_id") == own:
        case.path_parameters["token_id"] = "not-the-runs-own-token"
