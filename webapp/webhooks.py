"""/api/webhooks and the notifications settings page: a user's webhooks, their deliveries, and email choices."""
from flask_babel import lazy_gettext as _l
from flask import Blueprint, current_app, jsonify, redirect, render_template, request, url_for
from flask_login import current_user

from core import codes
from core.errors import ApiError
from core.outbox import EMAIL_EVENTS, WEBHOOK_EVENTS, NotifyError, OutboxEvent, Subscription

bp = Blueprint("webhooks", __name__)


@bp.before_request
def _accounts_only():
    """Webhooks and email choices belong to an account: with AUTH=none there is none to keep them."""
    if not current_user.is_authenticated:
        raise ApiError(codes.UNAUTHENTICATED, 401, "Notifications need an account (AUTH=none has none).")


def _api_error(error):
    return ApiError(error.code, 400, error.message)


def _add(url, events):
    return Subscription.add_webhook(current_user.id, url, events, current_app.config["WEBHOOK_ALLOWED_HOSTS"])


def _mine(hook_id):
    hook = next((h for h in Subscription.webhooks_of(current_user.id) if h.id == hook_id), None)
    if hook is None:
        raise ApiError(codes.NOT_FOUND, 404, "No such webhook.")
    return hook


# -- the API --------------------------------------------------------------------------------------


@bp.get("/api/webhooks")
def index():
    """List my webhooks (without their secrets), each with how its deliveries go."""
    return jsonify(webhooks=[hook.to_dict() for hook in Subscription.webhooks_of(current_user.id)])


@bp.post("/api/webhooks")
def create():
    """Make a webhook; its signing secret appears only in this answer."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(codes.BAD_REQUEST, 400, 'Send JSON: {"url": "https://…", "events": ["job.complete"]}.')
    try:
        hook, secret = _add(body.get("url"), body.get("events", list(WEBHOOK_EVENTS)))
    except NotifyError as error:
        raise _api_error(error)
    return jsonify({"id": hook.id, "url": hook.url, "events": hook.event_list, "secret": secret}), 201


@bp.delete("/api/webhooks/<hook_id>")
def delete(hook_id):
    """Delete one of my webhooks, and its undelivered events."""
    if not Subscription.remove_webhook(current_user.id, hook_id):
        raise ApiError(codes.NOT_FOUND, 404, "No such webhook.")
    return "", 204


@bp.get("/api/webhooks/<hook_id>/deliveries")
def deliveries(hook_id):
    """The webhook's latest deliveries: state, attempts, last status, next try."""
    hook = _mine(hook_id)
    return jsonify(deliveries=[event.to_dict() for event in OutboxEvent.recent(hook.id, limit=50)])


# -- the settings page ----------------------------------------------------------------------------


def _page(status=200, **extra):
    hooks = Subscription.webhooks_of(current_user.id)
    context = {"hooks": hooks, "deliveries": {hook.id: OutboxEvent.recent(hook.id, limit=5) for hook in hooks},
               "summaries": {hook.id: OutboxEvent.summary(hook.id) for hook in hooks},
               "email_on": Subscription.email_of(current_user.id), "email_ready": bool(current_app.config["SMTP_URL"]),
               "webhook_events": WEBHOOK_EVENTS, "email_events": EMAIL_EVENTS, "new_secret": None, "error": None}
    context.update(extra)
    return render_template("notifications.html", **context), status


@bp.get("/notifications")
def page():
    """Show my webhooks with their deliveries, and my email choices."""
    return _page()


@bp.get("/notifications/deliveries")
def deliveries_partial():
    """The deliveries tables alone, which the page refreshes while any delivery is pending."""
    hooks = Subscription.webhooks_of(current_user.id)
    summaries = {hook.id: OutboxEvent.summary(hook.id) for hook in hooks}
    return render_template("partials/_deliveries.html", hooks=hooks, summaries=summaries,
                           deliveries={hook.id: OutboxEvent.recent(hook.id, limit=5) for hook in hooks})


@bp.post("/notifications/webhooks")
def create_form():
    """Make a webhook from the page's form and show its secret, once."""
    try:
        hook, secret = _add(request.form.get("url"), request.form.getlist("events"))
    except NotifyError as error:
        return _page(400, error=_l("%(message)s (%(code)s)", message=error.message, code=error.code))
    return _page(new_secret=secret, new_hook=hook)


@bp.post("/notifications/webhooks/<hook_id>/delete")
def delete_form(hook_id):
    """Delete one of my webhooks from the page."""
    Subscription.remove_webhook(current_user.id, hook_id)
    return redirect(url_for("webhooks.page"), code=303)


@bp.post("/notifications/email")
def email_form():
    """Set my email choices from the page."""
    events = request.form.getlist("events")
    if events and not current_app.config["SMTP_URL"]:
        return _page(400, error=_l("This service has no SMTP_URL set, so it sends no email (%(code)s).", code=codes.EMAIL_OFF))
    try:
        Subscription.choose_email(current_user.id, events)
    except NotifyError as error:
        return _page(400, error=error.message)
    return redirect(url_for("webhooks.page"), code=303)


def init_app(app):
    app.register_blueprint(bp)
