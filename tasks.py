"""Huey's tasks, the module the worker's consumer runs: a wake-up for a job, and letting jobs go when the consumer
is interrupted. What a wake-up does is the worker's (worker/run.py); the web and the CLI enqueue it by name
(core/queue.py), so they never import this module.
"""
import logging

from huey.signals import SIGNAL_INTERRUPTED

from core.jobs.model import Job
from core.jobs.states import Status
from core.queue import bound_app, huey
from worker.run import _leaseholders, run_job, stopping

logger = logging.getLogger("pdfqueue.worker")


@huey.task()
def process_job(job_id):
    """Convert a job if this one is still queued and due, then keep converting while any job is due (the one
    fair share puts first each time: see Job).

    A wake-up turned away because every slot is busy is simply dropped: the thread in that slot
    claims the next due job when it finishes, so a backlog drains in upload order without new wake-ups."""
    with bound_app().app_context():
        if run_job(job_id):
            while not stopping.is_set() and run_job():
                pass


@huey.signal(SIGNAL_INTERRUPTED)
def _release_interrupted(signal, task, *args, **kwargs):
    """The consumer is stopping mid-job: put the job back in the queue without spending its attempt."""
    with bound_app().app_context():
        for worker in list(_leaseholders):
            released = Job.release(None, worker)
            if released is not None:
                logger.info("job %s released at shutdown", released.id, extra={
                    "job_id": released.id, "correlation_id": released.correlation_id,
                    "from": Status.PROCESSING, "to": Status.QUEUED})
