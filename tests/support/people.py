"""Test people: an account with a signed-in session cookie or a personal API token, made straight in the database.

The sign-in form costs an argon2 hash per person and has tests of its own (tests/web/test_accounts.py); everything
else signs in this way, as fast as a cookie.
"""
import secrets
from types import SimpleNamespace

from core.accounts import ApiToken, User, UserSession


def new_email(tag="user"):
    return f"{tag}-{secrets.token_hex(4)}@example.com"


def snapshot(user):
    """What tests need of a user, still readable once its app context is gone."""
    return SimpleNamespace(id=user.id, email=user.email, admin=user.admin)


def signed_in(app, admin=False, email=None):
    """(user, session cookie value): a new account, signed in as if through /login."""
    with app.app_context():
        user = User.create(email or new_email(), admin=admin)
        key = UserSession.start(user)
        cookie = app.session_interface.get_signing_serializer(app).dumps({"_user_id": key, "_fresh": True})
        return snapshot(user), cookie


def with_token(app, admin=False, email=None):
    """(user, API token): a new account and a personal token for it, as `flask tokens create` makes."""
    with app.app_context():
        user = User.create(email or new_email("script"), admin=admin)
        _, secret = ApiToken.create(user, "tests")
        return snapshot(user), secret


def test_client(app, admin=False):
    """A Flask test client signed in as a new user."""
    client = app.test_client()
    client.user, cookie = signed_in(app, admin=admin)
    client.set_cookie(app.config["SESSION_COOKIE_NAME"], cookie)
    return client


def http_session(app, base_url, admin=False):
    """A requests session signed in as a new user, for app's live server at base_url."""
    import requests
    from urllib.parse import urlsplit
    session = requests.Session()
    session.user, cookie = signed_in(app, admin=admin)
    # The host's own domain, as the server's Set-Cookie has it, so that its updates replace this cookie.
    session.cookies.set(app.config["SESSION_COOKIE_NAME"], cookie, domain=urlsplit(base_url).hostname, path="/")
    return session
