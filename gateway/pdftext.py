"""Text with positions from a PDF, via pypdfium2: pages of lines of segments, in reading order.

A segment is a run of characters with no wide gap in it (one table cell, one "Label: value"); a line is
the segments sharing a baseline, left to right; lines run top to bottom. Coordinates are PDF points with
y growing upwards, as pdfium reports them.
"""

import ctypes
from dataclasses import dataclass, field

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c


class PdfUnreadable(Exception):
    """The file is not a PDF pdfium can open, or it has no pages."""


class PdfEncrypted(PdfUnreadable):
    """The file needs a password."""


class TooManyPages(Exception):
    """The file has more pages than the gateway reads."""


@dataclass(slots=True)
class Segment:
    x0: float
    x1: float
    text: str


@dataclass(slots=True)
class Line:
    top: float
    bottom: float
    segments: list = field(default_factory=list)

    @property
    def text(self):
        return " ".join(segment.text for segment in self.segments)


@dataclass(slots=True)
class Page:
    number: int
    width: float
    height: float
    lines: list


@dataclass(slots=True)
class Document:
    meta: dict
    pages: list


# Gaps are measured in units of the character box height (about 1.2 em): wider than WORD_GAP is a space,
# wider than CELL_GAP starts a new segment.
WORD_GAP = 0.1
CELL_GAP = 0.6
META_KEYS = {"Title": "title", "Author": "author", "Subject": "subject", "Creator": "creator",
             "Producer": "producer"}


def read_pdf(data, *, max_pages=None, word_gap=WORD_GAP, cell_gap=CELL_GAP):
    """Open PDF bytes and return a Document of every page's lines."""
    try:
        pdf = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        if "password" in str(exc).lower():
            raise PdfEncrypted("the PDF is encrypted with a password") from None
        raise PdfUnreadable(f"the PDF cannot be opened ({exc})") from None
    try:
        count = len(pdf)
        if count == 0:
            raise PdfUnreadable("the PDF has no pages")
        if max_pages is not None and count > max_pages:
            raise TooManyPages(f"the PDF has {count} pages, more than the limit of {max_pages}")
        meta = {key: value for raw, key in META_KEYS.items() if (value := pdf.get_metadata_value(raw))}
        meta["pages"] = count
        pages = []
        for index in range(count):
            try:
                pages.append(_read_page(pdf, index, word_gap, cell_gap))
            except pdfium.PdfiumError as exc:
                raise PdfUnreadable(f"page {index + 1} cannot be read ({exc})") from None
    finally:
        pdf.close()
    return Document(meta=meta, pages=pages)


def _read_page(pdf, index, word_gap, cell_gap):
    page = pdf[index]
    try:
        width, height = page.get_size()
        textpage = page.get_textpage()
        try:
            chars = _chars(textpage)
        finally:
            textpage.close()
    finally:
        page.close()
    return Page(number=index + 1, width=width, height=height, lines=_lines(chars, word_gap, cell_gap))


def _chars(textpage):
    """Return (centre_y, x0, x1, height, char) for each visible character, fetched with one call per char."""
    count = textpage.count_chars()
    text = textpage.get_text_range()
    if len(text) != count:  # pdfium left out or added chars: fall back to asking char by char
        text = "".join(chr(pdfium_c.FPDFText_GetUnicode(textpage, i)) for i in range(count))
    rect = pdfium_c.FS_RECTF()
    rect_ref = ctypes.byref(rect)
    loose_box = pdfium_c.FPDFText_GetLooseCharBox
    raw = textpage.raw
    chars = []
    append = chars.append
    for i, char in enumerate(text):
        if char.isspace() or char == "\0" or not loose_box(raw, i, rect_ref):
            continue
        bottom, top = rect.bottom, rect.top
        if top <= bottom:
            continue
        append(((top + bottom) / 2, rect.left, rect.right, top - bottom, char))
    return chars


def _lines(chars, word_gap, cell_gap):
    """Group characters into lines by baseline, then into segments by horizontal gaps."""
    chars.sort(key=lambda c: -c[0])
    groups, current, current_y = [], [], None
    for char in chars:
        if current and current_y - char[0] > 0.35 * char[3]:
            groups.append(current)
            current = []
        if not current:
            current_y = char[0]
        current.append(char)
    if current:
        groups.append(current)
    return [_line(group, word_gap, cell_gap) for group in groups]


def _line(group, word_gap, cell_gap):
    group.sort(key=lambda c: c[1])
    height = max(c[3] for c in group)
    centre = sum(c[0] for c in group) / len(group)
    line = Line(top=centre + height / 2, bottom=centre - height / 2)
    parts, x0, last_x1 = [], group[0][1], group[0][1]
    for _, left, right, char_height, char in group:
        gap = left - last_x1
        if parts and gap > cell_gap * char_height:
            line.segments.append(Segment(x0, last_x1, "".join(parts)))
            parts, x0 = [], left
        elif parts and gap > word_gap * char_height:
            parts.append(" ")
        parts.append(char)
        last_x1 = max(last_x1, right)
    line.segments.append(Segment(x0, last_x1, "".join(parts)))
    return line
