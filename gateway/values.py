"""Value types a mapping can ask for: each turns the text read from a PDF into its XML form, or None."""

import re
from datetime import date
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

_PT_NUMBER = re.compile(r"^([+-]?)(\d{1,3}(?:\.\d{3})+|\d+)(?:,(\d+))?$")
_DATE = re.compile(r"^(\d{1,2})[-/.](\d{1,2})[-/.](\d{4})$")
_TAX_ID = re.compile(r"^[A-Z]{0,3}[0-9A-Z]{5,15}$")
_SPACES = re.compile(r"\s+")


def text(raw):
    """Collapse whitespace; empty is missing."""
    return _SPACES.sub(" ", raw).strip() or None


def _pt_number(raw):
    match = _PT_NUMBER.match(raw.replace(" ", "").removesuffix("€"))
    if not match:
        return None
    sign, whole, fraction = match.groups()
    try:
        return Decimal(f"{sign}{whole.replace('.', '')}.{fraction or '0'}")
    except InvalidOperation:
        return None


def amount(raw):
    """Portuguese amount 12.345,67 → 12345.67, always two decimals."""
    number = _pt_number(raw)
    return None if number is None else f"{number.quantize(Decimal('0.01'), ROUND_HALF_UP):f}"


def decimal(raw):
    """Portuguese number 2,50 → 2.5; no thousands separator, no trailing zeros."""
    number = _pt_number(raw)
    if number is None:
        return None
    return f"{number.normalize():f}" if number else "0"


def iso_date(raw):
    """DD-MM-YYYY → YYYY-MM-DD."""
    match = _DATE.match(raw.strip())
    if not match:
        return None
    day, month, year = (int(part) for part in match.groups())
    try:
        return date(year, month, day).isoformat()
    except ValueError:
        return None


def tax_id(raw):
    """Tax id without spaces, dots or dashes, upper case: PT 503 456 789 → PT503456789."""
    cleaned = re.sub(r"[\s.\-]", "", raw).upper()
    return cleaned if _TAX_ID.match(cleaned) else None


TYPES = {"text": text, "amount": amount, "decimal": decimal, "date": iso_date, "taxid": tax_id}
