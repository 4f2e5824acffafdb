"""/admin/sources: the mailboxes and folders whose PDFs become jobs (core/sources.py): add one, see how its polls
go (last poll, last error, counts), switch it off and on, remove it (admins only)."""
from flask import Blueprint, abort, current_app, render_template, request
from flask_babel import gettext as _
from sqlalchemy import select

from core.accounts import User
from core.db import db
from core.sources import Source, SourceError, create
from .identity import is_admin

bp = Blueprint("sources", __name__, url_prefix="/admin/sources")


@bp.before_request
def _admins_only():
    if not is_admin():
        abort(404)  # like another's job: a page that is not yours does not exist


def _page(status=200, **extra):
    emails = dict(db.session.execute(select(User.id, User.email)).all())
    return render_template("admin_sources.html", sources=Source.listed(), emails=emails,
                           mappings=current_app.config["MAPPINGS"],
                           default_mapping=current_app.config["DEFAULT_MAPPING"], **extra), status


@bp.get("")
def sources_page():
    """List the sources and how their polls went, with a form to add one."""
    return _page()


@bp.post("")
def add():
    """Add a mailbox or folder source for an owner."""
    form = request.form
    senders = form.get("allow_from", "").replace(",", "\n").splitlines()
    try:
        source = create(form.get("url", ""), form.get("owner", "").strip().lower(), form.get("mapping") or None,
                        senders, form.get("password") or None)
    except SourceError as error:
        return _page(400, error=str(error), form=form)
    return _page(201, notice=_("Source %(id)s added: %(url)s. Its first poll is due now.", id=source.id,
                                 url=source.url))


@bp.post("/<int:source_id>/<action>")
def change(source_id, action):
    """Switch a source off or on (due at once), or remove it (its jobs stay)."""
    if action not in ("enable", "disable", "remove"):
        abort(404)
    done = Source.remove(source_id) if action == "remove" else Source.set_enabled(source_id, action == "enable")
    if not done:
        return _page(404, error=_("There is no source %(id)s.", id=source_id))
    notices = {"enable": _("Source %(id)s is on; its next poll is due now.", id=source_id),
               "disable": _("Source %(id)s is off.", id=source_id),
               "remove": _("Source %(id)s is removed.", id=source_id)}
    return _page(notice=notices[action])


def init_app(app):
    app.register_blueprint(bp)
