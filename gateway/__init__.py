"""The embedded conversion gateway: a WSGI app that turns PDFs into XML through data-file mappings."""

# Multipart headers and the small form fields ride on top of the file itself.
MULTIPART_SLACK = 64 * 1024


def create_app(test_config=None):
    """Build the gateway app: settings from the environment, mappings loaded and checked once."""
    # Imported here, not above: the parse zygote (zygote.py) imports the package's parsing modules, and each
    # megabyte Flask and pydantic would add to it is copied again by every fork.
    from flask import Flask

    from . import api, config, errors, forms, logs, mappings, zygote

    app = Flask(__name__)
    app.request_class = forms.GatewayRequest
    app.config.from_mapping(config.from_env())
    if test_config:
        app.config.update(test_config)
    app.config["MAX_CONTENT_LENGTH"] = app.config["MAX_MB"] * (1 << 20) + MULTIPART_SLACK
    app.extensions["gateway.mappings"] = mappings.load_all(app.config["MAPPINGS_DIR"])
    app.extensions["gateway.zygote"] = zygote.for_mappings(app.extensions["gateway.mappings"])
    errors.init_app(app)
    logs.init_app(app)
    app.register_blueprint(api.bp)
    return app
