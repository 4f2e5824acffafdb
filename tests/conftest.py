"""Shared fixtures: an app on real SQLite files in tmp_path, a CSRF-aware client (its answers from /api/ checked
against the OpenAPI document), a live server, the fake gateway.
The helpers they use, which benchmarks share, are in tests/support/."""
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from flask_migrate import upgrade
from werkzeug.routing import Rule
from werkzeug.serving import make_server

from tests.support.app import WORKER_SETTINGS, ApiClient
from tests.support.contract import ContractClient
from tests.support.fakegateway import FakeGateway
from webapp import create_app
from core.db import db
from webapp.limits import limiter


TEST_SECRET_KEY = "test-secret-key-0123456789abcdefghijklmnop"


# Nearly every test builds an app, and two thirds of building one is werkzeug compiling two URL builders (Python
# code, made from an AST) for each of the app's routes: the same code for the same route in every app. Compiled
# once per process here instead. What a builder's code depends on is the key (werkzeug's Rule._compile_builder:
# the rule's parts, its defaults and append_unknown); each rule still binds the function to itself.
_compile_builder = Rule._compile_builder
_builders = {}


def _compile_builder_once(rule, append_unknown=True):
    key = (rule.rule, tuple(rule._trace), repr(sorted((rule.defaults or {}).items())), append_unknown)
    if key not in _builders:
        _builders[key] = _compile_builder(rule, append_unknown)
    return _builders[key]


Rule._compile_builder = _compile_builder_once


@pytest.fixture(scope="session")
def migrated_database(tmp_path_factory):
    """A SQLite database upgraded by the real migrations once per session (per xdist worker): make_app copies it
    rather than running every migration again for each test. The migrations' own tests upgrade and downgrade
    databases of their own (tests/core/test_migrations.py...), and every stack runs `flask db upgrade`."""
    app = create_app({"DATA_DIR": str(tmp_path_factory.mktemp("migrated")), "TESTING": True,
                      "SECRET_KEY": TEST_SECRET_KEY, "HUEY_MEMORY": True})
    with app.app_context():
        upgrade(directory=app.config["MIGRATIONS_DIR"])
        db.engine.dispose()
    path = Path(app.config["INSTANCE_DIR"]) / "pdfqueue.db"
    assert app.config["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{path}"
    # Fold the write-ahead log into the file (WAL mode stays set in it), so that the file alone is the database.
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
    assert not path.with_name(path.name + "-wal").exists()
    return path


# argon2 at its real cost takes 64 MiB and a few tenths of a second per hash or check, and the sign-in tests make
# dozens. In-process apps hash passwords with the same algorithm at its lowest cost, except in tests marked
# real_argon2 (those of the hashing itself); the stacks' processes always hash at the real cost.
CHEAP_HASHER = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)


@pytest.fixture
def make_app(tmp_path, migrated_database, request, monkeypatch):
    """Build an app on tmp_path with overrides; its database is upgraded by the real migrations (a SQLite one
    new to this test starts as a copy of the session's migrated_database, which is the same thing made once)."""
    from core import accounts, breaker_state
    if not request.node.get_closest_marker("real_argon2"):
        monkeypatch.setattr(accounts, "hasher", CHEAP_HASHER)
    accounts._dummy_hash.cache_clear()  # made by the hasher of the test that first needed it
    # This process's last look at the breaker (kept a second) was at another test's database: look again.
    monkeypatch.setitem(breaker_state._seen, "at", float("-inf"))
    request.addfinalizer(accounts._dummy_hash.cache_clear)
    apps = []

    def build(**overrides):
        config = {"DATA_DIR": str(tmp_path), "TESTING": True, "SECRET_KEY": TEST_SECRET_KEY,
                  "METRICS_TOKEN": "test-metrics-token",
                  "GATEWAY_URL": "http://127.0.0.1:9", "HUEY_MEMORY": True}
        config.update(overrides)
        app = create_app(config)
        app.test_client_class = ContractClient  # every answer from /api/ is checked against the OpenAPI document
        path = Path(app.config["INSTANCE_DIR"]) / "pdfqueue.db"
        fresh_sqlite = app.config["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{path}" and not path.exists()
        if fresh_sqlite:
            shutil.copyfile(migrated_database, path)
        with app.app_context():
            if not fresh_sqlite:
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


# Fixtures made once for many tests that are cheap enough to make once per xdist worker, by (folder, name): the
# session's migrated database, and the browser tests' stack and chromium (two workers each starting their own cost
# a few seconds and save a minute of pages waiting one after another).
PER_WORKER = {("tests", "migrated_database"), ("tests/browser", "stack"), ("tests/browser", "chromium"),
              ("tests/browser", "artifacts")}
WIDER = ["class", "module", "package", "session"]


def _shared_group(item):
    """Where the widest fixture the test shares with others lives (None if it shares none), by the fixture's scope:
    its module (module and class scope) or its conftest's folder (package and session scope)."""
    widest = None
    for name in item.fixturenames:
        fixturedef = (item._fixtureinfo.name2fixturedefs.get(name) or [None])[-1]
        # Skip pytest's own (tmp_path_factory and the like: no baseid) and the cheap ones.
        if (fixturedef is None or fixturedef.scope not in WIDER or not fixturedef.baseid
                or (fixturedef.baseid, name) in PER_WORKER):
            continue
        rank = WIDER.index(fixturedef.scope)
        home = item.nodeid.split("::")[0] if rank < 2 else fixturedef.baseid
        if widest is None or rank > widest[0]:
            widest = rank, home
    return widest and widest[1]


def pytest_itemcollected(item):
    """Under `--dist loadgroup` (make test), tests sharing a stack (a module's, the browser tests', the scale-out
    package's) run on one worker, so that it starts once; the others are dealt out one by one.

    Marked as each test is collected: xdist turns the marks into its groups in its own
    pytest_collection_modifyitems, which runs before a conftest's."""
    group = _shared_group(item)
    if group:
        item.add_marker(pytest.mark.xdist_group(group))
