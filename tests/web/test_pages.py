"""The pages: upload form (with and without JavaScript), the queue, its partials, review, errors."""
import io
import json
import re
from datetime import timedelta
from html import unescape
from urllib.parse import unquote

import pytest

from tests.support import people
from tests.support.app import claim, finish, pdf_bytes
from webapp import htmx
from webapp import pages, queue_view
from core.clock import parse_iso
from core.coordination import Coordination
from core.jobs.model import Job
from core.jobs.states import FILTERS

HX = {"HX-Request": "true"}


def upload(client, tag):
    return client.upload((pdf_bytes(tag), f"{tag}.pdf")).get_json()["jobs"][0]


def row_ids(html):
    return re.findall(r'<tr id="job-([^"]+)"', html)



def test_upload_page_offers_the_allow_list_and_the_limits(make_app):
    app = make_app(MAPPINGS=["pt_simon_invoice_v1", "generic_v1"], DEFAULT_MAPPING="generic_v1", MAX_UPLOAD_MB=7)
    html = people.test_client(app).get("/").get_data(as_text=True)
    assert '<option value="generic_v1" selected>' in html and '<option value="pt_simon_invoice_v1" >' in html
    assert 'data-max-mb="7"' in html and 'id="dropzone"' in html and 'role="button"' in html and 'tabindex="0"' in html
    assert 'name="csrf_token"' in html and 'enctype="multipart/form-data"' in html and 'multiple' in html
    assert '<meta name="csrf-token"' in html
    assert "vendor/htmx.min.js" in html and "vendor/sse.js" in html and "//cdn" not in html


# What a browser sends with a form it posts from one of our pages (the test client's host is localhost).
SAME_ORIGIN = {"Origin": "http://localhost"}


def test_plain_form_uploads_without_javascript(app):
    browser = people.test_client(app)
    page = browser.get("/").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    files = [(io.BytesIO(pdf_bytes("a")), "a.pdf"), (io.BytesIO(b"not a pdf"), "b.pdf")]
    response = browser.post("/upload", data={"csrf_token": token, "mapping": "generic_v1", "file": files},
                            content_type="multipart/form-data", headers=SAME_ORIGIN)
    assert response.status_code == 303 and response.headers["Location"] == "/queue"
    html = browser.get("/queue").get_data(as_text=True)
    assert "a.pdf: queued" in html and "b.pdf is not a PDF" in html
    assert len(row_ids(html)) == 1 and "generic_v1" in html


def test_plain_form_without_a_token_is_refused(app):
    response = people.test_client(app).post("/upload", data={"file": [(io.BytesIO(pdf_bytes("a")), "a.pdf")]},
                                      content_type="multipart/form-data", headers={"Accept": "text/html"})
    assert response.status_code == 400 and "CSRF token" in response.get_data(as_text=True)


def test_plain_form_single_bad_file_shows_the_error_page(app):
    browser = people.test_client(app)
    token = re.search(r'name="csrf_token" value="([^"]+)"', browser.get("/").get_data(as_text=True)).group(1)
    response = browser.post("/upload", data={"csrf_token": token, "file": [(io.BytesIO(b"GIF89a"), "x.pdf")]},
                            content_type="multipart/form-data", headers={"Accept": "text/html", **SAME_ORIGIN})
    html = response.get_data(as_text=True)
    assert response.status_code == 415 and "<!doctype html>" in html and "is not a PDF" in html


def test_empty_queue_links_to_upload(client):
    html = client.get("/queue").get_data(as_text=True)
    assert "No jobs yet" in html and 'href="/"' in html
    assert 'sse-connect="/api/events?html=1&amp;last_id=' in html
    # The first row lands in a hidden table, which then brings the real one.
    assert re.search(r'<table class="jobs" hidden><tbody id="job-rows" data-first-page hx-get="/queue"\s+'
                     r'hx-trigger="htmx:load" hx-target="#jobs" hx-swap="innerHTML">', html)


def test_queue_swaps_the_stream_out_of_band_and_polls_only_when_told(client):
    html = client.get("/queue").get_data(as_text=True)
    live = re.search(r'<div id="live"[^>]*>', html).group(0)
    assert 'sse-swap="row,removed,totals"' in live and 'hx-swap="none"' in live
    line = live_state(html)
    assert line["data-state"] == "connecting" and line["hx-trigger"] == "queue:poll"  # app.js fires it if need be
    cursor = re.search(r'last_id=([^"&]+)', live).group(1)
    assert line["hx-get"] == f"/queue/rows?since={cursor}" and "hx-swap-oob" not in line


def test_queue_lists_my_jobs_newest_first_with_a_badge_per_state(app, client, other_client):
    jobs = {state: upload(client, state) for state in ("complete", "failed", "processing", "queued")}
    finish(app, jobs["complete"]["id"])  # claimed in upload order, as fair share takes one owner's jobs
    finish(app, jobs["failed"]["id"], "failed")
    with app.app_context():
        assert claim(jobs["processing"]["id"], "w1", 30, capacity=4)
        assert Job.renew_lease(jobs["processing"]["id"], "w1", 30, progress=40)
    upload(other_client, "not-mine")
    html = client.get("/queue").get_data(as_text=True)
    assert row_ids(html) == [jobs[s]["id"] for s in ("queued", "processing", "failed", "complete")]
    rows = {state: row_html(html, job["id"]) for state, job in jobs.items()}
    assert 'badge-queued">Queued' in rows["queued"]
    assert 'badge-processing">Processing' in rows["processing"] and '<progress' in rows["processing"] and 'value="40"' in rows["processing"]
    assert 'badge-complete">Complete' in rows["complete"]
    assert 'badge-failed">Failed' in rows["failed"] and ">The gateway refused the file: no invoice number.</span>" in rows["failed"]
    # Download is a link only when complete; Retry only for failed.
    download = f'href="/api/jobs/{jobs["complete"]["id"]}/download"'
    assert download in rows["complete"] and "/download" not in rows["queued"] and "disabled" in rows["queued"]
    assert all(("/retry" in row) == (state == "failed") for state, row in rows.items())
    assert all(f'/review/{jobs[state]["id"]}' in row for state, row in rows.items())
    assert all(f'hx-delete="/api/jobs/{jobs[state]["id"]}"' in row for state, row in rows.items())
    assert "not-mine" not in html


def row_html(html, job_id):
    start = html.index(f'<tr id="job-{job_id}"')
    return html[start: html.index("</tr>", start)]


def live_state(html):
    """The live-state line's attributes (it is the poller too)."""
    tag = re.search(r'<p id="live-state"[^>]*>', html).group(0)
    return dict(re.findall(r'([\w-]+)="([^"]*)"', tag))


def oob_rows(html):
    """What each out-of-band row asks of the page: ("top" | "replace" | "delete", job id), in order."""
    parts = []
    for part in re.findall(r"<template>(.*?)</template>", html, re.S):
        if match := re.match(r'<tbody hx-swap-oob="afterbegin:#job-rows"><tr id="job-([^"]+)" class="job-row"', part):
            parts.append(("top", match.group(1)))
        elif match := re.match(r'<tr id="job-([^"]+)" hx-swap-oob="true" class="job-row"', part):
            parts.append(("replace", match.group(1)))
        elif match := re.fullmatch(r'<tr id="job-([^"]+)" hx-swap-oob="delete"></tr>', part):
            parts.append(("delete", match.group(1)))
        else:
            raise AssertionError(f"not an out-of-band row: {part[:80]}")
    return parts


def test_totals_count_states_and_average_the_processing_time(app, client):
    done = [upload(client, f"d{n}")["id"] for n in range(2)]
    failed = upload(client, "f")["id"]
    upload(client, "q")
    for job_id in done:
        finish(app, job_id)
    finish(app, failed, "failed")
    with app.app_context():
        from core.db import db
        for job_id, took in zip(done, (3, 5)):
            job = db.session.get(Job, job_id)
            job.completed_at = job.started_at + timedelta(seconds=took)
        db.session.commit()
        totals = queue_view.totals_context(client.get("/api/session").get_json()["owner"])["totals"]
    assert totals | {"average_seconds": round(totals["average_seconds"], 3)} == \
        {"total": 4, "complete": 2, "failed": 1, "active": 1, "average_seconds": 4.0}
    html = client.get("/queue").get_data(as_text=True)
    assert '<div class="total total-active"><dt>Active</dt><dd>1</dd>' in html and "4.0 s" in html


def test_queue_is_paginated_with_a_cursor(app, client, monkeypatch):
    monkeypatch.setattr(pages, "PAGE_SIZE", 2)
    ids = [upload(client, f"p{n}")["id"] for n in range(5)]
    seen, url = [], "/queue"
    while url:
        html = client.get(url).get_data(as_text=True)
        seen += row_ids(html)
        match = re.search(r'href="(/queue\?cursor=[^"]+)">Older', html)
        url = match and match.group(1).replace("&amp;", "&")
    assert seen == ids[::-1]


def test_queue_for_htmx_is_the_table_partial(client):
    upload(client, "x")
    html = client.get("/queue", headers=HX).get_data(as_text=True)
    assert "<html" not in html and 'id="job-rows"' in html and len(row_ids(html)) == 1


def test_gateway_down_banner(app, client):
    assert "gateway is down" not in client.get("/queue").get_data(as_text=True)
    with app.app_context():
        Coordination.put("breaker", state="open")
    html = client.get("/queue").get_data(as_text=True)
    assert "The conversion gateway is down" in html and "waiting, not lost" in html


def test_rows_partial_answers_out_of_band_and_polls_on_while_a_job_is_active(client):
    first = upload(client, "r1")
    second = upload(client, "r2")
    response = client.get("/queue/rows?since=2000-01-01T00:00:00Z", headers=HX)
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    # Both jobs are newer than the cursor: to the top, oldest first, so that the newest ends on top.
    assert oob_rows(html) == [("top", first["id"]), ("top", second["id"])]
    assert '<div id="totals-box" hx-swap-oob="true">' in html and '<dt>Active</dt><dd>2</dd>' in html
    line = live_state(html)
    assert line["hx-swap-oob"] == "true" and line["data-state"] == "polling"
    assert line["hx-trigger"] == "every 3s, queue:active from:body"
    cursor = parse_iso(unquote(line["hx-get"].removeprefix("/queue/rows?since=")))
    assert parse_iso(second["created_at"]) - timedelta(seconds=3) < cursor < parse_iso(second["created_at"])


def test_rows_partial_answers_286_once_nothing_is_active(app, client):
    first = upload(client, "r1")
    second = upload(client, "r2")
    finish(app, first["id"])
    finish(app, second["id"], "failed")
    response = client.get(f"/queue/rows?since={second['created_at']}", headers=HX)
    html = response.get_data(as_text=True)
    assert response.status_code == htmx.STOP_POLLING == 286
    # Both jobs were made by then, so the page shows them already: in place.
    assert sorted(oob_rows(html)) == sorted([("replace", first["id"]), ("replace", second["id"])])
    assert 'data-status="complete"' in row_html(html, first["id"]) and 'data-status="failed"' in row_html(html, second["id"])
    line = live_state(html)
    assert line["data-state"] == "idle" and line["hx-trigger"] == "queue:active from:body"  # a retry wakes it
    assert '<dt>Active</dt><dd>0</dd>' in html


def test_rows_partial_with_a_bad_since_is_an_html_error_fragment(client):
    response = client.get("/queue/rows?since=yesterday", headers={**HX, "Accept": "text/html"})
    html = response.get_data(as_text=True)
    assert response.status_code == 400 and html.startswith('<p class="error-message"') and "ISO-8601" in html


def test_totals_partial(client):
    upload(client, "m")
    html = client.get("/queue/totals", headers=HX).get_data(as_text=True)
    assert html.startswith('<div id="totals-box">') and '<dt>Active</dt><dd>1</dd>' in html
    assert client.get("/queue/metrics").status_code == 404  # the dashboard's box is not Prometheus' /metrics


def test_review_shows_details_and_pretty_xml(app, client):
    job = upload(client, "rev")
    html = client.get(f"/review/{job['id']}").get_data(as_text=True)
    assert "rev.pdf" in html and job["sha256"] in html and "<pre" not in html
    finish(app, job["id"], xml="<Invoice><Header><InvoiceNumber>FT 9/42</InvoiceNumber></Header></Invoice>")
    html = client.get(f"/review/{job['id']}").get_data(as_text=True)
    assert "&lt;Invoice&gt;\n  &lt;Header&gt;\n    &lt;InvoiceNumber&gt;FT 9/42" in html
    assert f"/api/jobs/{job['id']}/download" in html


def test_review_of_a_bad_result_says_so(app, client):
    job = upload(client, "bad")
    finish(app, job["id"], xml="<Invoice><unclosed></Invoice>")
    assert "not well-formed XML" in client.get(f"/review/{job['id']}").get_data(as_text=True)


def test_review_of_another_owners_job_is_an_html_404(client, other_client):
    job = upload(client, "secret")
    response = other_client.get(f"/review/{job['id']}", headers={"Accept": "text/html"})
    html = response.get_data(as_text=True)
    assert response.status_code == 404 and "Not found" in html and "secret.pdf" not in html


def test_queue_search_counts_each_filter_under_it_and_carries_it_along(app, client, monkeypatch):
    monkeypatch.setattr(pages, "PAGE_SIZE", 2)
    march = [upload(client, f"march-{n}") for n in range(3)]
    upload(client, "april-0")
    finish(app, march[0]["id"])
    finish(app, march[1]["id"], "failed")
    html = client.get("/queue?q=MARCH").get_data(as_text=True)
    assert row_ids(html) == [march[2]["id"], march[1]["id"]]
    counts = dict(re.findall(r'<span id="count-(\w+)" class="count">(\d+)</span>', html))
    assert counts == {"all": "3", "active": "1", "complete": "1", "failed": "1"}
    assert '<input id="q-filter" type="search" name="q" value="MARCH"' in html
    assert 'href="/queue?q=MARCH&amp;status=failed"' in html  # the status filters keep the search
    older = re.search(r'href="(/queue\?[^"]*cursor=[^"]+)">Older', html).group(1).replace("&amp;", "&")
    assert "q=MARCH" in older and row_ids(client.get(older).get_data(as_text=True)) == [march[0]["id"]]
    assert "last_id=" in html and "&amp;q=MARCH" in re.search(r'sse-connect="([^"]+)"', html).group(1)
    html = client.get("/queue?q=MARCH&status=failed").get_data(as_text=True)
    assert row_ids(html) == [march[1]["id"]]
    assert '<input type="hidden" name="status" value="failed">' in html  # a new search keeps the status


def test_the_status_filters_on_the_page_and_for_app_js_are_the_servers(client):
    html = client.get("/queue?status=failed").get_data(as_text=True)
    assert re.findall(r'<a class="filter" [^>]*>(\w+) <span', html) == [each.label for each in FILTERS]
    bar = re.search(r'<div id="bulk"[^>]*>', html).group(0)
    assert json.loads(unescape(re.search(r'data-filters="([^"]+)"', bar).group(1))) == {
        each.name: list(each.statuses) for each in FILTERS}
    assert json.loads(unescape(re.search(r'data-filter="([^"]+)"', bar).group(1)))["status"] == "failed"
    assert 'data-count-id="count-failed"' in bar


def test_live_rows_respect_the_search(app, client):
    match, other = upload(client, "march-live"), upload(client, "april-live")
    with app.app_context():
        for job in (match, other):
            assert claim(job["id"], "w1", 30, capacity=4)
    html = client.get(f"/queue/rows?q=march&since={other['created_at']}", headers=HX).get_data(as_text=True)
    assert sorted(oob_rows(html)) == sorted([("replace", match["id"]), ("delete", other["id"])])
    counts = dict(re.findall(r'<span id="count-(\w+)" class="count" hx-swap-oob="true">(\d+)</span>', html))
    assert counts == {"all": "1", "active": "1", "complete": "0", "failed": "0"}


def test_an_active_job_past_five_minutes_is_taking_longer_than_usual(app, client):
    slow, fresh, stuck = upload(client, "slow"), upload(client, "fresh"), upload(client, "stuck")
    with app.app_context():
        from core.db import db
        assert claim(slow["id"], "w1", 30, capacity=4) and claim(fresh["id"], "w1", 30, capacity=4)
        db.session.get(Job, slow["id"]).started_at -= timedelta(minutes=6)
        db.session.get(Job, stuck["id"]).updated_at -= timedelta(minutes=5, seconds=1)  # queued, never started
        db.session.commit()
    html = client.get("/queue").get_data(as_text=True)
    note = "taking longer than usual"
    assert note in row_html(html, slow["id"]) and note in row_html(html, stuck["id"])
    assert note not in row_html(html, fresh["id"])
    assert 'data-slow-after="300"' in html and "data-active-since=" in row_html(html, fresh["id"])
    with app.app_context():
        assert Job.fail(fresh["id"], "w1", "GW_4XX", "refused")
    assert "data-active-since" not in row_html(client.get("/queue").get_data(as_text=True), fresh["id"])


def test_the_chart_counts_the_last_day_per_hour(app, client):
    from webapp import chart
    from core.clock import utcnow
    jobs = [upload(client, f"c{n}") for n in range(4)]
    for job, status in zip(jobs, ("complete", "complete", "failed", "complete")):
        finish(app, job["id"], status)
    now = utcnow()
    with app.app_context():
        from core.db import db
        old = db.session.get(Job, jobs[3]["id"])  # finished two days ago: not in the chart
        old.completed_at = now - timedelta(days=2)
        two_hours_ago = db.session.get(Job, jobs[1]["id"])
        two_hours_ago.completed_at = now - timedelta(hours=2)
        two_hours_ago.started_at = two_hours_ago.completed_at - timedelta(seconds=8)
        db.session.commit()
        drawn = chart.last_day(client.get("/api/session").get_json()["owner"], now)
    counts = [(hour.complete, hour.failed) for hour in drawn["hours"]]
    assert counts[-1] == (1, 1) and counts[-3] == (1, 0) and sum(map(sum, counts)) == 3
    assert drawn["hours"][-3].average_seconds == pytest.approx(8, abs=0.01)
    assert drawn["finished"] == 3 and drawn["failed"] == 1 and len(drawn["bars"]) == 24
    html = client.get("/queue").get_data(as_text=True)
    svg = html[html.index('<svg class="chart-svg"'): html.index("</svg>")]
    assert "Last 24 hours: 3 jobs finished, 1 of them failed" in svg
    assert len(re.findall(r'<g class="hour"', svg)) == 24 and svg.count('class="bar-failed"') == 1
    assert svg.count('class="bar-complete"') == 2 and '<polyline class="line-seconds"' in svg
    assert "<script" not in svg and "style=" not in svg  # the CSP allows neither inline script nor style
    assert '<figure class="chart card" id="chart">' in client.get("/queue/totals").get_data(as_text=True)


def test_queue_offers_selection_and_bulk_actions(client):
    job = upload(client, "pick")
    html = client.get("/queue?status=failed&q=pi").get_data(as_text=True)
    bar = re.search(r'<div id="bulk"[^>]*>', html).group(0)
    assert 'data-archive-url="/api/jobs/archive"' in bar and 'data-bulk-url="/api/jobs/bulk"' in bar
    assert 'data-count-id="count-failed"' in bar and "&#34;q&#34;: &#34;pi&#34;" in bar
    html = client.get("/queue").get_data(as_text=True)
    assert f'<input type="checkbox" class="select-job" value="{job["id"]}" aria-label="Select pick.pdf">' in html
    assert 'id="select-page" aria-label="Select every job on this page"' in html


def test_upload_page_takes_a_folder_too(client):
    html = client.get("/").get_data(as_text=True)
    assert '<input id="folder-input" type="file" webkitdirectory multiple hidden' in html
    assert 'id="folder-button"' in html
