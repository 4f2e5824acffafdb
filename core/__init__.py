"""pdfqueue's core, shared by the web and the worker: the jobs table and its transitions, accounts, the outbox, the
change hub, the queue's declaration, the job operations, and the plumbing under them (config, db, logs, keys).

build_app() makes the Flask app both processes stand on: configuration, the database, logging, the secret key,
the queue, the counters and the change hub, and no views. The web adds its own (webapp/__init__.py); the
worker runs under create_app() as it is.
"""
from pathlib import Path

from flask import Flask

from core import changes, config, counters, db, i18n, keys, logs, queue, sources  # noqa: F401 (sources: its table)
from core.jobs.model import Job


def build_app(import_name, test_config=None):
    """A Flask app named import_name, configured from the environment with test_config on top, its core bound."""
    settings = config.read(test_config)  # typed and checked, once (core/config.py)
    values = config.derive({**(test_config or {}), **settings.model_dump()})  # other keys (TESTING…) pass through
    app = Flask(import_name, instance_path=values["INSTANCE_DIR"])
    app.config.from_mapping(values)
    app.extensions["settings"] = settings
    app.config.setdefault("MIGRATIONS_DIR", str(config.REPO_ROOT / "migrations"))
    for key in ("INSTANCE_DIR", "UPLOAD_DIR", "RESULT_DIR"):
        Path(app.config[key]).mkdir(parents=True, exist_ok=True)
    logs.init_app(app)
    keys.init_app(app)
    db.init_app(app)
    queue.init_app(app)
    counters.init_app(app)
    changes.init_app(app, changes_after=Job.owners_changed_after)
    return app


def create_app(test_config=None):
    """The app of a process with no pages (the worker): the core alone."""
    app = build_app(__name__, test_config)
    i18n.init_app(app)  # emails in their recipient's language
    return app
