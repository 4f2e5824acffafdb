"""The queue page's view of the jobs — whose, which statuses, which file names — and what its partials show beside
the rows. The pages (webapp/pages.py) and the event stream (webapp/stream.py) render the same partials from it."""
from core import breaker_state as breaker
from core import operations
from core.accounts import User
from core.jobs.model import Job
from core.jobs.states import FILTERS
from . import chart
from .identity import current_owner, is_admin, owner_scope

# The queue page's status filters (core/jobs/states.py) by their value in its ?status=: the filter of every status
# goes without one.
STATUS_FILTERS = {("" if not each.statuses else each.name): each for each in FILTERS}
# What app.js needs of them: the statuses each keeps (none: every one), by its name.
FILTER_STATUSES = {each.name: each.statuses for each in FILTERS}


def queue_view(args):
    """What the queue page shows, from its query: whose jobs (owner_scope), which statuses, which file names (q),
    and the query to carry along to its partials and its event stream (so each shows the same view)."""
    owner = owner_scope(args)
    status = args.get("status", "") if args.get("status", "") in STATUS_FILTERS else ""
    q = (args.get("q") or "").strip()[:operations.MAX_QUERY]
    query = {key: value for key, value in (("owner", args.get("owner") if is_admin() else None),
                                           ("status", status), ("q", q)) if value}
    return {"owner": owner, "owner_column": owner != current_owner(), "status": status,
            "statuses": STATUS_FILTERS[status].statuses, "q": q, "query": query, "admin": is_admin()}


def in_view(view, job):
    """True if the job belongs in the view (its status and its file name): a live row that no longer does leaves."""
    return job.matches(view["statuses"], view["q"])


def row_context(view, jobs):
    """What the row partial needs besides the job: the view, and in an admin's view whose each job is."""
    emails = User.emails(job.owner for job in jobs) if view["owner_column"] else {}
    return {"view": view, "owner_emails": emails}


def totals_context(owner, q=""):
    """The owner's totals, the counts of each filter (under the search q), the last day's chart and the gateway's
    state: everything the totals partial shows, sent again with each change."""
    totals = Job.totals(owner)
    return {"totals": totals, "counts": Job.counts(owner, q) if q else totals, "chart": chart.last_day(owner),
            "gateway": breaker.gateway_state()}
