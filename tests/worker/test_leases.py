"""Crash recovery: a worker reclaims at once, without spending an attempt, the leases of its own host's workers
that are gone; other hosts' leases, and live workers', wait out their time."""
import subprocess
import sys

import pytest

from worker import leases
from core.db import db
from core.jobs.model import Job
from tests.support.app import claim


def dead_pid():
    """A pid whose process has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def holder(host=None, boot=None, namespace=None, pid=None, started=None):
    """A lease holder as leases.PROCESS_ID writes one (plus a thread), this process's unless told otherwise."""
    mine_host, mine_boot, mine_namespace, mine_pid, mine_started = leases.PROCESS_ID.rsplit(":", 4)
    return ":".join(str(part) for part in (host or mine_host, boot or mine_boot, namespace or mine_namespace,
                                           pid or mine_pid, started or mine_started, 1234))


@pytest.fixture
def leased(app):
    """Claim a new job under the given holder; return its id."""
    def claimed_by(by):
        with app.app_context():
            job = Job.create(owner="o", filename="a.pdf", mapping="m", bytes=len(by), sha256=by[-64:].rjust(64, "0"),
                             upload_path="uploads/a.pdf")
            assert claim(job.id, by, 3600, capacity=100)
            return job.id
    return claimed_by


def state(app, job_id):
    with app.app_context():
        job = db.session.get(Job, job_id)
        return job.status, job.attempts, job.leased_by


@pytest.mark.skipif(leases.BOOT == "-" or leases.PID_NAMESPACE == "-", reason="needs Linux's /proc")
@pytest.mark.parametrize("who, reclaimed", [
    (lambda: holder(pid=dead_pid()), True),                    # this host, its pid has no process
    (lambda: holder(started="1"), True),                       # this host, its pid now another process's
    (lambda: holder(boot="0123456789ab", pid=1), True),        # this host, booted since
    (lambda: holder(), False),                                 # this very process: alive
    (lambda: holder(host="elsewhere", pid=dead_pid()), False),  # another host: its lease waits out its time
    (lambda: holder(namespace="1", pid=dead_pid()), False),    # another pid namespace (container) on this boot
    (lambda: "w1", False),                                     # not a holder of ours
])
def test_a_starting_worker_reclaims_only_its_own_hosts_dead_leases(app, leased, who, reclaimed):
    job_id = leased(by := who())
    with app.app_context():
        assert leases.reclaim_orphaned_leases() == (1 if reclaimed else 0)
    if reclaimed:
        assert state(app, job_id) == ("queued", 0, None)  # back in the queue, its attempt not spent
    else:
        assert state(app, job_id) == ("processing", 1, by)


def test_a_job_is_reclaimed_once_by_workers_reclaiming_at_once(app, leased):
    job_id = leased(holder(pid=dead_pid()))
    with app.app_context():
        assert leases.reclaim_orphaned_leases() + leases.reclaim_orphaned_leases() == 1
        assert Job.claim_next("w-new", 30, 4).id == job_id
        assert leases.reclaim_orphaned_leases() == 0  # the new holder's lease ("w-new") is not taken away
    assert state(app, job_id) == ("processing", 1, "w-new")
