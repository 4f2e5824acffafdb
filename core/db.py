"""The database handle: SQLite tuned for several processes, and the write-transaction helper."""
from contextlib import contextmanager

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import event
from sqlalchemy.engine import Engine

db = SQLAlchemy()

SQLITE_BUSY_TIMEOUT_MS = 15000
_IMMEDIATE = "pdfqueue_immediate"


def init_app(app):
    """Bind SQLAlchemy, and Alembic (`flask db ...`) unless the process never migrates (the worker)."""
    db.init_app(app)
    if app.config.get("MIGRATE", True):
        from flask_migrate import Migrate  # Alembic weighs ~10 MB; the worker has no use for it
        Migrate(app, db, directory=str(app.config["MIGRATIONS_DIR"]))


@event.listens_for(Engine, "connect")
def _sqlite_on_connect(dbapi_connection, _record):
    if type(dbapi_connection).__module__ != "sqlite3":
        return
    # Let SQLAlchemy's "begin" event emit BEGIN itself, so writes can ask for IMMEDIATE.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


@event.listens_for(Engine, "begin")
def _sqlite_on_begin(conn):
    if conn.dialect.name != "sqlite":
        return
    # A write that starts as a reader can fail with "database is locked" without waiting on the
    # busy timeout when it upgrades; taking the write lock at BEGIN makes it wait its turn instead.
    # Straight to the driver: the statement is fixed, and SQLAlchemy's execution path costs more than BEGIN.
    conn.connection.driver_connection.execute(
        "BEGIN IMMEDIATE" if conn.get_execution_options().get(_IMMEDIATE) else "BEGIN")


@contextmanager
def write_transaction():
    """Run the block as one write transaction that holds the write lock from its first statement."""
    session = db.session()
    if session.in_transaction():
        session.commit()
    session.connection(execution_options={_IMMEDIATE: True})
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise


@contextmanager
def write_connection():
    """A Core connection in one write transaction (holding the write lock from its start, as write_transaction),
    past the ORM session: for the jobs' transitions (core/jobs/model.py), whose statements are built once and whose
    rows nobody keeps as objects, where the session's bookkeeping costs more than the statements.

    The session's own transaction, if one is open, is committed first, so what it reads next sees this write."""
    session = db.session()
    if session.in_transaction():
        session.commit()
    with db.engine.connect() as connection:
        connection.execution_options(**{_IMMEDIATE: True})
        with connection.begin():
            yield connection


def read_first(statement, params):
    """The first row of a read on a Core connection of its own, past the ORM session (a statement built once,
    on a path every job takes), or None."""
    with db.engine.connect() as connection:
        return connection.execute(statement, params).first()
