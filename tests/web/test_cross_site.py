"""A read that spends a result (RETENTION_XML_AFTER_DOWNLOAD) only when it comes from our own pages, a token or a
POST with CSRF: a link or a navigation from another site carries the SameSite=Lax session cookie too, and must
never be able to spend anyone's results. It still downloads."""
import io
import zipfile
from pathlib import Path

import pytest

from tests.support import people
from tests.support.app import ApiClient, finish, pdf_bytes

# What a browser sends when a page of another site links to ours (a click, an <img>, a top-level navigation).
FROM_ANOTHER_SITE = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Referer": "https://evil.example/"}


@pytest.fixture
def app(make_app):
    return make_app(UPLOADS_PER_MINUTE=100, RETENTION_XML_AFTER_DOWNLOAD=True)


def completed(app, client, tag):
    job = client.upload((pdf_bytes(tag), f"{tag}.pdf")).get_json()["jobs"][0]
    finish(app, job["id"])
    return job["id"]


def kept(app):
    return sorted(path.stem for path in Path(app.config["RESULT_DIR"]).iterdir())


def expired(client, job_id):
    return client.get(f"/api/jobs/{job_id}").get_json()["result_expired"]


@pytest.mark.parametrize("headers", [FROM_ANOTHER_SITE, {"Sec-Fetch-Site": "same-site"}, {}],
                         ids=["cross-site", "same-site", "no-fetch-metadata"])
def test_a_download_linked_from_another_site_answers_but_spends_nothing(app, headers):
    client = ApiClient(app.test_client())
    job_id = completed(app, client, "linked")
    for _ in range(2):
        response = client.raw.get(f"/api/jobs/{job_id}/download", headers=headers)  # the cookie rides along
        assert response.status_code == 200 and "<InvoiceNumber>" in response.get_data(as_text=True)
    assert not expired(client, job_id) and kept(app) == [job_id]


def test_a_download_from_our_own_page_or_a_typed_address_spends_the_result(app):
    client = ApiClient(app.test_client())
    ours, typed = completed(app, client, "ours"), completed(app, client, "typed")
    assert client.raw.get(f"/api/jobs/{ours}/download", headers={"Sec-Fetch-Site": "same-origin"}).status_code == 200
    assert client.raw.get(f"/api/jobs/{typed}/download", headers={"Sec-Fetch-Site": "none"}).status_code == 200
    assert expired(client, ours) and expired(client, typed) and kept(app) == []
    assert client.raw.get(f"/api/jobs/{ours}/download").get_json()["error"]["code"] == "EXPIRED"


def test_an_admins_archive_of_everyone_linked_from_another_site_spends_nothing(app):
    users = [ApiClient(app.test_client()) for _ in range(2)]
    ids = [completed(app, user, f"all{n}") for n, user in enumerate(users)]
    admin = ApiClient(app.test_client(), admin=True)
    response = admin.raw.get("/api/jobs/archive?owner=all", headers=FROM_ANOTHER_SITE)
    assert response.status_code == 200
    assert len(zipfile.ZipFile(io.BytesIO(response.get_data())).namelist()) == 2
    assert kept(app) == sorted(ids) and not any(expired(user, job_id) for user, job_id in zip(users, ids))
    # The same archive asked for on the queue page (its link is same-origin) is their download.
    ours = admin.get("/api/jobs/archive?owner=all")
    assert ours.status_code == 200 and len(zipfile.ZipFile(io.BytesIO(ours.get_data())).namelist()) == 2
    assert kept(app) == [] and all(expired(user, job_id) for user, job_id in zip(users, ids))


def test_a_script_with_its_token_spends_what_it_downloads(app):
    user, secret = people.with_token(app)
    script = app.test_client()
    bearer = {"Authorization": f"Bearer {secret}"}
    upload = script.post("/api/upload", headers=bearer, data={"file": (io.BytesIO(pdf_bytes("tok")), "tok.pdf")})
    job_id = upload.get_json()["jobs"][0]["id"]
    finish(app, job_id)
    assert script.get(f"/api/jobs/{job_id}/download", headers=bearer).status_code == 200
    assert script.get(f"/api/jobs/{job_id}", headers=bearer).get_json()["result_expired"] is True
    archive_job = script.post("/api/upload", headers=bearer, data={"file": (io.BytesIO(pdf_bytes("tz")), "tz.pdf")})
    archive_id = archive_job.get_json()["jobs"][0]["id"]
    finish(app, archive_id)
    assert script.get(f"/api/jobs/archive?ids={archive_id}", headers=bearer).get_data()[:2] == b"PK"
    assert kept(app) == []


def test_a_post_with_csrf_spends_and_one_without_is_refused(app):
    client = ApiClient(app.test_client())
    job_id, other = completed(app, client, "post"), completed(app, client, "postzip")
    forged = client.raw.post(f"/api/jobs/{job_id}/download", headers=FROM_ANOTHER_SITE)  # a form on another site
    assert forged.status_code == 400 and forged.get_json()["error"]["code"] == "CSRF"
    assert client.raw.post(f"/api/jobs/archive?ids={job_id}", headers=FROM_ANOTHER_SITE).status_code == 400
    assert kept(app) == sorted([job_id, other])
    posted = client.raw.post(f"/api/jobs/{job_id}/download", headers={"X-CSRF-Token": client.token})
    assert posted.status_code == 200 and "<InvoiceNumber>" in posted.get_data(as_text=True)
    zipped = client.raw.post(f"/api/jobs/archive?ids={other}", headers={"X-CSRF-Token": client.token})
    assert zipped.status_code == 200 and zipped.get_data()[:2] == b"PK"
    assert expired(client, job_id) and expired(client, other) and kept(app) == []
