"""Upload rate limits: per owner, counted per file, and a looser one per client address."""
from flask import current_app, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from .identity import current_owner


limiter = Limiter(key_func=current_owner, headers_enabled=True, strategy="moving-window")


def files_in_request():
    """Each uploaded file costs one; a request with none still costs one."""
    return max(1, len(request.files.getlist("file")))


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
ARCHIVE_LIMIT = "20/minute"


def bulk_limit(view):
    """Decorate a bulk view (POST /api/jobs/bulk) with its per-owner limit."""
    return limiter.limit(BULK_LIMIT, key_func=current_owner, scope="bulk-owner")(view)


def archive_limit(view):
    """Decorate the archive view (GET /api/jobs/archive) with its per-owner limit."""
    return limiter.limit(ARCHIVE_LIMIT, key_func=current_owner, scope="archive-owner")(view)


def upload_limits(view):
    """Decorate the upload view with both limits."""
    view = limiter.limit(owner_limit, key_func=current_owner, cost=files_in_request, scope="upload-owner")(view)
    view = limiter.limit(address_limit, key_func=get_remote_address, cost=files_in_request, scope="upload-ip")(view)
    return view


def init_app(app):
    """Bind the limiter to memory (one web process) or Redis (several)."""
    app.config.setdefault("RATELIMIT_STORAGE_URI", app.config.get("REDIS_URL") or "memory://")
    app.config.setdefault("RATELIMIT_HEADERS_ENABLED", True)
    limiter.init_app(app)
