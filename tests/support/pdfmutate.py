"""Seeded mutations of test PDFs, for fuzzing the gateway (tests/gateway/test_gw_fuzz.py, bench/bench_fuzz.py).

    bases = corpus()          # name -> bytes: a few small invoices and PDFs, made once
    case = describe(168)      # Case(seed=168, mutation="number", base="xref", ...), named "00168-number-xref"
    pdf = mutate(case, bases)  # the same bytes for the same seed, every time
    code, problem = judge(case, status, content_type, body)  # the gateway's answer: problem None if the contract's

A seed picks everything (the mutation, the PDF it starts from, the mapping, the format, where the bytes change),
so a failing case is made again from its name alone. Mutations: flipped bytes, truncations, a corrupted xref,
corrupted streams, duplicated and deleted spans, changed numbers and keywords, two PDFs spliced together.
"""

import base64
import json
import random
import re
import zlib
from dataclasses import dataclass

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from tests.support.invoicegen import make_broken_xref_pdf, make_encrypted_pdf, make_invoice, make_text_pdf

ROOTS = {"pt_simon_invoice_v1": "Invoice", "generic_v1": "Document"}
MEDIA_TYPES = {"application/xml": "application/xml; charset=utf-8", "application/json": "application/json"}
# What any file may be told, whatever its bytes (gateway/README.md's error codes): a refusal, final; or the one 5xx
# that is the file's doing, its parse over the limits.
REFUSALS = {(400, "EMPTY_FILE"), (415, "NOT_PDF"), (422, "UNREADABLE"), (422, "ENCRYPTED"), (422, "TOO_MANY_PAGES"),
            (422, "NOTHING_FOUND"), (422, "PARSE_FAILED"), (503, "OVER_LIMITS")}
# (base name, weight): invoices most, since their mapping has the most code to walk into.
BASES = [("invoice", 3), ("plain", 3), ("twopage", 1), ("xref", 1), ("text", 1), ("encrypted", 1)]
NUMBER = re.compile(rb"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])")
KEYWORDS = [b"obj", b"endobj", b"stream", b"endstream", b"xref", b"trailer", b"startxref", b"R", b"/Type",
            b"/Pages", b"/Page", b"/Kids", b"/Count", b"/Parent", b"/Length", b"/Filter", b"/FlateDecode",
            b"/Contents", b"/Resources", b"/Font", b"/MediaBox", b"BT", b"ET", b"Tf", b"Td", b"Tj", b"TJ", b"Tm",
            b"cm", b"re", b"q", b"Q", b"<<", b">>", b"[", b"]", b"(", b")"]
ODD_NUMBERS = [b"0", b"-1", b"1", b"65535", b"2147483647", b"2147483648", b"-2147483649", b"99999999999999999999",
               b"1e308", b"0.000001", b"-0", b"3.4e38", b"NaN"]


@dataclass(frozen=True)
class Case:
    seed: int
    mutation: str
    base: str
    mapping: str
    accept: str

    @property
    def name(self):
        return f"{self.seed:05d}-{self.mutation}-{self.base}"


def corpus():
    """The PDFs the cases start from, by name (about a second to make)."""
    return {
        "invoice": make_invoice(n_lines=5, seed=1)[0],
        "plain": uncompressed(make_invoice(n_lines=9, seed=2)[0]),
        "twopage": make_invoice(n_lines=34, seed=3)[0],
        "xref": make_broken_xref_pdf(n_lines=4, seed=4)[0],
        "text": make_text_pdf([["Relatório de entregas", "Linha dois: 12,50 EUR", "Página 1 de 2"],
                               ["Segunda página", "Total (EUR) 1.234,56"]], title="Relatório", author="Fuzz"),
        "encrypted": make_encrypted_pdf(),
    }


def uncompressed(pdf):
    """The same PDF with its ASCII85+Flate streams (reportlab's) stored plain and its xref made again: mutations
    then reach content operators and their operands, not only compressed bytes."""
    objects = re.findall(rb"(\d+) 0 obj\n(.*?)\nendobj\n", pdf, re.S)
    root = re.search(rb"/Root (\d+) 0 R", pdf)[1]
    info = re.search(rb"/Info (\d+) 0 R", pdf)
    out = bytearray(pdf[:pdf.index(b"\n", pdf.index(b"\n") + 1) + 1])  # the header and its binary comment line
    offsets = {}
    for number, body in objects:
        stream = re.match(rb"<<\n/Filter \[ /ASCII85Decode /FlateDecode \] /Length \d+\n>>\nstream\n(.*)endstream$",
                          body, re.S)
        if stream:
            data = zlib.decompress(base64.a85decode(stream[1].strip(), adobe=True))
            body = b"<< /Length %d >>\nstream\n" % len(data) + data + b"\nendstream"
        offsets[int(number)] = len(out)
        out += number + b" 0 obj\n" + body + b"\nendobj\n"
    size = max(offsets) + 1
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % size
    out += b"".join(b"%010d 00000 n \n" % offsets[n] if n in offsets else b"0000000000 65535 f \n"
                    for n in range(1, size))
    out += b"trailer\n<< /Size %d /Root %s 0 R%s >>\nstartxref\n%d\n%%%%EOF\n" % (
        size, root, b" /Info %s 0 R" % info[1] if info else b"", xref)
    return bytes(out)


# -- mutations: each takes (rng, data, bases) and returns new bytes ------------------------------------------

def flip(rng, data, bases):
    """Flip 1 to 32 random bytes."""
    out = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 4, 8, 32])):
        out[rng.randrange(len(out))] ^= rng.randrange(1, 256)
    return bytes(out)


def truncate(rng, data, bases):
    """Cut the file anywhere (the first bytes too, now and then)."""
    if rng.random() < 0.95 and len(data) > 16:
        return data[:rng.randrange(16, len(data))]
    return data[:rng.randrange(min(16, len(data)))]


def xref(rng, data, bases):
    """Corrupt the cross-reference table or the startxref that points at it."""
    start = data.rfind(b"\nxref\n")
    if start < 0:
        return flip(rng, data, bases)
    head, table = data[:start], data[start:]
    how = rng.choice(["offsets", "one offset", "shift", "startxref", "count", "drop"])
    if how == "offsets":
        table = re.sub(rb"\d{10} (\d{5}) n", lambda m: b"%010d %s n" % (rng.randrange(10**10), m[1]), table)
    elif how == "one offset":
        entries = list(re.finditer(rb"\d{10}(?= \d{5} n)", table))
        if entries:
            entry = rng.choice(entries)
            table = table[:entry.start()] + b"%010d" % rng.randrange(len(data) * 2) + table[entry.end():]
    elif how == "shift":
        delta = rng.choice([-7, -1, 1, 13, 1000])
        table = re.sub(rb"(\d{10})(?= \d{5} n)", lambda m: b"%010d" % max(0, int(m[1]) + delta), table)
    elif how == "startxref":
        table = re.sub(rb"startxref\n\d+", b"startxref\n%d" % rng.choice([0, 1, len(data), start - 5, 10**12]), table)
    elif how == "count":
        table = re.sub(rb"xref\n0 \d+", b"xref\n0 %d" % rng.choice([0, 1, 2, 10**6]), table, count=1)
    else:
        table = table[table.find(b"trailer"):] if rng.random() < 0.5 else b""
    return head + table


def stream(rng, data, bases):
    """Corrupt one stream: bytes inside it, its end, its /Length, or its filter."""
    spans = [m.span(1) for m in re.finditer(rb"stream\r?\n(.*?)endstream", data, re.S)]
    if not spans:
        return flip(rng, data, bases)
    start, end = rng.choice(spans)
    how = rng.choice(["bytes", "cut", "garbage", "length", "filter", "no end"])
    if how == "bytes" and end > start:
        out = bytearray(data)
        for _ in range(rng.choice([1, 3, 10])):
            out[rng.randrange(start, end)] ^= rng.randrange(1, 256)
        return bytes(out)
    if how == "cut":
        return data[:start] + data[start:end][:rng.randrange(max(1, end - start))] + data[end:]
    if how == "garbage":
        return data[:start] + rng.randbytes(rng.randrange(1, 2 * (end - start) + 2)) + data[end:]
    if how == "no end":
        return data[:end] + data[end + len(b"endstream"):]
    head = data[:start]
    dictionary = head.rfind(b"<<")
    if how == "length":
        tail = re.sub(rb"/Length \d+", b"/Length %s" % rng.choice(ODD_NUMBERS), head[dictionary:], count=1)
    else:
        filters = [b"/FlateDecode", b"/LZWDecode", b"/ASCIIHexDecode", b"/RunLengthDecode", b"/DCTDecode",
                   b"[/FlateDecode /FlateDecode]", b"/Bogus"]
        tail = head[dictionary:].replace(b"<<", b"<< /Filter %s" % rng.choice(filters), 1)
    return head[:dictionary] + tail + data[start:]


def duplicate(rng, data, bases):
    """Copy a span of the file (up to 4 KiB) somewhere else in it."""
    start = rng.randrange(len(data))
    span = data[start:start + rng.randrange(1, 4096)]
    at = rng.randrange(len(data))
    return data[:at] + span * rng.choice([1, 1, 2, 5]) + data[at:]


def delete(rng, data, bases):
    """Take a span (up to 2 KiB) out of the file."""
    start = rng.randrange(len(data))
    return data[:start] + data[start + rng.randrange(1, 2048):]


def number(rng, data, bases):
    """Change one to five numbers (object numbers, counts, lengths, coordinates, font sizes...)."""
    numbers = list(NUMBER.finditer(data))
    out = data
    for match in sorted(rng.sample(numbers, min(len(numbers), rng.randint(1, 5))), key=lambda m: -m.start()):
        if rng.random() < 0.6:
            value = rng.choice(ODD_NUMBERS)
        else:
            value = b"%d" % (int(float(match[0])) * rng.choice([-1, 2, 10]))
        out = out[:match.start()] + value + out[match.end():]
    return out


def keyword(rng, data, bases):
    """Swap a keyword, operator or delimiter for another, or drop it."""
    found = [m for keyword in KEYWORDS for m in re.finditer(re.escape(keyword) + rb"(?![A-Za-z])", data)]
    if not found:
        return flip(rng, data, bases)
    match = rng.choice(found)
    replacement = rng.choice(KEYWORDS) if rng.random() < 0.7 else b""
    return data[:match.start()] + replacement + data[match.end():]


def splice(rng, data, bases):
    """The head of this PDF and the tail of another."""
    other = bases[rng.choice(sorted(bases))]
    return data[:rng.randrange(len(data))] + other[rng.randrange(len(other)):]


MUTATIONS = {function.__name__: function for function in
             (flip, truncate, xref, stream, duplicate, delete, number, keyword, splice)}


def describe(seed):
    """The case a seed makes: its mutation (in turn, so every few seeds try each one), base PDF, mapping, format."""
    rng = random.Random(seed)
    mutation = list(MUTATIONS)[seed % len(MUTATIONS)]
    base = rng.choices([name for name, _ in BASES], weights=[weight for _, weight in BASES])[0]
    invoice_like = base not in ("text", "encrypted")
    mapping = "pt_simon_invoice_v1" if (rng.random() < 0.75) == invoice_like else "generic_v1"
    accept = "application/json" if rng.random() < 0.25 else "application/xml"
    return Case(seed, mutation, base, mapping, accept)


def mutate(case, bases):
    """The bytes of a case: its base PDF through its mutation, once or (one case in five) a few times over."""
    rng = random.Random(f"{case.seed}:{case.mutation}")
    data = MUTATIONS[case.mutation](rng, bases[case.base], bases)
    for _ in range(rng.choice([0, 0, 0, 0, 1, 2])):  # stacked: a second or third mutation of any kind on top
        if data:
            data = MUTATIONS[rng.choice(list(MUTATIONS))](rng, data, bases)
    return data


def judge(case, status, content_type, body):
    """(the error code or None, what is wrong with the answer or None): a 200 must be the asked format with the
    mapping's root element, anything else the contract's JSON error with one of REFUSALS."""
    if status == 200:
        if content_type != MEDIA_TYPES[case.accept]:
            return None, f"200 as {content_type!r}, not {MEDIA_TYPES[case.accept]!r}"
        try:
            root = list(json.loads(body)) if case.accept == "application/json" else [SafeET.fromstring(body).tag]
        except (ValueError, SyntaxError, DefusedXmlException) as exc:  # ElementTree's ParseError is a SyntaxError
            return None, f"200 with a body that does not parse ({exc})"
        return None, None if root == [ROOTS[case.mapping]] else f"200 with the root {root}"
    if content_type != "application/json":
        return None, f"{status} as {content_type!r}: {body[:200]!r}"
    try:
        error = json.loads(body)["error"]
        code, message = error["code"], error["message"]
    except (ValueError, KeyError, TypeError):
        return None, f"{status} without the JSON error shape: {body[:200]!r}"
    if set(json.loads(body)) != {"error"} or set(error) != {"code", "message"}:
        return code, f"{status} with more than the JSON error shape: {body[:200]!r}"
    if not isinstance(message, str) or not message or "\n" in message:
        return code, f"{status} {code} without a one-line message"
    if (status, code) not in REFUSALS:
        return code, f"{status} {code}: {message}"
    return code, None
