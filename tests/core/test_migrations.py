"""Migrations read in the order they apply: one head, file numbers one more at each step of the chain, new files
numbered as their revision id; and a database at any revision upgrades to the schema a fresh one gets."""
import re
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from flask_migrate import upgrade
from sqlalchemy import inspect

from core.db import db
from webapp import create_app
import subprocess
import sys

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"
# Files 0006-0010 were renumbered to the order they apply and keep the revision ids databases already store.
HISTORICAL_IDS = {6: "0007a_queue_filters", 7: "0008_share_nonce", 8: "0009_webhooks", 9: "0007b_job_events",
                  10: "0006_fair_share"}


def scripts():
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config)


def chain():
    """The revisions from the first to the head, in the order they apply."""
    return list(reversed(list(scripts().walk_revisions())))


def number(revision):
    return int(re.match(r"(\d{4})_", Path(revision.path).name).group(1))


def test_there_is_one_head():
    assert len(scripts().get_heads()) == 1, scripts().get_heads()


def test_file_numbers_run_one_more_at_each_step_of_the_chain():
    numbers = [number(revision) for revision in chain()]
    assert numbers == list(range(1, len(numbers) + 1)), [Path(r.path).name for r in chain()]
    files = sorted(path.name for path in (MIGRATIONS / "versions").glob("*.py"))
    assert files == sorted(Path(r.path).name for r in chain())  # no file outside the chain


def test_every_revision_id_is_its_file_number_but_the_historical_ones():
    for revision in chain():
        expected = HISTORICAL_IDS.get(number(revision), f"{number(revision):04d}")
        assert revision.revision == expected, Path(revision.path).name


def schema(app):
    """Tables with their columns (name, type, nullable) and indexes (name, columns, unique), as SQLite has them."""
    with app.app_context():
        inspector = inspect(db.engine)
        tables = {}
        for table in inspector.get_table_names():
            columns = sorted((c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table))
            indexes = sorted((i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in inspector.get_indexes(table))
            tables[table] = (columns, indexes)
        db.engine.dispose()
        return tables


def migrated(path, revision="head"):
    app = create_app({"DATA_DIR": str(path), "TESTING": True, "HUEY_MEMORY": True,
                      "SECRET_KEY": "test-secret-key-0123456789abcdefghijklmnop"})
    with app.app_context():
        upgrade(directory=app.config["MIGRATIONS_DIR"], revision=revision)
    return app


@pytest.fixture(scope="module")
def fresh_schema(tmp_path_factory):
    return schema(migrated(tmp_path_factory.mktemp("fresh")))


@pytest.mark.parametrize("revision", [r.revision for r in chain()[:-1]])
def test_a_database_at_each_revision_upgrades_to_the_fresh_schema(tmp_path, revision, fresh_schema):
    app = migrated(tmp_path, revision)
    with app.app_context():
        upgrade(directory=app.config["MIGRATIONS_DIR"])
    assert schema(app) == fresh_schema


ROOT = Path(__file__).resolve().parents[2]


KEY = "test-secret-key-0123456789abcdefghijklmnop"


def test_the_migration_strips_format_characters_from_names_kept_before(tmp_path):
    from flask_migrate import downgrade, upgrade
    from sqlalchemy import text
    from core.db import db
    app = create_app({"DATA_DIR": str(tmp_path), "TESTING": True, "SECRET_KEY": KEY, "HUEY_MEMORY": True})
    with app.app_context():
        upgrade(directory=app.config["MIGRATIONS_DIR"], revision="0005")
        db.session.execute(text(
            "INSERT INTO jobs (id, owner, filename, mapping, bytes, sha256, status, progress, attempts, correlation_id,"
            " created_at, updated_at, dead_letter) VALUES ('j', 'o', :name, 'm', 1, 's', 'complete', 100, 1, 'c',"
            " '2026-01-01', '2026-01-01', 0)"), {"name": "a\u202egpj.pdf"})
        db.session.commit()
        upgrade(directory=app.config["MIGRATIONS_DIR"])
        assert db.session.execute(text("SELECT filename, share_nonce FROM jobs")).one() == ("agpj.pdf", None)
        db.session.remove()
        downgrade(directory=app.config["MIGRATIONS_DIR"], revision="0005")
        assert "share_nonce" not in {row[1] for row in db.session.execute(text("PRAGMA table_info(jobs)"))}
        db.session.remove()
        db.engine.dispose()


def _upgrade_together(data_dir, count=2):
    import os
    env = {**os.environ, "DATA_DIR": str(data_dir), "SECRET_KEY": KEY, "LOG_LEVEL": "WARNING"}
    env.pop("DATABASE_URL", None)
    procs = [subprocess.Popen([sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(count)]
    return [(proc.wait(timeout=120), proc.stdout.read().decode()[-600:]) for proc in procs]


def test_upgrades_started_together_on_a_fresh_data_dir_all_succeed(tmp_path):
    for attempt in range(2):  # before the lock, one run of two upgrades in two failed with "database is locked"
        results = _upgrade_together(tmp_path / f"data-{attempt}", count=3)
        assert [code for code, _ in results] == [0, 0, 0], results
    assert (tmp_path / "data-0" / "instance" / "pdfqueue.db.migrate-lock").exists()
