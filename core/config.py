"""Every setting of the web and the worker, as one typed object read once at start (pydantic-settings).

Each field is an environment variable of the same name (a contract: scripts and unit files set them), with its
type, default and one line of meaning; the README's configuration table is checked against them
(tests/core/test_config.py). Fields marked TUNING are knobs no operator needs (poll intervals, back-off
constants, test speed-ups); the README lists them apart. Values the app derives from others (paths under
DATA_DIR, the database URL, …) are filled in by derive().
"""
import ipaddress
from pathlib import Path
from typing import Annotated
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCALES = ("en", "pt_PT")  # the languages pages and emails speak: webapp/translations holds all but en
TUNING = {"tuning": True}  # json_schema_extra of a knob no operator sets

CommaList = Annotated[list[str], NoDecode]


def comma_list(value):
    """A comma-separated setting as a list, blanks dropped."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def setting(default, meaning, tuning=False, shown=None):
    """A field: its default, its one line of meaning, whether it is a tuning knob, and its default as the README
    shows it when that is not the value itself (a default computed from others)."""
    extra = {**(TUNING if tuning else {}), **({"shown": shown} if shown else {})}
    return Field(default, description=meaning, json_schema_extra=extra or None)


class Settings(BaseSettings):
    """pdfqueue's settings (web, worker, admin CLI and the web's gunicorn)."""

    model_config = SettingsConfigDict(case_sensitive=True, env_ignore_empty=True, extra="ignore")

    # -- where and how it runs --------------------------------------------------------------------------------
    PORT: int = setting(8000, "web port")
    HOST: str = setting("127.0.0.1", "web bind address (put nginx in front for other machines, see `deploy/`)")
    DATA_DIR: str = setting("", "holds `instance/` (database, queue, secret key), `uploads/`, `results/`",
                            shown="repo root")
    DATABASE_URL: str = setting("", "e.g. `postgresql+psycopg://user:pw@host/db`",
                                shown="SQLite in `instance/pdfqueue.db`")
    REDIS_URL: str = setting("", "when set: Huey queue, rate-limit storage and event fan-out on Redis")
    SECRET_KEY: str = setting(
        "", "signs session cookies and share links; when set, at least 32 bytes and no placeholder (`change-me`, "
        "`secret`, …), else the processes refuse to start. Leave it unset on one box, or on several that share "
        "`DATA_DIR`", shown="generated once into `instance/secret_key` (0600)")
    SECRET_KEY_FALLBACKS: CommaList = setting(
        [], "comma-separated older keys that still check cookies and share links while a rotation runs (new ones "
        "are signed with `SECRET_KEY`)")
    WEB_WORKERS: int = setting(1, "gunicorn processes (more than one needs `REDIS_URL`)")
    WEB_WORKER_CLASS: str = setting("gevent", "gunicorn worker class (see Serving)")
    WEB_CONNECTIONS: int = setting(2000, "the open connections (streams included) one gevent worker takes",
                                   tuning=True)
    WEB_THREADS: int = setting(32, "threads per web process when `WEB_WORKER_CLASS=gthread`", tuning=True)
    LOG_LEVEL: str = setting("INFO", "log level (logs are JSON lines on stderr)")
    LOG_FORMAT: str = setting(
        "auto", "`json` (one JSON object a line: for systemd's journal and log shippers), `text` (short readable "
        "lines), or `auto`: text when stderr is a terminal, else JSON (`make run` in a terminal passes `text`)")

    # -- the gateway --------------------------------------------------------------------------------------------
    GATEWAY_URL: str = setting(
        "", "the conversion gateway; when set, `make run` does not start ours (the worker calls it directly: no "
        "`HTTP(S)_PROXY` or CA bundle from the environment)", shown="http://127.0.0.1:$GATEWAY_PORT")
    GATEWAY_PORT: int = setting(8002, "port of the embedded gateway")
    GATEWAY_TIMEOUT: float = setting(180, "read timeout of a gateway call, seconds")
    MAPPINGS: CommaList = setting(
        ["pt_simon_invoice_v1", "generic_v1"], "mappings users may choose (allow-list); the worker checks it again "
        "before each conversion, so a job whose mapping was taken out meanwhile fails with `UNKNOWN_MAPPING`")
    DEFAULT_MAPPING: str = setting("", "mapping used when an upload names none", shown="first of `MAPPINGS`")
    MAX_RESULT_MB: int = setting(64, "largest XML answer accepted from the gateway")

    # -- uploads and limits -------------------------------------------------------------------------------------
    MAX_UPLOAD_MB: int = setting(50, "largest PDF accepted")
    UPLOADS_PER_MINUTE: int = setting(
        10, "files per minute per user, across their sessions and tokens (six times that per client address)")
    UPLOAD_WINDOW_SECONDS: int = setting(
        60, "the window `UPLOADS_PER_MINUTE` counts in (a moving window); tests shorten it so that a drop far over "
        "the limit runs in seconds", tuning=True)
    USER_QUOTA_MB: int = setting(
        2048, "PDFs kept per user; an upload past it answers `507 INSUFFICIENT_STORAGE`, keeping nothing")
    MIN_FREE_MB: int = setting(
        200, "free space `uploads/` must keep; an upload that would leave less answers `507`, keeping nothing")
    MAX_FORM_PARTS: int = setting(
        0, "parts one multipart form may have (a minute's files, the mapping, the CSRF token, a little room); more "
        "answers `413`", tuning=True, shown="UPLOADS_PER_MINUTE + 5")
    BODY_TIMEOUT_SECONDS: float = setting(
        60, "time a request body has to arrive in full; a client trickling one is answered `408` and disconnected "
        "(`webapp/bodies.py`)", tuning=True)
    ACTIONS_PER_MINUTE: int = setting(
        30, "retries, share links (made or revoked) and token changes, each kind per user a minute (four times "
        "that per client address); then `429`")
    STREAMS_PER_USER: int = setting(
        10, "open event streams (`GET /api/events`) one user may hold, per web process; more answer `429` (the "
        "page then polls)")
    STREAMS_PER_ADDRESS: int = setting(30, "open event streams one client address may hold, per web process")
    STREAM_MAX_SECONDS: float = setting(
        3600, "an event stream ends after this; the page reconnects within 3 s and resumes from its last event id",
        tuning=True)
    SHARE_TTL_SECONDS: int = setting(
        900, "lifetime of a share link (`POST /api/jobs/<id>/share`), fixed inside the link when it is made; "
        "`DELETE /api/jobs/<id>/share` revokes every link of the job")

    # -- the worker -----------------------------------------------------------------------------------------------
    WORKER_CONCURRENCY: int = setting(4, "worker threads, and the most gateway calls in flight across all workers")
    LEASE_SECONDS: int = setting(
        45, "a processing job's lease; extended while the gateway works, reaped when it lapses (a lease of a dead "
        "worker of the same host is taken back at once instead)", tuning=True)
    MAX_ATTEMPTS: int = setting(
        3, "attempts before a transiently failing job is failed and dead-lettered (a worker that died mid-job on "
        "another host, its lease lapsed, counts as an attempt)")
    RETRY_BASE_SECONDS: float = setting(5, "a retry waits base × 2^(attempt−1) + uniform(0, jitter)", tuning=True)
    RETRY_JITTER_SECONDS: float = setting(5, "the jitter of a retry's wait (see `RETRY_BASE_SECONDS`)", tuning=True)
    BREAKER_THRESHOLD: int = setting(
        5, "consecutive gateway failures, while the gateway's `/healthz` fails too, that open the circuit breaker",
        tuning=True)
    BREAKER_DISTINCT_JOBS: int = setting(
        3, "the breaker also opens when 5xx answers or timeouts come from this many distinct jobs within "
        "`BREAKER_WINDOW_SECONDS` (no conversion succeeding in between) while `/healthz` says ok; `0`: off",
        tuning=True)
    BREAKER_WINDOW_SECONDS: float = setting(
        60, "the window of `BREAKER_DISTINCT_JOBS`; opened so, the breaker probes after a whole window", tuning=True)
    MAINTENANCE_SECONDS: float = setting(5, "tick of the worker's upkeep loop (lease reaping, breaker probe)",
                                         tuning=True)
    REAP_SECONDS: float = setting(30, "a queued job idle this long gets a fresh wake-up", tuning=True)
    WORKER_POLL_SECONDS: float = setting(
        0.01, "with the SQLite queue, how often one idle worker thread looks for wake-ups while work flows",
        tuning=True)
    WORKER_IDLE_POLL_SECONDS: float = setting(
        0.03, "what the look backs off to when the queue stays empty (with the doorbell, `instance/doorbell/`, "
        "rung at each wake-up, once a second)", tuning=True)
    WORKER_SHUTDOWN_SECONDS: float = setting(
        30, "on SIGINT, how long running conversions may finish before their jobs are released")

    # -- intake: sources (mailboxes and folders, core/intake/) ------------------------------------------------------
    INTAKE_POLL_SECONDS: float = setting(
        60, "how often each source (mailbox or folder) is looked at; a folder is also watched, so a file dropped in "
        "it is taken within seconds")
    INTAKE_FILES_PER_MINUTE: int = setting(
        120, "files one source turns into jobs a minute (its own rate, not the browser's `UPLOADS_PER_MINUTE`); the "
        "rest wait in the mailbox or folder for the next minute")
    INTAKE_SETTLE_SECONDS: float = setting(
        2, "a file in a folder source is taken only once it has not changed for this long (still being written)",
        tuning=True)
    INTAKE_RETRY_BASE_SECONDS: float = setting(
        10, "after a failed poll (server down, wrong password, disk full) the source is tried again after base × "
        "2^(failures−1), capped at `INTAKE_RETRY_MAX_SECONDS`", tuning=True)
    INTAKE_RETRY_MAX_SECONDS: float = setting(900, "the cap of a failing source's back-off", tuning=True)
    INTAKE_LEASE_SECONDS: float = setting(
        120, "a poll's lease on its source, renewed at each message or file; a worker killed mid-poll leaves the "
        "source to the next poll once it lapses", tuning=True)
    INTAKE_TIMEOUT: float = setting(30, "seconds an IMAP server has to answer", tuning=True)
    PDFQUEUE_SOURCE_PASSWORD: str = setting(
        "", "for `sources add imap(s)://…` in scripts: the mailbox's password, instead of the prompt")

    # -- retention -------------------------------------------------------------------------------------------------
    RETENTION_PDF_DAYS: int = setting(7, "uploaded PDFs of finished jobs are deleted after this")
    RETENTION_XML_DAYS: int = setting(30, "results are deleted after this (downloads then answer `410 EXPIRED`)")
    RETENTION_XML_AFTER_DOWNLOAD: bool = setting(
        False, "`1`: a result is deleted at its first download (by its owner, in a ZIP from `GET /api/jobs/archive` "
        "once the ZIP has streamed past it (a download given up midway keeps what it had not sent), or through a "
        "share link); the job then shows expired and later downloads answer `410 EXPIRED` (uploading the PDF "
        "again converts it again)")

    # -- accounts ----------------------------------------------------------------------------------------------------
    AUTH: str = setting(
        "password", "who may use it: `password` (accounts that sign in, personal API tokens), `proxy` (the user a "
        "trusted SSO proxy names in `REMOTE_USER_HEADER`, created on first sight; needs `BEHIND_PROXY`), or `none` "
        "(anonymous owners per browser: one person on this machine only, refused unless `HOST` is loopback)")
    BEHIND_PROXY: bool = setting(
        False, "trust `X-Forwarded-*` from one proxy; session cookies become `Secure` and take the `__Host-` prefix")
    REMOTE_USER_HEADER: str = setting(
        "X-Forwarded-Email", "with `AUTH=proxy`: the header carrying the signed-in email (oauth2-proxy: "
        "`X-Forwarded-Email`; Authelia: `Remote-Email`)")
    TRUSTED_PROXIES: CommaList = setting(
        ["127.0.0.1", "::1"], "with `AUTH=proxy`: comma-separated addresses (or networks, `10.0.0.0/8`) of the "
        "proxies whose `REMOTE_USER_HEADER` is believed; from any other peer the header is ignored and logged")
    PROXY_SECRET: str = setting(
        "", "with `AUTH=proxy`: when set, `REMOTE_USER_HEADER` is believed only on a request that also carries "
        "`PROXY_SECRET_HEADER: <this>`, which the proxy adds (so another process on the proxy's own address "
        "cannot name a user)")
    PROXY_SECRET_HEADER: str = setting("X-Proxy-Secret", "the header that carries `PROXY_SECRET`")
    PUBLIC_URL: str = setting(
        "", "where people reach the service, for the links printed outside a request (the first-run set-up link)",
        shown="http://$HOST:$PORT")
    SESSION_DAYS: int = setting(
        30, "a sign-in lasts this long (or until signing out; disabling a user ends it at once)")
    INVITE_DAYS: int = setting(7, "invitation and password-reset links work this long, once")
    SIGNINS_PER_MINUTE: int = setting(
        5, "failed sign-ins allowed a minute per account from one client address (ten times that per account "
        "from all addresses, four times that per address across accounts); then `429` with `Retry-After`")
    PDFQUEUE_PASSWORD: str = setting(
        "", "for the admin CLI (`users create`, `users reset`) in scripts, instead of the password prompt")

    # -- language ----------------------------------------------------------------------------------------------------
    DEFAULT_LOCALE: str = setting(
        "en", "language of pages and emails for a reader who chose none in the menu and whose browser asks for none "
        "of `en`, `pt_PT`")
    DEFAULT_TIMEZONE: str = setting(
        "UTC", "time zone the pages and emails show times in (an IANA name, e.g. `Europe/Lisbon`)")

    # -- notifications -----------------------------------------------------------------------------------------------
    WEBHOOK_ALLOWED_HOSTS: CommaList = setting(
        [], "comma-separated hosts a webhook may point at over plain `http://` and on any address, loopback and "
        "private ones included (an internal receiver, say); every other webhook must be `https://` on a public "
        "address (see Notifications)")
    WEBHOOK_CONNECT_TIMEOUT: float = setting(5, "seconds a webhook delivery may take to connect", tuning=True)
    WEBHOOK_READ_TIMEOUT: float = setting(10, "seconds a delivery waits for each read of the answer", tuning=True)
    WEBHOOK_RETRY_BASE_SECONDS: float = setting(
        10, "a failed delivery is tried again after base × 2^(attempt−1), capped at `WEBHOOK_RETRY_MAX_SECONDS`, "
        "plus up to half that again at random", tuning=True)
    WEBHOOK_RETRY_MAX_SECONDS: float = setting(3600, "the cap of a delivery's wait before it is tried again",
                                               tuning=True)
    WEBHOOK_GIVE_UP_HOURS: float = setting(
        24, "an event not delivered this long after it happened is given up: marked `failed` on the settings page "
        "and in `GET /api/webhooks/<id>/deliveries`, a warning in the worker's log, `outcome=\"gave_up\"` in "
        "`/metrics`")
    WEBHOOK_LEASE_MARGIN_SECONDS: float = setting(
        30, "a delivery's lease is its timeouts plus this; a worker killed mid-delivery leaves the event to be "
        "sent again once it lapses", tuning=True)
    WEBHOOK_POLL_SECONDS: float = setting(
        1, "how often each worker's deliverer looks at the outbox (at once when the worker itself wrote an event)",
        tuning=True)
    WEBHOOK_CONCURRENCY: int = setting(4, "how many deliveries a worker's deliverer makes at a time", tuning=True)
    SMTP_URL: str = setting(
        "", "email on: `smtp://host:port` (STARTTLS when offered), `smtps://user:password@host:465` (TLS throughout; "
        "percent-encode special characters) or `smtp://user:password@host:587?starttls=required` (no mail without "
        "STARTTLS); a password over plain `smtp://` to a host other than loopback refuses to start; unset, no email "
        "is sent and the page offers none")
    SMTP_FROM: str = setting("", "the sender of pdfqueue's emails", shown="pdfqueue@<host of PUBLIC_URL>")
    SMTP_TIMEOUT: float = setting(20, "the SMTP conversation's timeout in seconds", tuning=True)

    # -- metrics -------------------------------------------------------------------------------------------------------
    METRICS_TOKEN: str = setting(
        "", "`GET /metrics` answers only with `Authorization: Bearer $METRICS_TOKEN` (or on `METRICS_PORT`); the "
        "same token shows `/api/healthz`'s details")
    METRICS_PORT: int = setting(
        0, "a second listener of the web gunicorn that serves `/metrics` (no token) and nothing else; with neither "
        "this nor `METRICS_TOKEN`, `/metrics` answers `404`", shown="unset")
    METRICS_HOST: str = setting("127.0.0.1", "the address of the `METRICS_PORT` listener")

    @field_validator("SECRET_KEY_FALLBACKS", "MAPPINGS", "WEBHOOK_ALLOWED_HOSTS", mode="before")
    @classmethod
    def _comma_list(cls, value):
        return comma_list(value)

    @field_validator("TRUSTED_PROXIES", mode="before")
    @classmethod
    def _networks(cls, value):
        """Addresses or networks, each one ipaddress reads."""
        value = comma_list(value)
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an address or a network") from None
        return value

    @field_validator("RETENTION_XML_AFTER_DOWNLOAD", "BEHIND_PROXY", mode="before")
    @classmethod
    def _flag(cls, value):
        """An on/off setting: unset, empty, 0 or false is off; anything else on."""
        if isinstance(value, str):
            return value not in ("", "0", "false")
        return value

    @field_validator("LOG_FORMAT", mode="before")
    @classmethod
    def _log_format(cls, value):
        value = str(value).strip().lower()
        if value not in ("auto", "json", "text"):
            raise ValueError("must be auto, json or text")
        return value

    @field_validator("LOG_LEVEL", mode="before")
    @classmethod
    def _level(cls, value):
        """A log level in any case (`info` as `INFO`), and one logging knows."""
        value = str(value).upper()
        if value not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return value

    @field_validator("SMTP_URL")
    @classmethod
    def _smtp(cls, value):
        """No password over plain smtp:// to another machine: smtps://, or STARTTLS required first."""
        if not value:
            return value
        url = urlsplit(value)
        options = parse_qs(url.query, keep_blank_values=True)
        if set(options) - {"starttls"} or options.get("starttls", ["required"]) != ["required"]:
            raise ValueError("the only option it takes is ?starttls=required")
        password = url.username or url.password
        if url.scheme == "smtp" and password and not loopback_host(url.hostname) and "starttls" not in options:
            # The message names the host only: pydantic's line never shows the value, nor must we (the password).
            raise ValueError(f"would send its password in clear to {url.hostname}: use smtps://…:465, or add "
                             "?starttls=required (the password only after STARTTLS, no mail if the server offers "
                             "none); in clear only to a loopback host")
        return value

    @field_validator("DEFAULT_LOCALE")
    @classmethod
    def _known_locale(cls, value):
        if value not in LOCALES:
            raise ValueError(f"must be one of {', '.join(LOCALES)}")
        return value

    @field_validator("DEFAULT_TIMEZONE")
    @classmethod
    def _known_timezone(cls, value):
        try:
            ZoneInfo(value)
        except (ValueError, ZoneInfoNotFoundError):
            raise ValueError("must be an IANA time zone, like UTC or Europe/Lisbon") from None
        return value

    @field_validator("MAPPINGS")
    @classmethod
    def _some_mapping(cls, value):
        if not value:
            raise ValueError("must name at least one mapping")
        return value

    @model_validator(mode="after")
    def _follow(self):
        """Defaults that follow from other settings."""
        self.DATA_DIR = str(Path(self.DATA_DIR or REPO_ROOT).resolve())
        self.GATEWAY_URL = (self.GATEWAY_URL or f"http://127.0.0.1:{self.GATEWAY_PORT}").rstrip("/")
        self.DEFAULT_MAPPING = self.DEFAULT_MAPPING or self.MAPPINGS[0]
        self.PUBLIC_URL = self.PUBLIC_URL.rstrip("/")
        return self


def loopback_host(host):
    """True for localhost and for loopback addresses (127.0.0.0/8, ::1)."""
    if (host or "").lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def smtp_starttls_required(url):
    """True if mail through an smtp:// SMTP_URL (split) must go over STARTTLS: the URL asks for it
    (?starttls=required), or it holds a password for a host beyond this machine."""
    asked = parse_qs(url.query).get("starttls") == ["required"]
    return asked or (bool(url.username or url.password) and not loopback_host(url.hostname))


def operator_settings():
    """The fields an operator may set, in the order the README lists them."""
    return {name: field for name, field in Settings.model_fields.items() if not _is_tuning(field)}


def tuning_settings():
    return {name: field for name, field in Settings.model_fields.items() if _is_tuning(field)}


def _is_tuning(field):
    return bool((field.json_schema_extra or {}).get("tuning"))


def read(overrides=None):
    """The settings from the environment, with overrides (tests) on top; a bad value stops the process with a line
    naming the variable."""
    overrides = {key: value for key, value in (overrides or {}).items() if key in Settings.model_fields}
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in exc.errors())
        raise SystemExit(f"pdfqueue's settings are not valid: {problems}") from None


def from_env(overrides=None):
    """Every setting as a dict (the app's config), overrides included."""
    return read(overrides).model_dump()


def derive(config):
    """Fill in the settings that follow from others (paths under DATA_DIR, the database URL)."""
    data_dir = Path(config["DATA_DIR"])
    config.setdefault("INSTANCE_DIR", str(data_dir / "instance"))
    config.setdefault("UPLOAD_DIR", str(data_dir / "uploads"))
    config.setdefault("RESULT_DIR", str(data_dir / "results"))
    if not config.get("DATABASE_URL"):
        config["DATABASE_URL"] = f"sqlite:///{Path(config['INSTANCE_DIR']) / 'pdfqueue.db'}"
    # A job may take the gateway's whole read timeout, plus time to send and store.
    config.setdefault("JOB_TIME_LIMIT", config["GATEWAY_TIMEOUT"] + 60)
    config["SQLALCHEMY_DATABASE_URI"] = config["DATABASE_URL"]
    # Links the service hands out (set-up, invitations, resets) when no request says where it is reached.
    config["PUBLIC_URL"] = config.get("PUBLIC_URL") or f"http://{config['HOST']}:{config['PORT']}"
    # Email comes from SMTP_FROM, else from pdfqueue at the host people reach the service by.
    config["SMTP_FROM"] = config.get("SMTP_FROM") or f"pdfqueue@{urlsplit(config['PUBLIC_URL']).hostname or 'localhost'}"
    # A request may carry a minute's worth of files; each file is held to MAX_UPLOAD_MB as it streams.
    # Parts of one form: a minute's files, the mapping, the CSRF token and a little room (Werkzeug's max_form_parts).
    config["MAX_FORM_PARTS"] = config.get("MAX_FORM_PARTS") or config["UPLOADS_PER_MINUTE"] + 5
    config["MAX_CONTENT_LENGTH"] = (config["MAX_UPLOAD_MB"] * config["UPLOADS_PER_MINUTE"] + 1) * 1024 * 1024
    return config
