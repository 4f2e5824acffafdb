"""Security headers on every kind of answer, downloads as attachments, no CORS, ProxyFix behind a proxy."""
import re
from pathlib import Path

import pytest

from worker import run
from tests.support import people
from tests.support.app import ApiClient, pdf_bytes
from core.db import db
from webapp.security import HEADERS

TEMPLATES = Path(__file__).resolve().parents[2] / "webapp" / "templates"


@pytest.fixture
def completed(app, client, fake):
    """A complete job of client's, converted through the fake gateway; its file name is not ASCII."""
    app.config["GATEWAY_URL"] = fake.url
    job = client.upload((pdf_bytes("sec"), "fatura ç 2024.pdf")).get_json()["jobs"][0]
    with app.app_context():
        run.run_job(job["id"])
        db.session.remove()
    return job


def assert_secure_headers(response):
    for name, value in HEADERS.items():
        assert response.headers.get(name) == value, name
    csp = response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "Access-Control-Allow-Origin" not in response.headers


def test_a_page_carries_the_headers(client):
    response = client.get("/", headers={"Accept": "text/html"})
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert_secure_headers(response)


def test_an_api_answer_and_an_api_error_carry_the_headers(client):
    assert_secure_headers(client.get("/api/jobs"))
    missing = client.get("/api/jobs/nope")
    assert missing.status_code == 404
    assert_secure_headers(missing)


def test_a_static_file_carries_the_headers(client):
    assert_secure_headers(client.get("/static/js/app.js"))


def test_a_download_is_an_xml_attachment_with_an_rfc5987_name_and_the_headers(client, completed):
    response = client.get(f"/api/jobs/{completed['id']}/download")
    assert response.status_code == 200
    assert response.mimetype == "application/xml"
    disposition = response.headers["Content-Disposition"]
    assert disposition.startswith("attachment;")
    assert "filename*=UTF-8''fatura%20%C3%A7%202024.xml" in disposition
    assert_secure_headers(response)


def test_a_shared_download_carries_the_headers(client, completed):
    url = client.post(f"/api/jobs/{completed['id']}/share").get_json()["url"]
    response = client.raw.application.test_client().get(url)  # no session
    assert response.status_code == 200 and response.mimetype == "application/xml"
    assert_secure_headers(response)


def test_no_cors_even_when_another_origin_asks(client):
    evil = {"Origin": "https://evil.example"}
    assert "Access-Control-Allow-Origin" not in client.get("/api/jobs", headers=evil).headers
    preflight = client.raw.options("/api/upload", headers={**evil, "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in preflight.headers
    # and a cross-site POST without the token is refused
    assert client.raw.post("/api/upload", headers=evil).get_json()["error"]["code"] == "CSRF"


def test_templates_have_no_inline_script_or_event_handlers():
    for template in TEMPLATES.rglob("*.html"):
        text = template.read_text()
        # A JSON data block (the scripts' sentences) is no script: the browser never runs it.
        inline = [tag for tag in re.findall(r"<script\b[^>]*>", text)
                  if "src=" not in tag and 'type="application/json"' not in tag]
        handlers = re.findall(r"\son[a-z]+\s*=", text)
        styles = re.findall(r"<style\b|\sstyle\s*=", text)
        assert not inline and not handlers and not styles, f"{template.name}: {inline or handlers or styles}"


def test_behind_a_proxy_the_client_address_and_scheme_come_from_it(make_app):
    app = make_app(BEHIND_PROXY=True, UPLOADS_PER_MINUTE=1)  # 6 files a minute per address
    forwarded = {"X-Forwarded-Proto": "https"}

    def client_from(address):
        raw = app.test_client()
        raw.environ_base["HTTP_X_FORWARDED_FOR"] = address
        raw.environ_base["HTTP_X_FORWARDED_PROTO"] = "https"
        return ApiClient(raw)

    first = people.test_client(app).get("/api/session", headers=forwarded)
    cookie = first.headers["Set-Cookie"]
    assert "Secure" in cookie and cookie.startswith("__Host-session=") and "Domain" not in cookie
    statuses = [client_from("203.0.113.7").upload((pdf_bytes(f"p{n}"), "a.pdf")).status_code for n in range(7)]
    assert statuses == [202] * 6 + [429]  # six owners, one address: the address limit holds (no Referer needed)
    assert client_from("203.0.113.8").upload((pdf_bytes("other"), "a.pdf")).status_code == 202


def test_without_a_proxy_forwarded_headers_are_not_trusted(make_app):
    app = make_app(UPLOADS_PER_MINUTE=1)
    response = people.test_client(app).get("/api/session", headers={"X-Forwarded-Proto": "https"})
    assert "Secure" not in response.headers["Set-Cookie"]
    statuses = []
    for n in range(7):
        raw = app.test_client()
        raw.environ_base["HTTP_X_FORWARDED_FOR"] = f"203.0.113.{n}"  # a client cannot pick its address
        statuses.append(ApiClient(raw).upload((pdf_bytes(f"q{n}"), "a.pdf")).status_code)
    assert statuses == [202] * 6 + [429]
