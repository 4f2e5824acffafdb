"""The work done inside the sandboxed child: read the PDF, apply the mapping, serialise."""

from . import engine, render
from .errors import GatewayError
from .pdftext import PdfEncrypted, PdfUnreadable, TooManyPages, read_pdf

RENDERERS = {"xml": render.to_xml, "json": render.to_json}


def convert_pdf(data, mapping, fmt, pretty, max_pages):
    """Return [page count, body text] for one PDF (JSON, as the sandbox answers); raise GatewayError when it
    cannot be converted."""
    try:
        document = read_pdf(data, max_pages=max_pages, **mapping.reading)
    except PdfEncrypted as exc:
        raise GatewayError(422, "ENCRYPTED", str(exc)) from None
    except PdfUnreadable as exc:
        raise GatewayError(422, "UNREADABLE", str(exc)) from None
    except TooManyPages as exc:
        raise GatewayError(422, "TOO_MANY_PAGES", str(exc)) from None
    try:
        root = engine.apply_mapping(mapping, document)
    except engine.NothingFound as exc:
        raise GatewayError(422, "NOTHING_FOUND", f"this does not look like a {mapping.name} document: {exc}") from None
    return [document.meta["pages"], RENDERERS[fmt](root, pretty=pretty).decode("utf-8")]
