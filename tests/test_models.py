"""Job state transitions: each a conditional UPDATE, safe under concurrent writers."""
import threading

import pytest
from sqlalchemy import text

from webapp.db import db, write_transaction
from webapp.models import Job, new_id


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
        assert Job.claim(job_id, "w1", 30, capacity=4)
        assert not Job.claim(job_id, "w2", 30, capacity=4)
        job = db.session.get(Job, job_id)
        assert (job.status, job.leased_by, job.attempts, job.progress) == ("processing", "w1", 1, 10)


def test_only_the_lease_holder_completes_or_fails(app, job_id):
    with app.app_context():
        Job.claim(job_id, "w1", 30, capacity=4)
        assert not Job.complete(job_id, "w2", "results/x.xml")
        assert not Job.fail(job_id, "w2", "GW_4XX", "no")
        assert Job.complete(job_id, "w1", "results/x.xml")
        assert not Job.complete(job_id, "w1", "results/x.xml")
    assert status(app, job_id) == "complete"


def test_claims_respect_capacity(app):
    with app.app_context():
        ids = [Job.create(owner="o", filename="a", mapping="m", bytes=n, sha256="1" * 64).id for n in range(3)]
        assert Job.claim(ids[0], "w", 30, capacity=2) and Job.claim(ids[1], "w", 30, capacity=2)
        assert not Job.claim(ids[2], "w", 30, capacity=2)


def test_release_refunds_the_attempt_and_requeue_needs_a_failed_job_with_its_pdf(app, job_id):
    with app.app_context():
        Job.claim(job_id, "w1", 30, capacity=4)
        assert not Job.requeue(job_id)
        assert Job.release(job_id, "w1")
        assert db.session.get(Job, job_id).attempts == 0
        Job.claim(job_id, "w1", 30, capacity=4)
        Job.fail(job_id, "w1", "GW_4XX", "bad file")
        assert Job.requeue(job_id)
        job = db.session.get(Job, job_id)
        db.session.refresh(job)
        assert (job.status, job.attempts, job.error_code) == ("queued", 0, None)


def test_every_transition_bumps_updated_at(app, job_id):
    with app.app_context():
        before = db.session.get(Job, job_id).updated_at
        db.session.commit()
        Job.claim(job_id, "w1", 30, capacity=4)
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
                for job_id in ids:
                    db.session.execute(text("SELECT count(*) FROM jobs")).scalar()  # a read first, then writes
                    if Job.claim(job_id, worker, 30, capacity=1000):
                        claimed.append(job_id)
                        Job.heartbeat(job_id, worker, 30, progress=50)
                        Job.complete(job_id, worker, "results/x.xml")
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
