import fcntl
import logging
from contextlib import contextmanager
from logging.config import fileConfig

from sqlalchemy import text

from flask import current_app

from alembic import context

# this is the Alembic Config object, which provides
# access to the values within the .ini file in use.
config = context.config

# Interpret the config file for Python logging.
# This line sets up loggers basically.
fileConfig(config.config_file_name, disable_existing_loggers=False)  # in-process upgrades (tests) keep our loggers
logger = logging.getLogger('alembic.env')


def get_engine():
    try:
        # this works with Flask-SQLAlchemy<3 and Alchemical
        return current_app.extensions['migrate'].db.engine
    except (TypeError, AttributeError):
        # this works with Flask-SQLAlchemy>=3
        return current_app.extensions['migrate'].db.engine


def get_engine_url():
    try:
        return get_engine().url.render_as_string(hide_password=False).replace(
            '%', '%%')
    except AttributeError:
        return str(get_engine().url).replace('%', '%%')


# add your model's MetaData object here
# for 'autogenerate' support
# from myapp import mymodel
# target_metadata = mymodel.Base.metadata
config.set_main_option('sqlalchemy.url', get_engine_url())
target_db = current_app.extensions['migrate'].db

# other values from the config, defined by the needs of env.py,
# can be acquired:
# my_important_option = config.get_main_option("my_important_option")
# ... etc.


def get_metadata():
    if hasattr(target_db, 'metadatas'):
        return target_db.metadatas[None]
    return target_db.metadata


def run_migrations_offline():
    """Run migrations in 'offline' mode.

    This configures the context with just a URL
    and not an Engine, though an Engine is acceptable
    here as well.  By skipping the Engine creation
    we don't even need a DBAPI to be available.

    Calls to context.execute() here emit the given string to the
    script output.

    """
    url = config.get_main_option("sqlalchemy.url")
    context.configure(
        url=url, target_metadata=get_metadata(), literal_binds=True
    )

    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    """Run migrations in 'online' mode.

    In this scenario we need to create an Engine
    and associate a connection with the context.

    """

    # this callback is used to prevent an auto-migration from being generated
    # when there are no changes to the schema
    # reference: http://alembic.zzzcomputing.com/en/latest/cookbook.html
    def process_revision_directives(context, revision, directives):
        if getattr(config.cmd_opts, 'autogenerate', False):
            script = directives[0]
            if script.upgrade_ops.is_empty():
                directives[:] = []
                logger.info('No changes in schema detected.')

    conf_args = current_app.extensions['migrate'].configure_args
    if conf_args.get("process_revision_directives") is None:
        conf_args["process_revision_directives"] = process_revision_directives

    connectable = get_engine()

    with one_upgrade_at_a_time(connectable), connectable.connect() as connection, \
            foreign_keys_unenforced(connection):
        if connection.dialect.name == "sqlite":
            conf_args.setdefault("on_version_apply", check_foreign_keys)
        context.configure(
            connection=connection,
            target_metadata=get_metadata(),
            **conf_args
        )

        with context.begin_transaction():
            context.run_migrations()


def check_foreign_keys(ctx, step, heads, run_args):
    """SQLite, after each migration, in its transaction: what went unenforced holds all the same, or it does
    not commit."""
    broken = ctx.connection.exec_driver_sql("PRAGMA foreign_key_check").all()
    if broken:
        raise RuntimeError(f"{step} leaves rows whose foreign key points nowhere: {broken[:5]}")


@contextmanager
def foreign_keys_unenforced(connection):
    """SQLite: run the migrations with foreign keys off (webapp/db.py turns them on for every connection).

    A batch migration rebuilds a table (copy, DROP TABLE, rename); with them on, the DROP would first delete
    the table's rows and so cascade to the rows that reference them (job_events to jobs: each job's history).
    The pragma only takes effect outside a transaction, so it is set on the driver's connection before
    Alembic's begins; it is set back before the connection goes back to the pool."""
    if connection.dialect.name != "sqlite":
        yield
        return
    driver = connection.connection.driver_connection
    driver.execute("PRAGMA foreign_keys=OFF")
    try:
        yield
    finally:
        if connection.in_transaction():  # only reads begun after the migrations' own (committed) transactions
            connection.rollback()
        driver.execute("PRAGMA foreign_keys=ON")
        if driver.execute("PRAGMA foreign_keys").fetchone()[0] != 1:
            connection.invalidate()  # never back into the pool without them


# Any 64-bit number of our own: the PostgreSQL advisory lock every pdfqueue upgrade takes.
ADVISORY_LOCK_KEY = 0x70646671_75657565  # "pdfqueue"


@contextmanager
def one_upgrade_at_a_time(engine):
    """Hold a lock for the whole run, so that processes starting together (`make web` and `make worker`, units
    at boot) upgrade one after the other: the second then finds the schema current. SQLite: an flock on a file
    beside the database; PostgreSQL: a session advisory lock."""
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        if not database or database == ":memory:":
            yield
            return
        with open(f"{database}.migrate-lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes, or the process dies
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
    elif engine.dialect.name == "postgresql":
        with engine.connect() as lock:
            lock.execute(text("SELECT pg_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
            lock.commit()
            try:
                yield
            finally:
                lock.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_LOCK_KEY})
                lock.commit()
    else:
        yield


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
