"""Signing in and out, the one-time links (first admin's set-up, invitations, resets), and personal API tokens."""
from datetime import timedelta

from flask_babel import lazy_gettext as _l
from flask import Blueprint, current_app, has_request_context, jsonify, redirect, render_template, request, url_for
from flask_login import current_user

from core import codes
from core.accounts import (INVITE, RESET, SETUP, AccountError, ApiToken, OneTimeLink, User, authenticate, check_password,
                       normalize_email)
from core.db import db
from core.errors import ApiError
from .identity import safe_next, sign_in, sign_out
from .limits import action_limit, client_address, limiter

bp = Blueprint("auth", __name__)

SETUP_LIFETIME = timedelta(days=1)
SIGN_IN_FAILED = _l("The email or password is wrong, or the account is disabled.")
LINK_DEAD = _l("This link has been used, has expired, or was never ours. Ask an admin for a new one.")


def _signin_failed(response):
    """Only failed sign-ins spend the throttle: a person who gets it right is never slowed down."""
    return response.status_code == 401


def _signin_email():
    return (request.form.get("email") or "").strip().lower()


def _signin_account_here():
    return f"account:{_signin_email()}|address:{client_address()}"


def _signin_account():
    return "account:" + _signin_email()


def _per_account_here():
    return f"{current_app.config['SIGNINS_PER_MINUTE']}/minute"


def _per_account():
    # From any address: ten times looser, so a stranger failing from one address locks that address out of the
    # account and no one else, while a guesser spread over many addresses is still stopped.
    return f"{current_app.config['SIGNINS_PER_MINUTE'] * 10}/minute"


def _per_address():
    # Several people may share one address (an office NAT): a looser limit per address than per account.
    return f"{current_app.config['SIGNINS_PER_MINUTE'] * 4}/minute"


SIGNIN_THROTTLED = _l("Too many failed sign-ins; wait a minute and try again.")


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(_per_account_here, key_func=_signin_account_here, methods=["POST"], deduct_when=_signin_failed,
               scope="signin-account-address", error_message=SIGNIN_THROTTLED)
@limiter.limit(_per_account, key_func=_signin_account, methods=["POST"], deduct_when=_signin_failed,
               scope="signin-account", error_message=SIGNIN_THROTTLED)
@limiter.limit(_per_address, key_func=client_address, methods=["POST"], deduct_when=_signin_failed,
               scope="signin-address", error_message=SIGNIN_THROTTLED)
def login():
    """Show the sign-in form, or sign in with email and password."""
    target = safe_next(request.values.get("next"))
    if current_user.is_authenticated:
        return redirect(target)
    if request.method == "GET":
        return render_template("login.html", next=target, email="")
    email = request.form.get("email", "")
    user = authenticate(email, request.form.get("password", ""))
    if user is None:
        return render_template("login.html", next=target, email=email, error=SIGN_IN_FAILED), 401
    sign_in(user)
    return redirect(target, code=303)


@bp.post("/logout")
def logout():
    """Sign out: this browser's session ends on the server too."""
    sign_out()
    return redirect(url_for("auth.login"), code=303)


def _password_form(template_args, on_submit):
    """GET: the choose-a-password form; POST: on_submit(email, password) → the user to sign in."""
    if request.method == "GET":
        return render_template("password.html", **template_args)
    password = request.form.get("password", "")
    if password != request.form.get("confirm", ""):
        return render_template("password.html", error=_l("The two passwords differ."), **template_args), 400
    try:
        check_password(password)  # before on_submit spends the link: a short password must not cost it
        user = on_submit(request.form.get("email", template_args.get("email") or ""), password)
    except AccountError as error:
        return render_template("password.html", error=str(error), **template_args), 400
    if user is None:
        return render_template("error.html", error=ApiError(codes.EXPIRED, 410, LINK_DEAD)), 410
    sign_in(user)
    return redirect(url_for("pages.queue_page"), code=303)


@bp.route("/setup/<secret>", methods=["GET", "POST"])
def setup(secret):
    """Create the first admin through the link the web process printed at start (works once, only while no user exists)."""
    link = OneTimeLink.find(secret, SETUP)
    if link is None:
        return render_template("error.html", error=ApiError(codes.EXPIRED, 410, LINK_DEAD)), 410

    def create(email, password):
        email = normalize_email(email)  # a typo in the address must not spend the link either
        if not link.use():
            return None
        return User.create(email, password, admin=True)
    return _password_form({"title": _l("Set up pdfqueue"), "intro": _l("Create the first admin account."),
                           "ask_email": True, "email": ""}, create)


@bp.route("/link/<secret>", methods=["GET", "POST"])
def link(secret):
    """Join through an invitation, or choose a new password through a reset link (each works once)."""
    found = OneTimeLink.find(secret, INVITE) or OneTimeLink.find(secret, RESET)
    if found is None:
        return render_template("error.html", error=ApiError(codes.EXPIRED, 410, LINK_DEAD)), 410
    if found.purpose == INVITE:
        args = {"title": _l("Join pdfqueue"), "intro": _l("Choose a password for %(email)s.", email=found.email),
                "email": found.email}

        def spend(_email, password):
            if User.by_email(found.email) is not None:
                raise AccountError(_l("%(email)s already has an account; sign in instead.", email=found.email))
            return User.create(found.email, password, admin=found.admin) if found.use() else None
    else:
        user = db.session.get(User, found.user_id) if found.user_id else None
        if user is None or user.disabled:
            return render_template("error.html", error=ApiError(codes.EXPIRED, 410, LINK_DEAD)), 410
        args = {"title": _l("Choose a new password"), "intro": _l("A new password for %(email)s.", email=user.email),
                "email": user.email,
                "tokens": len(ApiToken.of(user))}

        def spend(_email, password):
            if not found.use():
                return None
            user.set_password(password, revoke_tokens=request.form.get("revoke_tokens") == "1")
            return user
    return _password_form(args, spend)


def setup_link(app):
    """A fresh first-run set-up link while nobody has an account, else None (the web prints it at start)."""
    with app.app_context():
        if User.exists():
            return None
        OneTimeLink.forget_expired()
        with app.test_request_context(base_url=app.config["PUBLIC_URL"]):
            return url_for("auth.setup", secret=OneTimeLink.create(SETUP, SETUP_LIFETIME), _external=True)


def setup_banner(link):
    """The lines the web process prints at start while nobody has an account."""
    rule = "=" * max(60, len(link) + 4)
    return (f"\n{rule}\n  No account exists yet. Create the first admin here (the link works once, for a day):"
            f"\n\n  {link}\n\n{rule}\n\n")


def invite_link(email, admin=False):
    """A one-time link (INVITE_DAYS) that lets email choose a password and join; raise AccountError if taken."""
    email = normalize_email(email)
    if User.by_email(email) is not None:
        raise AccountError(_l("%(email)s already has an account.", email=email))
    secret = OneTimeLink.create(INVITE, timedelta(days=current_app.config["INVITE_DAYS"]), email=email, admin=admin)
    return _absolute(url_for("auth.link", secret=secret))


def reset_link(user):
    """A one-time link (INVITE_DAYS) for user to choose a new password."""
    secret = OneTimeLink.create(RESET, timedelta(days=current_app.config["INVITE_DAYS"]), user=user)
    return _absolute(url_for("auth.link", secret=secret))


def _absolute(path):
    base = request.host_url.rstrip("/") if has_request_context() else current_app.config["PUBLIC_URL"]
    return base + path


# -- personal API tokens -------------------------------------------------------------------------


@bp.get("/tokens")
def tokens_page():
    """Show my API tokens, with a form to make one."""
    return render_template("tokens.html", tokens=ApiToken.of(current_user), new_secret=None)


@bp.post("/tokens")
@action_limit("tokens")
def tokens_create_form():
    """Make a token from the page's form and show its secret, once."""
    try:
        token, secret = ApiToken.create(current_user, request.form.get("name"))
    except AccountError as error:
        return render_template("tokens.html", tokens=ApiToken.of(current_user), new_secret=None,
                               error=str(error)), 400
    return render_template("tokens.html", tokens=ApiToken.of(current_user), new_secret=secret, new_token=token)


@bp.post("/tokens/<token_id>/revoke")
@action_limit("tokens")
def tokens_revoke_form(token_id):
    """Revoke one of my tokens from the page."""
    ApiToken.revoke(current_user, token_id)
    return redirect(url_for("auth.tokens_page"), code=303)


@bp.get("/api/tokens")
def tokens_index():
    """List my tokens, without their secrets."""
    return jsonify(tokens=[token.to_dict() for token in ApiToken.of(current_user)])


@bp.post("/api/tokens")
@action_limit("tokens")
def tokens_create():
    """Make a personal API token; its secret appears only in this answer."""
    body = request.get_json(silent=True) or {}
    name = body.get("name") if isinstance(body, dict) else None
    if name is not None and not isinstance(name, str):
        raise ApiError(codes.BAD_REQUEST, 400, "'name' must be a string: what uses the token.")
    try:
        token, secret = ApiToken.create(current_user, name)
    except AccountError as error:
        raise ApiError(codes.BAD_REQUEST, 400, error.args[0])
    return jsonify({**token.to_dict(), "token": secret}), 201


@bp.delete("/api/tokens/<token_id>")
@action_limit("tokens")
def tokens_delete(token_id):
    """Revoke one of my tokens: it answers 401 from now on."""
    if not ApiToken.revoke(current_user, token_id):
        raise ApiError(codes.NOT_FOUND, 404, "No such token.")
    return "", 204


def init_app(app):
    app.register_blueprint(bp)
