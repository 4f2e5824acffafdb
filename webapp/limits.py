"""Rate limits: uploads per owner (counted per file part) and per client address; retries, shares and token
changes per owner; clients keyed by address, IPv6 ones by their /64 (one host usually holds a whole /64)."""
import ipaddress

from flask import current_app, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from .identity import current_owner


def client_address():
    """The client's address as a rate-limit key: IPv4 as is, IPv6 as its /64 network."""
    raw = get_remote_address() or ""
    try:
        address = ipaddress.ip_address(raw)
    except ValueError:
        return raw
    if address.version == 6:
        if address.ipv4_mapped:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


limiter = Limiter(key_func=current_owner, headers_enabled=True, strategy="moving-window")


def files_in_request():
    """Each uploaded file part costs one, whatever its part's name; a request with none still costs one."""
    return max(1, sum(1 for _ in request.files.items(multi=True)))


def _per_window(count):
    """count per upload window: a minute, unless UPLOAD_WINDOW_SECONDS says otherwise (tests shorten it)."""
    window = current_app.config["UPLOAD_WINDOW_SECONDS"]
    return f"{count}/minute" if window == 60 else f"{count}/{window} seconds"


def owner_limit():
    return _per_window(current_app.config["UPLOADS_PER_MINUTE"])


def address_limit():
    # Several people may share one address (an office NAT), so this only stops cookie-dropping floods.
    return _per_window(current_app.config["UPLOADS_PER_MINUTE"] * 6)


# Bulk work on the queue: each request may touch hundreds of jobs, so a person needs few of them a minute.
BULK_LIMIT = "30/minute"
BULK_ADDRESS_LIMIT = "120/minute"
ARCHIVE_LIMIT = "20/minute"


def bulk_limit(view):
    """Decorate a bulk view (POST /api/jobs/bulk) with its per-owner limit, and four times that per address."""
    view = limiter.limit(BULK_LIMIT, key_func=current_owner, scope="bulk-owner")(view)
    return limiter.limit(BULK_ADDRESS_LIMIT, key_func=client_address, scope="bulk-ip")(view)


def archive_limit(view):
    """Decorate the archive view (GET /api/jobs/archive) with its per-owner limit."""
    return limiter.limit(ARCHIVE_LIMIT, key_func=current_owner, scope="archive-owner")(view)


def upload_limits(view):
    """Decorate an upload view (the API's, the plain form's) with both limits, shared by every upload view."""
    view = limiter.shared_limit(owner_limit, key_func=current_owner, cost=files_in_request, scope="upload-owner")(view)
    view = limiter.shared_limit(address_limit, key_func=client_address, cost=files_in_request, scope="upload-ip")(view)
    return view


def _actions_limit():
    return f"{current_app.config['ACTIONS_PER_MINUTE']}/minute"


def _actions_address_limit():
    return f"{current_app.config['ACTIONS_PER_MINUTE'] * 4}/minute"


def action_limit(scope):
    """Decorate a view that changes something (retry, share, tokens, bulk) with a per-owner and a per-address limit,
    each shared by every view of the same scope."""
    def decorate(view):
        view = limiter.shared_limit(_actions_limit, scope=f"{scope}-owner", key_func=current_owner)(view)
        return limiter.shared_limit(_actions_address_limit, scope=f"{scope}-ip", key_func=client_address)(view)
    return decorate


def init_app(app):
    """Bind the limiter to memory (one web process) or Redis (several)."""
    app.config.setdefault("RATELIMIT_STORAGE_URI", app.config.get("REDIS_URL") or "memory://")
    app.config.setdefault("RATELIMIT_HEADERS_ENABLED", True)
    limiter.init_app(app)
