"""pdfqueue's web process: create_app() adds the web's extensions and blueprints to the core's app."""
import core


def create_app(test_config=None):
    """Build the app from the environment, then test_config on top."""
    app = core.build_app(__name__, test_config)

    from . import (admin, api, apidoc, auth, bulk, cli, errors, i18n, identity, limits, metrics, pages, security,
                   sources, stream, uploads, webhooks)

    security.init_app(app)
    identity.init_app(app)
    i18n.init_app(app)
    limits.init_app(app)
    uploads.init_app(app)
    errors.init_app(app)
    auth.init_app(app)
    admin.init_app(app)
    sources.init_app(app)
    webhooks.init_app(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(api.shared)
    bulk.init_app(app)
    stream.init_app(app)
    apidoc.init_app(app)
    pages.init_app(app)
    metrics.init_app(app)
    cli.init_app(app)
    return app
