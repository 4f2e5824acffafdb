"""The web's CPU to parse an upload's multipart body, by parser: ours (python-multipart under werkzeug's
request.files: webapp.uploads.MultipartFormParser), the copy it replaced (werkzeug 3.1's decoder with its
boundary regexes swapped for a bytes.find search; kept here to compare, on werkzeug 3.1 only), werkzeug's stock
parser, streaming-form-data, and (when given) the `multipart` package's PushMultipartParser.

    .venv/bin/python bench/bench_multipart.py [--rounds 7] [--reps 15] [--multipart-path DIR]

Each parser runs inside werkzeug's request.files machinery (a Request whose form_data_parser_class parses the
body) and hands werkzeug the same (form, files): files streamed into the request's stream factory, the part
limit, the field-memory limit, the part charset. The bodies are what clients send us: one PDF of 60 KB, 500 KB or
2 MB (random bytes after a %PDF- header, as compressed PDF streams are) with the mapping field, and a 10-file
request (10 × 200 KB), each under a boundary of its own, read in 64 KB chunks.

Two sinks per file part: "parse" discards the bytes (the parser's own CPU, what differs), "web" is what the web
does with them (webapp.uploads.IncomingFile: a temp file written and hashed). CPU is this process's
(time.process_time) around `request.files`; each cell is the median over rounds × reps, the parsers taking
turns within each round so that the box's noise falls on all of them alike.

The `multipart` package's module name clashes with python-multipart's compatibility shim of the same name, so
it is read from --multipart-path (a `pip install --target DIR multipart`) when given, and left out otherwise.
"""
import argparse
import gc
import importlib.util
import io
import itertools
import random
import re
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from werkzeug import formparser  # noqa: E402
from werkzeug.sansio.multipart import MultipartDecoder, State  # noqa: E402
from werkzeug.test import EnvironBuilder  # noqa: E402
from werkzeug.wrappers import Request  # noqa: E402

from bench.figures import table  # noqa: E402
from webapp import uploads  # noqa: E402

KB, MB = 1024, 1024 * 1024
CHUNK = 64 * KB  # werkzeug's MultiPartParser.buffer_size
MAX_FORM_PARTS = 15  # the app's default: UPLOADS_PER_MINUTE + 5
MAX_FORM_MEMORY = 500_000  # Flask's MAX_FORM_MEMORY_SIZE


# -- parsers: each a FormDataParser whose multipart parse hands werkzeug the same (form, files) ----------------


# The copy python-multipart replaced (webapp/uploads.py until then), kept here to compare: werkzeug 3.1's decoder
# with its two boundary regexes (compiled for each request) swapped for one bytes.find search finding the same
# matches. What may follow a boundary (werkzeug's multipart grammar): "--" and the end, or the line break of a part.
_AFTER_BOUNDARY = re.compile(rb"(--[^\S\n\r]*(?:\r\n|\n|\r)?|[^\S\n\r]*(?:\r\n|\n|\r))")


class _BoundaryMatch:
    __slots__ = ("_start", "_end", "_tail")

    def __init__(self, start, end, tail):
        self._start, self._end, self._tail = start, end, tail

    def start(self):
        return self._start

    def end(self):
        return self._end

    def group(self, index):
        return self._tail if index == 1 else None


class BoundaryFinder:
    """The search of werkzeug's boundary regexes (an optional or a required line break, "--" and the
    boundary, then what may follow it) done by bytes.find and one regex compiled once.

    Werkzeug compiles its two regexes for each request (the boundary is in them), which costs a tenth of an
    upload's CPU; this finds the same matches."""

    def __init__(self, boundary, break_required):
        self.marker = b"--" + boundary
        self.break_required = break_required

    def search(self, data, pos=0):
        marker, length = self.marker, len(self.marker)
        at = data.find(marker, pos)
        while at >= 0:
            if at - 2 >= pos and data[at - 2:at] == b"\r\n":
                start = at - 2
            elif at - 1 >= pos and data[at - 1:at] in (b"\r", b"\n"):
                start = at - 1
            else:
                start = None if self.break_required else at
            tail = None if start is None else _AFTER_BOUNDARY.match(data, at + length)
            if tail is not None:
                return _BoundaryMatch(start, tail.end(), tail.group(1))
            at = data.find(marker, at + 1)
        return None


class CopiedDecoder(MultipartDecoder):
    """Werkzeug's decoder, but a part header that is not UTF-8 is read as Latin-1 instead of dropping the
    whole form: old clients send file names in their local code page, and the name is display text only.

    Its boundary search is a BoundaryFinder, not two regexes compiled for each request."""

    def __init__(self, boundary, max_form_memory_size=None, *, max_parts=None):
        # A copy of werkzeug 3.1.x's MultipartDecoder.__init__ less its two re.compile calls.
        self.buffer = bytearray()
        self.complete = False
        self.max_form_memory_size = max_form_memory_size
        self.max_parts = max_parts
        self.state = State.PREAMBLE
        self.boundary = boundary
        self.preamble_re = BoundaryFinder(boundary, break_required=False)
        self.boundary_re = BoundaryFinder(boundary, break_required=True)
        self._search_position = 0
        self._parts_decoded = 0

    def _parse_headers(self, data):
        try:
            return super()._parse_headers(data)
        except UnicodeDecodeError:
            return super()._parse_headers(bytes(data).decode("latin-1").encode("utf-8"))


@contextmanager
def werkzeug_decoder(decoder_class):
    """werkzeug's MultiPartParser builds its decoder from this module-level name (what the copy patched)."""
    saved = formparser.MultipartDecoder
    formparser.MultipartDecoder = decoder_class
    try:
        yield
    finally:
        formparser.MultipartDecoder = saved


class CopyParser(formparser.FormDataParser):
    def _parse_multipart(self, *args):
        with werkzeug_decoder(CopiedDecoder):
            return super()._parse_multipart(*args)


class StockParser(formparser.FormDataParser):
    def _parse_multipart(self, *args):
        with werkzeug_decoder(MultipartDecoder):
            return super()._parse_multipart(*args)


def _boundary(options):
    boundary = options.get("boundary", "").encode("ascii")
    if not boundary:
        raise ValueError("Missing boundary")
    return boundary


def _chunks(stream):
    while data := stream.read(CHUNK):
        yield data


def _begin(parts, headers):
    """Start a part in our part handling (uploads._FormParts) from a parser that parsed its headers itself."""
    parts.raw_headers = list(headers)
    parts.begin()


class StreamingFormDataParser(formparser.FormDataParser):
    """streaming-form-data's parser (Cython), one target registered for every part name.

    It hands a target only the part's file name and content type (no other header, not even the part's name:
    the `matches` callback sees it), and decodes part headers as UTF-8 strictly."""

    def _parse_multipart(self, stream, mimetype, content_length, options):
        from streaming_form_data import StreamingFormDataParser as Parser
        from streaming_form_data.parser import ParseFailedException
        from streaming_form_data.targets import BaseTarget
        parts = uploads._FormParts(self, content_length)
        seen = []

        class EveryPart(BaseTarget):
            def on_start(self):
                disposition = f'form-data; name="{seen[-1]}"'
                if self.multipart_filename is not None:
                    disposition += f'; filename="{self.multipart_filename}"'
                _begin(parts, [("Content-Disposition", disposition)])

            def on_data_received(self, chunk):
                parts.write(chunk)

            def on_finish(self):
                parts.end()

        def matches(_registered, name):
            seen.append(name)
            return True

        boundary = _boundary(options).decode("ascii")
        parser = Parser({"Content-Type": f'multipart/form-data; boundary="{boundary}"'})
        parser.register("*", EveryPart(), matches=matches)
        try:
            for data in _chunks(stream):
                parser.data_received(data)
        except ParseFailedException as exc:
            raise ValueError(str(exc)) from exc
        return stream, self.cls(parts.fields), self.cls(parts.files)


def push_multipart_parser(module):
    """The `multipart` package's (Bottle's author's) sans-io PushMultipartParser."""

    class PushParser(formparser.FormDataParser):
        def _parse_multipart(self, stream, mimetype, content_length, options):
            parts = uploads._FormParts(self, content_length)
            # Latin-1 reads any byte; each header is then read as UTF-8 where it is (as ours does).
            parser = module.PushMultipartParser(_boundary(options), header_charset="latin1",
                                                max_segment_count=(self.max_form_parts or float("inf")) + 1)
            segment = module.MultipartSegment
            for data in _chunks(stream):
                for event in parser.parse(data):
                    if event is None:
                        parts.end()
                    elif isinstance(event, segment):
                        _begin(parts, [(name, uploads._header_text(value.encode("latin-1")))
                                       for name, value in event.headerlist])
                    else:
                        parts.write(event)
            parser.close()
            return stream, self.cls(parts.fields), self.cls(parts.files)

    return PushParser


# -- sinks and requests -----------------------------------------------------------------------------------------


class Discard:
    """A file part's bytes counted and dropped: the parser's CPU alone."""

    def __init__(self):
        self.size = 0

    def write(self, data):
        self.size += len(data)
        return len(data)

    def seek(self, *args):
        return 0


def bench_request(parser_class, sink, directory):
    class BenchRequest(Request):
        form_data_parser_class = parser_class
        max_form_parts = MAX_FORM_PARTS
        max_form_memory_size = MAX_FORM_MEMORY

        def _get_file_stream(self, *args, **kwargs):
            part = Discard() if sink == "parse" else uploads.IncomingFile(directory, 10 * MB)
            made.append(part)
            return part

    made = []
    return BenchRequest, made


def payloads_of(sizes, seed):
    """The files of one request: random bytes after a %PDF- header."""
    rng = random.Random(seed)
    return [(head := f"%PDF-1.7\n% {seed} {n}\n".encode()) + rng.randbytes(size - len(head))
            for n, size in enumerate(sizes)]


_boundaries = itertools.count()


def body_of(payloads):
    """A request's body and content type, under a boundary of its own as each client request has (werkzeug's
    stock decoder compiles its regexes for each boundary; re's cache would hide that cost from a repeated one)."""
    boundary = f"----WebKitFormBoundary{next(_boundaries):016x}"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="fatura {n}.pdf"\r\n'
             f"Content-Type: application/pdf\r\n\r\n".encode() + payload + b"\r\n" for n, payload in enumerate(payloads)]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="mapping"\r\n\r\npt_simon_invoice_v1\r\n'
                 f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


SCENARIOS = [("1 PDF, 60 KB", [60 * KB]), ("1 PDF, 500 KB", [500 * KB]), ("1 PDF, 2 MB", [2 * MB]),
             ("10 PDFs × 200 KB", [200 * KB] * 10)]


def parse_once(request_class, made, payloads):
    body, content_type = body_of(payloads)
    sizes = [len(payload) for payload in payloads]
    environ = EnvironBuilder(method="POST", input_stream=io.BytesIO(body), content_type=content_type,
                             content_length=len(body)).get_environ()
    request = request_class(environ)
    began = time.process_time()
    files = request.files
    spent = time.process_time() - began
    got = files.getlist("file")
    assert [part.filename for part in got] == [f"fatura {n}.pdf" for n in range(len(sizes))], got
    assert request.form["mapping"] == "pt_simon_invoice_v1"
    assert [part.size for part in made] == sizes, [part.size for part in made]
    for part in made:
        if isinstance(part, uploads.IncomingFile):
            part.close()
            part.path.unlink()
    made.clear()
    return spent


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--multipart-path", help="a directory holding the `multipart` package (pip --target)")
    args = parser.parse_args()

    parsers = [("ours: python-multipart", uploads.MultipartFormParser)]
    if metadata.version("werkzeug").startswith("3.1."):
        parsers.append(("the copy: werkzeug 3.1 + BoundaryFinder", CopyParser))
    parsers += [("werkzeug: stock", StockParser), ("streaming-form-data", StreamingFormDataParser)]
    if args.multipart_path:
        spec = importlib.util.spec_from_file_location("defnull_multipart", Path(args.multipart_path) / "multipart.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        parsers.append((f"multipart {module.__version__} (PushMultipartParser)", push_multipart_parser(module)))

    versions = ", ".join(f"{name} {metadata.version(name)}" for name in ("werkzeug", "python-multipart", "streaming-form-data"))
    print(f"{versions}; rounds {args.rounds} × reps {args.reps}\n")

    with tempfile.TemporaryDirectory(prefix="bench-multipart-") as directory:
        rows, figures = [], []
        for sink in ("parse", "web"):
            for label, sizes in SCENARIOS:
                payloads = payloads_of(sizes, seed=len(label))
                samples = {name: [] for name, _ in parsers}
                requests = {name: bench_request(cls, sink, directory) for name, cls in parsers}
                order = list(parsers)
                for _ in range(args.rounds):
                    random.shuffle(order)
                    for name, _ in order:
                        request_class, made = requests[name]
                        parse_once(request_class, made, payloads)  # warm-up, not timed
                        gc.collect()
                        samples[name] += [parse_once(request_class, made, payloads)
                                          for _ in range(args.reps)]
                medians = {name: statistics.median(samples[name]) for name, _ in parsers}
                ours = medians[parsers[0][0]]
                rows += [(label, sink, name, f"{median * 1000:.3f}", f"{median / ours:.2f}×") for name, median in medians.items()]
                if sink == "parse":
                    others = ", ".join(f"{name.split(':')[0]} {median * 1000:.2f}" for name, median in list(medians.items())[1:])
                    figures.append((f"multipart parse CPU per request, {label}: ours (python-multipart)", "—",
                                    f"{ours * 1000:.2f} ms ({others})"))
                print(f"  {label} ({sink}) done", file=sys.stderr, flush=True)
        print()
        table(rows, headers=("body", "sink", "parser", "CPU ms per request (median)", "vs ours"))
        print()
        table(figures)


if __name__ == "__main__":
    main()
