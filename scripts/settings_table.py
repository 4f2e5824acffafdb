#!/usr/bin/env python3
"""Print the README's tables of settings from the typed settings (core/config.py, gateway/config.py).

`python scripts/settings_table.py` prints pdfqueue's table; `--gateway` the gateway's (gateway/README.md).
tests/core/test_config.py fails when the README's tables are not what this prints.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import config  # noqa: E402
from gateway.config import GatewaySettings  # noqa: E402


def shown_default(field):
    extra = field.json_schema_extra or {}
    if "shown" in extra:
        value = extra["shown"]
        return value if value in ("unset", "repo root") or value.startswith(("SQLite", "generated", "first", "cores")) \
            else f"`{value}`"
    value = field.default
    if value in ("", [], False, None):
        return "unset"
    if isinstance(value, list):
        value = ",".join(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def rows(fields, prefix=""):
    return [f"| `{prefix}{name}` | {shown_default(field)} | {field.description} |" for name, field in fields.items()]


def pdfqueue_tables():
    """The operator table, then the short list of tuning and test knobs."""
    lines = ["| variable | default | meaning |", "|---|---|---|", *rows(config.operator_settings()), "",
             "Tuning and test knobs (no operator needs to set them; tests and benchmarks do):", ""]
    lines += [f"- `{name}` ({shown_default(field)}): {field.description}"
              for name, field in config.tuning_settings().items()]
    return "\n".join(lines) + "\n"


def gateway_table():
    return "\n".join(["| variable | default | meaning |", "|---|---|---|",
                      *rows(GatewaySettings.model_fields, "GATEWAY_")]) + "\n"


if __name__ == "__main__":
    sys.stdout.write(gateway_table() if "--gateway" in sys.argv else pdfqueue_tables())
