"""Job state transitions: each a conditional UPDATE, safe under concurrent writers."""
import threading

import pytest
from sqlalchemy import select, text

from core.db import db, write_transaction
from core.jobs.model import Job, new_id
from tests.support.app import claim


@pytest.fixture
def job_id(app):
    with app.app_context():
        return Job.create(owner="o", filename="a.pdf", mapping="m", bytes=1, sha256="0" * 64,
                          upload_path="uploads/x.pdf").id


def test_a_new_id_never_begins_with_a_dash():
    # One id in 64 would, were it not prevented; a CLI or shell reads such an id as an option.
    ids = {new_id() for _ in range(5000)}
    assert len(ids) == 5000 and not any(job_id.startswith("-") for job_id in ids)


def status(app, job_id):
    with app.app_context():
        return db.session.get(Job, job_id).status


def test_a_job_is_claimed_once(app, job_id):
    with app.app_context():
        assert claim(job_id, "w1", 30, capacity=4)
        assert not claim(job_id, "w2", 30, capacity=4)
        job = db.session.get(Job, job_id)
        assert (job.status, job.leased_by, job.attempts, job.progress) == ("processing", "w1", 1, 10)


def test_only_the_lease_holder_completes_or_fails(app, job_id):
    with app.app_context():
        claim(job_id, "w1", 30, capacity=4)
        assert not Job.complete(job_id, "w2", "results/x.xml")
        assert not Job.fail(job_id, "w2", "GW_4XX", "no")
        assert Job.complete(job_id, "w1", "results/x.xml")
        assert not Job.complete(job_id, "w1", "results/x.xml")
    assert status(app, job_id) == "complete"


def test_claims_respect_capacity(app):
    with app.app_context():
        ids = [Job.create(owner="o", filename="a", mapping="m", bytes=n, sha256="1" * 64).id for n in range(3)]
        assert claim(ids[0], "w", 30, capacity=2) and claim(ids[1], "w", 30, capacity=2)
        assert not claim(ids[2], "w", 30, capacity=2)


def test_release_refunds_the_attempt_and_requeue_needs_a_failed_job_with_its_pdf(app, job_id):
    with app.app_context():
        claim(job_id, "w1", 30, capacity=4)
        assert not Job.requeue(job_id)
        assert Job.release(job_id, "w1")
        assert db.session.get(Job, job_id).attempts == 0
        claim(job_id, "w1", 30, capacity=4)
        Job.fail(job_id, "w1", "GW_4XX", "bad file")
        assert Job.requeue(job_id)
        job = db.session.get(Job, job_id)
        db.session.refresh(job)
        assert (job.status, job.attempts, job.error_code) == ("queued", 0, None)


def test_every_transition_bumps_updated_at(app, job_id):
    with app.app_context():
        before = db.session.get(Job, job_id).updated_at
        db.session.commit()
        claim(job_id, "w1", 30, capacity=4)
        job = db.session.get(Job, job_id)
        db.session.refresh(job)
        assert job.updated_at > before


def test_sqlite_runs_in_wal_with_a_busy_timeout(app):
    with app.app_context():
        assert db.session.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert db.session.execute(text("PRAGMA busy_timeout")).scalar() >= 5000


def test_many_threads_writing_at_once_never_see_database_is_locked(app):
    with app.app_context():
        ids = [Job.create(owner="o", filename="a", mapping="m", bytes=n, sha256="2" * 64).id for n in range(40)]
    errors, claimed = [], []

    def churn(worker):
        with app.app_context():
            try:
                while True:
                    db.session.execute(text("SELECT count(*) FROM jobs")).scalar()  # a read first, then writes
                    job = Job.claim_next(worker, 30, capacity=1000)
                    if job is None:
                        break
                    claimed.append(job.id)
                    Job.renew_lease(job.id, worker, 30, progress=50)
                    Job.complete(job.id, worker, "results/x.xml")
            except Exception as exc:  # collected and asserted below
                errors.append(exc)
            finally:
                db.session.remove()

    threads = [threading.Thread(target=churn, args=(f"w{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(claimed) == sorted(ids)  # each job claimed exactly once across 8 racing workers


def test_write_transaction_takes_the_write_lock_at_begin(app):
    statements = []
    with app.app_context():
        from sqlalchemy import event
        listener = lambda conn, *a: statements.append("begin")  # noqa: E731
        event.listen(db.engine, "begin", listener)
        try:
            with write_transaction() as session:
                assert session.execute(text("SELECT 1")).scalar() == 1
                # a second connection cannot take the write lock while we hold it
                import sqlite3
                other = sqlite3.connect(db.engine.url.database, timeout=0)
                with pytest.raises(sqlite3.OperationalError, match="locked"):
                    other.execute("BEGIN IMMEDIATE")
                other.close()
        finally:
            event.remove(db.engine, "begin", listener)
    assert statements == ["begin"]


@pytest.mark.parametrize("fields, expected", [
    ({"status": "queued"}, {"active"}),
    ({"status": "queued", "error_code": "CIRCUIT_OPEN"}, {"active", "held"}),
    ({"status": "queued", "error_code": "GW_5XX"}, {"active", "will_retry"}),
    ({"status": "queued", "error_code": "LEASE_EXPIRED"}, {"active", "will_retry"}),
    ({"status": "processing"}, {"active"}),
    ({"status": "complete", "result_path": "results/a.xml"}, {"finished", "has_result"}),
    ({"status": "complete", "result_path": None}, {"finished", "result_expired"}),
    ({"status": "failed", "error_code": "GW_4XX", "upload_path": "uploads/a.pdf"}, {"finished", "retryable"}),
    ({"status": "failed", "error_code": "GW_4XX", "upload_path": None}, {"finished"}),
])
def test_what_follows_from_a_jobs_state_is_the_models_to_say(fields, expected):
    job = Job(**fields)
    names = ("active", "finished", "has_result", "result_expired", "held", "will_retry", "retryable")
    assert {name for name in names if getattr(job, name)} == expected


def test_each_check_of_a_job_and_its_sql_twin_agree(app):
    """spent, name_contains and matches are each one hybrid: what a job says of itself, and the SQL that finds it."""
    from core.jobs.states import FILTERS
    states = [{"status": "queued"}, {"status": "processing"}, {"status": "complete", "result_path": "results/a.xml"},
              {"status": "complete", "result_path": None}, {"status": "failed", "upload_path": "uploads/a.pdf"},
              {"status": "failed", "upload_path": None}]
    names = ["Invoice 100%.pdf", "a_b.PDF", "back\\slash.pdf", "plain.pdf"]
    with app.app_context():
        for n, (fields, name) in enumerate((fields, name) for fields in states for name in names):
            db.session.add(Job(id=f"j{n}", owner="o", filename=name, mapping="m", bytes=n, sha256="3" * 64,
                               **{"upload_path": "uploads/a.pdf", **fields}))
        db.session.commit()
        jobs = db.session.execute(select(Job)).scalars().all()

        def found(condition):
            return set(db.session.execute(select(Job.id).where(condition)).scalars())

        assert found(Job.spent) == {job.id for job in jobs if job.spent} and len(found(Job.spent)) == 2 * len(names)
        for q in ("", "100%", "%", "_", "a_b", "\\", "INVOICE", "pdf", "nothing"):
            assert found(Job.name_contains(q)) == {job.id for job in jobs if job.name_contains(q)}, q
            for each in FILTERS:
                assert found(Job.matches(each.statuses, q)) == {job.id for job in jobs
                                                                if job.matches(each.statuses, q)}, (each.name, q)


def test_migration_0004_keeps_what_the_dropped_columns_said(tmp_path):
    from flask_migrate import downgrade, upgrade

    from webapp import create_app
    from core.coordination import Coordination
    app = create_app({"DATA_DIR": str(tmp_path), "TESTING": True, "SECRET_KEY": "test-secret-key-0123456789abcdefghijklmnop", "HUEY_MEMORY": True})
    with app.app_context():
        upgrade(directory=app.config["MIGRATIONS_DIR"], revision="0003")
        db.session.execute(text(
            "INSERT INTO jobs (id, owner, filename, mapping, bytes, sha256, status, progress, attempts, correlation_id,"
            " result_path, created_at, updated_at, dead_letter, result_expired) VALUES ('j', 'o', 'a.pdf', 'm', 1, 's',"
            " 'complete', 100, 1, 'c', 'results/j.xml', '2026-01-01', '2026-01-01', 0, 1)"))
        db.session.execute(text("INSERT OR REPLACE INTO coordination (name, count, expires_at, updated_at) VALUES"
                                " ('breaker', 0, '2026-01-02 00:00:00', '2026-01-01'),"
                                " ('maintenance', 0, '2026-01-03 00:00:00', '2026-01-01')"))
        db.session.commit()
        upgrade(directory=app.config["MIGRATIONS_DIR"])
        job = db.session.get(Job, "j")
        assert job.result_expired and not job.has_result
        breaker, leader = db.session.get(Coordination, "breaker"), db.session.get(Coordination, "maintenance")
        assert (str(breaker.due_at), breaker.lease_expires_at) == ("2026-01-02 00:00:00", None)
        assert (leader.due_at, str(leader.lease_expires_at)) == (None, "2026-01-03 00:00:00")
        db.session.remove()
        downgrade(directory=app.config["MIGRATIONS_DIR"], revision="0003")
        assert db.session.execute(text("SELECT result_expired FROM jobs")).scalar() == 1
        assert db.session.execute(text("SELECT expires_at FROM coordination WHERE name = 'breaker'")).scalar() \
            == "2026-01-02 00:00:00"
        db.session.remove()
        db.engine.dispose()


def test_migration_0006_queue_filters_widens_the_owners_newest_first_index_and_back(tmp_path):
    from flask_migrate import downgrade, upgrade

    from webapp import create_app
    app = create_app({"DATA_DIR": str(tmp_path), "TESTING": True, "SECRET_KEY": "test-secret-key-0123456789abcdefghijklmnop", "HUEY_MEMORY": True})
    columns = lambda: [row[2] for row in db.session.execute(text("PRAGMA index_info('ix_jobs_owner_created')"))]  # noqa: E731
    with app.app_context():
        upgrade(directory=app.config["MIGRATIONS_DIR"], revision="0005")
        db.session.execute(text(
            "INSERT INTO jobs (id, owner, filename, mapping, bytes, sha256, status, progress, attempts, correlation_id,"
            " created_at, updated_at, dead_letter) VALUES ('j', 'o', 'a.pdf', 'm', 1, 's', 'queued', 0, 0, 'c',"
            " '2026-01-01', '2026-01-01', 0)"))
        db.session.commit()
        upgrade(directory=app.config["MIGRATIONS_DIR"], revision="0007a_queue_filters")
        assert columns() == ["owner", "created_at", "id", "filename", "status"]
        assert Job.counts("o", "A.P") == {"total": 1, "active": 1, "complete": 0, "failed": 0}
        db.session.remove()
        downgrade(directory=app.config["MIGRATIONS_DIR"], revision="0005")
        assert columns() == ["owner", "created_at", "id"]
        assert db.session.execute(text("SELECT count(*) FROM jobs")).scalar() == 1
        db.session.remove()
        db.engine.dispose()
