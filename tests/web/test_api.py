"""Reading and deleting jobs: ordering, filters, pagination, ownership, health, and files only where they belong."""
import io
import time
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import update

from tests.support.app import ApiClient, claim, finish, pdf_bytes
from core.db import db
from core.jobs.model import Job


def upload(client, tag):
    return client.upload((pdf_bytes(tag), f"{tag}.pdf")).get_json()["jobs"][0]


def test_jobs_are_listed_newest_first_with_active_count(client):
    ids = [upload(client, f"j{n}")["id"] for n in range(3)]
    body = client.get("/api/jobs").get_json()
    assert [job["id"] for job in body["jobs"]] == ids[::-1]
    assert body["active_count"] == 3 and body["next_cursor"] is None and body["server_time"].endswith("Z")


def test_pagination_with_cursor_walks_every_job_once(client):
    ids = [upload(client, f"p{n}")["id"] for n in range(7)]
    seen, cursor = [], None
    while True:
        url = "/api/jobs?limit=3" + (f"&cursor={cursor}" if cursor else "")
        body = client.get(url).get_json()
        seen += [job["id"] for job in body["jobs"]]
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert seen == ids[::-1]


def test_since_returns_only_jobs_changed_later(app, client):
    first = upload(client, "s1")
    time.sleep(0.01)
    second = upload(client, "s2")
    body = client.get(f"/api/jobs?since={first['updated_at']}").get_json()
    assert [job["id"] for job in body["jobs"]] == [second["id"]]
    with app.app_context():
        assert claim(first["id"], "w1", 30, capacity=4)
    body = client.get(f"/api/jobs?since={second['updated_at']}").get_json()
    assert [(job["id"], job["status"]) for job in body["jobs"]] == [(first["id"], "processing")]


def test_status_filter(app, client):
    a, b = upload(client, "f1"), upload(client, "f2")
    with app.app_context():
        assert claim(a["id"], "w1", 30, capacity=4)
    assert [j["id"] for j in client.get("/api/jobs?status=processing").get_json()["jobs"]] == [a["id"]]
    assert [j["id"] for j in client.get("/api/jobs?status=queued").get_json()["jobs"]] == [b["id"]]


@pytest.mark.parametrize("query", ["since=yesterday", "status=done", "limit=many", "cursor=bm90LWEtY3Vyc29y"])
def test_malformed_queries_are_400(client, query):
    response = client.get(f"/api/jobs?{query}")
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "BAD_REQUEST"


def test_another_owners_job_is_404_everywhere(app, client, other_client):
    job = upload(client, "mine")
    for response in (other_client.get(f"/api/jobs/{job['id']}"), other_client.delete(f"/api/jobs/{job['id']}")):
        assert response.status_code == 404 and response.get_json()["error"]["code"] == "NOT_FOUND"
    assert other_client.get("/api/jobs").get_json()["jobs"] == []
    assert client.get(f"/api/jobs/{job['id']}").status_code == 200
    assert len(list(Path(app.config["UPLOAD_DIR"]).iterdir())) == 1


def test_delete_removes_the_job_and_its_files(app, client):
    job = upload(client, "gone")
    result = Path(app.config["RESULT_DIR"]) / f"{job['id']}.xml"
    with app.app_context():
        assert claim(job["id"], "w1", 30, capacity=4)
        result.write_text("<x/>")
        assert Job.complete(job["id"], "w1", f"results/{job['id']}.xml")
    assert client.delete(f"/api/jobs/{job['id']}").status_code == 204
    assert client.get(f"/api/jobs/{job['id']}").status_code == 404
    assert list(Path(app.config["UPLOAD_DIR"]).iterdir()) == [] and not result.exists()


def test_unknown_api_path_is_a_json_404(client):
    response = client.get("/api/nope")
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "NOT_FOUND"


def test_session_hands_out_owner_and_token(client):
    body = client.get("/api/session").get_json()
    assert body["owner"] and body["csrf_token"]


def test_healthz_reports_each_dependency(client):
    body = client.get("/api/healthz").get_json()
    assert body == {"status": "ok", "db": "ok", "queue": "ok", "gateway": "ok", "breaker": "closed",
                    "worker": "down", "worker_heartbeat_age_s": None}  # no worker process in this test


def test_healthz_says_degraded_when_the_database_is_gone(app, client):
    path = Path(app.config["INSTANCE_DIR"], "pdfqueue.db")
    path.unlink()
    path.mkdir()
    from core.db import db
    with app.app_context():
        db.engine.dispose()
    # With the database gone no session can be checked: the details go to the monitoring token.
    response = app.test_client().get("/api/healthz", headers={"Authorization": "Bearer test-metrics-token"})
    assert response.status_code == 503 and response.get_json()["db"] == "down"
    assert app.test_client().get("/api/healthz").get_json() == {"status": "degraded"}


def test_a_refused_job_is_logged_with_ids_and_no_file_name(client, other_client, caplog):
    job = upload(client, "secret-name")
    caplog.set_level("INFO", logger="pdfqueue.web")
    assert other_client.get(f"/api/jobs/{job['id']}/download").status_code == 404
    refusals = [r for r in caplog.records if r.name == "pdfqueue.web" and getattr(r, "refused", None)]
    assert len(refusals) == 1 and refusals[0].job_id == job["id"] and refusals[0].exists is True
    assert refusals[0].owner == other_client.get("/api/session").get_json()["owner"]
    assert "secret-name" not in repr(refusals[0].__dict__)


def test_an_upload_logs_a_queued_line(client, caplog):
    caplog.set_level("INFO", logger="pdfqueue.web")
    job = upload(client, "logged")
    queued = [r for r in caplog.records if r.name == "pdfqueue.web" and r.getMessage() == f"job {job['id']} queued"]
    assert len(queued) == 1
    line = queued[0]
    assert (line.job_id, line.correlation_id, line.bytes, line.mapping) == \
        (job["id"], job["correlation_id"], job["bytes"], job["mapping"])


def test_search_by_file_name_ignores_case_and_takes_wildcards_literally(client):
    ids = {name: upload(client, name)["id"] for name in ("Fatura-Março", "fatura_abril", "recibo", "fatura%x")}
    found = lambda query: sorted(j["filename"] for j in client.get(f"/api/jobs?{query}").get_json()["jobs"])  # noqa: E731
    assert found("q=FATURA") == ["Fatura-Março.pdf", "fatura%x.pdf", "fatura_abril.pdf"]
    assert found("q=a_a") == ["fatura_abril.pdf"] and found("q=a%25") == ["fatura%x.pdf"]  # _ and % are not wildcards
    assert found("q=%20recibo%20") == ["recibo.pdf"]  # trimmed
    assert len(ids) == 4


def test_status_groups_and_search_combine_with_the_cursor(app, client):
    jobs = [upload(client, f"g{n}") for n in range(5)]
    with app.app_context():
        for job in jobs[:3]:
            assert claim(job["id"], "w1", 30, capacity=10)
        assert Job.fail(jobs[0]["id"], "w1", "GW_4XX", "refused")
    active = lambda query: [j["id"] for j in client.get(f"/api/jobs?{query}").get_json()["jobs"]]  # noqa: E731
    assert active("status=active") == [job["id"] for job in jobs[1:][::-1]]
    assert active("status=all") == [job["id"] for job in jobs[::-1]]
    assert active("status=failed,processing") == [jobs[2]["id"], jobs[1]["id"], jobs[0]["id"]]
    body = client.get("/api/jobs?status=active&q=g&limit=2").get_json()
    second = client.get(f"/api/jobs?status=active&q=g&limit=2&cursor={body['next_cursor']}").get_json()
    assert [j["id"] for j in body["jobs"] + second["jobs"]] == [job["id"] for job in jobs[1:][::-1]]
    assert second["next_cursor"] is None


def test_a_search_too_long_is_400(client):
    response = client.get("/api/jobs?q=" + "x" * 201)
    assert response.status_code == 400 and "'q'" in response.get_json()["error"]["message"]


def test_a_since_far_in_the_past_is_bounded_in_sql(app, client):
    from sqlalchemy import event
    from core.clock import utcnow
    from core.db import db
    from webapp.stream import RESUME_MAX, resume_point
    before = utcnow()
    with app.test_request_context("/api/events?last_id=1970-01-01T00:00:00Z"):
        assert resume_point() >= before - RESUME_MAX
    statements = []
    with app.app_context():
        engine = db.engine
        listener = lambda *args: statements.append(args[2])  # noqa: E731
        event.listen(engine, "before_cursor_execute", listener)
        try:
            assert client.get("/queue/rows?since=1970-01-01T00:00:00Z").status_code in (200, 286)
        finally:
            event.remove(engine, "before_cursor_execute", listener)
    changed = [s for s in statements if "FROM jobs" in s and "ORDER BY jobs.updated_at" in s]  # Job.changed_since
    removals = [s for s in statements if "FROM job_removals" in s]
    assert changed and all("LIMIT" in s for s in changed) and removals and all("LIMIT" in s for s in removals)


def test_public_health_callers_see_only_the_status(app, client):
    public = app.test_client().get("/api/healthz")
    assert public.get_json() == {"status": "ok"}
    assert set(client.get("/api/healthz").get_json()) > {"status", "db", "gateway", "worker"}  # signed in
    monitor = app.test_client().get("/api/healthz", headers={"Authorization": "Bearer test-metrics-token"})
    assert "breaker" in monitor.get_json()


# -- a row whose stored path was tampered with ------------------------------------------------------------


@pytest.mark.parametrize("stored", [
    "results/../../outside.txt", "../outside.txt", "{outside}", "results/link.xml", "instance/pdfqueue.db",
])
def test_a_row_pointing_outside_the_stored_folders_serves_and_deletes_nothing(make_app, tmp_path, stored):
    app = make_app(DATA_DIR=str(tmp_path / "data"))
    client = ApiClient(app.test_client())
    outside = tmp_path / "outside.txt"
    outside.write_text("not yours to read")
    (Path(app.config["RESULT_DIR"]) / "link.xml").symlink_to(outside)
    job = upload(client, "tampered")
    finish(app, job["id"])
    with app.app_context():  # the row edited behind the app's back (or restored from a doctored backup)
        db.session.execute(update(Job).where(Job.id == job["id"]).values(
            result_path=stored.format(outside=outside), upload_path=stored.format(outside=outside)))
        db.session.commit()
    for url in (f"/api/jobs/{job['id']}/download", f"/api/jobs/{job['id']}/pdf"):
        response = client.get(url)
        assert response.status_code == 410 and response.get_json()["error"]["code"] == "EXPIRED", url
    archive = client.get("/api/jobs/archive")
    assert archive.status_code == 200 and zipfile.ZipFile(io.BytesIO(archive.data)).namelist() == []
    assert b"not yours" not in client.get(f"/review/{job['id']}").data
    assert client.delete(f"/api/jobs/{job['id']}").status_code == 204
    assert outside.read_text() == "not yours to read"
    assert (Path(app.config["INSTANCE_DIR"]) / "pdfqueue.db").exists()
