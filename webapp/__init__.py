"""pdfqueue's web process: create_app() wires configuration, extensions and blueprints."""
from pathlib import Path

from flask import Flask

from . import config as config_module


def create_app(test_config=None):
    """Build the app from the environment, then test_config on top."""
    settings = config_module.from_env()
    settings.update(test_config or {})
    settings = config_module.derive(settings)
    app = Flask(__name__, instance_path=settings["INSTANCE_DIR"])
    app.config.from_mapping(settings)
    app.config.setdefault("MIGRATIONS_DIR", str(config_module.REPO_ROOT / "migrations"))
    for key in ("INSTANCE_DIR", "UPLOAD_DIR", "RESULT_DIR"):
        Path(app.config[key]).mkdir(parents=True, exist_ok=True)

    from . import (admin, api, auth, bulk, cli, db, errors, events, identity, limits, logs, metrics, pages, queue,
                   security, stream, uploads, webhooks)
    from .models import Job

    logs.init_app(app)
    security.init_app(app)
    db.init_app(app)
    identity.init_app(app)
    limits.init_app(app)
    uploads.init_app(app)
    errors.init_app(app)
    queue.init_app(app)
    auth.init_app(app)
    admin.init_app(app)
    webhooks.init_app(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(api.shared)
    bulk.init_app(app)
    events.init_app(app, changes_after=Job.owners_changed_after)
    stream.init_app(app)
    pages.init_app(app)
    metrics.init_app(app)
    cli.init_app(app)
    return app
