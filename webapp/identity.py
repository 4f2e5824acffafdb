"""Who is asking: a random owner id in the signed session cookie, and CSRF on every change."""
import os
import secrets
from pathlib import Path

from flask import session
from flask_wtf.csrf import CSRFProtect

csrf = CSRFProtect()


def secret_key(instance_dir):
    """The key from SECRET_KEY, else one generated once into the instance folder (mode 0600)."""
    path = Path(instance_dir) / "secret_key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32))
    return path.read_text().strip()


def current_owner():
    """The owner id of this browser or script, minted on its first request."""
    owner = session.get("owner")
    if not owner:
        owner = session["owner"] = secrets.token_urlsafe(16)
        session.permanent = True
    return owner


def init_app(app):
    """Sign sessions, set cookie flags, and require the CSRF header on state changes."""
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = secret_key(app.config["INSTANCE_DIR"])
    app.config.setdefault("SESSION_COOKIE_HTTPONLY", True)
    app.config.setdefault("SESSION_COOKIE_SAMESITE", "Lax")
    app.config.setdefault("PERMANENT_SESSION_LIFETIME", 60 * 60 * 24 * 365)
    app.config.setdefault("WTF_CSRF_HEADERS", ["X-CSRF-Token"])
    # Dashboards stay open for days; the token lives as long as the session does.
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", None)
    csrf.init_app(app)

    @app.before_request
    def _ensure_owner():
        current_owner()
