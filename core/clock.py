"""Time as pdfqueue stores and shows it: naive UTC in the database, ISO-8601 with a Z on the wire."""
from datetime import datetime, timezone


def utcnow():
    """Naive UTC now, the form every timestamp is stored in."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def isoformat(value):
    """ISO-8601 UTC with a Z, or None."""
    return None if value is None else value.isoformat(timespec="microseconds") + "Z"


def parse_iso(text):
    """Parse an ISO-8601 timestamp into naive UTC; raise ValueError if it is not one."""
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace(" ", "+"))
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value
