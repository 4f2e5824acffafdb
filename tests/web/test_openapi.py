"""GET /api/openapi.json and /api/docs (webapp/apidoc.py, webapp/openapi.yaml): the document names every route under
/api/ and /d/ and no other, is valid OpenAPI 3.1, says the code's own catalogue and enums, describes the webhooks as
they are delivered; the tests' contract check (tests/support/contract.py) catches a drift; the page shows it."""
import json
import re
import secrets

import pytest
from flask import request
from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_spec_validator import validate
from werkzeug.datastructures import Headers, ImmutableMultiDict
from werkzeug.exceptions import default_exceptions

from core import codes
from core.db import db
from core.jobs.history import EventKind
from core.jobs.model import Job
from core.jobs.states import STATUS_GROUPS, Status
from core.outbox import DELIVERED, FAILED, PENDING, SKIPPED, WEBHOOK_EVENTS
from tests.support.app import ApiClient, claim, pdf_bytes, upload
from tests.support.contract import ContractBroken, closed
from tests.support.receiver import Receiver
from webapp.apidoc import document
from webapp.errors import code_of_status
from worker import delivery

METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}


def documented_operations(spec):
    return {(path, method.upper()) for path, item in spec["paths"].items() for method in item
            if method.upper() in METHODS}


def routed_operations(app):
    """Every (path, method) the app routes under /api/ and /d/, in OpenAPI's spelling of its parameters."""
    found = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith(("/api/", "/d/")):
            path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
            found |= {(path, method) for method in rule.methods & METHODS}
    return found


def test_every_route_under_api_is_in_the_document_and_the_document_names_no_other(app):
    documented, routed = documented_operations(document()), routed_operations(app)
    assert routed - documented == set(), "routes the document does not describe"
    assert documented - routed == set(), "operations the document names that do not exist"
    assert len(documented) == 28  # and two webhooks


def test_the_document_is_valid_openapi_3_1_and_served_as_it_is(client):
    validate(document())
    validate(closed(document()))  # the tests' stricter copy too
    served = client.get("/api/openapi.json")
    assert served.status_code == 200 and served.mimetype == "application/json"
    assert served.get_json() == document() and served.get_json()["openapi"] == "3.1.0"


def test_the_document_needs_a_session_or_a_token_as_all_of_api_does(app):
    assert app.test_client().get("/api/openapi.json").status_code == 401
    assert app.test_client().get("/api/docs").status_code == 401


def test_the_error_codes_are_the_catalogue_of_core_codes():
    constants = {value for name, value in vars(codes).items() if name.isupper() and isinstance(value, str)}
    enum = document()["components"]["schemas"]["ErrorCode"]["enum"]
    assert set(enum) == constants == set(codes.CATALOGUE) and len(enum) == len(set(enum))
    # Every HTTP error werkzeug can raise answers with a code of the catalogue (no HTTP_408 beside it).
    assert {code_of_status(status) for status in default_exceptions} <= constants


def test_the_enums_are_the_codes_own():
    schemas = document()["components"]["schemas"]
    assert schemas["Status"]["enum"] == [status.value for status in Status]
    assert schemas["JobEvent"]["properties"]["kind"]["enum"] == [kind.value for kind in EventKind]
    assert schemas["WebhookEventType"]["enum"] == list(WEBHOOK_EVENTS)
    assert schemas["DeliveryState"]["enum"] == [PENDING, DELIVERED, FAILED, SKIPPED]
    names = re.findall(r"[a-z]+", schemas["StatusFilter"]["pattern"].split(")(")[0])
    assert set(names) == set(STATUS_GROUPS)
    assert set(document()["webhooks"]) == set(WEBHOOK_EVENTS)


def test_every_path_parameter_is_declared():
    spec = document()

    def names(parameters):
        return {spec["components"]["parameters"][p["$ref"].rsplit("/", 1)[1]]["name"] if "$ref" in p else p["name"]
                for p in parameters}

    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method.upper() in METHODS:
                declared = names([*item.get("parameters", ()), *operation.get("parameters", ())])
                assert set(re.findall(r"\{(\w+)\}", path)) <= declared, (path, method)


# -- the contract check of the tests' clients ------------------------------------------------------------------


def test_a_field_renamed_in_code_fails_the_test_that_reads_it(client, monkeypatch):
    job = upload(client, "renamed")
    plain = Job.to_dict
    monkeypatch.setattr(Job, "to_dict", lambda self: {("file_name" if k == "filename" else k): v
                                                       for k, v in plain(self).items()})
    with pytest.raises(ContractBroken, match="'filename' is a required property"):
        client.get(f"/api/jobs/{job['id']}")


def test_a_field_added_in_code_and_not_in_the_document_fails_too(client, monkeypatch):
    upload(client, "added")
    plain = Job.to_dict
    monkeypatch.setattr(Job, "to_dict", lambda self: {**plain(self), "colour": "blue"})
    with pytest.raises(ContractBroken, match="'colour' was unexpected"):
        client.get("/api/jobs")


def test_an_answer_on_a_route_the_document_does_not_name_fails(make_app):
    app = make_app()
    app.add_url_rule("/api/teapot", "teapot", lambda: {"tea": True})
    with pytest.raises(ContractBroken, match="a route the document does not name"):
        ApiClient(app.test_client()).get("/api/teapot")


def test_a_status_the_operation_does_not_document_fails(make_app):
    app = make_app()

    @app.before_request
    def brew():
        if request.path == "/api/tokens":
            return {"error": {"code": "CONFLICT", "message": "I am a teapot."}}, 418

    with pytest.raises(ContractBroken, match="names no 418 answer"):
        ApiClient(app.test_client()).get("/api/tokens")


def test_a_required_header_missing_or_a_header_its_schema_refuses_fails(make_app):
    app = make_app(UPLOADS_PER_MINUTE=1)
    retry_after = {}
    inner = app.wsgi_app

    def mangle(environ, start_response):  # as a proxy in front would: the app's own answer, its header changed
        def start(status, headers, exc_info=None):
            if status.startswith("429"):
                headers = [(name, value) for name, value in headers if name != "Retry-After"]
                headers += [("Retry-After", retry_after["value"])] if retry_after["value"] else []
            return start_response(status, headers, exc_info)
        return inner(environ, start)

    app.wsgi_app = mangle
    client = ApiClient(app.test_client())
    upload(client, "first")
    retry_after["value"] = "soon"  # the document says digits
    with pytest.raises(ContractBroken, match="header Retry-After: 'soon' does not match"):
        client.upload((pdf_bytes("second"), "second.pdf"))
    retry_after["value"] = None
    with pytest.raises(ContractBroken, match="header Retry-After: required, missing"):
        client.upload((pdf_bytes("third"), "third.pdf"))


def test_a_405_says_which_methods_the_route_takes(client):
    answer = client.raw.put("/api/jobs", headers={"Authorization": "Bearer wrong"})
    assert answer.status_code == 401  # credentials first
    answer = client.post("/api/jobs")
    assert answer.status_code == 405 and answer.get_json()["error"]["code"] == "METHOD_NOT_ALLOWED"
    assert set(answer.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}


def test_archive_and_bulk_are_never_read_as_job_ids(client):
    """Schemathesis: OPTIONS /api/jobs/archive said Allow: DELETE (the route of a job called "archive")."""
    routes = {"/api/jobs/archive": {"GET", "HEAD", "POST", "OPTIONS"}, "/api/jobs/bulk": {"POST", "OPTIONS"}}
    for path, methods in routes.items():
        assert set(client.raw.options(path).headers["Allow"].split(", ")) == methods
        refused = client.delete(path)
        assert refused.status_code == 405 and set(refused.headers["Allow"].split(", ")) == methods
    assert client.get("/api/jobs/archived").get_json()["error"]["code"] == "NOT_FOUND"  # an id that merely starts so


# -- the webhooks, as delivered -------------------------------------------------------------------------------


class DeliveredWebhook:
    """A request the receiver got, as openapi-core reads a webhook request."""

    def __init__(self, name, headers, body):
        self.name, self.method, self.body = name, "post", body
        self.content_type = headers.get("content-type", "")
        self.parameters = RequestParameters(header=Headers(headers), query=ImmutableMultiDict(),
                                            cookie=ImmutableMultiDict())


def test_the_webhooks_are_delivered_as_the_document_describes_them(make_app):
    app = make_app(WEBHOOK_ALLOWED_HOSTS=["127.0.0.1"], WEBHOOK_POLL_SECONDS=0.1, WEBHOOK_CONNECT_TIMEOUT=1,
                   WEBHOOK_READ_TIMEOUT=2)
    api = ApiClient(app.test_client())
    receiver = Receiver().start()
    deliverer = delivery.Deliverer(app)
    deliverer.start()
    try:
        assert api.post("/api/webhooks", json={"url": receiver.url + "/hook"}).status_code == 201
        for failed in (False, True):
            with app.app_context():
                job = Job.create(owner=api.user.id, filename=f"w-{secrets.token_hex(3)}.pdf", mapping="generic_v1",
                                 bytes=10, sha256=secrets.token_hex(32), upload_path="uploads/x.pdf")
                assert claim(job.id, "w", 30, capacity=10)
                if failed:
                    assert Job.fail(job.id, "w", codes.GW_4XX, "refused")
                else:
                    assert Job.complete(job.id, "w", "results/x.xml")
                db.session.remove()
        delivered = receiver.wait_for(2, timeout=20)
    finally:
        deliverer.stop()
        deliverer.join(10)
        receiver.stop()
    spec = OpenAPI.from_dict(closed(document()))
    for headers, body in delivered:
        name = json.loads(body)["type"]
        spec.validate_webhook_request(DeliveredWebhook(name, headers, body))
    assert sorted(json.loads(body)["type"] for _, body in delivered) == ["job.complete", "job.failed"]


# -- the page ---------------------------------------------------------------------------------------------


def test_the_docs_page_starts_swagger_ui_from_our_own_files_under_the_page_policy(client):
    page = client.get("/api/docs")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert 'src="/static/vendor/swagger-ui/swagger-ui-bundle.js"' in html and 'src="/static/js/apidocs.js"' in html
    assert 'href="/static/vendor/swagger-ui/swagger-ui.css"' in html and 'data-url="/api/openapi.json"' in html
    assert "//" not in re.sub(r"https?://[^\"']*", "", " ".join(re.findall(r'(?:src|href)="([^"]*)"', html)))
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe" not in policy


def test_the_tokens_page_links_to_the_reference(client):
    html = client.get("/tokens").get_data(as_text=True)
    assert 'href="/api/docs"' in html and 'href="/api/openapi.json"' in html
