"""Sources: a mailbox (IMAP) or a folder on the box that files arrive in, each feeding one owner's queue.

A source row says where to look (its URL, never with a password: that is sealed apart, `secret`), whose queue and
which mapping its jobs join, which senders a mailbox takes (`allow_from`, empty: anyone), and whether it is on. It
also keeps how its polls went (last poll, last error, counts), when it is next due (`next_poll_at`, pushed out by
back-off after failures) and who is polling it now (`lease_holder` until `lease_expires_at`): a poll starts only by
taking that lease with one conditional UPDATE, so two polls of one source never overlap, in one process or across
workers. The poll itself is core/intake/.
"""
import base64
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import unquote, urlsplit

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import current_app
from flask_babel import lazy_gettext as _l
from sqlalchemy import Boolean, DateTime, Integer, String, Text, or_, select, update
from sqlalchemy.orm import Mapped, mapped_column

from core.backoff import backoff
from core.clock import isoformat, utcnow
from core.config import loopback_host
from core.db import db, write_transaction

IMAP, FOLDER = "imap", "folder"
SCHEMES = {"imap": IMAP, "imaps": IMAP, "folder": FOLDER}
DONE_FOLDER, REJECTED_FOLDER = "pdfqueue/done", "pdfqueue/rejected"


class SourceError(ValueError):
    """A source that cannot be set up as asked (a bad URL, an unknown owner or mapping); its text says why."""


def parse_url(url):
    """(kind, parts) of a source URL, parts a dict; raise SourceError if it is not one we take.

    imap://USER@HOST:PORT/MAILBOX (STARTTLS; in clear only to a loopback host), imaps://… (TLS throughout),
    folder:///ABSOLUTE/PATH."""
    url = (url or "").strip()
    split = urlsplit(url)
    kind = SCHEMES.get(split.scheme.lower())
    if kind is None:
        raise SourceError(_l("%(url)r is not a source URL: use imap://, imaps:// or folder:///", url=url))
    if kind == FOLDER:
        path = unquote(split.path)
        if split.netloc or not path.startswith("/"):
            raise SourceError(_l("A folder source is folder:///ABSOLUTE/PATH (three slashes, then the path)."))
        return kind, {"path": path.rstrip("/") or "/"}
    if split.password is not None:
        raise SourceError(_l("Leave the password out of the URL: it is asked for apart and kept encrypted."))
    try:
        port = split.port
    except ValueError:
        raise SourceError(_l("%(url)r has a port that is not a number.", url=url)) from None
    if not split.username or not split.hostname:
        raise SourceError(_l("A mailbox source is imap(s)://USER@HOST:PORT/MAILBOX: the user and host are "
                            "missing."))
    tls = split.scheme.lower() == "imaps"
    return kind, {"user": unquote(split.username), "host": split.hostname, "tls": tls,
                  "port": port or (993 if tls else 143), "mailbox": unquote(split.path.lstrip("/")) or "INBOX",
                  "loopback": loopback_host(split.hostname)}


def _fernet(secret):
    """A Fernet key derived from one app secret with HKDF (the secret itself is no Fernet key)."""
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"pdfqueue source password").derive(
        secret.encode())
    return Fernet(base64.urlsafe_b64encode(key))


def _fernets():
    """SECRET_KEY's Fernet first (it seals), then each fallback's (they still open what older keys sealed)."""
    config = current_app.config
    return MultiFernet([_fernet(config["SECRET_KEY"])] + [_fernet(old) for old in config.get("SECRET_KEY_FALLBACKS")
                                                          or ()])


def seal(password):
    """The password encrypted under SECRET_KEY (what the sources table keeps)."""
    return _fernets().encrypt(password.encode()).decode()


def unseal(token):
    """The password sealed in token; raise SourceError if no current or fallback key opens it."""
    try:
        return _fernets().decrypt(token.encode()).decode()
    except InvalidToken:
        raise SourceError(_l("The stored password cannot be read with SECRET_KEY or its fallbacks: set it "
                             "again (sources remove, then add).")) from None


def create(url, owner_email, mapping=None, senders=(), password=None):
    """Set up a source as the admin page and the CLI ask: the new Source; raise SourceError saying what is wrong
    (the URL, an unknown owner or mapping, a folder that is not one, a mailbox without its password)."""
    from core.accounts import User  # accounts imports much; only setting up a source needs it

    config = current_app.config
    kind, parts = parse_url(url)
    user = User.by_email(owner_email or "")
    if user is None:
        raise SourceError(_l("No account for %(email)r: the owner must be someone who can sign in.",
                              email=owner_email))
    mapping = mapping or config["DEFAULT_MAPPING"]
    if mapping not in config["MAPPINGS"]:
        raise SourceError(_l("Unknown mapping %(name)r; choose one of: %(mappings)s.", name=mapping[:80],
                              mappings=", ".join(config["MAPPINGS"])))
    senders = [sender for sender in senders if sender.strip()]
    if kind == FOLDER:
        if senders:
            raise SourceError(_l("An allow-list of senders is for a mailbox; a folder has no senders."))
        if not Path(parts["path"]).is_dir():
            raise SourceError(_l("%(path)s is not a folder on this machine.", path=parts["path"]))
    elif not password:
        raise SourceError(_l("A mailbox needs its password."))
    return Source.add(url, user.id, mapping, senders, password if kind == IMAP else None)


class Source(db.Model):
    """One mailbox or folder that feeds an owner's queue, and how its polls are going."""

    __tablename__ = "sources"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    url: Mapped[str] = mapped_column(String(1024))
    owner: Mapped[str] = mapped_column(String(64))
    mapping: Mapped[str] = mapped_column(String(128))
    allow_from: Mapped[str] = mapped_column(Text, default="")  # senders a mailbox takes, one a line; empty: anyone
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    secret: Mapped[str | None] = mapped_column(Text)  # the mailbox's password, sealed (seal/unseal)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_poll_at: Mapped[datetime | None] = mapped_column(DateTime)
    last_ok_at: Mapped[datetime | None] = mapped_column(DateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    polls: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[int] = mapped_column(Integer, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)  # in a row, for the back-off
    files_taken: Mapped[int] = mapped_column(Integer, default=0)
    files_rejected: Mapped[int] = mapped_column(Integer, default=0)
    next_poll_at: Mapped[datetime | None] = mapped_column(DateTime)
    lease_holder: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    window_started_at: Mapped[datetime | None] = mapped_column(DateTime)  # INTAKE_FILES_PER_MINUTE's minute
    window_files: Mapped[int] = mapped_column(Integer, default=0)

    @property
    def parts(self):
        return parse_url(self.url)[1]

    @property
    def senders(self):
        return [line for line in (self.allow_from or "").splitlines() if line]

    @property
    def label(self):
        """How pages and the CLI name it: its URL."""
        return self.url

    @classmethod
    def add(cls, url, owner, mapping, senders=(), password=None):
        """A new source, on and due at once (create() checks what an admin asked for first); raise SourceError if
        the URL is not one we take."""
        kind, _parts = parse_url(url)
        senders = sorted({sender.strip().lower() for sender in senders if sender.strip()})
        with write_transaction() as session:
            source = cls(kind=kind, url=url.strip(), owner=owner, mapping=mapping, allow_from="\n".join(senders),
                         enabled=True, secret=seal(password) if kind == IMAP else None, created_at=utcnow(),
                         polls=0, errors=0, failures=0, files_taken=0, files_rejected=0, window_files=0)
            session.add(source)
        return source

    @classmethod
    def listed(cls):
        return db.session.execute(select(cls).order_by(cls.id)).scalars().all()

    @classmethod
    def set_enabled(cls, source_id, enabled):
        """Turn a source on (due at once, its back-off forgotten) or off; False if there is no such source."""
        values = {"enabled": enabled}
        if enabled:
            values.update(next_poll_at=None, failures=0)
        with write_transaction() as session:
            return session.execute(update(cls).where(cls.id == source_id).values(**values)).rowcount == 1

    @classmethod
    def remove(cls, source_id):
        """Delete a source (its jobs stay, still naming it); False if there is no such source."""
        with write_transaction() as session:
            source = session.get(cls, source_id)
            if source is None:
                return False
            session.delete(source)
        return True

    @classmethod
    def due_ids(cls, kind=None):
        """Ids of the enabled sources due for a poll now and not being polled."""
        now = utcnow()
        query = select(cls.id).where(cls.enabled.is_(True), or_(cls.next_poll_at.is_(None), cls.next_poll_at <= now),
                                     or_(cls.lease_holder.is_(None), cls.lease_expires_at < now))
        if kind:
            query = query.where(cls.kind == kind)
        return list(db.session.execute(query.order_by(cls.id)).scalars())

    # -- a poll's lease: the one guard against two polls of a source at once ------------------------------------

    @classmethod
    def take_lease(cls, source_id, holder, seconds, anytime=False, even_off=False):
        """Take the source's poll lease for seconds if nobody holds it (or theirs lapsed), it is on (or even_off)
        and due (or anytime); True if taken. One conditional UPDATE: of racing pollers, one wins."""
        now = utcnow()
        conditions = [cls.id == source_id, cls.lease_holder.is_(None) | (cls.lease_expires_at < now)]
        if not even_off:
            conditions.append(cls.enabled.is_(True))
        if not anytime:
            conditions.append(cls.next_poll_at.is_(None) | (cls.next_poll_at <= now))
        with write_transaction() as session:
            return session.execute(update(cls).where(*conditions).values(
                lease_holder=holder, lease_expires_at=now + timedelta(seconds=seconds))).rowcount == 1

    @classmethod
    def renew_lease(cls, source_id, holder, seconds):
        """Extend our lease while a long poll goes on; False if it is no longer ours."""
        with write_transaction() as session:
            return session.execute(update(cls).where(cls.id == source_id, cls.lease_holder == holder).values(
                lease_expires_at=utcnow() + timedelta(seconds=seconds))).rowcount == 1

    @classmethod
    def finish_poll(cls, source_id, holder, taken, rejected, window, error=None, due_in=None):
        """Record a poll's outcome, set when the next is due and give up the lease.

        A failure counts in a row and pushes the next poll out by back-off; a success resets that count."""
        config = current_app.config
        now = utcnow()
        with write_transaction() as session:
            source = session.get(cls, source_id)
            if source is None:
                return
            source.last_poll_at = now
            source.polls = (source.polls or 0) + 1
            source.files_taken = (source.files_taken or 0) + taken
            source.files_rejected = (source.files_rejected or 0) + rejected
            source.window_started_at, source.window_files = window
            if error is None:
                source.last_ok_at, source.last_error, source.failures = now, None, 0
                wait = config["INTAKE_POLL_SECONDS"] if due_in is None else due_in
            else:
                source.last_error = error[:2000]
                source.errors = (source.errors or 0) + 1
                source.failures = (source.failures or 0) + 1
                wait = backoff(source.failures, config["INTAKE_RETRY_BASE_SECONDS"],
                               config["INTAKE_RETRY_MAX_SECONDS"], spread=0.1)
            source.next_poll_at = now + timedelta(seconds=wait)
            if source.lease_holder == holder:
                source.lease_holder = source.lease_expires_at = None

    def to_dict(self):
        """The source as the CLI's --json shows it (never its password)."""
        return {"id": self.id, "kind": self.kind, "url": self.url, "owner": self.owner, "mapping": self.mapping,
                "allow_from": self.senders, "enabled": self.enabled, "last_poll_at": isoformat(self.last_poll_at),
                "last_ok_at": isoformat(self.last_ok_at), "last_error": self.last_error, "polls": self.polls,
                "errors": self.errors, "files_taken": self.files_taken, "files_rejected": self.files_rejected,
                "next_poll_at": isoformat(self.next_poll_at)}

