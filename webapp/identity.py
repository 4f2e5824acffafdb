"""Who is asking, decided before any view runs: a signed-in user (a session cookie or a personal API token), the
user a trusted SSO proxy names (AUTH=proxy), or — with AUTH=none, one person on loopback — an anonymous owner
in this browser's cookie; and CSRF on every change made with a cookie.

Flask-Login keeps the signed-in user: its cookie holds the key of a UserSession row (core/accounts.py),
so signing out or disabling the user ends the session for good. A request that carries `Authorization: Bearer`
is that token's user whatever cookie comes with it (a wrong token is 401, never the cookie's user), needs no CSRF
token, since no other site can make a browser send that header, and is never answered with a Set-Cookie.
"""
import ipaddress
import secrets
from datetime import timedelta
from urllib.parse import urlsplit

from flask import current_app, g, redirect, request, session, url_for
from flask.sessions import SecureCookieSessionInterface
from flask_login import LoginManager, current_user
from flask_wtf.csrf import CSRFProtect

from . import htmx
from core import codes
from core.accounts import AccountError, ApiToken, User, UserSession
from core.errors import ApiError

PASSWORD, PROXY, NONE = "password", "proxy", "none"
MODES = (PASSWORD, PROXY, NONE)
LOOPBACK = ("127.0.0.1", "::1", "localhost")
# Reached without signing in: signing in itself, the one-time links, health, Prometheus, share links, assets.
PUBLIC_ENDPOINTS = {"auth.login", "auth.setup", "auth.link", "api.healthz", "metrics.metrics",
                    "shared.shared_download", "static", "i18n.choose_language"}
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")

# The plain upload form (no JavaScript, so no header): its csrf_token field is read from the body, once the
# request is known to come from our own pages (Origin / Sec-Fetch-Site, which every current browser sends).
FORM_TOKEN_UPLOADS = {"pages.upload_form"}


def same_origin():
    """True if the browser says this request comes from a page of this site."""
    if request.headers.get("Sec-Fetch-Site") == "same-origin":
        return True
    origin = request.headers.get("Origin")
    return bool(origin) and origin.rstrip("/") == request.host_url.rstrip("/")


def may_spend():
    """True if a read that changes state (a download that expires its result) may do so: it carries a valid
    token, or a POST passed the CSRF check, or the browser says it was asked for on our own pages or typed in
    (`Sec-Fetch-Site` same-origin or none). A link or a navigation from another site carries the session cookie
    too: such a read still answers, but changes nothing."""
    if current_user.is_authenticated and g.get("bearer"):
        return True
    if request.method == "POST":
        return True  # _require_identity checked its CSRF token before the view ran
    return request.headers.get("Sec-Fetch-Site") in ("same-origin", "none")


class HeaderFirstCSRF(CSRFProtect):
    """Flask-WTF's CSRF check, reading the token from the header before any form field: looking at a form field
    parses the body, and a multipart body's file parts would be written to disk before the token was checked."""

    def _get_csrf_token(self):
        for header_name in current_app.config["WTF_CSRF_HEADERS"]:
            if request.headers.get(header_name):
                return request.headers[header_name]
        if request.mimetype == "multipart/form-data" and not (
                request.endpoint in FORM_TOKEN_UPLOADS and same_origin()):
            return None  # refused before one byte of the body is read
        return super()._get_csrf_token()  # a small url-encoded form's csrf_token field


csrf = HeaderFirstCSRF()
login_manager = LoginManager()


def bearer_credentials(req):
    """The credentials of `Authorization: Bearer …`, or None when the request carries no bearer header."""
    scheme, _, credentials = req.headers.get("Authorization", "").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else None


class NoCookieForTokens(SecureCookieSessionInterface):
    """Flask's signed-cookie session, never sent back to a request authenticated by a bearer token: a script's
    cookie jar would otherwise turn its token requests into cookie requests (and their POSTs into CSRF failures)."""

    def save_session(self, app, session, response):
        if bearer_credentials(request) is not None:
            return
        super().save_session(app, session, response)


def current_owner():
    """The owner key of whoever is asking: the signed-in user's id, or (AUTH=none) this browser's random id."""
    if current_app.config["AUTH"] == NONE:
        owner = session.get("owner")
        if not owner:
            owner = session["owner"] = secrets.token_urlsafe(16)
            session.permanent = True
        return owner
    return current_user.id if current_user.is_authenticated else None


def is_admin():
    """True if the signed-in user may see and act on everyone's jobs."""
    return current_app.config["AUTH"] != NONE and current_user.is_authenticated and current_user.admin


def owner_scope(args):
    """Whose jobs this request sees: mine; for an admin, everyone's (None) with ?owner=all, or ?owner=<user id>'s."""
    asked = args.get("owner")
    if asked and is_admin():
        return None if asked == "all" else asked
    return current_owner()


def credentials_check(needs_admin):
    """A function that tells, later in a long answer (an event stream), whether this request's credentials still
    hold: its session not ended, its token not revoked, its user not disabled and, with needs_admin, still an admin.
    It reads the database; call it inside the app context."""
    config = current_app.config
    if config["AUTH"] == NONE:
        return lambda: True
    secret, session_key, user_id = bearer_credentials(request), current_user.session_key, current_user.id
    max_age = timedelta(days=config["SESSION_DAYS"])

    def still_hold():
        if secret is not None:
            user = ApiToken.user(secret)
        elif session_key:
            user = UserSession.user(session_key, max_age)
        else:  # AUTH=proxy: the proxy named this user; they may have been disabled since
            user = User.active(user_id)
        return user is not None and (user.admin or not needs_admin)
    return still_hold


def sign_in(user):
    """Start a fresh session for user in this browser (the old session's state, CSRF token included, goes)."""
    from flask_login import login_user
    session.clear()
    user.session_key = UserSession.start(user)
    login_user(user)


def sign_out():
    """End this browser's session, on the server too."""
    from flask_login import logout_user
    if current_user.is_authenticated and current_user.session_key:
        UserSession.end(current_user.session_key)
    logout_user()
    session.clear()


def safe_next(target):
    """target if it is a path on this site, else the queue (no open redirect through ?next=)."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc:
            return target
    return url_for("pages.queue_page")


@login_manager.user_loader
def _user_of_session(key):
    """The session cookie's user, unless the request carries a bearer token: then the token alone decides."""
    if bearer_credentials(request) is not None:
        return None  # Flask-Login then asks _user_of_request, which reads the token
    return UserSession.user(key, timedelta(days=current_app.config["SESSION_DAYS"]))


@login_manager.request_loader
def _user_of_request(req):
    """A personal API token (Authorization: Bearer), or the user a trusted proxy names (AUTH=proxy)."""
    credentials = bearer_credentials(req)
    if credentials is not None:
        g.bearer = True
        metrics_token = current_app.config.get("METRICS_TOKEN")
        if metrics_token and secrets.compare_digest(credentials.encode(), metrics_token.encode()):
            return None  # Prometheus: no user, and no database read (it must see a database that is down)
        return ApiToken.user(credentials)
    if current_app.config["AUTH"] == PROXY:
        email = req.headers.get(current_app.config["REMOTE_USER_HEADER"], "").strip()
        if email and _from_trusted_proxy(req):
            return _proxy_user(email)
    return None


def _from_trusted_proxy(req):
    """True if the request came straight from a TRUSTED_PROXIES address (its peer, before ProxyFix put the
    forwarded client address in its place) and, with PROXY_SECRET, carries the proxy's secret header. Anyone
    else naming a user is ignored, and logged."""
    config = current_app.config
    peer = req.environ.get("werkzeug.proxy_fix.orig", {}).get("REMOTE_ADDR", req.environ.get("REMOTE_ADDR"))
    trusted = _is_trusted_address(peer, config["TRUSTED_PROXIES"])
    if trusted and config["PROXY_SECRET"]:
        given = req.headers.get(config["PROXY_SECRET_HEADER"], "")
        trusted = secrets.compare_digest(given.encode(), config["PROXY_SECRET"].encode())
    if not trusted:
        current_app.logger.warning("ignored %s from %s: not a trusted proxy%s", config["REMOTE_USER_HEADER"], peer,
                                   " with the proxy's secret" if config["PROXY_SECRET"] else "")
    return trusted


def _is_trusted_address(peer, trusted):
    try:
        address = ipaddress.ip_address(peer or "")
    except ValueError:
        return False  # a Unix socket, or nothing: no address to trust
    if address.version == 6 and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in ipaddress.ip_network(item, strict=False) for item in trusted)


def _proxy_user(email):
    """The user the proxy vouches for, created on first sight; None if disabled or not an address."""
    user = User.by_email(email)
    if user is None:
        try:
            user = User.create(email)
        except AccountError:  # not an address, or created by a racing request meanwhile
            user = User.by_email(email)
    return user if user is not None and not user.disabled else None


def _require_identity():
    """Before every view: answer 401 (API) or send to /login (pages) without credentials; check CSRF."""
    config = current_app.config
    if config["AUTH"] == NONE:
        current_owner()
    elif request.endpoint not in PUBLIC_ENDPOINTS and not current_user.is_authenticated:
        if request.path.startswith("/api/") or g.get("bearer"):
            raise ApiError(codes.UNAUTHENTICATED, 401, "Sign in, or send a valid token as Authorization: Bearer.")
        target = url_for("auth.login", next=request.full_path.rstrip("?"))
        if htmx.is_htmx():
            return htmx.redirect(current_app.make_response(""), target)
        return redirect(target)
    if request.method in UNSAFE_METHODS and not (current_user.is_authenticated and g.get("bearer")):
        csrf.protect()  # a valid token needs none: no other site can make a browser send Authorization


def init_app(app):
    """Sign sessions, set cookie flags, load the user of each request and require credentials and CSRF."""
    config = app.config
    if config["AUTH"] not in MODES:
        raise SystemExit(f"AUTH must be one of {', '.join(MODES)}, not {config['AUTH']!r}")
    if config["AUTH"] == NONE and config["HOST"] not in LOOPBACK:
        raise SystemExit(f"AUTH=none serves one person on this machine: it refuses HOST={config['HOST']}")
    if config["AUTH"] == PROXY and not config.get("BEHIND_PROXY"):
        raise SystemExit("AUTH=proxy trusts a header only a proxy may set: it needs BEHIND_PROXY=1")
    if config["AUTH"] == NONE and config.get("BEHIND_PROXY"):
        raise SystemExit("AUTH=none serves one person on this machine: behind a proxy (BEHIND_PROXY) anyone the "
                         "proxy serves would be let in; use AUTH=password or AUTH=proxy")
    config.setdefault("SESSION_COOKIE_HTTPONLY", True)
    config.setdefault("SESSION_COOKIE_SAMESITE", "Lax")
    if config.get("BEHIND_PROXY") and config["SESSION_COOKIE_NAME"] == "session":
        config["SESSION_COOKIE_NAME"] = "__Host-session"  # HTTPS (Secure): the prefix pins the cookie to this host
    config["PERMANENT_SESSION_LIFETIME"] = timedelta(days=config["SESSION_DAYS"])
    config.setdefault("REMEMBER_COOKIE_DURATION", timedelta(seconds=0))  # no remember-me cookie beside the session
    config.setdefault("WTF_CSRF_HEADERS", ["X-CSRF-Token", "X-CSRFToken"])
    config.setdefault("WTF_CSRF_TIME_LIMIT", None)  # dashboards stay open for days; the token lives with the session
    config["WTF_CSRF_CHECK_DEFAULT"] = False  # checked in _require_identity, after credentials, token-only exempt
    csrf.init_app(app)
    app.session_interface = NoCookieForTokens()
    login_manager.init_app(app)
    login_manager.session_protection = None  # the session row is the protection; "strong" breaks on a new address
    app.before_request(_require_identity)
