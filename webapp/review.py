"""What the review page reads out of a stored result: a pt_simon_invoice_v1 invoice as a person reads it, with
its arithmetic checked, or a generic_v1 document's pages of text lines.

The XML is the gateway's (shared/spec/pt_simon_invoice_v1.md): amounts with a "." decimal mark, a field it could
not find left out. Out here a left-out field is None, which the page shows as "missing"; a check that needs it
says it cannot be made rather than passing or failing.
"""
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from flask import has_app_context
from flask_babel import format_decimal, lazy_gettext as _l

CENT = Decimal("0.01")


class Shown:
    """An amount in a check's sentence, written as its reader writes numbers (two decimals) when it is said."""

    def __init__(self, value):
        self.value = value

    def __str__(self):
        return format_decimal(self.value, "#,##0.00") if has_app_context() else f"{self.value:.2f}"

HEADER = ("InvoiceNumber", "IssueDate", "DueDate", "Currency")
PARTY = ("Name", "TaxID")
LINE = ("Reference", "Description", "Quantity", "Unit", "UnitPrice", "DiscountPercent", "VATPercent", "LineTotal")
TOTALS = ("NetTotal", "VATTotal", "GrandTotal")


@dataclass
class Check:
    """One check of the invoice's arithmetic: ok True (✓), False (✗) or None (a value it needs is missing)."""

    label: str
    ok: bool | None
    detail: str


@dataclass
class Line:
    number: str | None
    fields: dict  # LINE names -> text, or None where the gateway found nothing
    expected: Decimal | None  # Quantity × UnitPrice × (1 − DiscountPercent/100), rounded to cents
    ok: bool | None  # the printed LineTotal equals expected; None if a value is missing or not a number


@dataclass
class Invoice:
    header: dict
    supplier: dict
    customer: dict
    lines: list
    totals: dict
    checks: list = field(default_factory=list)

    @property
    def failing_lines(self):
        return [line for line in self.lines if line.ok is False]


@dataclass
class Document:
    """A generic_v1 result: its metadata and each page's text lines."""

    meta: dict
    pages: list  # (page number, [line text, ...])


def amount(text):
    """The Decimal a field's text says, or None if it is missing or not a number."""
    if text is None:
        return None
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def cents(value):
    """Rounded to cents as the spec's invoices are (half up, as the gateway and the suppliers' software do)."""
    return value.quantize(CENT, ROUND_HALF_UP)


def _text(element, path):
    """The stripped text at path under element; None if it is absent or empty (the gateway could not find it)."""
    if element is None:
        return None
    found = element.find(path)
    if found is None or found.text is None or not found.text.strip():
        return None
    return found.text.strip()


def _fields(element, names):
    return {name: _text(element, name) for name in names}


def read_invoice(root):
    """The invoice in a pt_simon_invoice_v1 result (its parsed root element), with its checks."""
    lines = [_line(element) for element in root.findall("Lines/Line")]
    invoice = Invoice(header=_fields(root.find("Header"), HEADER), supplier=_fields(root.find("Supplier"), PARTY),
                      customer=_fields(root.find("Customer"), PARTY), lines=lines,
                      totals=_fields(root.find("Totals"), TOTALS))
    invoice.checks = checks(invoice)
    return invoice


def _line(element):
    values = _fields(element, LINE)
    quantity, price, discount = (amount(values[name]) for name in ("Quantity", "UnitPrice", "DiscountPercent"))
    total = amount(values["LineTotal"])
    expected = None
    if None not in (quantity, price, discount):
        expected = cents(quantity * price * (1 - discount / 100))
    ok = None if expected is None or total is None else expected == total
    return Line(number=element.get("number"), fields=values, expected=expected, ok=ok)


def checks(invoice):
    """The three checks a person makes of an invoice, in Decimal arithmetic."""
    net, vat, grand = (amount(invoice.totals[name]) for name in TOTALS)
    line_totals = [amount(line.fields["LineTotal"]) for line in invoice.lines]

    label = _l("Lines add up to the net total")
    if not invoice.lines:
        lines_sum = Check(label, None, _l("No line was found."))
    elif None in line_totals or net is None:
        lines_sum = Check(label, None, _l("Cannot check: the net total or a line's total is missing."))
    else:
        total = sum(line_totals, Decimal(0))
        lines_sum = Check(label, total == net, _l("The lines add up to %(total)s; the net total says %(net)s.",
                                                  total=Shown(total), net=Shown(net)))

    label = _l("Net total + VAT = grand total")
    if None in (net, vat, grand):
        grand_total = Check(label, None, _l("Cannot check: a total is missing."))
    else:
        grand_total = Check(label, net + vat == grand,
                            _l("%(net)s + %(vat)s = %(sum)s; the grand total says %(grand)s.", net=Shown(net),
                               vat=Shown(vat), sum=Shown(net + vat), grand=Shown(grand)))

    failing = [line for line in invoice.lines if line.ok is False]
    unchecked = [line for line in invoice.lines if line.ok is None]
    label = _l("Each line: quantity × price × (1 − discount) = its total")
    count = len(invoice.lines)
    if failing:
        numbers = ", ".join(line.number or "?" for line in failing)
        each_line = Check(label, False, _l("%(failing)s of %(count)s lines do not: line %(numbers)s.",
                                           failing=len(failing), count=count, numbers=numbers))
    elif not invoice.lines:
        each_line = Check(label, None, _l("No line was found."))
    elif unchecked:
        each_line = Check(label, None, _l("%(unchecked)s of %(count)s lines cannot be checked: a value is missing.",
                                          unchecked=len(unchecked), count=count))
    else:
        each_line = Check(label, True, _l("All %(count)s lines do.", count=count))
    return [lines_sum, grand_total, each_line]


def read_document(root):
    """The metadata and pages of text lines in a generic_v1 result (its parsed root element)."""
    meta = dict(root.find("Meta").attrib) if root.find("Meta") is not None else {}
    pages = [(page.get("number"), [line.text or "" for line in page.findall("Line")]) for page in root.findall("Page")]
    return Document(meta=meta, pages=pages)


# Each mapping the page can read: the root element its results have, and how to read them.
READERS = {"pt_simon_invoice_v1": ("Invoice", read_invoice), "generic_v1": ("Document", read_document)}


def read(mapping, root):
    """What the review page shows for a result of mapping, or None (an unknown mapping: the raw XML will do)."""
    tag, reader = READERS.get(mapping, (None, None))
    if reader is None or root.tag != tag:
        return None
    return reader(root)
