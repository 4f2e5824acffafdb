"""The gateway's settings, one typed object read once at start (pydantic-settings): each a GATEWAY_* variable with
its type, default and one line of meaning; gateway/README.md's table is checked against them
(tests/core/test_config.py). The gateway stands alone, so it keeps its own, apart from pdfqueue's
(core/config.py)."""
import multiprocessing

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .mappings import DEFAULT_DIR


class GatewaySettings(BaseSettings):
    """The gateway's settings; the field MAX_MB is the variable GATEWAY_MAX_MB."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", case_sensitive=True, env_ignore_empty=True,
                                      extra="ignore")

    PORT: int = Field(8002, description="port gunicorn binds (gunicorn.conf.py)")
    HOST: str = Field("127.0.0.1", description="address gunicorn binds; loopback unless you set it")
    WORKERS: int = Field(multiprocessing.cpu_count() + 1, description="gunicorn gevent workers; each parses "
                         "`GATEWAY_PARSES_PER_WORKER` files at a time and answers `/healthz` meanwhile",
                         json_schema_extra={"shown": "cores + 1"})
    PARSES_PER_WORKER: int = Field(1, description="parses one worker runs at once (each in its own child); more "
                                   "requests wait for a slot")
    WORKER_CLASS: str = Field("gevent", description="gunicorn worker class")
    CONNECTIONS: int = Field(100, description="the connections one gunicorn worker takes")
    MAX_ANSWER_MB: int = Field(64, description="largest answer a parse child may send back (JSON) → 503 `OVER_LIMITS`")
    MAX_MB: int = Field(50, description="largest file accepted, in MiB; larger → 413")
    MAX_PAGES: int = Field(2000, description="more pages than this → 422 `TOO_MANY_PAGES`")
    PARSE_TIMEOUT_S: int = Field(30, description="wall-time cap of one parse → 503 `OVER_LIMITS`; gunicorn's worker "
                                 "timeout is this + 30")
    PARSE_CPU_S: int = Field(20, description="CPU-time cap of one parse (`RLIMIT_CPU`) → 503 `OVER_LIMITS`")
    PARSE_MEMORY_MB: int = Field(512, description="extra address space one parse may take (`RLIMIT_AS`) → 503 "
                                 "`OVER_LIMITS`")
    MAPPINGS_DIR: str = Field(str(DEFAULT_DIR), description="folder of `*.json` mappings, read once at start",
                              json_schema_extra={"shown": "gateway/mappings"})
    LOG_LEVEL: str = Field("INFO", description="level of the `gateway` loggers")
    LOG_FORMAT: str = Field("auto", description="`json` (one JSON object a line), `text` (short readable lines), or "
                            "`auto`: text when stderr is a terminal, else JSON")

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
        """A log level in any case (the env file's `info` as `INFO`), and one logging knows."""
        value = str(value).upper()
        if value not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return value


def read():
    """The gateway's settings from the environment; a bad value stops it with a line naming the variable."""
    try:
        return GatewaySettings()
    except ValidationError as exc:
        problems = "; ".join(f"GATEWAY_{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise SystemExit(f"the gateway's settings are not valid: {problems}") from None


def from_env():
    """The settings as the app's config (keys without the GATEWAY_ prefix)."""
    return read().model_dump()
