"""The API's contract in the tests: every answer a test client gets from /api/ or /d/ is checked against the OpenAPI
document (webapp/openapi.yaml, as GET /api/openapi.json serves it), so that a field renamed or added in code, a
status or a content type the document does not name, fails the test that received it.

The document published is open (clients must take fields added later); the one checked here is closed: every
object it describes has `unevaluatedProperties: false`, so a field the code says and the document does not is a
failure too. A JSON answer is checked whole (status, headers, body); any other (XML, ZIP, PDF, the event stream)
by its status, content type and headers, without reading a body that may stream for ever.
"""
import copy
import functools
import json
import re

from flask.testing import FlaskClient
from openapi_schema_validator import OAS31Validator

from webapp.apidoc import document

CHECKED_PREFIXES = ("/api/", "/d/")
# Bodies never read here: they stream (the event stream, a ZIP made as it is sent) or are files.
UNREAD = {"text/event-stream", "application/zip", "application/xml", "application/pdf", "text/html"}


class ContractBroken(AssertionError):
    """An answer the OpenAPI document does not describe."""


def _schema_refs_in_all_of(node, found):
    """Names of the component schemas that some allOf extends (they must stay open for the extension's fields)."""
    if isinstance(node, dict):
        for member in node.get("allOf", ()):
            ref = member.get("$ref", "") if isinstance(member, dict) else ""
            if ref.startswith("#/components/schemas/"):
                found.add(ref.rsplit("/", 1)[1])
        for value in node.values():
            _schema_refs_in_all_of(value, found)
    elif isinstance(node, list):
        for value in node:
            _schema_refs_in_all_of(value, found)
    return found


def closed(spec):
    """A copy of spec in which no described object may carry a field the document does not name."""
    spec = copy.deepcopy(spec)
    extended = _schema_refs_in_all_of(spec, set())

    def close(node, in_all_of=False, is_extended=False):
        if isinstance(node, list):
            for value in node:
                close(value, in_all_of)
            return
        if not isinstance(node, dict):
            return
        ref = node.get("$ref", "")
        if ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in extended and not in_all_of:
            node.setdefault("unevaluatedProperties", False)  # closed where it is used whole
        elif ("properties" in node or "allOf" in node) and not in_all_of and not is_extended:
            if "additionalProperties" not in node:
                node.setdefault("unevaluatedProperties", False)
        for key, value in node.items():
            if key == "allOf":
                for member in value:
                    close(member, in_all_of=True)
            elif key == "properties" and isinstance(value, dict):
                for schema in value.values():
                    close(schema)
            else:
                close(value)

    schemas = spec["components"]["schemas"]
    for name, schema in schemas.items():
        close(schema, is_extended=name in extended)
    for key, value in spec.items():
        if key != "components":
            close(value)
    for key, value in spec["components"].items():
        if key != "schemas":
            close(value)
    return spec


@functools.cache
def contract():
    """(the closed document, a validator of the error envelope): built once a process."""
    spec = closed(document())
    return spec, validator(spec, spec["components"]["schemas"]["Error"])


_validators = {}


def validator(spec, schema):
    """An OpenAPI 3.1 (JSON Schema 2020-12) validator of schema, its $refs into the document's components, formats
    checked; made once per schema of the document."""
    if id(schema) not in _validators:
        _validators[id(schema)] = OAS31Validator({**schema, "components": spec["components"]},
                                                 format_checker=OAS31Validator.FORMAT_CHECKER)
    return _validators[id(schema)]


def path_pattern(template):
    """A regex matching the concrete paths of an OpenAPI path template (a parameter is one path segment)."""
    return re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$")


def operation_of(spec, path, method):
    """The document's operation for a concrete path and method (a literal path before a templated one), or None."""
    paths = spec["paths"]
    item = paths.get(path)
    if item is None:
        item = next((paths[t] for t in paths if "{" in t and path_pattern(t).match(path)), None)
    return None if item is None else item.get(method.lower())


def response_of(spec, operation, status):
    """The operation's response object for status (exact, then its class, then default), $ref resolved; or None."""
    responses = operation["responses"]
    found = responses.get(str(status)) or responses.get(f"{status // 100}XX") or responses.get("default")
    if found is not None and "$ref" in found:
        found = spec["components"]["responses"][found["$ref"].rsplit("/", 1)[1]]
    return found


def _schema_errors(validator_, value, where):
    """Each way value breaks the validator's schema, one line each."""
    return [f"{where}{'/' if error.absolute_path else ''}{'/'.join(str(part) for part in error.absolute_path)}: "
            f"{error.message}" for error in validator_.iter_errors(value)]


def _header_errors(spec, declared, headers):
    """The declared headers the answer lacks (those required) or carries with a value their schema refuses."""
    errors = []
    for name, header in (declared.get("headers") or {}).items():
        if "$ref" in header:
            header = spec["components"]["headers"][header["$ref"].rsplit("/", 1)[1]]
        value = headers.get(name)
        if value is None:
            if header.get("required"):
                errors.append(f"header {name}: required, missing")
        elif "schema" in header:
            errors += _schema_errors(validator(spec, header["schema"]), value, f"header {name}")
    return errors


def check(response):
    """Raise ContractBroken unless the answer is one the document describes (answers outside /api/ and /d/ pass)."""
    request = response.request
    path = request.path
    if not path.startswith(CHECKED_PREFIXES):
        return
    if request.method == "OPTIONS" and "Allow" in response.headers:
        return  # Flask's own answer on every route (its methods), outside the contract; there is no CORS
    spec, envelope = contract()
    mimetype = response.mimetype or ""
    status = response.status_code
    what = f"{request.method} {path} → {status} {mimetype}"
    method = "GET" if request.method == "HEAD" else request.method  # Flask answers HEAD as GET, without the body
    operation = operation_of(spec, path, method)
    if operation is None:
        # No such route or method: the answer must still be the error envelope (404, 405) in JSON.
        if status < 400 or mimetype != "application/json":
            raise ContractBroken(f"{what}: an answer on a route the document does not name")
        errors = [error.message for error in envelope.iter_errors(response.get_json())]
        if errors:
            raise ContractBroken(f"{what}: not the error envelope: {errors}")
        if status == 405 and "Allow" not in response.headers:
            raise ContractBroken(f"{what}: a 405 without Allow (RFC 9110 requires it)")
        return
    declared = response_of(spec, operation, status)
    if declared is None:
        raise ContractBroken(f"{what}: the document names no {status} answer for this operation"
                             + (f" (body: {response.get_data()[:300]!r})" if mimetype == "application/json" else ""))
    streams = mimetype in UNREAD or response.is_streamed
    read = request.method != "HEAD" and (mimetype == "application/json" or not streams)
    body = response.get_data() if read else b""
    content = declared.get("content") or {}
    if not content:
        if body:
            raise ContractBroken(f"{what}: the document says this answer has no body, it has {body[:200]!r}")
    elif mimetype not in content:
        raise ContractBroken(f"{what}: the document says {sorted(content)}, not {mimetype}")
    errors = _header_errors(spec, declared, response.headers)
    schema = (content.get(mimetype) or {}).get("schema")
    if read and schema is not None and mimetype == "application/json":
        try:
            errors += _schema_errors(validator(spec, schema), json.loads(body), "(body)")
        except ValueError as exc:
            errors.append(f"(body): not JSON ({exc})")
    if errors:
        raise ContractBroken(f"{what} does not match webapp/openapi.yaml: " + " | ".join(errors)
                             + (f"\nbody: {body[:500]!r}" if body else ""))


class ContractClient(FlaskClient):
    """Flask's test client, checking each answer against the API's OpenAPI document (tests/conftest.py's apps)."""

    def open(self, *args, **kwargs):
        response = super().open(*args, **kwargs)
        check(response)
        return response
