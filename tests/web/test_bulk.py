"""Many jobs at once: the results as one streamed ZIP (GET /api/jobs/archive), bulk retry and delete."""
import io
import os
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from tests.support import people
from tests.support.app import ApiClient, pdf_bytes
from tests.support.app import finish
from webapp import bulk
from core.jobs.model import Job


def upload(client, tag, name=None):
    response = client.upload((pdf_bytes(tag), name or f"{tag}.pdf"))
    assert response.status_code == 202, response.get_json()
    return response.get_json()["jobs"][0]


def unzip(response):
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/zip"
    assert response.headers["Content-Disposition"].startswith('attachment; filename="pdfqueue-results-')
    archive = zipfile.ZipFile(io.BytesIO(response.get_data()))
    assert archive.testzip() is None
    return {name: archive.read(name).decode() for name in archive.namelist()}


@pytest.fixture
def client(make_app):
    return ApiClient(make_app(UPLOADS_PER_MINUTE=100).test_client())


def test_archive_of_a_filtered_set_names_entries_after_the_files_and_makes_them_unique(client):
    app = client.raw.application
    same_name = [upload(client, f"twin{n}", "fatura.PDF") for n in range(3)]  # three files, one name
    other = upload(client, "recibo")
    failed = upload(client, "broken-fatura")
    queued = upload(client, "waiting-fatura")
    for job in same_name + [other]:
        finish(app, job["id"], xml=f"<Invoice><Id>{job['id']}</Id></Invoice>")
    finish(app, failed["id"], "failed")
    entries = unzip(client.get("/api/jobs/archive?q=fatura"))
    # Newest first, like the list; only complete jobs with a result; the twins made unique.
    assert list(entries) == ["fatura.xml", "fatura (2).xml", "fatura (3).xml"]
    assert [entries[name] for name in entries] == \
        [f"<Invoice><Id>{job['id']}</Id></Invoice>" for job in reversed(same_name)]
    assert set(unzip(client.get("/api/jobs/archive?status=complete"))) == \
        {"fatura.xml", "fatura (2).xml", "fatura (3).xml", "recibo.xml"}
    picked = unzip(client.get(f"/api/jobs/archive?ids={other['id']},{queued['id']},{failed['id']}"))
    assert picked == {"recibo.xml": f"<Invoice><Id>{other['id']}</Id></Invoice>"}


@pytest.mark.parametrize("filename, entry", [
    ("../../etc/passwd.pdf", ".._.._etc_passwd.xml"),
    ("a\\b.pdf", "a_b.xml"),
    ("notes", "notes.xml"),
    (".pdf", "result.xml"),
])
def test_entry_names_have_no_directories(filename, entry):
    assert bulk.entry_name(filename, set()) == entry


def test_archive_is_owner_scoped_and_says_when_nothing_is_ready(client):
    app = client.raw.application
    other = ApiClient(app.test_client())
    theirs, mine = upload(other, "theirs"), upload(client, "mine")  # the first uploaded is claimed first
    finish(app, theirs["id"])
    response = client.get(f"/api/jobs/archive?ids={mine['id']},{theirs['id']}")
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "NOT_READY"
    assert client.get("/api/jobs/archive").status_code == 409
    finish(app, mine["id"])
    assert list(unzip(client.get(f"/api/jobs/archive?ids={mine['id']},{theirs['id']}"))) == ["mine.xml"]
    admin = ApiClient(app.test_client(), admin=True)
    assert set(unzip(admin.get("/api/jobs/archive?owner=all"))) == {"mine.xml", "theirs.xml"}
    assert set(unzip(admin.get(f"/api/jobs/archive?ids={mine['id']},{theirs['id']}"))) == {"mine.xml", "theirs.xml"}


@pytest.mark.parametrize("query", ["status=done", "since=yesterday", "ids=" + ",".join(f"j{n}" for n in range(501))])
def test_archive_with_a_bad_query_is_400(client, query):
    response = client.get(f"/api/jobs/archive?{query}")
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "BAD_REQUEST"


def test_with_retention_after_download_an_archive_is_each_results_download(make_app):
    app = make_app(UPLOADS_PER_MINUTE=100, RETENTION_XML_AFTER_DOWNLOAD=True)
    client = ApiClient(app.test_client())
    jobs = [upload(client, f"once{n}") for n in range(3)]
    kept = upload(client, "kept")
    for job in jobs + [kept]:
        finish(app, job["id"])
    ids = ",".join(job["id"] for job in jobs)
    assert len(unzip(client.get(f"/api/jobs/archive?ids={ids}"))) == 3
    assert [client.get(f"/api/jobs/{job['id']}").get_json()["result_expired"] for job in jobs] == [True] * 3
    assert client.get(f"/api/jobs/archive?ids={ids}").get_json()["error"]["code"] == "NOT_READY"
    assert [path.name for path in Path(app.config["RESULT_DIR"]).iterdir()] == [f"{kept['id']}.xml"]
    assert client.get(f"/api/jobs/{kept['id']}/download").status_code == 200


def test_an_archive_given_up_midway_expires_nothing_it_did_not_send(make_app, monkeypatch):
    monkeypatch.setattr(bulk, "CHUNK", 2)
    app = make_app(UPLOADS_PER_MINUTE=100, RETENTION_XML_AFTER_DOWNLOAD=True)
    client = ApiClient(app.test_client())
    jobs = [upload(client, f"half{n}") for n in range(4)]
    for job in jobs:
        finish(app, job["id"])
    response = client.get("/api/jobs/archive", buffered=False)
    stream = iter(response.response)
    next(stream)  # the first chunk's first bytes: nothing of it has been sent whole yet
    response.close()
    assert sorted(path.name for path in Path(app.config["RESULT_DIR"]).iterdir()) == \
        sorted(f"{job['id']}.xml" for job in jobs)
    assert not any(client.get(f"/api/jobs/{job['id']}").get_json()["result_expired"] for job in jobs)


def test_archive_streams_with_flat_memory(client, monkeypatch):
    """60 results of 256 KB each (15 MB) stream through in chunks of 16 jobs, holding far less than one of them."""
    monkeypatch.setattr(bulk, "CHUNK", 16)
    app = client.raw.application
    results = Path(app.config["RESULT_DIR"])
    ids = [upload(client, f"big{n}")["id"] for n in range(60)]
    for job_id in ids:
        finish(app, job_id)
        (results / f"{job_id}.xml").write_text(os.urandom(128 * 1024).hex())  # 256 KB that deflates to half
    response = client.get("/api/jobs/archive", buffered=False)
    assert response.is_streamed
    tracemalloc.start()
    try:
        size = sum(len(chunk) for chunk in response.response)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        response.close()
    assert size > 60 * 128 * 1024  # every entry went out
    assert peak < 2 * 1024 * 1024, f"peak {peak} bytes while streaming {size}"


def test_bulk_retry_requeues_failed_jobs_and_says_why_others_were_skipped(client):
    app = client.raw.application
    failed = [upload(client, f"f{n}") for n in range(2)]
    done_job, queued = upload(client, "done"), upload(client, "queued")
    for job in failed:
        finish(app, job["id"], "failed")
    finish(app, done_job["id"])
    ids = [job["id"] for job in failed] + [done_job["id"], queued["id"], "no-such-job"]
    response = client.post("/api/jobs/bulk", json={"action": "retry", "ids": ids})
    assert response.status_code == 200
    assert response.get_json() == {"done": [failed[0]["id"], failed[1]["id"]],
                                   "skipped": [{"id": done_job["id"], "code": "NOT_RETRYABLE"},
                                               {"id": queued["id"], "code": "NOT_RETRYABLE"},
                                               {"id": "no-such-job", "code": "NOT_FOUND"}]}
    assert "queue:active" in response.headers["HX-Trigger"]
    with app.app_context():
        assert [Job.owned(None, job["id"]).status for job in failed] == ["queued", "queued"]


def test_bulk_delete_removes_mine_and_leaves_anothers(client):
    app = client.raw.application
    other = ApiClient(app.test_client())
    mine, theirs = [upload(client, f"m{n}") for n in range(3)], upload(other, "theirs")
    ids = [mine[0]["id"], mine[1]["id"], theirs["id"]]
    response = client.post("/api/jobs/bulk", json={"action": "delete", "ids": ids})
    assert response.get_json() == {"done": ids[:2], "skipped": [{"id": theirs["id"], "code": "NOT_FOUND"}]}
    assert [job["id"] for job in client.get("/api/jobs").get_json()["jobs"]] == [mine[2]["id"]]
    assert other.get(f"/api/jobs/{theirs['id']}").status_code == 200
    assert len(list(Path(app.config["UPLOAD_DIR"]).iterdir())) == 2


def test_bulk_by_filter_takes_every_matching_job(client):
    app = client.raw.application
    failed = [upload(client, f"x-{n}") for n in range(3)]
    keep = upload(client, "other")
    for job in failed + [keep]:
        finish(app, job["id"], "failed")
    response = client.post("/api/jobs/bulk", json={"action": "retry", "filter": {"status": "failed", "q": "x-"}})
    assert sorted(response.get_json()["done"]) == sorted(job["id"] for job in failed)
    assert client.get(f"/api/jobs/{keep['id']}").get_json()["status"] == "failed"


def test_bulk_needs_the_csrf_token_with_a_cookie_but_not_with_a_bearer_token(client):
    app = client.raw.application
    job = upload(client, "c")
    response = client.raw.post("/api/jobs/bulk", json={"action": "delete", "ids": [job["id"]]})
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "CSRF"
    user, token = people.with_token(app)
    script = app.test_client()
    assert script.post("/api/upload", headers={"Authorization": f"Bearer {token}"},
                       data={"file": (io.BytesIO(pdf_bytes("s")), "s.pdf")}).status_code == 202
    scripted = script.get("/api/jobs", headers={"Authorization": f"Bearer {token}"}).get_json()["jobs"][0]
    response = script.post("/api/jobs/bulk", headers={"Authorization": f"Bearer {token}"},
                           json={"action": "delete", "ids": [scripted["id"], job["id"]]})
    assert response.get_json() == {"done": [scripted["id"]], "skipped": [{"id": job["id"], "code": "NOT_FOUND"}]}


@pytest.mark.parametrize("body, says", [
    (None, "Send JSON"),
    ({"action": "explode", "ids": ["a"]}, "'action'"),
    ({"action": "delete"}, "Name the jobs"),
    ({"action": "delete", "ids": []}, "'ids'"),
    ({"action": "delete", "ids": "abc"}, "'ids'"),
    ({"action": "delete", "ids": [1, 2]}, "'ids'"),
    ({"action": "delete", "ids": [f"j{n}" for n in range(501)]}, "at most 500"),
    ({"action": "retry", "filter": "failed"}, "'filter'"),
    ({"action": "retry", "filter": {"status": "done"}}, "'status'"),
])
def test_bad_bulk_requests_are_400_and_change_nothing(client, body, says):
    job = upload(client, "stays")
    response = client.post("/api/jobs/bulk", json=body) if body is not None else \
        client.post("/api/jobs/bulk", data="nope", content_type="text/plain")
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "BAD_REQUEST"
    assert says in response.get_json()["error"]["message"]
    assert client.get(f"/api/jobs/{job['id']}").status_code == 200


def test_bulk_by_filter_refuses_more_than_the_cap(client, monkeypatch):
    monkeypatch.setattr(bulk, "MAX_IDS", 2)
    for n in range(3):
        upload(client, f"k{n}")
    response = client.post("/api/jobs/bulk", json={"action": "delete", "filter": {"status": "all"}})
    assert response.status_code == 400 and "Narrow the filter" in response.get_json()["error"]["message"]
    assert len(client.get("/api/jobs").get_json()["jobs"]) == 3


def test_bulk_requests_are_rate_limited(client):
    for _ in range(30):
        assert client.post("/api/jobs/bulk", json={"action": "delete", "ids": ["none"]}).status_code == 200
    response = client.post("/api/jobs/bulk", json={"action": "delete", "ids": ["none"]})
    assert response.status_code == 429 and response.get_json()["error"]["code"] == "RATE_LIMITED"
    assert int(response.headers["Retry-After"]) > 0


def test_archive_entry_names_lose_format_characters():
    from webapp import bulk
    assert bulk.entry_name("fatura\u202efdp.pdf", set()) == "faturafdp.xml"
