"""Configuration from the environment, with the defaults a fresh box needs, in one place."""
import os
from pathlib import Path
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parent.parent


def _int(name, default):
    return int(os.environ.get(name, default))


def _float(name, default):
    return float(os.environ.get(name, default))


def _flag(name):
    """An on/off setting: unset, empty, 0 or false is off."""
    return os.environ.get(name, "") not in ("", "0", "false")


def _list(name, default):
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def from_env():
    """Read every setting pdfqueue knows from the environment."""
    data_dir = Path(os.environ.get("DATA_DIR") or REPO_ROOT).resolve()
    gateway_port = _int("GATEWAY_PORT", 8002)
    mappings = _list("MAPPINGS", "pt_simon_invoice_v1,generic_v1")
    return {
        "PORT": _int("PORT", 8000),
        "DATA_DIR": str(data_dir),
        "DATABASE_URL": os.environ.get("DATABASE_URL") or "",
        "REDIS_URL": os.environ.get("REDIS_URL") or "",
        "SECRET_KEY": os.environ.get("SECRET_KEY") or "",
        "SECRET_KEY_FALLBACKS": _list("SECRET_KEY_FALLBACKS", ""),
        "GATEWAY_URL": (os.environ.get("GATEWAY_URL") or f"http://127.0.0.1:{gateway_port}").rstrip("/"),
        "GATEWAY_PORT": gateway_port,
        "GATEWAY_TIMEOUT": _float("GATEWAY_TIMEOUT", 180),
        "MAPPINGS": mappings,
        "DEFAULT_MAPPING": os.environ.get("DEFAULT_MAPPING") or mappings[0],
        "MAX_UPLOAD_MB": _int("MAX_UPLOAD_MB", 50),
        "UPLOADS_PER_MINUTE": _int("UPLOADS_PER_MINUTE", 10),
        "UPLOAD_WINDOW_SECONDS": _int("UPLOAD_WINDOW_SECONDS", 60),
        "WORKER_CONCURRENCY": _int("WORKER_CONCURRENCY", 4),
        "RETENTION_PDF_DAYS": _int("RETENTION_PDF_DAYS", 7),
        "RETENTION_XML_DAYS": _int("RETENTION_XML_DAYS", 30),
        "LEASE_SECONDS": _int("LEASE_SECONDS", 45),
        "MAX_ATTEMPTS": _int("MAX_ATTEMPTS", 3),
        "RETRY_BASE_SECONDS": _float("RETRY_BASE_SECONDS", 5),
        "RETRY_JITTER_SECONDS": _float("RETRY_JITTER_SECONDS", 5),
        "BREAKER_THRESHOLD": _int("BREAKER_THRESHOLD", 5),
        "BREAKER_DISTINCT_JOBS": _int("BREAKER_DISTINCT_JOBS", 3),
        "BREAKER_WINDOW_SECONDS": _float("BREAKER_WINDOW_SECONDS", 60),
        "RETENTION_XML_AFTER_DOWNLOAD": _flag("RETENTION_XML_AFTER_DOWNLOAD"),
        "MAINTENANCE_SECONDS": _float("MAINTENANCE_SECONDS", 5),
        "REAP_SECONDS": _float("REAP_SECONDS", 30),
        "WORKER_POLL_SECONDS": _float("WORKER_POLL_SECONDS", 0.01),
        "WORKER_IDLE_POLL_SECONDS": _float("WORKER_IDLE_POLL_SECONDS", 0.03),
        "WORKER_SHUTDOWN_SECONDS": _float("WORKER_SHUTDOWN_SECONDS", 30),
        "SHARE_TTL_SECONDS": _int("SHARE_TTL_SECONDS", 900),
        "MAX_RESULT_MB": _int("MAX_RESULT_MB", 64),
        "BEHIND_PROXY": _flag("BEHIND_PROXY"),
        "HOST": os.environ.get("HOST") or "127.0.0.1",
        "PUBLIC_URL": (os.environ.get("PUBLIC_URL") or "").rstrip("/"),
        "AUTH": os.environ.get("AUTH") or "password",
        "REMOTE_USER_HEADER": os.environ.get("REMOTE_USER_HEADER") or "X-Forwarded-Email",
        "SESSION_DAYS": _int("SESSION_DAYS", 30),
        "INVITE_DAYS": _int("INVITE_DAYS", 7),
        "SIGNINS_PER_MINUTE": _int("SIGNINS_PER_MINUTE", 5),
        "USER_QUOTA_MB": _int("USER_QUOTA_MB", 2048),
        "MIN_FREE_MB": _int("MIN_FREE_MB", 200),
        "WEBHOOK_ALLOWED_HOSTS": _list("WEBHOOK_ALLOWED_HOSTS", ""),
        "WEBHOOK_CONNECT_TIMEOUT": _float("WEBHOOK_CONNECT_TIMEOUT", 5),
        "WEBHOOK_READ_TIMEOUT": _float("WEBHOOK_READ_TIMEOUT", 10),
        "WEBHOOK_RETRY_BASE_SECONDS": _float("WEBHOOK_RETRY_BASE_SECONDS", 10),
        "WEBHOOK_RETRY_MAX_SECONDS": _float("WEBHOOK_RETRY_MAX_SECONDS", 3600),
        "WEBHOOK_GIVE_UP_HOURS": _float("WEBHOOK_GIVE_UP_HOURS", 24),
        "WEBHOOK_LEASE_MARGIN_SECONDS": _float("WEBHOOK_LEASE_MARGIN_SECONDS", 30),
        "WEBHOOK_POLL_SECONDS": _float("WEBHOOK_POLL_SECONDS", 1),
        "WEBHOOK_CONCURRENCY": _int("WEBHOOK_CONCURRENCY", 4),
        "SMTP_URL": os.environ.get("SMTP_URL") or "",
        "SMTP_FROM": os.environ.get("SMTP_FROM") or "",
        "SMTP_TIMEOUT": _float("SMTP_TIMEOUT", 20),
        "MAX_FORM_PARTS": _int("MAX_FORM_PARTS", 0),  # 0: UPLOADS_PER_MINUTE + 5
        "BODY_TIMEOUT_SECONDS": _float("BODY_TIMEOUT_SECONDS", 60),
        "ACTIONS_PER_MINUTE": _int("ACTIONS_PER_MINUTE", 30),
        "STREAMS_PER_USER": _int("STREAMS_PER_USER", 10),
        "STREAMS_PER_ADDRESS": _int("STREAMS_PER_ADDRESS", 30),
        "STREAM_MAX_SECONDS": _float("STREAM_MAX_SECONDS", 3600),
        "METRICS_TOKEN": os.environ.get("METRICS_TOKEN") or "",
        "METRICS_PORT": _int("METRICS_PORT", 0),  # 0: no metrics listener of its own
    }


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
