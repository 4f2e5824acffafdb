"""The languages pages and emails speak (Flask-Babel over Babel's CLDR data): en, and the catalogues of
webapp/translations for the others (core.config.LOCALES).

The web chooses each request's language (webapp/i18n.py); the worker writes an email in its recipient's
(force_locale). Both read the same catalogues, compiled by `make setup` (`make translations`).
"""
from flask_babel import Babel, force_locale, get_locale  # noqa: F401  (force_locale, get_locale: for callers)

from core.config import LOCALES, REPO_ROOT

TRANSLATIONS = REPO_ROOT / "webapp" / "translations"

babel = Babel()


def known(locale):
    """locale if it is one we speak (en, pt_PT; pt-PT and pt read as pt_PT), else None."""
    if not locale:
        return None
    wanted = str(locale).replace("-", "_")
    for ours in LOCALES:
        if wanted.lower() == ours.lower() or wanted.lower() == ours.split("_")[0].lower():
            return ours
    return None


def init_app(app, locale_selector=None, timezone_selector=None):
    """Bind Flask-Babel to app with the catalogues, DEFAULT_LOCALE and DEFAULT_TIMEZONE."""
    app.config["BABEL_DEFAULT_LOCALE"] = app.config["DEFAULT_LOCALE"]
    app.config["BABEL_DEFAULT_TIMEZONE"] = app.config["DEFAULT_TIMEZONE"]
    app.config["BABEL_TRANSLATION_DIRECTORIES"] = str(TRANSLATIONS)
    babel.init_app(app, locale_selector=locale_selector, timezone_selector=timezone_selector)


def locale_of(user, default):
    """The language to write to user in: their own choice, else default (DEFAULT_LOCALE)."""
    return known(getattr(user, "locale", None)) or default
