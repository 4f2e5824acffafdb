"""POST /process and GET /healthz, as shared/spec/gateway.md describes them."""

import time
import uuid

from flask import Blueprint, Response, current_app, g, jsonify, request

from . import mappings, sandbox, zygote
from .errors import GatewayError

bp = Blueprint("gateway", __name__)

# Accept values we answer, and the format each one gets; no Accept at all means XML.
FORMATS = {"application/xml": "xml", "text/xml": "xml", "application/json": "json"}
MEDIA_TYPES = {"xml": "application/xml; charset=utf-8", "json": "application/json"}
PDF_MAGIC = b"%PDF-"
MAGIC_WINDOW = 1024  # like Acrobat, tolerate a little junk before the header
TRUE, FALSE = {"1", "true", "yes"}, {"", "0", "false", "no"}


@bp.before_app_request
def start_request():
    """Stamp the correlation id and start time; refuse an oversized body before reading any of it."""
    g.started = time.perf_counter()
    g.correlation_id = request.headers.get("X-Correlation-ID") or uuid.uuid4().hex
    g.log = {}
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is not None and request.content_length > limit:
        raise GatewayError(413, "TOO_LARGE", f"the upload is over the {current_app.config['MAX_MB']} MiB limit")


@bp.get("/healthz")
def healthz():
    """Say the gateway can take work, and which mappings it knows."""
    return jsonify(status="ok", mappings=sorted(current_app.extensions["gateway.mappings"]))


@bp.post("/process")
def process():
    """Convert one uploaded PDF through a mapping to XML or JSON."""
    fmt = _negotiate()
    upload, mapping, pretty = _parts()
    data = upload.read(current_app.config["MAX_MB"] * (1 << 20) + 1)
    g.log["bytes"] = len(data)
    if len(data) > current_app.config["MAX_MB"] * (1 << 20):
        raise GatewayError(413, "TOO_LARGE", f"the file is over the {current_app.config['MAX_MB']} MiB limit")
    if not data:
        raise GatewayError(400, "EMPTY_FILE", "the file part is empty")
    if PDF_MAGIC not in data[:MAGIC_WINDOW]:
        raise GatewayError(415, "NOT_PDF", "the file is not a PDF (no %PDF- header)")
    config = current_app.config
    limits = sandbox.Limits(memory_mb=config["PARSE_MEMORY_MB"], cpu_s=config["PARSE_CPU_S"],
                            wall_s=config["PARSE_TIMEOUT_S"], answer_bytes=config["MAX_ANSWER_MB"] << 20)
    # Parses wait for one of this worker's slots; /healthz never does (gevent: each request its own greenlet).
    with sandbox.parse_slot(config["PARSES_PER_WORKER"]):
        pages, body = current_app.extensions["gateway.zygote"].run(
            zygote.convert, (data, mapping.name, fmt, pretty, config["MAX_PAGES"]), limits)
    g.log["pages"] = pages
    return Response(body.encode("utf-8"), status=200, content_type=MEDIA_TYPES[fmt])


def _negotiate():
    if "Accept" not in request.headers:
        return "xml"
    best = request.accept_mimetypes.best_match(list(FORMATS))
    if best is None:
        raise GatewayError(406, "NOT_ACCEPTABLE", "Accept must allow application/xml or application/json")
    return FORMATS[best]


def _parts():
    """Return (file, mapping, pretty) from the multipart body, or raise 400/406."""
    if not request.mimetype == "multipart/form-data":
        raise GatewayError(400, "BAD_REQUEST", "the body must be multipart/form-data")
    upload = request.files.get("file")
    if upload is None:
        raise GatewayError(400, "MISSING_PART", "the file part is missing")
    name = request.form.get("mapping")
    if name is None or not name.strip():
        raise GatewayError(400, "MISSING_PART", "the mapping part is missing")
    g.log["mapping"] = name[:100]
    known = current_app.extensions["gateway.mappings"]
    normalised = mappings.normalise_name(name)
    if normalised not in known:
        raise GatewayError(406, "UNKNOWN_MAPPING", f"unknown mapping; known: {', '.join(sorted(known))}")
    pretty = request.form.get("pretty", "").strip().lower()
    if pretty not in TRUE | FALSE:
        raise GatewayError(400, "BAD_REQUEST", "pretty must be 1 or 0")
    return upload, known[normalised], pretty in TRUE
