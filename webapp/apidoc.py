"""The API as a contract: GET /api/openapi.json (webapp/openapi.yaml, its code catalogue filled from core/codes.py)
and /api/docs, the page that shows it (Swagger UI from npm, served from static/vendor, started by js/apidocs.js)."""
import functools
import json
from importlib import resources

import yaml
from flask import Blueprint, current_app, render_template

from core import codes

bp = Blueprint("apidoc", __name__, url_prefix="/api")

SOURCE = "openapi.yaml"


@functools.cache
def document():
    """The OpenAPI document as a dict, read once; callers must not change it (copy it first)."""
    spec = yaml.safe_load(resources.files(__package__).joinpath(SOURCE).read_text(encoding="utf-8"))
    # One list of codes, the code's own: a code added to core/codes.py is in the document at once.
    spec["components"]["schemas"]["ErrorCode"]["enum"] = list(codes.CATALOGUE)
    return spec


@functools.cache
def document_json():
    """The document as served: JSON in the YAML's own order (paths as they read, not sorted)."""
    return json.dumps(document(), ensure_ascii=False, indent=1)


@bp.get("/openapi.json")
def openapi_document():
    """Serve the API's OpenAPI 3.1 document."""
    response = current_app.response_class(document_json(), mimetype="application/json")
    response.headers["Cache-Control"] = "no-cache"
    return response


@bp.get("/docs")
def openapi_docs():
    """Show the API's reference: the OpenAPI document in Swagger UI, to read and try out."""
    return render_template("api_docs.html")


def init_app(app):
    app.register_blueprint(bp)
