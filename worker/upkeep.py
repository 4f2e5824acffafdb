"""Upkeep, every MAINTENANCE_SECONDS in each worker process: its heartbeat, and the jobs of this host's workers that
are gone taken back; then, in the one process that is the maintenance lease holder, the shared work: settle jobs whose
lease lapsed, probe the gateway while the breaker is open, re-wake queued jobs whose wake-up was lost, apply
retention once a day, and queue the admins' failure digest once a day. The same leader polls the mailbox and folder
sources (worker/intake.py, a thread of its own so that a slow mailbox never delays a tick).
"""
import logging
import threading
from datetime import timedelta

from flask import current_app
from sqlalchemy import func, select

from core import operations, queue
from core.clock import utcnow
from core.db import db
from core.coordination import Coordination
from core.jobs.model import Job
from core.jobs.states import Status
from worker import breaker, delivery, gateway_client, retry
from worker.leases import PROCESS_ID, reclaim_orphaned_leases
from worker.run import _fields, settle_failure

logger = logging.getLogger("pdfqueue.worker")

MAINTENANCE = "maintenance"
RETENTION = "retention"
DIGEST_DUE = "failure_digest"  # the Coordination row saying when the next failure digest is due


def maintain_once(first=False):
    """One tick of upkeep: every process reclaims the leases of this host's dead workers; only the process
    with the maintenance lease does the shared work.

    Returns True if this process led the tick."""
    config = current_app.config
    interval = config["MAINTENANCE_SECONDS"]
    Coordination.put(f"worker:{PROCESS_ID}", holder=PROCESS_ID,
                     lease_expires_at=utcnow() + timedelta(seconds=3 * interval))  # this worker's heartbeat
    reclaim_orphaned_leases()  # every worker, every tick: its first tick runs as it starts
    if not Coordination.take_lead(MAINTENANCE, PROCESS_ID, 3 * interval):
        return False
    reap_lapsed_leases()
    probe_gateway()
    if not breaker.is_open():
        rewake_lost(first)
    row = Coordination.get(RETENTION)
    if row is None or row.due_at is None or row.due_at <= utcnow():
        Coordination.put(RETENTION, due_at=utcnow() + timedelta(days=1))
        operations.apply_retention()
    send_failure_digest()
    return True


def send_failure_digest():
    """Once a day, a day after the first tick, put the admins' digest of failed jobs in the outbox (with SMTP_URL)."""
    row = Coordination.get(DIGEST_DUE)
    if row is None or row.due_at is None:
        Coordination.put(DIGEST_DUE, due_at=utcnow() + timedelta(days=1))
    elif row.due_at <= utcnow():
        Coordination.put(DIGEST_DUE, due_at=utcnow() + timedelta(days=1))
        delivery.enqueue_failure_digest()


def reap_lapsed_leases():
    """Settle jobs whose worker stopped renewing their lease (killed, or its box lost power) as failed attempts."""
    for job in Job.lapsed():
        logger.warning("job %s lease expired", job.id, extra=_fields(job, attempt=job.attempts))
        settle_failure(job, None, retry.LeaseLapsed())


def rewake_lost(first=False):
    """Wake queued jobs whose wake-up was lost (the web died between commit and enqueue, say).

    At a leader's first tick, everything due (left by a stop). Later, only while the queue is empty, and
    no more than the free slots: a backlog waiting for capacity already has its wake-ups, and waking it
    again every tick would flood the queue."""
    if first:
        limit, idle_for = 1000, None
    else:
        if queue.huey.pending_count():
            return
        processing = db.session.scalar(select(func.count()).select_from(Job).where(Job.status == Status.PROCESSING))
        limit, idle_for = current_app.config["WORKER_CONCURRENCY"] - processing, current_app.config["REAP_SECONDS"]
    for job_id in Job.due_ids(limit=max(limit, 0), idle_for=idle_for):
        queue.enqueue_wake_up(job_id)


def probe_gateway():
    """Open the breaker if /healthz is down; close it (and wake the jobs it held) once it answers again."""
    url = current_app.config["GATEWAY_URL"]
    if breaker.is_open():
        if breaker.probe_due():
            if gateway_client.healthy(url):
                breaker.close()
                operations.wake_due()
            else:
                breaker.record_failure()
    elif not gateway_client.healthy(url):
        breaker.record_failure()


class Maintenance(threading.Thread):
    """Run maintain_once every MAINTENANCE_SECONDS until stopped."""

    def __init__(self, app):
        super().__init__(name="maintenance", daemon=True)
        self.app = app
        self.stopped = threading.Event()

    def run(self):
        led = False
        while True:
            with self.app.app_context():
                try:
                    led = maintain_once(first=not led) or led
                except Exception:  # upkeep must outlive a bad tick (database restarting, say); next tick retries
                    logger.exception("maintenance tick failed")
                finally:
                    db.session.remove()
            if self.stopped.wait(self.app.config["MAINTENANCE_SECONDS"]):
                with self.app.app_context():
                    Coordination.give_up(MAINTENANCE, PROCESS_ID)  # let another worker lead at once
                    db.session.remove()
                return
