"""Shared fixtures: an app on real SQLite files in tmp_path, a CSRF-aware client, a live server, the fake gateway.
The helpers they use, which benchmarks share, are in tests/support/."""
import threading

import pytest
from flask_migrate import upgrade
from werkzeug.serving import make_server

from tests.support.app import WORKER_SETTINGS, ApiClient
from tests.support.fakegateway import FakeGateway
from webapp import create_app
from core.db import db
from webapp.limits import limiter


@pytest.fixture
def make_app(tmp_path):
    """Build an app on tmp_path with overrides; its database is upgraded by the real migrations."""
    apps = []

    def build(**overrides):
        config = {"DATA_DIR": str(tmp_path), "TESTING": True, "SECRET_KEY": "test-secret-key-0123456789abcdefghijklmnop",
                  "METRICS_TOKEN": "test-metrics-token",
                  "GATEWAY_URL": "http://127.0.0.1:9", "HUEY_MEMORY": True}
        config.update(overrides)
        app = create_app(config)
        with app.app_context():
            upgrade(directory=app.config["MIGRATIONS_DIR"])
            limiter.reset()
        apps.append(app)
        return app

    yield build
    for app in apps:
        with app.app_context():
            db.engine.dispose()


@pytest.fixture
def fake():
    """The fake gateway on loopback (tests/support/fakegateway.py), stopped afterwards."""
    gateway = FakeGateway().start()
    yield gateway
    gateway.stop()


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def worker_app(make_app, fake):
    """An app whose worker tasks (run in-process with run()) talk to the fake gateway."""
    return make_app(GATEWAY_URL=fake.url, UPLOADS_PER_MINUTE=100, **WORKER_SETTINGS)


@pytest.fixture
def api(worker_app):
    return ApiClient(worker_app.test_client())


@pytest.fixture
def client(app):
    return ApiClient(app.test_client())


@pytest.fixture
def other_client(app):
    return ApiClient(app.test_client())


@pytest.fixture
def live_server(app):
    """The app on a real threaded HTTP server on loopback; yields its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join()
