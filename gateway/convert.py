"""The work done inside the sandboxed child: read the PDF, apply the mapping, serialise."""

import traceback

from . import engine, render
from .errors import GatewayError
from .pdftext import PdfEncrypted, PdfUnreadable, TooManyPages, read_pdf

RENDERERS = {"xml": render.to_xml, "json": render.to_json}

# Raised during a parse by the box or the limits, not by the document: left to the sandbox (503 OVER_LIMITS for
# memory; 502 for a file or module the parse could not open, which would fail every document alike).
NOT_THE_DOCUMENTS = (MemoryError, OSError, ImportError)
MESSAGE_CHARS = 200  # of the exception's own text, in the answer's one-line message


def convert_pdf(data, mapping, fmt, pretty, max_pages):
    """Return [page count, body text] for one PDF (JSON, as the sandbox answers); raise GatewayError when it
    cannot be converted.

    An exception raised while this document is read, mapped or serialised (pdfium, our reading or mapping code)
    is this document's answer: 422 PARSE_FAILED, final, with its traceback for the gateway's log. As a 5xx it
    would be retried, and counted toward every worker's breaker, for one file's sake."""
    try:
        return _convert(data, mapping, fmt, pretty, max_pages)
    except (GatewayError, *NOT_THE_DOCUMENTS):
        raise
    except Exception as exc:
        cause = f"{type(exc).__name__}: {exc}"[:MESSAGE_CHARS]
        raise GatewayError(422, "PARSE_FAILED", f"the PDF could not be parsed ({cause})",
                           traceback=traceback.format_exc()) from None


def _convert(data, mapping, fmt, pretty, max_pages):
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
