"""Gateway settings from the environment, with defaults; every variable is listed in README.md."""

import os

from .mappings import DEFAULT_DIR


def _int(name, default):
    return int(os.environ.get(name, default))


def from_env():
    return {
        "MAX_MB": _int("GATEWAY_MAX_MB", 50),
        "MAX_PAGES": _int("GATEWAY_MAX_PAGES", 2000),
        "PARSE_TIMEOUT_S": _int("GATEWAY_PARSE_TIMEOUT_S", 30),
        "PARSE_CPU_S": _int("GATEWAY_PARSE_CPU_S", 20),
        "PARSE_MEMORY_MB": _int("GATEWAY_PARSE_MEMORY_MB", 512),
        "PARSES_PER_WORKER": _int("GATEWAY_PARSES_PER_WORKER", 1),
        "MAX_ANSWER_MB": _int("GATEWAY_MAX_ANSWER_MB", 64),
        "MAPPINGS_DIR": os.environ.get("GATEWAY_MAPPINGS_DIR", str(DEFAULT_DIR)),
        "LOG_LEVEL": os.environ.get("GATEWAY_LOG_LEVEL", "INFO"),
    }
