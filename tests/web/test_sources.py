"""/admin/sources as an admin uses it (add, see, switch off and on, remove a source; admins only, CSRF checked), and
where a job came from on its queue row, its review page and in /metrics."""
import os
import time

from core.db import db
from core.intake import runner
from core.sources import Source
from tests.support.app import ApiClient, pdf_bytes


def sources_of(app):
    with app.app_context():
        listed = [source.to_dict() for source in Source.listed()]
        db.session.remove()
        return listed


def drop(folder, name, tag):
    path = folder / name
    path.write_bytes(pdf_bytes(tag))
    stamp = time.time() - 10  # written a while ago: settled
    os.utime(path, (stamp, stamp))


def test_the_sources_page_is_for_admins_only(app):
    member = ApiClient(app.test_client())
    assert member.get("/admin/sources").status_code == 404
    assert member.post("/admin/sources", data={"csrf_token": member.token, "url": "folder:///tmp"}).status_code == 404
    admin = ApiClient(app.test_client(), admin=True)
    page = admin.get("/admin/sources")
    assert page.status_code == 200 and "No sources yet." in page.get_data(as_text=True)
    assert 'href="/admin/sources"' in admin.get("/").get_data(as_text=True)
    assert 'href="/admin/sources"' not in member.get("/").get_data(as_text=True)


def test_an_admin_adds_a_folder_source_and_its_files_join_the_owners_queue(app, tmp_path):
    admin = ApiClient(app.test_client(), admin=True)
    owner = ApiClient(app.test_client())
    folder = tmp_path / "scans"
    folder.mkdir()
    form = {"url": f"folder://{folder}", "owner": owner.user.email, "mapping": "generic_v1", "allow_from": ""}
    assert admin.raw.post("/admin/sources", data=form).status_code == 400  # no CSRF token: refused
    assert sources_of(app) == []
    added = admin.post("/admin/sources", data={**form, "csrf_token": admin.token})
    assert added.status_code == 201, added.get_data(as_text=True)
    [source] = sources_of(app)
    assert (source["kind"], source["owner"], source["mapping"], source["enabled"]) == (
        "folder", owner.user.id, "generic_v1", True)
    assert f"folder://{folder}" in added.get_data(as_text=True)

    drop(folder, "factura.pdf", "page")
    with app.app_context():
        assert [name for name, _, _ in runner.poll(source["id"]).taken] == ["factura.pdf"]
    queue = owner.get("/queue").get_data(as_text=True)
    assert f'title="factura.pdf (Arrived in a watched folder (source {source["id"]}))"' in queue
    [job] = owner.get("/api/jobs").get_json()["jobs"]
    assert job["source"]["kind"] == "folder"
    review = owner.get(f"/review/{job['id']}").get_data(as_text=True)
    assert "Arrived in a watched folder" in review
    page = admin.get("/admin/sources").get_data(as_text=True)
    assert owner.user.email in page and '<td class="col-created">never</td>' not in page  # its last poll shown

    metrics = admin.get("/metrics", headers={"Authorization": "Bearer test-metrics-token"}).get_data(as_text=True)
    assert f'pdfqueue_intake_files_total{{outcome="new",source="{source["id"]}"}} 1.0' in metrics
    assert f'pdfqueue_intake_polls_total{{source="{source["id"]}"}} 1.0' in metrics
    assert f'pdfqueue_intake_failing_polls{{kind="folder",source="{source["id"]}"}} 0.0' in metrics


def test_a_failing_source_shows_its_error_on_the_page_and_in_metrics(app, tmp_path):
    admin = ApiClient(app.test_client(), admin=True)
    folder = tmp_path / "gone"
    folder.mkdir()
    assert admin.post("/admin/sources", data={"csrf_token": admin.token, "url": f"folder://{folder}",
                                              "owner": admin.user.email}).status_code == 201
    folder.rmdir()
    [source] = sources_of(app)
    with app.app_context():
        assert runner.poll(source["id"]).error
    page = admin.get("/admin/sources").get_data(as_text=True)
    assert "No such file or directory" in page and "Next try:" in page
    metrics = admin.get("/metrics", headers={"Authorization": "Bearer test-metrics-token"}).get_data(as_text=True)
    assert f'pdfqueue_intake_errors_total{{source="{source["id"]}"}} 1.0' in metrics
    assert f'pdfqueue_intake_failing_polls{{kind="folder",source="{source["id"]}"}} 1.0' in metrics


def test_a_bad_source_is_refused_with_its_reason_and_nothing_kept(app, tmp_path):
    admin = ApiClient(app.test_client(), admin=True)
    for form, says in (({"url": "ftp://x/y", "owner": admin.user.email}, "not a source URL"),
                       ({"url": "imap://me@127.0.0.1:1/INBOX", "owner": admin.user.email}, "needs its password"),
                       ({"url": f"folder://{tmp_path}", "owner": "nobody@example.com"}, "No account for"),
                       ({"url": f"folder://{tmp_path}", "owner": admin.user.email, "allow_from": "a@b.example"},
                        "a folder has no senders")):
        answer = admin.post("/admin/sources", data={**form, "csrf_token": admin.token})
        assert answer.status_code == 400 and says in answer.get_data(as_text=True), says
        assert form["url"] in answer.get_data(as_text=True)  # the form keeps what was typed
    assert sources_of(app) == []


def test_an_admin_adds_a_mailbox_whose_password_is_never_shown(app):
    admin = ApiClient(app.test_client(), admin=True)
    answer = admin.post("/admin/sources", data={
        "csrf_token": admin.token, "url": "imaps://invoices@mail.example.com:993/INBOX", "owner": admin.user.email,
        "password": "hunter2 but longer", "allow_from": "Billing@Supplier.example, other@supplier.example"})
    assert answer.status_code == 201 and "hunter2" not in answer.get_data(as_text=True)
    [source] = sources_of(app)
    assert source["allow_from"] == ["billing@supplier.example", "other@supplier.example"]
    assert "only from billing@supplier.example, other@supplier.example" in admin.get("/admin/sources").get_data(
        as_text=True)


def test_turn_off_on_and_remove(app, tmp_path):
    admin = ApiClient(app.test_client(), admin=True)
    admin.post("/admin/sources", data={"csrf_token": admin.token, "url": f"folder://{tmp_path}",
                                       "owner": admin.user.email})
    [source] = sources_of(app)
    base = f"/admin/sources/{source['id']}"
    assert admin.post(f"{base}/disable", data={"csrf_token": admin.token}).status_code == 200
    assert sources_of(app)[0]["enabled"] is False
    assert "Turn on" in admin.get("/admin/sources").get_data(as_text=True)
    assert admin.post(f"{base}/enable", data={"csrf_token": admin.token}).status_code == 200
    assert sources_of(app)[0]["enabled"] is True
    assert admin.post(f"{base}/explode", data={"csrf_token": admin.token}).status_code == 404
    assert admin.post(f"{base}/remove", data={"csrf_token": admin.token}).status_code == 200
    assert sources_of(app) == []
    assert admin.post(f"{base}/remove", data={"csrf_token": admin.token}).status_code == 404
