"""htmx's headers by name, in one place, and the few helpers views need to read and set them.

Hand-written: flask-htmx covers the same ground, but it is six lines of logic and a misspelt header
(its HX-Boost) is exactly the bug that constants prevent.
"""
import json

from flask import request

# Sent by htmx with its requests.
HX_REQUEST = "HX-Request"
HX_BOOSTED = "HX-Boosted"
HX_CURRENT_URL = "HX-Current-URL"
HX_HISTORY_RESTORE_REQUEST = "HX-History-Restore-Request"
HX_PROMPT = "HX-Prompt"
HX_TARGET = "HX-Target"
HX_TRIGGER_NAME = "HX-Trigger-Name"
HX_TRIGGER = "HX-Trigger"  # on a request: the id of the element that triggered it; on a response: events

# Understood by htmx on responses.
HX_LOCATION = "HX-Location"
HX_PUSH_URL = "HX-Push-Url"
HX_REDIRECT = "HX-Redirect"
HX_REFRESH = "HX-Refresh"
HX_REPLACE_URL = "HX-Replace-Url"
HX_RESELECT = "HX-Reselect"
HX_RESWAP = "HX-Reswap"
HX_RETARGET = "HX-Retarget"
HX_TRIGGER_AFTER_SETTLE = "HX-Trigger-After-Settle"
HX_TRIGGER_AFTER_SWAP = "HX-Trigger-After-Swap"

# A polling response with this status tells htmx to stop polling.
STOP_POLLING = 286

# Our own event, fired by responses (HX-Trigger): a job became active, so a stopped poller looks again.
QUEUE_ACTIVE = "queue:active"


def is_htmx(req=None):
    """True if the request was made by htmx (not a full page load, not a history restore)."""
    req = req or request
    return req.headers.get(HX_REQUEST) == "true" and req.headers.get(HX_HISTORY_RESTORE_REQUEST) != "true"


def trigger(response, events, header=HX_TRIGGER):
    """Ask htmx to fire events (a name, or a dict of name -> detail) on the client; merges with earlier ones."""
    if isinstance(events, str):
        events = {events: None}
    current = response.headers.get(header)
    merged = {}
    if current:
        merged = json.loads(current) if current.lstrip().startswith("{") else {name.strip(): None for name in current.split(",")}
    merged.update(events)
    response.headers[header] = json.dumps(merged, separators=(",", ":"))
    return response


def redirect(response, url):
    """Make htmx load url as a full page (a plain redirect would be followed and swapped in as a fragment)."""
    response.headers[HX_REDIRECT] = url
    return response
