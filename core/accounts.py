"""People and their credentials: users, their sign-in sessions, personal API tokens and one-time links.

Passwords are hashed with argon2 (argon2-cffi), and rehashed at sign-in when its parameters change. Session
keys, API tokens and one-time links are random secrets (`secrets.token_urlsafe`, 256 bits) of which only the
SHA-256 is stored: a leaked database gives no way in, and a high-entropy secret needs no slow hash. A session
is a row, so signing out ends it for good (a copied cookie stops working), and disabling a user deletes every
session and token of theirs at once (enabling them again revives none).
"""
import functools
import hashlib
import secrets
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from flask_login import UserMixin
from flask_babel import lazy_gettext as _l
from sqlalchemy import Boolean, DateTime, ForeignKey, Index, String, Text, bindparam, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from core.clock import isoformat, utcnow
from core.db import db, write_transaction
from core.jobs.model import Job, new_id

hasher = PasswordHasher()
TOKEN_PREFIX = "pdfq_"
MIN_PASSWORD = 10
SETUP, INVITE, RESET = "setup", "invite", "reset"


class AccountError(Exception):
    """A request about an account that cannot be done; message is one line a person can read."""


def digest(secret):
    """The stored form of a random secret (session key, API token, one-time link)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def normalize_email(email):
    """The address as stored: trimmed and lower-case; raise AccountError if it is not one."""
    email = (email or "").strip().lower()
    local, _, domain = email.partition("@")
    if not local or "." not in domain or len(email) > 320 or any(c.isspace() for c in email):
        raise AccountError(_l("Enter an email address, like name@example.com."))
    return email


def check_password(password):
    """Raise AccountError unless the password is long enough."""
    if len(password or "") < MIN_PASSWORD:
        raise AccountError(_l("Choose a password of at least %(count)s characters.", count=MIN_PASSWORD))


class User(UserMixin, db.Model):
    """A person who signs in; jobs.owner holds their id."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str | None] = mapped_column(Text)  # None: never set (invited, or signed in by a proxy)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    signed_in_at: Mapped[datetime | None] = mapped_column(DateTime)
    locale: Mapped[str | None] = mapped_column(String(16))  # chosen in the menu (core.config.LOCALES); None: not chosen

    session_key = None  # the raw key of the session this object was loaded for (Flask-Login's user id)

    @property
    def is_active(self):
        return not self.disabled

    def get_id(self):
        """What Flask-Login keeps in the cookie: the session's key, so that ending the session ends the cookie."""
        return self.session_key

    def to_dict(self):
        return {"id": self.id, "email": self.email, "admin": self.admin}

    def to_admin_dict(self):
        return {**self.to_dict(), "disabled": self.disabled, "created_at": isoformat(self.created_at),
                "signed_in_at": isoformat(self.signed_in_at)}

    # -- reads ---------------------------------------------------------------------------------

    @classmethod
    def by_email(cls, email):
        try:
            email = normalize_email(email)
        except AccountError:
            return None
        return db.session.execute(select(cls).where(cls.email == email)).scalar_one_or_none()

    @classmethod
    def active(cls, user_id):
        """The user with this id unless disabled (or gone), else None."""
        user = db.session.get(cls, user_id)
        return user if user is not None and not user.disabled else None

    @classmethod
    def exists(cls):
        """True once anyone has an account (the first-run set-up link is dead from then on)."""
        return db.session.execute(select(cls.id).limit(1)).first() is not None

    @classmethod
    def emails(cls, ids):
        """{user id: email} for these ids (others' jobs in the admin's view)."""
        ids = [i for i in set(ids) if i]
        if not ids:
            return {}
        return dict(db.session.execute(select(cls.id, cls.email).where(cls.id.in_(ids))).all())

    # -- changes -------------------------------------------------------------------------------

    @classmethod
    def create(cls, email, password=None, admin=False):
        """A new user; raise AccountError if the address is taken or the password too short."""
        email = normalize_email(email)
        if password is not None:
            check_password(password)
        user = cls(email=email, admin=admin, created_at=utcnow(),
                   password_hash=hasher.hash(password) if password is not None else None)
        try:
            with write_transaction() as session:
                session.add(user)
        except IntegrityError:
            raise AccountError(_l("%(email)s already has an account.", email=email)) from None
        return user

    def set_password(self, password, revoke_tokens=False):
        """Set a new password and end every session of this user (a reset); with revoke_tokens, delete their
        personal API tokens too (a reset after a leak: whoever had the password may have made one)."""
        check_password(password)
        with write_transaction() as session:
            session.execute(update(User).where(User.id == self.id).values(password_hash=hasher.hash(password)))
            session.execute(delete(UserSession).where(UserSession.user_id == self.id))
            if revoke_tokens:
                session.execute(delete(ApiToken).where(ApiToken.user_id == self.id))

    def choose_locale(self, locale):
        """Keep the language this person chose (core.config.LOCALES), or None to follow their browser."""
        with write_transaction() as session:
            session.execute(update(User).where(User.id == self.id).values(locale=locale))
        self.locale = locale

    def change(self, **values):
        """Set admin or disabled. Disabling ends every session of the user and deletes their tokens, so that
        enabling them again revives neither."""
        with write_transaction() as session:
            session.execute(update(User).where(User.id == self.id).values(**values))
            if values.get("disabled"):
                session.execute(delete(UserSession).where(UserSession.user_id == self.id))
                session.execute(delete(ApiToken).where(ApiToken.user_id == self.id))


@functools.cache
def _dummy_hash():
    """A hash to verify against when the email is unknown, so that it costs what a wrong password does.

    Made on first need: an argon2 hash takes its 64 MiB and a few tenths of a second, which no process
    should spend at start (the worker never signs anyone in)."""
    return hasher.hash(secrets.token_urlsafe(16))


def authenticate(email, password):
    """The active user with this email and password, or None; the same work whichever way it fails."""
    user = User.by_email(email)
    known = user is not None and user.password_hash
    stored = user.password_hash if known else _dummy_hash()
    try:
        hasher.verify(stored, password or "")
    except (VerificationError, InvalidHashError):
        return None
    if not known or user.disabled:
        return None
    if hasher.check_needs_rehash(stored):  # the parameters changed since it was set: store it the new way
        with write_transaction() as session:
            session.execute(update(User).where(User.id == user.id).values(password_hash=hasher.hash(password)))
    return user


class UserSession(db.Model):
    """One signed-in browser: the cookie holds the key, the row its digest."""

    __tablename__ = "user_sessions"
    __table_args__ = (Index("ix_user_sessions_user", "user_id"),)

    key_digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(32), ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(DateTime)

    @classmethod
    def start(cls, user):
        """A new session for user; its key (for the cookie)."""
        key = secrets.token_urlsafe(32)
        now = utcnow()
        with write_transaction() as session:
            session.add(cls(key_digest=digest(key), user_id=user.id, created_at=now))
            session.execute(update(User).where(User.id == user.id).values(signed_in_at=now))
        return key

    @classmethod
    def end(cls, key):
        with write_transaction() as session:
            session.execute(delete(cls).where(cls.key_digest == digest(key)))

    @classmethod
    def forget_before(cls, before):
        """Drop sessions started before before (past SESSION_DAYS, so no cookie can use them); how many."""
        with write_transaction() as session:
            return session.execute(delete(cls).where(cls.created_at < before)).rowcount

    @classmethod
    def user(cls, key, max_age):
        """The active user this session key belongs to, or None (ended, too old, unknown, or disabled)."""
        user = db.session.execute(
            select(User).join(cls, cls.user_id == User.id)
            .where(cls.key_digest == digest(key), cls.created_at > utcnow() - max_age, User.disabled.is_(False))
        ).scalar_one_or_none()
        if user is not None:
            user.session_key = key
        return user


class ApiToken(db.Model):
    """A personal API token, used as `Authorization: Bearer`; the secret is shown once and stored as a digest."""

    __tablename__ = "api_tokens"
    __table_args__ = (Index("ix_api_tokens_user", "user_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(String(32), ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    secret_digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime)

    LAST_USED_EVERY = timedelta(minutes=5)  # a script's every call need not cost a write

    def to_dict(self):
        return {"id": self.id, "name": self.name, "created_at": isoformat(self.created_at),
                "last_used_at": isoformat(self.last_used_at)}

    @classmethod
    def create(cls, user, name):
        """A new token for user; (the token, its secret), the secret to be shown once."""
        name = (name or "").strip()[:100]
        if not name:
            raise AccountError(_l("Give the token a name, so you know later what uses it."))
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token = cls(user_id=user.id, name=name, secret_digest=digest(secret), created_at=utcnow())
        with write_transaction() as session:
            session.add(token)
        return token, secret

    @classmethod
    def of(cls, user):
        return db.session.execute(select(cls).where(cls.user_id == user.id).order_by(cls.created_at.desc())).scalars().all()

    @classmethod
    def revoke(cls, user, token_id):
        """Delete the user's token; False if they have no such token."""
        with write_transaction() as session:
            return session.execute(delete(cls).where(cls.id == token_id, cls.user_id == user.id)).rowcount == 1

    @classmethod
    def user(cls, secret):
        """The active user this token belongs to, or None (unknown, revoked, malformed, or a disabled user)."""
        if not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
            return None
        row = db.session.execute(_token_user_statement(), {"digest": digest(secret)}).first()
        if row is None:
            return None
        user, token_id, last_used = row
        now = utcnow()
        if last_used is None or now - last_used > cls.LAST_USED_EVERY:
            with write_transaction() as session:
                session.execute(update(cls).where(cls.id == token_id).values(last_used_at=now))
        return user


class OneTimeLink(db.Model):
    """A link that works once: the first admin's set-up, an invitation, or a password reset."""

    __tablename__ = "one_time_links"

    secret_digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    purpose: Mapped[str] = mapped_column(String(16))  # SETUP, INVITE or RESET
    email: Mapped[str | None] = mapped_column(String(320))  # INVITE: the address invited
    user_id: Mapped[str | None] = mapped_column(String(32), ForeignKey("users.id", ondelete="CASCADE"))  # RESET
    admin: Mapped[bool] = mapped_column(Boolean, default=False)  # INVITE: as an admin
    expires_at: Mapped[datetime] = mapped_column(DateTime)

    @classmethod
    def create(cls, purpose, lifetime, email=None, user=None, admin=False):
        """A new link; its secret (the last part of its URL)."""
        secret = secrets.token_urlsafe(32)
        with write_transaction() as session:
            session.add(cls(secret_digest=digest(secret), purpose=purpose, email=email, admin=admin,
                            user_id=user.id if user is not None else None, expires_at=utcnow() + lifetime))
        return secret

    @classmethod
    def find(cls, secret, purpose):
        """The unexpired link of this purpose, or None (a set-up link is dead once anyone has an account)."""
        link = db.session.get(cls, digest(secret or ""))
        if link is None or link.purpose != purpose or link.expires_at <= utcnow():
            return None
        if purpose == SETUP and User.exists():
            return None
        return link

    def use(self):
        """Spend the link; False if another request spent it first."""
        with write_transaction() as session:
            return session.execute(delete(OneTimeLink).where(OneTimeLink.secret_digest == self.secret_digest)
                                   ).rowcount == 1

    @classmethod
    def pending_invitations(cls):
        """The invitations not yet used nor expired, the soonest to expire first."""
        return db.session.execute(select(cls).where(cls.purpose == INVITE, cls.expires_at > utcnow())
                                  .order_by(cls.expires_at)).scalars().all()

    @classmethod
    def revoke_invitation(cls, secret_digest):
        """Delete a pending invitation (named by its digest: the page never has the secret); False if none."""
        with write_transaction() as session:
            return session.execute(delete(cls).where(cls.secret_digest == secret_digest, cls.purpose == INVITE)
                                   ).rowcount == 1

    @classmethod
    def forget_expired(cls, now=None):
        """Drop links past their time; how many."""
        with write_transaction() as session:
            return session.execute(delete(cls).where(cls.expires_at <= (now or utcnow()))).rowcount


def storage_used(owner):
    """Bytes of uploaded PDFs this owner's jobs keep (the quota counts what the user can make us keep)."""
    return db.session.scalar(_storage_used_statement(), {"owner": owner})


# Every request with a token, and every upload, runs these: built once, their values bound parameters (building a
# statement and its cache key costs more CPU than SQLite takes to run it).

@functools.cache
def _token_user_statement():
    return (select(User, ApiToken.id, ApiToken.last_used_at).join(ApiToken, ApiToken.user_id == User.id)
            .where(ApiToken.secret_digest == bindparam("digest"), User.disabled.is_(False)))


@functools.cache
def _storage_used_statement():
    return select(func.coalesce(func.sum(Job.bytes), 0)).where(Job.owner == bindparam("owner"),
                                                               Job.upload_path.is_not(None))
