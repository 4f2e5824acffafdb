"""/admin/users: invite people (and list and revoke pending invitations), disable and enable them, hand out reset
links, make admins (admins only)."""
from flask_babel import lazy_gettext as _l
from flask import Blueprint, abort, render_template, request
from flask_login import current_user
from sqlalchemy import select

from core.accounts import AccountError, OneTimeLink, User
from .auth import invite_link, reset_link
from core.db import db
from .identity import is_admin

bp = Blueprint("admin", __name__, url_prefix="/admin")


@bp.before_request
def _admins_only():
    if not is_admin():
        abort(404)  # like another's job: a page that is not yours does not exist


def _page(status=200, **extra):
    users = db.session.execute(select(User).order_by(User.email)).scalars().all()
    return render_template("admin_users.html", users=users, invitations=OneTimeLink.pending_invitations(),
                           **extra), status


def _user_or_404(user_id):
    user = db.session.get(User, user_id)
    if user is None:
        abort(404)
    return user


@bp.get("/users")
def users_page():
    """List everyone's accounts, with an invitation form."""
    return _page()


@bp.post("/users/invite")
def invite():
    """Make a one-time invitation link for an address (shown to the admin to pass on)."""
    email = request.form.get("email", "")
    try:
        link = invite_link(email, admin=request.form.get("admin") == "1")
    except AccountError as error:
        return _page(400, error=str(error))
    return _page(notice=_l("Send this one-time link to %(email)s; it works for a week:", email=email.strip().lower()),
                 link=link)


@bp.post("/invitations/<secret_digest>/revoke")
def revoke_invitation(secret_digest):
    """Revoke a pending invitation: its link answers 410 from now on."""
    email = next((link.email for link in OneTimeLink.pending_invitations() if link.secret_digest == secret_digest),
                 None)
    if email is None or not OneTimeLink.revoke_invitation(secret_digest):
        return _page(404, error=_l("No such pending invitation: it was used, revoked or has expired."))
    return _page(notice=_l("The invitation of %(email)s is revoked.", email=email))


@bp.post("/users/<user_id>/reset")
def reset(user_id):
    """Make a one-time link for the user to choose a new password."""
    user = _user_or_404(user_id)
    return _page(notice=_l("Send this one-time link to %(email)s; it works for a week:", email=user.email),
                 link=reset_link(user))


@bp.post("/users/<user_id>/<action>")
def change(user_id, action):
    """Disable (ending every session and token at once), enable, make admin, or no longer admin."""
    changes = {"disable": {"disabled": True}, "enable": {"disabled": False},
               "make-admin": {"admin": True}, "revoke-admin": {"admin": False}}
    if action not in changes:
        abort(404)
    user = _user_or_404(user_id)
    if user.id == current_user.id and action in ("disable", "revoke-admin"):
        return _page(400, error=_l("You cannot disable yourself or take your own admin rights; ask another admin."))
    user.change(**changes[action])
    return _page(notice=_l("%(email)s: done.", email=user.email))


def init_app(app):
    app.register_blueprint(bp)
