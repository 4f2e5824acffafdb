"""The worker's deliverer: send what the outbox holds (core/outbox.py), webhooks signed, emails through SMTP.

Each worker process runs one Deliverer thread. It claims due rows with a lease (one conditional UPDATE, so two
workers never send the same row at once), sends them on a few threads and records each attempt: delivered,
or retried after a back-off with jitter, until WEBHOOK_GIVE_UP_HOURS after the event, when it is marked failed
(a warning in the log, a counter in /metrics, the state on the settings page). A worker killed mid-delivery
leaves its rows leased: once the lease lapses, any deliverer sends them again, under the same webhook-id
(at least once; receivers de-duplicate by that id).

Each webhook delivery resolves its host once, checks every address (outbox.pinned_address) and connects to
that very address (TLS still verifies the host name), so a name re-pointed after the check (DNS rebinding)
gets nowhere; no redirect is followed.
"""
import logging
import smtplib
import socket
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from email.utils import formatdate
from urllib.parse import unquote, urlsplit

import urllib3
from flask import current_app
from flask_babel import gettext
from sqlalchemy import func, select, update
from standardwebhooks import Webhook

from core import counters, i18n
from core import outbox
from core.config import smtp_starttls_required
from core.accounts import User
from core.clock import isoformat, utcnow
from core.db import db, read_first, write_transaction
from core.jobs.model import Job
from core.jobs.states import FINISHED, Status
from core.outbox import EMAIL, PENDING, OutboxEvent, Subscription

logger = logging.getLogger("pdfqueue.delivery")

BATCH_SIZE = 50  # rows claimed at a time
MAX_ANSWER_BYTES = 64 * 1024  # of a receiver's answer body, read to keep the connection; past that it is dropped
USER_AGENT = "pdfqueue-webhooks/1"


class Deliverer(threading.Thread):
    """Deliver due outbox rows until stopped: at once when this process wrote one, else every WEBHOOK_POLL_SECONDS."""

    def __init__(self, app, resolve=socket.getaddrinfo):
        super().__init__(name="deliverer", daemon=True)
        self.app = app
        self.stopped = threading.Event()
        self.sender = Sender(app.config, resolve)

    def run(self):
        with ThreadPoolExecutor(self.app.config["WEBHOOK_CONCURRENCY"], thread_name_prefix="deliver") as pool:
            while not self.stopped.is_set():
                try:
                    sent = deliver_due(self.app, self.sender, pool)
                except Exception:  # the database restarting, say: the rows wait in the outbox; the next look retries
                    logger.exception("delivery round failed")
                    sent = 0
                if not sent:
                    outbox.wait_for_events(self.app.config["WEBHOOK_POLL_SECONDS"])

    def stop(self):
        self.stopped.set()
        outbox.wrote_events()  # wakes the wait


def deliver_due(app, sender, pool=None, limit=BATCH_SIZE):
    """Claim up to limit due rows, deliver them (on pool's threads, if given) and record how each went, all the
    outcomes in one transaction; how many were claimed.

    Killed before the outcomes are written, the batch is sent again once its leases lapse: at least once."""
    with app.app_context():
        try:
            claimed = claim_due(limit, lease_seconds=sender.lease_seconds)
            wanted = {row.subscription_id for row in claimed if row.subscription_id}
            subscriptions = {sub.id: sub for sub in db.session.execute(
                select(Subscription.id, Subscription.kind, Subscription.url, Subscription.secret,
                       User.disabled.label("owner_disabled"))
                .join(User, User.id == Subscription.user_id)
                .where(Subscription.id.in_(wanted)))} if wanted else {}
        finally:
            db.session.remove()
    if not claimed:
        return 0

    def one(row):
        with app.app_context():
            try:
                return attempt(row, subscriptions, sender)
            finally:
                db.session.remove()

    outcomes = list(map(one, claimed) if pool is None else pool.map(one, claimed))
    with app.app_context():
        try:
            record([outcome for outcome in outcomes if outcome is not None], app.config)
        finally:
            db.session.remove()
    return len(claimed)


def claim_due(limit, lease_seconds):
    """Take a lease on up to limit pending rows that are due (and not leased by a live deliverer); the rows."""
    now = utcnow()
    free = OutboxEvent.lease_expires_at.is_(None) | (OutboxEvent.lease_expires_at < now)
    due = (select(OutboxEvent.id).where(OutboxEvent.state == PENDING, OutboxEvent.next_attempt_at <= now, free)
           .order_by(OutboxEvent.next_attempt_at).limit(limit))
    if read_first(due.limit(1), {}) is None:  # a read first: an empty outbox, looked at every second, takes no write lock
        return []
    with write_transaction() as session:
        stmt = (update(OutboxEvent.__table__)
                .where(OutboxEvent.id.in_(due.scalar_subquery()), OutboxEvent.state == PENDING, free)
                .values(lease_expires_at=now + timedelta(seconds=lease_seconds), attempts=OutboxEvent.attempts + 1)
                .returning(*OutboxEvent.__table__.c))
        return session.execute(stmt).all()


def attempt(row, subscriptions, sender):
    """Make one attempt at a claimed row: (row, kind, status line, outcome) for record(), or None if its webhook
    was deleted meanwhile (its rows went with it)."""
    subscription = subscriptions.get(row.subscription_id)
    if row.subscription_id and subscription is None:
        return None
    kind = subscription.kind if subscription is not None else EMAIL
    if subscription is not None and subscription.owner_disabled:
        return row, kind, "skipped: the user is disabled", "skipped"  # what was pending when they were disabled
    try:
        if kind == EMAIL:
            status, outcome = send_email_event(row, subscription, sender)
        else:
            status, outcome = sender.post(subscription.url, subscription.secret, row.id, row.payload)
    except outbox.NotifyError as error:
        status, outcome = f"refused: {error}", False
    except (urllib3.exceptions.HTTPError, OSError, smtplib.SMTPException) as error:
        status, outcome = describe(error), False
    return row, kind, status, outcome


def record(outcomes, config):
    """Store attempts' outcomes in one transaction, each delivered (True), skipped (the string "skipped") or
    failed (False: retried after a back-off, or given up WEBHOOK_GIVE_UP_HOURS after the event)."""
    now = utcnow()
    samples = []
    with write_transaction() as session:
        for row, kind, status, outcome in outcomes:
            values = {"last_status": status[:255], "last_attempt_at": now, "lease_expires_at": None}
            if outcome is True:
                values.update(state=outbox.DELIVERED, delivered_at=now)
                counted = "delivered"
            elif outcome == "skipped":
                values.update(state=outbox.SKIPPED)
                counted = "skipped"
            elif now - row.created_at >= timedelta(hours=config["WEBHOOK_GIVE_UP_HOURS"]):
                values.update(state=outbox.FAILED)
                counted = "gave_up"
                logger.warning("gave up delivering %s %s after %s attempts: %s", row.type, row.id, row.attempts,
                               status, extra={"event_id": row.id, "job_id": row.job_id, "attempts": row.attempts})
            else:
                values.update(next_attempt_at=now + timedelta(seconds=outbox.next_delay(row.attempts, config)))
                counted = "retried"
                logger.info("delivery of %s %s failed (%s); retrying", row.type, row.id, status,
                            extra={"event_id": row.id, "job_id": row.job_id, "attempts": row.attempts})
            session.execute(update(OutboxEvent.__table__)
                            .where(OutboxEvent.id == row.id, OutboxEvent.state == PENDING).values(**values))
            samples.append((counters.NOTIFICATIONS, {"kind": kind, "outcome": counted}, 1))
    if samples:
        counters.add(*samples)


def describe(error):
    """A short line for an attempt's failure, as the settings page shows it."""
    reason = getattr(error, "reason", None) or error
    text = str(reason)
    if "refused" in text.lower():
        return "connection refused"
    if isinstance(reason, (TimeoutError, socket.timeout)) or "timed out" in text.lower():
        return "timed out"
    return f"{type(reason).__name__}: {text}"[:255]


# -- webhooks ---------------------------------------------------------------------------------------


class Sender:
    """Signed POSTs over connections pinned to checked addresses (pools kept per address), and SMTP."""

    def __init__(self, config, resolve=socket.getaddrinfo):
        self.config, self.resolve = config, resolve
        self.timeout = urllib3.Timeout(connect=config["WEBHOOK_CONNECT_TIMEOUT"], read=config["WEBHOOK_READ_TIMEOUT"])
        # An attempt cannot outlast its timeouts (or SMTP's); the lease covers it with room to record the outcome.
        self.lease_seconds = max(config["WEBHOOK_CONNECT_TIMEOUT"] + config["WEBHOOK_READ_TIMEOUT"],
                                 3 * config["SMTP_TIMEOUT"]) + config["WEBHOOK_LEASE_MARGIN_SECONDS"]
        self._pools = {}
        self._lock = threading.Lock()

    def post(self, url, secret, event_id, payload):
        """POST the signed payload to url; (status line, delivered?). Raise NotifyError if the address is refused."""
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        address = outbox.pinned_address(parts.hostname, port, self.config["WEBHOOK_ALLOWED_HOSTS"], self.resolve)
        now = datetime.now(timezone.utc)
        headers = {
            "Host": parts.netloc.rpartition("@")[2],
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "webhook-id": event_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(secret).sign(event_id, now, payload),
        }
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        response = self._pool(parts.scheme, address, port, parts.hostname).urlopen(
            "POST", path, body=payload.encode(), headers=headers, redirect=False, retries=False,
            timeout=self.timeout, preload_content=False, assert_same_host=False)
        try:
            response.read(MAX_ANSWER_BYTES)
            if response.read(1):  # more than we read: drop this connection rather than read on
                response.close()
        finally:
            response.release_conn()
        return str(response.status), 200 <= response.status < 300

    def _pool(self, scheme, address, port, hostname):
        key = (scheme, address, port, hostname)
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                if len(self._pools) > 256:
                    self._pools.clear()
                size = self.config["WEBHOOK_CONCURRENCY"]
                if scheme == "https":
                    pool = urllib3.HTTPSConnectionPool(address, port, maxsize=size, server_hostname=hostname,
                                                       assert_hostname=hostname, cert_reqs="CERT_REQUIRED")
                else:
                    pool = urllib3.HTTPConnectionPool(address, port, maxsize=size)
                self._pools[key] = pool
            return pool


# -- email ------------------------------------------------------------------------------------------


def send_email_event(row, subscription, sender):
    """Email one outbox row to its user; (status line, True / "skipped")."""
    import json
    config = current_app.config
    user = db.session.get(User, row.owner)
    if user is None or user.disabled:
        return "skipped: no such active user", "skipped"
    body = json.loads(row.payload)
    # In the recipient's language (their choice in the pages' menu, else DEFAULT_LOCALE), times in DEFAULT_TIMEZONE.
    with i18n.force_locale(i18n.locale_of(user, config["DEFAULT_LOCALE"])):
        made = _compose(row, subscription, body, config)
    if made is None:
        return "skipped: jobs still active (a later one ends the batch)", "skipped"
    if made == "unknown":
        return f"skipped: no email for {row.type}", "skipped"
    subject, text = made
    send_email(config, user.email, subject, text, message_id=row.id)
    if row.type == outbox.BATCH_FINISHED:
        _skip_covered(row)
    return "sent", True


def _compose(row, subscription, body, config):
    """(subject, text) of the row's email; None while its batch goes on, "unknown" for a type with no email."""
    if row.type == outbox.BATCH_FINISHED:
        return batch_email(row, subscription)
    if row.type == outbox.JOB_FAILED:
        job = body["data"]
        subject = gettext("pdfqueue: %(name)s failed", name=job["filename"])
        text = (gettext("%(name)s could not be converted: %(error)s (%(code)s).", name=job["filename"],
                        error=job["error"] or gettext("no reason given"), code=job["error_code"])
                + "\n\n" + gettext("See it at %(url)s", url=f"{config['PUBLIC_URL']}/review/{job['id']}") + "\n")
        return subject, text
    if row.type == outbox.FAILURE_DIGEST:
        return digest_email(body["data"])
    return "unknown"


def send_email(config, to, subject, text, message_id=None):
    """Send one plain-text email through SMTP_URL (smtp:// with STARTTLS when offered, smtps:// TLS throughout).

    Over smtp:// with ?starttls=required, or with a password for a host beyond loopback, a server that offers no
    STARTTLS gets nothing: the send fails rather than put the password (or the mail) on the network in clear."""
    if not config["SMTP_URL"]:
        raise smtplib.SMTPException("SMTP_URL is not set")
    url = urlsplit(config["SMTP_URL"])
    context = ssl.create_default_context()
    if url.scheme == "smtps":
        client = smtplib.SMTP_SSL(url.hostname, url.port or 465, timeout=config["SMTP_TIMEOUT"], context=context)
    elif url.scheme == "smtp":
        client = smtplib.SMTP(url.hostname, url.port or 25, timeout=config["SMTP_TIMEOUT"])
    else:
        raise smtplib.SMTPException(f"SMTP_URL must be smtp:// or smtps://, not {url.scheme}://")
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = config["SMTP_FROM"], to, subject
    message["Date"] = formatdate(usegmt=True)
    if message_id:  # the outbox row's id: a mail sent twice (at least once) has one Message-ID
        message["Message-ID"] = f"<{message_id}@pdfqueue>"
    message.set_content(text)
    with client:
        client.ehlo()
        if url.scheme == "smtp" and client.has_extn("starttls"):
            client.starttls(context=context)
            client.ehlo()
        elif url.scheme == "smtp" and smtp_starttls_required(url):
            raise smtplib.SMTPException(f"the SMTP server {url.hostname} offers no STARTTLS, which SMTP_URL needs "
                                        "(?starttls=required, or a password for a host beyond loopback): nothing sent")
        if url.username:
            client.login(unquote(url.username), unquote(url.password or ""))
        client.send_message(message)


def batch_email(row, subscription):
    """(subject, text) for the end of the owner's batch, or None while any of their jobs is still active.

    A batch is what the owner's jobs finished since the last batch email (or the last day) once none is active."""
    if Job.active_count(row.owner):
        return None
    previous = db.session.scalar(select(func.max(OutboxEvent.created_at)).where(
        OutboxEvent.subscription_id == subscription.id, OutboxEvent.type == outbox.BATCH_FINISHED,
        OutboxEvent.state == outbox.DELIVERED))
    since = previous or row.created_at - timedelta(days=1)
    jobs = db.session.execute(select(Job.filename, Job.status, Job.error_code).where(
        Job.owner == row.owner, Job.status.in_(FINISHED), Job.completed_at > since,
        Job.completed_at <= row.created_at).order_by(Job.completed_at)).all()
    complete = sum(1 for job in jobs if job.status == Status.COMPLETE)
    failed = len(jobs) - complete
    words = {Status.COMPLETE: gettext("complete"), Status.FAILED: gettext("failed")}
    lines = [f"- {job.filename}: {words.get(job.status, job.status)}" + (f" ({job.error_code})" if job.error_code else "")
             for job in jobs[:50]]
    if len(jobs) > 50:
        lines.append(gettext("… and %(count)s more", count=len(jobs) - 50))
    config = current_app.config
    text = (gettext("Your batch is done: %(complete)s complete, %(failed)s failed.", complete=complete, failed=failed)
            + "\n\n" + "\n".join(lines) + "\n\n"
            + gettext("See them at %(url)s", url=f"{config['PUBLIC_URL']}/queue") + "\n")
    return gettext("pdfqueue: batch done (%(complete)s complete, %(failed)s failed)", complete=complete,
                   failed=failed), text


def _skip_covered(row):
    """Other pending batch rows of this subscription up to this one are covered by the email just sent."""
    with write_transaction() as session:
        session.execute(update(OutboxEvent.__table__).where(
            OutboxEvent.subscription_id == row.subscription_id, OutboxEvent.type == outbox.BATCH_FINISHED,
            OutboxEvent.state == PENDING, OutboxEvent.created_at <= row.created_at, OutboxEvent.id != row.id)
            .values(state=outbox.SKIPPED, last_status="covered by an earlier batch email", last_attempt_at=utcnow()))


def digest_email(data):
    lines = [f"- {job['filename']} ({job['owner_email'] or job['owner']}): {job['error_code']} {job['error'] or ''}"
             for job in data["jobs"]]
    by_code = ", ".join(f"{code}: {count}" for code, count in sorted(data["by_code"].items()))
    text = (gettext("%(count)s jobs failed for good since %(since)s (%(codes)s).", count=data["count"],
                    since=data["since"], codes=by_code) + "\n\n" + "\n".join(lines)
            + ("\n" + gettext("… and more") if data["count"] > len(data["jobs"]) else "") + "\n")
    return gettext("pdfqueue: %(count)s failed jobs in the last day", count=data["count"]), text


def enqueue_failure_digest(now=None):
    """Put the admins' daily digest of failures into the outbox (one row per active admin), if any job failed in
    the last day and email is set up; how many rows."""
    config = current_app.config
    now = now or utcnow()
    since = now - timedelta(days=1)
    if not config["SMTP_URL"]:
        return 0
    failed = db.session.execute(select(Job.filename, Job.owner, Job.error_code, Job.error).where(
        Job.status == Status.FAILED, Job.completed_at > since).order_by(Job.completed_at.desc())).all()
    admins = db.session.execute(select(User.id).where(User.admin.is_(True), User.disabled.is_(False))).scalars().all()
    db.session.commit()
    if not failed or not admins:
        return 0
    emails = User.emails(job.owner for job in failed[:100])
    by_code = {}
    for job in failed:
        by_code[job.error_code or ""] = by_code.get(job.error_code or "", 0) + 1
    data = {"since": isoformat(since), "count": len(failed), "by_code": by_code,
            "jobs": [{"filename": job.filename, "owner": job.owner, "owner_email": emails.get(job.owner),
                      "error_code": job.error_code, "error": (job.error or "")[:200]} for job in failed[:100]]}
    with write_transaction() as session:
        for admin_id in admins:
            outbox.enqueue(session, admin_id, outbox.FAILURE_DIGEST, data, now=now)
    outbox.wrote_events()
    return len(admins)
