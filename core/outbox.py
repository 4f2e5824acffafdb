"""Telling people a job is done: their webhooks and email choices, and the outbox that carries every event.

An event is a row of the outbox written by the job's own transition (core/jobs/engine.py), in the same
transaction as the job's change: a job that completes has its event, or neither happened. The worker
delivers the rows (worker/delivery.py) at least once, each under a stable id (the webhook-id header).

    subscriptions   a user's webhook (a URL, the events it wants, its signing secret) or email choices
    outbox          one event for one subscription: pending → delivered | failed (gave up after 24 h) | skipped

Webhook URLs are checked against SSRF when they are made and again, on the resolved address, at every
delivery (see pinned_address): https only, or a host the operator listed in WEBHOOK_ALLOWED_HOSTS;
loopback, link-local and private addresses only if listed, IPv4 ones reached through IPv6 (6to4, NAT64) too.
"""
import base64
import functools
import ipaddress
import json
import random
import secrets
import socket
import threading
from flask_babel import lazy_gettext as _l
from datetime import datetime
from urllib.parse import urlsplit

from sqlalchemy import (Boolean, DateTime, ForeignKey, Index, Integer, String, Text, bindparam, column, delete, func,
                        insert, literal_column, select, table, union_all)
from sqlalchemy.orm import Mapped, mapped_column

from core import codes
from core.errors import english
from core.backoff import backoff
from core.clock import isoformat, utcnow
from core.db import db, write_transaction

WEBHOOK, EMAIL = "webhook", "email"
JOB_COMPLETE, JOB_FAILED = "job.complete", "job.failed"
BATCH_FINISHED = "batch.finished"  # email only: no active job of the owner is left after one finished
FAILURE_DIGEST = "digest.failures"  # email only: the admins' daily digest
WEBHOOK_EVENTS = (JOB_COMPLETE, JOB_FAILED)
EMAIL_EVENTS = (BATCH_FINISHED, JOB_FAILED)
PENDING, DELIVERED, FAILED, SKIPPED = "pending", "delivered", "failed", "skipped"
SECRET_PREFIX = "whsec_"
MAX_WEBHOOKS = 20  # per user: each one is a delivery for every job

_pending_here = threading.Event()  # set when this process wrote an outbox row: its deliverer looks at once


class NotifyError(Exception):
    """A webhook or email choice that cannot be made: code (core/codes.py) and one line a person can read."""

    def __init__(self, code, message):
        super().__init__(english(message))  # message may be lazy: a page says it in its reader's language
        self.code, self.message = code, message


class Subscription(db.Model):
    """A user's webhook (kind webhook: url, secret) or their email choices (kind email: at most one per user).

    events is space-separated with a space at each end, so that one LIKE '% job.failed %' matches a name."""

    __tablename__ = "subscriptions"
    __table_args__ = (Index("ix_subscriptions_user", "user_id", "kind"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: secrets.token_hex(8))
    user_id: Mapped[str] = mapped_column(String(32), ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    url: Mapped[str | None] = mapped_column(String(2048))
    events: Mapped[str] = mapped_column(String(255))
    secret: Mapped[str | None] = mapped_column(String(128))  # kept as is: every delivery is signed with it
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    @property
    def event_list(self):
        return self.events.split()

    def to_dict(self):
        """The webhook as GET /api/webhooks shows it (never its secret), with how its deliveries go."""
        return {"id": self.id, "url": self.url, "events": self.event_list, "created_at": isoformat(self.created_at),
                "deliveries": OutboxEvent.summary(self.id)}

    @classmethod
    def webhooks_of(cls, user_id):
        return db.session.execute(select(cls).where(cls.user_id == user_id, cls.kind == WEBHOOK)
                                  .order_by(cls.created_at)).scalars().all()

    @classmethod
    def email_of(cls, user_id):
        """The user's email choices (a list of EMAIL_EVENTS, empty if none)."""
        row = db.session.execute(select(cls.events).where(cls.user_id == user_id, cls.kind == EMAIL)).first()
        return row.events.split() if row else []

    @classmethod
    def add_webhook(cls, user_id, url, events, allowed_hosts, resolve=socket.getaddrinfo):
        """A new webhook for the user; (it, its secret). Raise NotifyError for a bad URL or events."""
        events = _checked_events(events, WEBHOOK_EVENTS)
        url = check_url(url, allowed_hosts, resolve)
        if db.session.scalar(select(func.count()).select_from(cls).where(
                cls.user_id == user_id, cls.kind == WEBHOOK)) >= MAX_WEBHOOKS:
            raise NotifyError(codes.BAD_REQUEST, _l("At most %(count)s webhooks per user; delete one first.", count=MAX_WEBHOOKS))
        secret = SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()
        hook = cls(user_id=user_id, kind=WEBHOOK, url=url, events=_stored(events), secret=secret, created_at=utcnow())
        with write_transaction() as session:
            session.add(hook)
        return hook, secret

    @classmethod
    def remove_webhook(cls, user_id, hook_id):
        """Delete the user's webhook and its undelivered events; False if they have no such webhook."""
        with write_transaction() as session:
            return session.execute(delete(cls).where(cls.id == hook_id, cls.user_id == user_id,
                                                     cls.kind == WEBHOOK)).rowcount == 1

    @classmethod
    def choose_email(cls, user_id, events):
        """Set the user's email choices (EMAIL_EVENTS; none: no email)."""
        events = _checked_events(events, EMAIL_EVENTS, allow_none=True)
        with write_transaction() as session:
            session.execute(delete(cls).where(cls.user_id == user_id, cls.kind == EMAIL))
            if events:
                session.add(cls(user_id=user_id, kind=EMAIL, events=_stored(events), created_at=utcnow()))


def _stored(events):
    return " " + " ".join(events) + " "


def _checked_events(events, known, allow_none=False):
    if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
        raise NotifyError(codes.BAD_REQUEST, _l("events must be a list of: %(events)s.", events=", ".join(known)))
    unknown = sorted(set(events) - set(known))
    if unknown:
        raise NotifyError(codes.BAD_REQUEST, _l("Unknown event %(event)r; choose from: %(events)s.", event=unknown[0], events=", ".join(known)))
    if not events and not allow_none:
        raise NotifyError(codes.BAD_REQUEST, _l("Choose at least one event: %(events)s.", events=", ".join(known)))
    return [e for e in known if e in events]  # in a stable order, each once


# -- the outbox -------------------------------------------------------------------------------------


class OutboxEvent(db.Model):
    """One event for one subscription (or, for the admins' digest, one admin), until it is delivered or given up."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_due", "state", "next_attempt_at"),
                      Index("ix_outbox_subscription", "subscription_id", "created_at"))

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the webhook-id, the same on every attempt
    subscription_id: Mapped[str | None] = mapped_column(String(32), ForeignKey("subscriptions.id", ondelete="CASCADE"))
    owner: Mapped[str] = mapped_column(String(64))  # the user told (the job's owner, or the admin for a digest)
    type: Mapped[str] = mapped_column(String(32))
    job_id: Mapped[str | None] = mapped_column(String(32))
    payload: Mapped[str] = mapped_column(Text)  # the body as sent, JSON: the same bytes on every attempt
    state: Mapped[str] = mapped_column(String(16), default=PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime)  # a deliverer is at it until then
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime)
    last_status: Mapped[str | None] = mapped_column(String(255))  # "200", "503", "connection refused"…
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime)

    def to_dict(self):
        return {"id": self.id, "type": self.type, "job_id": self.job_id, "state": self.state,
                "attempts": self.attempts, "created_at": isoformat(self.created_at),
                "last_attempt_at": isoformat(self.last_attempt_at), "last_status": self.last_status,
                "next_attempt_at": isoformat(self.next_attempt_at) if self.state == PENDING else None,
                "delivered_at": isoformat(self.delivered_at)}

    @classmethod
    def recent(cls, subscription_id, limit=20):
        return db.session.execute(select(cls).where(cls.subscription_id == subscription_id)
                                  .order_by(cls.created_at.desc(), cls.id).limit(limit)).scalars().all()

    @classmethod
    def summary(cls, subscription_id):
        """How a subscription's deliveries go: pending count, the last attempt's status and time, the next try."""
        pending, next_try = db.session.execute(
            select(func.count(), func.min(cls.next_attempt_at))
            .where(cls.subscription_id == subscription_id, cls.state == PENDING)).one()
        last = db.session.execute(
            select(cls.last_status, cls.last_attempt_at, cls.state).where(
                cls.subscription_id == subscription_id, cls.last_attempt_at.is_not(None))
            .order_by(cls.last_attempt_at.desc()).limit(1)).first()
        return {"pending": pending, "next_attempt_at": isoformat(next_try),
                "last_status": last.last_status if last else None,
                "last_attempt_at": isoformat(last.last_attempt_at) if last else None,
                "last_state": last.state if last else None}

    @classmethod
    def forget_before(cls, before):
        """Drop settled events (delivered, given up, skipped) that happened before before; how many."""
        with write_transaction() as session:
            return session.execute(delete(cls).where(cls.state != PENDING, cls.created_at < before)).rowcount

    @classmethod
    def pending_count(cls):
        return db.session.scalar(select(func.count()).select_from(cls).where(cls.state == PENDING))


def subscribed(owner):
    """SQL: true if the owner (a column of the statement at hand) has any subscription; on the subscriptions index."""
    return (select(literal_column("1")).where(Subscription.user_id == owner)
            .correlate_except(Subscription.__table__).exists())


def enqueue_for_job(connection, owner, event, now, job):
    """On the caller's transaction's connection: an outbox row per subscription of the owner that wants this job
    event.

    One INSERT … SELECT on the subscriptions index (the transition calls it only for an owner who has any).
    A finished job is also a candidate end of a batch, for owners who chose that email. How many rows."""
    prefix = f"msg_{secrets.token_urlsafe(12)}_"  # random per transition, so ids stay unique when a job fails again
    params = {"prefix": prefix, "owner": owner, "job_id": job["id"], "now": now,
              "event_suffix": ":" + event, "event_type": event, "event_like": f"% {event} %",
              "event_payload": payload_text(event, now, job),
              "batch_suffix": ":" + BATCH_FINISHED, "batch_type": BATCH_FINISHED, "batch_like": f"% {BATCH_FINISHED} %",
              "batch_payload": payload_text(BATCH_FINISHED, now, job)}
    # On the transition's connection, past the ORM: building and running an ORM statement costs more than the
    # statement itself, on every complete and fail.
    return connection.execute(_insert_for_job(), params).rowcount


# The users table, as much of it as the outbox reads (core/accounts.py imports the jobs, which import this module).
_USERS = table("users", column("id", String), column("disabled", Boolean))


@functools.cache
def _insert_for_job():
    """The INSERT … SELECT of enqueue_for_job, built once (its values are bound parameters)."""
    sub = Subscription.__table__.c
    # A disabled user's webhooks and emails stop: their jobs still finish, but no event is kept for them.
    owner_active = select(_USERS.c.id).where(_USERS.c.id == sub.user_id, _USERS.c.disabled.is_(False)).exists()

    def rows(tag, *where):
        return select(bindparam("prefix", type_=String) + sub.id + bindparam(f"{tag}_suffix", type_=String), sub.id,
                      bindparam("owner", type_=String), bindparam(f"{tag}_type", type_=String),
                      bindparam("job_id", type_=String), bindparam(f"{tag}_payload", type_=Text),
                      literal_column(f"'{PENDING}'"), literal_column("0"), bindparam("now", type_=DateTime),
                      bindparam("now", type_=DateTime)
                      ).where(sub.user_id == bindparam("owner", type_=String),
                              sub.events.like(bindparam(f"{tag}_like", type_=String)), owner_active, *where)

    chosen = union_all(rows("event"), rows("batch", sub.kind == literal_column(f"'{EMAIL}'")))
    columns = ("id", "subscription_id", "owner", "type", "job_id", "payload", "state", "attempts", "created_at",
               "next_attempt_at")
    return insert(OutboxEvent.__table__).from_select(columns, chosen)


def payload_text(type_, now, data):
    """The body of an event, as Standard Webhooks has it: {"type", "timestamp", "data"} as compact JSON."""
    return json.dumps({"type": type_, "timestamp": isoformat(now), "data": data}, separators=(",", ":"))


def enqueue(session, owner, type_, payload_data, subscription_id=None, now=None):
    """In the caller's transaction: one outbox row (the admins' digest); its id."""
    now = now or utcnow()
    event_id = f"msg_{secrets.token_urlsafe(16)}"
    session.execute(insert(OutboxEvent).values(
        id=event_id, subscription_id=subscription_id, owner=owner, type=type_, job_id=None,
        payload=payload_text(type_, now, payload_data), state=PENDING, attempts=0, created_at=now,
        next_attempt_at=now))
    return event_id


def wrote_events():
    """This process wrote outbox rows: its deliverer (if it runs one) looks now rather than at its next poll."""
    _pending_here.set()


def wait_for_events(timeout):
    """Wait until this process writes an outbox row or timeout passes; True if it did."""
    woken = _pending_here.wait(timeout)
    _pending_here.clear()
    return woken


# -- the retry policy -------------------------------------------------------------------------------


def next_delay(attempts, config, rand=random.random):
    """Seconds before the next try after attempts failed tries: WEBHOOK_RETRY_BASE_SECONDS doubled at each try after
    the first, at most WEBHOOK_RETRY_MAX_SECONDS, plus up to half that again at random."""
    return backoff(attempts, config["WEBHOOK_RETRY_BASE_SECONDS"], config["WEBHOOK_RETRY_MAX_SECONDS"], spread=0.5,
                   rand=rand)


# -- SSRF ---------------------------------------------------------------------------------------------


def host_allowed(host, allowed_hosts):
    """True if the operator listed this host (WEBHOOK_ALLOWED_HOSTS), so any scheme and address is fine."""
    return (host or "").lower().rstrip(".") in {h.lower().rstrip(".") for h in allowed_hosts}


def check_url(url, allowed_hosts, resolve=socket.getaddrinfo):
    """The URL, if a webhook may point at it; else raise NotifyError (WEBHOOK_URL or PRIVATE_ADDRESS)."""
    if not isinstance(url, str) or not url.strip() or len(url) > 2048:
        raise NotifyError(codes.WEBHOOK_URL, _l("Give the webhook a URL, like https://example.com/hooks/pdfqueue."))
    url = url.strip()
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise NotifyError(codes.WEBHOOK_URL, _l("The webhook URL is not a valid URL.")) from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise NotifyError(codes.WEBHOOK_URL, _l("The webhook URL must be https://host/…"))
    if host_allowed(parts.hostname, allowed_hosts):
        return url
    if parts.scheme != "https":
        raise NotifyError(codes.WEBHOOK_URL, _l("The webhook URL must be https:// (plain http only for hosts the "
                                                "operator lists in WEBHOOK_ALLOWED_HOSTS)."))
    pinned_address(parts.hostname, port or 443, allowed_hosts, resolve)
    return url


# IPv6 prefixes that carry an IPv4 address to a translator or tunnel, which then calls that IPv4 address:
# NAT64's well-known prefix and its local-use one (RFC 6052, RFC 8215; the IPv4 address in the last 32 bits,
# the /96 layout) and 6to4 (RFC 3056; ipaddress reads it, IPv6Address.sixtofour).
NAT64_PREFIXES = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))


def carried_ipv4(ip):
    """The IPv4 address an IPv6 one leads to (IPv4-mapped, 6to4, NAT64), or None."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if any(ip in prefix for prefix in NAT64_PREFIXES):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def refusal(address):
    """Why an address may not be called (loopback, private…), or None if it is a public one.

    An IPv6 address that carries an IPv4 one is judged by the IPv4 address: 64:ff9b::a00:1 reaches 10.0.0.1."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        ip = carried_ipv4(ip) or ip
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_private or ip.is_reserved or ip.is_multicast or ip.is_unspecified or not ip.is_global:
        return "private"
    return None


def pinned_address(host, port, allowed_hosts, resolve=socket.getaddrinfo):
    """Resolve host once and return the address to connect to, checked; raise NotifyError if it may not be called.

    The caller connects to this very address (never resolving again), so a name that resolves to a public
    address at the check and to 127.0.0.1 at the connect (DNS rebinding) cannot slip through. Every address
    the name has must be public: one private among them is refused too."""
    try:
        infos = resolve(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise NotifyError(codes.WEBHOOK_URL, _l("The webhook's host %(host)s does not resolve (%(why)s).", host=host, why=str(exc))) from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses:
        raise NotifyError(codes.WEBHOOK_URL, _l("The webhook's host %(host)s does not resolve.", host=host))
    if host_allowed(host, allowed_hosts):
        return addresses[0]
    for address in addresses:
        why = refusal(address)
        if why is not None:
            # The address it resolved to is not said: it would tell anyone who may add a webhook the internal DNS.
            raise NotifyError(codes.PRIVATE_ADDRESS, _l("The webhook's host %(host)s is on a %(why)s address; only "
                                                        "hosts listed in WEBHOOK_ALLOWED_HOSTS may be.", host=host, why=why))
    return addresses[0]
