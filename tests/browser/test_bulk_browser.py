"""Month-end in a real browser: a drop far over the upload limit, a ZIP of a filtered set, a bulk retry.

A stack of its own, whose upload limit is the default 10 files but per 3 s instead of a minute
(UPLOAD_WINDOW_SECONDS), so that a drop three windows over the limit takes seconds, not minutes.
"""
import io
import re
import signal
import zipfile
from pathlib import Path

import defusedxml.ElementTree as SafeET
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import browser_stack, let_in
from tests.browser.test_browser import CONVERTED, drop_files, invoices, upload_via_api
from tests.support.app import pdf_bytes

LIMIT, WINDOW = 10, 3


@pytest.fixture(scope="module")
def month_end(tmp_path_factory):
    with browser_stack(tmp_path_factory.mktemp("month-end"), UPLOADS_PER_MINUTE=str(LIMIT),
                       UPLOAD_WINDOW_SECONDS=str(WINDOW)) as running:
        yield running


@pytest.fixture
def page(fresh_page, month_end):
    fresh_page.user = let_in(fresh_page.context, month_end)
    return fresh_page


def leaving_asks_first(page):
    """True if leaving the page now would ask first (its beforeunload handler cancels the event)."""
    return page.evaluate("""() => {
        const evt = new Event("beforeunload", {cancelable: true});
        window.dispatchEvent(evt);
        return evt.defaultPrevented;
    }""")


def jobs_of(page, url, query=""):
    return page.request.get(f"{url}/api/jobs?limit=200{query}").json()["jobs"]


def test_a_30_file_drop_over_the_limit_ends_as_30_jobs_with_no_second_drop(page, month_end):
    url = month_end.web_url
    upload_via_api(page, url, [("known.pdf", pdf_bytes("known"), None)])  # one file of the window spent already
    limited = []
    page.on("response", lambda response: "/api/upload" in response.url and response.status == 429
            and limited.append(response.headers.get("retry-after")))
    page.goto(f"{url}/")
    fresh = [(f"month-{n:02}.pdf", pdf_bytes(f"month-{n}"), None) for n in range(30)]
    drop_files(page, "#dropzone", fresh + [("again.pdf", pdf_bytes("known"), None), ("notes.txt", b"hello", None)])
    expect(page.locator("#upload-list .upload")).to_have_count(32)

    waiting = page.locator('#upload-list .upload[data-state="waiting"]').first
    expect(waiting).to_contain_text(re.compile(r"goes by itself in \d+ s"))
    assert leaving_asks_first(page)

    summary = page.locator("#upload-summary")
    expect(summary).to_contain_text("30 accepted, 1 duplicate (already uploaded: the existing job), 1 rejected:",
                                    timeout=60_000)
    expect(summary.locator("li")).to_have_text(["notes.txt: Not a PDF: only .pdf files are accepted."])
    expect(page.locator('#upload-list .upload[data-state="accepted"]')).to_have_count(30)
    expect(page.locator('#upload-list .upload[data-state="duplicate"]')).to_have_count(1)
    assert not leaving_asks_first(page)
    assert limited and all(0 <= int(after) <= WINDOW for after in limited), limited  # never the whole minute

    names = sorted(job["filename"] for job in jobs_of(page, url))
    assert names == sorted([name for name, _, _ in fresh] + ["known.pdf"])


def test_a_zip_of_a_filtered_set_holds_its_results(page, month_end):
    url = month_end.web_url
    made = invoices(3, seed=700)
    named = [(f"{prefix}-{n}.pdf", data, truth) for n, (prefix, (_, data, truth))
             in enumerate(zip(["march", "march", "april"], made))]
    upload_via_api(page, url, named)
    page.goto(f"{url}/queue?q=MARCH")  # the search ignores case
    expect(page.locator("#count-all")).to_have_text("2")
    expect(page.locator('tr.job-row[data-status="complete"]')).to_have_count(2, timeout=CONVERTED)
    expect(page.locator("tr.job-row")).to_have_count(2)

    page.get_by_role("button", name="Select all 2 matching").click()
    expect(page.locator("#bulk-count")).to_have_text("All 2 matching jobs selected")
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Download ZIP").click()
    archive = zipfile.ZipFile(io.BytesIO(Path(download_info.value.path()).read_bytes()))
    assert sorted(archive.namelist()) == ["march-0.xml", "march-1.xml"]
    for name, _, truth in named[:2]:
        xml = archive.read(name.replace(".pdf", ".xml"))
        assert SafeET.fromstring(xml).findtext(".//InvoiceNumber") == truth["Header"]["InvoiceNumber"]

    page.get_by_role("button", name="Clear selection").click()
    page.get_by_role("checkbox", name="Select march-1.pdf").check()
    expect(page.locator("#bulk-count")).to_have_text("1 job selected")
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Download ZIP").click()
    assert zipfile.ZipFile(download_info.value.path()).namelist() == ["march-1.xml"]


def test_bulk_retry_queues_the_ticked_failed_jobs_again(page, month_end):
    url = month_end.web_url
    names = ["refused-a.pdf", "refused-b.pdf", "refused-c.pdf"]
    upload_via_api(page, url, [(name, pdf_bytes(name), None) for name in names])  # the gateway refuses each
    page.goto(f"{url}/queue?status=failed")
    expect(page.locator('tr.job-row[data-status="failed"]')).to_have_count(3, timeout=CONVERTED)
    before = {job["id"]: job["updated_at"] for job in jobs_of(page, url)}

    page.get_by_role("checkbox", name="Select every job on this page").check()
    page.get_by_role("checkbox", name="Select refused-c.pdf").uncheck()
    expect(page.locator("#bulk-count")).to_have_text("2 jobs selected")
    page.get_by_role("button", name="Retry failed").click()
    expect(page.locator("#toast")).to_have_text("2 jobs queued again.")

    after = {job["filename"]: job for job in jobs_of(page, url)}
    assert after["refused-c.pdf"]["updated_at"] == before[after["refused-c.pdf"]["id"]]
    for name in names[:2]:
        assert after[name]["updated_at"] != before[after[name]["id"]]
    # They leave the "Failed" view while queued, and come back as they fail again.
    expect(page.locator('tr.job-row[data-status="failed"]')).to_have_count(3, timeout=CONVERTED)
    assert [job["attempts"] for job in jobs_of(page, url, "&status=failed")] == [1, 1, 1]
    expect(page.locator("#bulk-count")).to_have_text("No job selected")


def test_a_folder_picked_becomes_jobs(page, month_end, tmp_path):
    folder = tmp_path / "month"
    (folder / "inner").mkdir(parents=True)
    (folder / "a.pdf").write_bytes(pdf_bytes("folder-a"))
    (folder / "inner" / "b.pdf").write_bytes(pdf_bytes("folder-b"))
    (folder / "readme.txt").write_text("not a pdf")
    page.goto(f"{month_end.web_url}/")
    expect(page.get_by_role("button", name="Choose a folder…")).to_be_visible()
    page.locator("#folder-input").set_input_files(folder)
    summary = page.locator("#upload-summary")
    expect(summary).to_contain_text("2 accepted, 0 duplicates (already uploaded: the existing jobs), 1 rejected:")
    expect(summary.locator("li")).to_have_text(["readme.txt: Not a PDF: only .pdf files are accepted."])
    assert sorted(job["filename"] for job in jobs_of(page, month_end.web_url)) == ["a.pdf", "b.pdf"]


# Stands in for the browser's Notification (headless chromium shows none) and lets the test hide the tab.
FAKE_NOTIFICATIONS = """
    window.__shown = [];
    const Real = window.Notification;
    window.Notification = class {
        constructor(title, options) { window.__shown.push({title, body: options && options.body}); }
        static get permission() { return Real.permission; }
        static requestPermission() { window.__asked = (window.__asked || 0) + 1; return Real.requestPermission(); }
    };
    Object.defineProperty(document, "hidden", {get: () => window.__hidden === true});
"""


def test_a_notification_when_a_batch_ends_in_a_hidden_tab_once_asked_for(page, month_end):
    url = month_end.web_url
    page.context.grant_permissions(["notifications"], origin=url)
    page.add_init_script(FAKE_NOTIFICATIONS)
    page.goto(f"{url}/queue")
    expect(page.locator("#live-state")).to_have_attribute("data-state", "live")
    button = page.get_by_role("button", name="Notify me when a batch finishes")
    assert page.evaluate("window.__asked || 0") == 0  # never asked before the click
    button.click()
    expect(page.get_by_role("button", name="Notifications on")).to_have_attribute("aria-pressed", "true")
    assert page.evaluate("window.__asked") == 1
    page.evaluate("window.__hidden = true")
    month_end.pause("worker")  # both queued before either ends: one batch
    try:
        upload_via_api(page, url, [(f"batch-{n}.pdf", pdf_bytes(f"batch-{n}"), None) for n in range(2)])
        expect(page.locator('tr.job-row[data-status="queued"]')).to_have_count(2)
    finally:
        month_end.procs["worker"].send_signal(signal.SIGCONT)
    expect(page.locator('tr.job-row[data-status="failed"]')).to_have_count(2, timeout=CONVERTED)
    page.wait_for_function("window.__shown.length > 0")
    assert page.evaluate("window.__shown") == [{"title": "pdfqueue: the batch is finished", "body": "0 complete, 2 failed"}]
