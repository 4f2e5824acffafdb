"""What a job's states are called: its statuses, the groups lists filter by, and when an active job is slow.

A module of its own so that every part of the jobs package (and the web's templates, through their context) reads
the same names without importing the model.
"""
from datetime import timedelta
from enum import StrEnum
from typing import NamedTuple

from flask_babel import lazy_gettext as _l


class Status(StrEnum):
    """A job's stored status; the API's `status` field (a StrEnum, so it compares equal to its text)."""

    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETE = "complete"
    FAILED = "failed"


ACTIVE = (Status.QUEUED, Status.PROCESSING)
FINISHED = (Status.COMPLETE, Status.FAILED)


class StatusFilter(NamedTuple):
    """A filter of job lists by status, as the API's ?status= and the queue page name it."""

    name: str  # in ?status=; the queue page leaves the filter of every status out of its links
    label: str  # the queue page's (translated as it is shown)
    statuses: tuple  # the statuses it keeps; none: every one
    count: str  # the key of its number in Job.counts and Job.totals


# The queue page's filters, in its order; the API takes these and a single status of its own (STATUS_GROUPS).
FILTERS = (
    StatusFilter("all", _l("All"), (), "total"),
    StatusFilter("active", _l("Active"), ACTIVE, "active"),
    StatusFilter("complete", _l("Complete"), (Status.COMPLETE,), "complete"),
    StatusFilter("failed", _l("Failed"), (Status.FAILED,), "failed"),
)
# Every name the API's ?status= takes, and the statuses each keeps ("all": none, so every one).
STATUS_GROUPS = {**{each.name: each.statuses for each in FILTERS},
                 Status.QUEUED.value: (Status.QUEUED,), Status.PROCESSING.value: (Status.PROCESSING,)}

# An active job past this is "taking longer than usual" in its row (a conversion takes seconds).
SLOW_AFTER = timedelta(minutes=5)
