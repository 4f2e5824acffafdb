"""The reader's language and how numbers, money, dates and times read in it.

Each request speaks the language the person chose in the header's menu (kept on their account; for someone not
signed in, in their session), else the best of en / pt_PT their browser asks for (Accept-Language), else
DEFAULT_LOCALE; times are shown in DEFAULT_TIMEZONE. The page's JavaScript gets its sentences from the same
catalogue, as a JSON block (`js_messages`), never a catalogue of its own.
"""
from datetime import date
from decimal import Decimal

from flask import Blueprint, current_app, has_request_context, redirect, request, session
from flask_babel import (format_currency, format_date, format_datetime, format_decimal, format_time, get_locale,
                         get_translations, gettext, lazy_gettext as _l, lazy_pgettext,
                         to_user_timezone)
from flask_babel.speaklater import LazyString
from flask_login import current_user

from core import codes, i18n
from core.clock import parse_iso
from core.config import LOCALES
from core.errors import ApiError
from .identity import safe_next

bp = Blueprint("i18n", __name__)

# Each language as it names itself, for the menu (never translated: a reader finds their own).
LANGUAGE_NAMES = {"en": "English", "pt_PT": "Português"}


def select_locale():
    """The request's language: the person's choice, else their browser's best, else None (DEFAULT_LOCALE)."""
    if not has_request_context():  # a lazy message said outside a request (the CLI, a test): DEFAULT_LOCALE
        return None
    chosen = getattr(current_user, "locale", None) if current_user.is_authenticated else session.get("locale")
    if i18n.known(chosen):
        return i18n.known(chosen)
    # pt-BR and plain pt read Portuguese, the nearest we have.
    return i18n.known(request.accept_languages.best_match([*LOCALES, "pt"]))


def html_lang():
    """The <html lang> of the request's language: en, pt-PT."""
    return str(get_locale()).replace("_", "-")


@bp.post("/language")
def choose_language():
    """Keep the language chosen in the menu (on the account, or in the session), then go back to the page."""
    locale = request.form.get("locale", "")
    if locale and locale not in LOCALES:
        raise ApiError(codes.BAD_REQUEST, 400, _l("Choose one of the languages offered."))
    if current_user.is_authenticated:
        current_user.choose_locale(locale or None)
    else:
        session["locale"] = locale
    return redirect(safe_next(request.form.get("next")), code=303)


# -- formats -------------------------------------------------------------------------------------------------


def filesize(count):
    """1234567 -> '1.2 MB' (en), '1,2 MB' (pt_PT)."""
    if count is None:
        return ""
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            number = format_decimal(count, "#,##0") if unit == "B" else format_decimal(count, "#,##0.0")
            return f"{number} {unit}"
        count /= 1024


def seconds(value):
    """0.25 -> '250 ms', 4.25 -> '4.2 s' ('4,2 s'), 75 -> '1 min 15 s'."""
    if value is None:
        return "—"
    if value < 1:
        return f"{format_decimal(value * 1000, '#,##0')} ms"
    if value < 60:
        return f"{format_decimal(value, '#,##0.0')} s"
    minutes, rest = divmod(round(value), 60)
    return f"{format_decimal(minutes, '#,##0')} min {rest} s"


def when(value):
    """A stored time (naive UTC, or its ISO text) as the reader writes it, in DEFAULT_TIMEZONE:
    'Apr 3, 2025, 2:05:09 PM', '03/04/2025, 14:05:09'."""
    if isinstance(value, str):
        value = parse_iso(value) if value else None
    return format_datetime(value, "medium") if value else ""


def hour(value):
    """A stored time's hour of the day in DEFAULT_TIMEZONE: '14:00', '2:00 PM'."""
    return format_time(value, "short") if value else ""


def zone():
    """The name of the time zone times are shown in (DEFAULT_TIMEZONE)."""
    return current_app.config["DEFAULT_TIMEZONE"]


def _decimal(text):
    """The finite number in an XML text ("." decimals), or None."""
    try:
        value = Decimal(str(text).strip())
    except ArithmeticError:
        return None
    return value if value.is_finite() else None


def amount(text, currency=None):
    """An invoice's amount (its XML's text, "." decimals) as the reader writes it, with the invoice's currency when
    known: '1,375,808.29', '1 375 808,29 €'. Text that is no number is shown as it is."""
    value = None if text is None else _decimal(text)
    if value is None:
        return text
    if currency:
        try:
            return format_currency(value, currency)
        except (ValueError, KeyError):
            pass  # not an ISO 4217 code: the number alone
    return format_decimal(value, "#,##0.00")


def number(text):
    """A quantity or percentage (its XML's text) with the reader's decimal mark, as many decimals as it has."""
    value = None if text is None else _decimal(text)
    if value is None:
        return text
    places = max(-value.as_tuple().exponent, 0)
    return format_decimal(value, "#,##0" + ("." + "0" * places if places else ""))


def day(text):
    """An invoice's ISO date as the reader writes it: 'Apr 3, 2025', '03/04/2025'; other text as it is."""
    if text is None:
        return None
    try:
        return format_date(date.fromisoformat(str(text).strip()), "medium")
    except ValueError:
        return text


# -- the page's JavaScript ------------------------------------------------------------------------------------

# A job's status (core/jobs/states.py) as a sentence says it ("fatura.pdf: complete", "the job is queued").
STATUS_WORDS = {"queued": lazy_pgettext("job status", "queued"),
                "processing": lazy_pgettext("job status", "processing"),
                "complete": lazy_pgettext("job status", "complete"), "failed": lazy_pgettext("job status", "failed")}


# A failed job's error, by its code, for readers of another language than the gateway's and worker's English (the
# stored message is English; codes in core/codes.py).
JOB_ERRORS = {
    codes.GW_4XX: _l("The gateway refused the file."),
    codes.GW_5XX: _l("The gateway failed or broke off."),
    codes.GW_TIMEOUT: _l("The gateway did not answer in time."),
    codes.GW_OVER_LIMITS: _l("Reading the PDF went past the gateway's limits."),
    codes.GW_PARSE_FAILED: _l("The gateway could not read the PDF."),
    codes.IO_ERROR: _l("Our own storage failed."),
    codes.CIRCUIT_OPEN: _l("The gateway is down; the job waits for it."),
    codes.LEASE_EXPIRED: _l("The worker stopped answering during the job."),
    codes.TOO_LARGE: _l("The file is too large for the gateway."),
    codes.UNKNOWN_MAPPING: _l("Its mapping is no longer offered."),
}
DELIVERY_STATES = {"pending": _l("pending"), "delivered": _l("delivered"), "failed": _l("failed"),
                   "skipped": _l("skipped")}


# An answer's error, by its code, for a page or script whose reader is not reading English and whose message is the
# API's own English one (a lazy message, _l(...), is said in the reader's language as it is).
ERRORS = {
    codes.BAD_REQUEST: _l("The request was not understood."),
    codes.CSRF: _l("The CSRF token is missing or wrong; reload the page and try again."),
    codes.EMPTY: _l("The file is empty."),
    codes.EXPIRED: _l("It was removed by retention, or the link has expired."),
    codes.INSUFFICIENT_STORAGE: _l("There is no room for it (your storage quota, or the server's disk); nothing of "
                                   "it was kept."),
    codes.INTERNAL: _l("Something went wrong on our side; it has been logged."),
    codes.METHOD_NOT_ALLOWED: _l("That cannot be done here."),
    codes.CONFLICT: _l("That conflicts with the job's state; reload the page."),
    codes.FORBIDDEN: _l("Only an admin may do that."),
    codes.NO_FILE: _l("Send at least one PDF in a multipart part named 'file'."),
    codes.NOT_FOUND: _l("Not found."),
    codes.NOT_PDF: _l("Not a PDF: only .pdf files are accepted."),
    codes.NOT_QUEUED: _l("Only a queued job can be moved to the front of the queue."),
    codes.NOT_READY: _l("The result is not ready yet."),
    codes.NOT_RETRYABLE: _l("This job cannot be retried."),
    codes.RATE_LIMITED: _l("Too many requests; wait a moment and try again."),
    codes.TOO_LARGE: _l("The file is over the upload limit."),
    codes.UNAUTHENTICATED: _l("Sign in first."),
    codes.UNAVAILABLE: _l("Storage or database is unavailable; try again shortly."),
    codes.UNKNOWN_MAPPING: _l("That mapping is not offered here."),
    codes.REQUEST_TIMEOUT: _l("The request took too long to arrive; try again."),
    codes.RANGE_NOT_SATISFIABLE: _l("That part of the file does not exist."),
}


def error_text(error):
    """An ApiError's message as its page's reader reads it: a lazy message in their language, the API's English
    one in English, else its code's sentence."""
    if isinstance(error.message, LazyString) or str(get_locale()) == "en" or error.code not in ERRORS:
        return str(error.message)
    return str(ERRORS[error.code])


def job_error(job):
    """A job's error as its reader reads it: the stored English sentence, or in another language its code's."""
    if str(get_locale()) == "en" or job.error_code not in JOB_ERRORS:
        return job.error or ""
    return str(JOB_ERRORS[job.error_code])


def js_messages():
    """Every sentence app.js and review.js say, in the reader's language: {key: text or {one, other}} with
    %(name)s placeholders the script fills (app.js t())."""
    translations = get_translations()

    def plural(singular, plural_):  # unformatted: the script fills %(num)d (extracted with -k plural:1,2)
        return {"one": translations.ngettext(singular, plural_, 1), "other": translations.ngettext(singular, plural_, 2)}

    return {
        "server_answered": gettext("The server answered %(status)s."),
        "not_pdf": gettext("Not a PDF: only .pdf files are accepted."),
        "empty": gettext("The file is empty."),
        "too_large": gettext("Too large: the limit is %(mb)s MB."),
        "not_sent": gettext("%(problem)s Not sent."),
        "over_limit": gettext("Over the limit of files a minute: goes by itself in %(seconds)s s"),
        "upload_of": gettext("Upload of %(name)s"),
        "waiting": gettext("Waiting…"),
        "sending": gettext("Sending… %(percent)s%%"),
        "duplicate": gettext("Already uploaded: this is the same file as an existing job."),
        "accepted": gettext("Accepted, queued."),
        "unreachable": gettext("The upload did not reach the server; check the connection and try again."),
        "summary_accepted": plural("%(num)d accepted", "%(num)d accepted"),
        "summary_duplicates": plural("%(num)d duplicate (already uploaded: the existing job)",
                                     "%(num)d duplicates (already uploaded: the existing jobs)"),
        "summary_rejected": plural("%(num)d rejected", "%(num)d rejected"),
        "go_to_queue": gettext("Go to the queue"),
        "all_uploaded": gettext("All uploaded: %(summary)s Opening the queue…"),
        "live": gettext("Live: updates appear as they happen."),
        "reconnecting": gettext("Reconnecting…"),
        "deleted": gettext("%(name)s deleted"),
        "queued_again": gettext("%(name)s is queued again."),
        "skipped_not_retryable": gettext("not failed, or its PDF is gone"),
        "skipped_not_found": gettext("no longer there"),
        "skipped": gettext("%(count)s skipped (%(why)s)"),
        "all_matching_selected": plural("The %(num)d matching job selected", "All %(num)d matching jobs selected"),
        "selected": plural("%(num)d job selected", "%(num)d jobs selected"),
        "none_selected": gettext("No job selected"),
        "select_all_matching": plural("Select the %(num)d matching", "Select all %(num)d matching"),
        "nothing_to_download": gettext("None of the selected jobs has a result to download yet."),
        "preparing_zip": plural("Preparing a ZIP of %(num)d result", "Preparing a ZIP of %(num)d results"),
        "requeued": plural("%(num)d job queued again", "%(num)d jobs queued again"),
        "confirm_delete": plural("Delete %(num)d job and its result?", "Delete %(num)d jobs and their results?"),
        "deleted_many": plural("%(num)d job deleted", "%(num)d jobs deleted"),
        "slow": gettext("taking longer than usual"),
        "notifications_on": gettext("Notifications on"),
        "notify_me": gettext("Notify me when a batch finishes"),
        "batch_finished": gettext("pdfqueue: the batch is finished"),
        "batch_counts": gettext("%(complete)s complete, %(failed)s failed"),
        "share_for": plural("for %(num)d minute, until %(time)s", "for %(num)d minutes, until %(time)s"),
        "share_until": gettext("until %(time)s"),
        "share_link": gettext("Share link (valid %(validity)s): "),
        "viewer_failed": gettext("The PDF viewer could not be loaded; open the PDF on its own instead."),
        "cannot_draw": gettext("This PDF cannot be drawn here: %(reason)s"),
        "page_of": gettext("Page %(number)s of %(pages)s"),
        "page_of_name": gettext("Page %(number)s of %(pages)s of %(name)s"),
        "not_drawn": gettext("could not be drawn: %(reason)s"),
        "statuses": {name: str(word) for name, word in STATUS_WORDS.items()},
        # The API's errors by code, for a reader of another language than its English (app.js errorText()).
        "errors": {} if str(get_locale()) == "en" else {code: str(text) for code, text in ERRORS.items()},
        "locale": html_lang(),
    }


@bp.app_context_processor
def _i18n_globals():
    return {"html_lang": html_lang, "js_messages": js_messages, "language_names": LANGUAGE_NAMES,
            "current_locale": lambda: str(get_locale()), "chosen_locale": _chosen_locale, "time_zone": zone,
            "status_word": lambda status: STATUS_WORDS.get(status, status), "job_error": job_error, "error_text": error_text,
            "delivery_state": lambda state: DELIVERY_STATES.get(state, state)}


def _chosen_locale():
    """What the person chose in the menu ('' for their browser's)."""
    if current_user.is_authenticated:
        return current_user.locale or ""
    return session.get("locale", "")


def init_app(app):
    i18n.init_app(app, locale_selector=select_locale)
    for name, filter_ in (("filesize", filesize), ("seconds", seconds), ("when", when), ("hour", hour),
                          ("amount", amount), ("number", number), ("day", day),
                          ("user_time", to_user_timezone)):
        app.add_template_filter(filter_, name)
    app.register_blueprint(bp)
