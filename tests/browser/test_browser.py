"""The pages in a real browser against real processes: drop, watch, download, fall back, keyboard, outage."""
import base64
import signal
import time
from pathlib import Path

import defusedxml.ElementTree as SafeET
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import SHARE_TTL_SECONDS, browser_stack, let_in
from tests.support.app import pdf_bytes
from tests.support.stack import ROOT
from tests.support.invoicegen import make_invoice

AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
CONVERTED = 60_000  # ms: generous for a 2-core box converting with a cold gateway


def invoices(count, seed):
    """count generated invoices as (file name, bytes, truth)."""
    made = []
    for n in range(count):
        pdf, truth = make_invoice(n_lines=4 + n, seed=seed + n)
        made.append((f"fatura-{seed + n}.pdf", pdf, truth))
    return made


def drop_files(page, selector, files):
    """Dispatch a real drag-and-drop of files (built in the page from bytes) onto selector."""
    payload = [{"name": name, "b64": base64.b64encode(data).decode()} for name, data, _ in files]
    page.evaluate(
        """([selector, files]) => {
            const zone = document.querySelector(selector);
            const transfer = new DataTransfer();
            for (const f of files) {
                const bytes = Uint8Array.from(atob(f.b64), c => c.charCodeAt(0));
                const type = f.name.endsWith(".pdf") ? "application/pdf" : "text/plain";
                transfer.items.add(new File([bytes], f.name, {type}));
            }
            for (const type of ["dragenter", "dragover", "drop"]) {
                zone.dispatchEvent(new DragEvent(type, {bubbles: true, cancelable: true, dataTransfer: transfer}));
            }
        }""",
        [selector, payload],
    )


def upload_via_api(page, url, files):
    """Upload through the JSON API with the page's own session (cookie and CSRF token)."""
    token = page.request.get(f"{url}/api/session").json()["csrf_token"]
    for name, data, _ in files:
        response = page.request.post(f"{url}/api/upload", headers={"X-CSRF-Token": token},
                                     multipart={"file": {"name": name, "mimeType": "application/pdf", "buffer": data}})
        assert response.status == 202, response.text()


def assert_accessible(page):
    """axe-core finds no serious or critical violation on the current page."""
    # add_script_tag would inline the script, which the pages' CSP rightly refuses; CDP evaluation is exempt.
    if not page.evaluate("typeof axe !== 'undefined'"):
        page.evaluate(AXE.read_text() + "\n;void 0")
    result = page.evaluate("() => axe.run(document, {resultTypes: ['violations']})")
    bad = [(v["id"], v["impact"], v["help"], [n["target"] for n in v["nodes"]][:3])
           for v in result["violations"] if v["impact"] in ("serious", "critical")]
    assert not bad, bad


def test_drop_three_pdfs_watch_them_complete_and_download_one(page, stack, artifacts):
    files = invoices(3, seed=100)
    polls = []
    page.on("request", lambda request: "/queue/rows" in request.url and polls.append(request.url))
    page.goto(f"{stack.web_url}/")
    assert_accessible(page)
    drop_files(page, "#dropzone", files)
    uploads = page.locator("#upload-list .upload")
    expect(uploads).to_have_count(3)
    expect(page.locator('#upload-list .upload[data-state="accepted"]')).to_have_count(3)
    for index in range(3):
        assert uploads.nth(index).locator("progress").evaluate("bar => bar.value") == 100
    page.wait_for_url("**/queue")
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads

    rows = page.locator("tr.job-row")
    expect(rows).to_have_count(3)
    expect(page.locator("#live-state")).to_have_attribute("data-state", "live")
    expect(page.locator('tr.job-row[data-status="complete"]')).to_have_count(3, timeout=CONVERTED)
    assert page.evaluate("window.__sameDocument") is True
    assert polls == [], "the page polled while the stream was live"
    expect(page.locator("#totals .total-complete dd")).to_have_text("3")

    name, _, truth = files[1]
    row = page.locator(f'tr.job-row[data-filename="{name}"]')
    with page.expect_download() as download_info:
        row.get_by_role("link", name=f"Download {name}").click()
    xml = Path(download_info.value.path()).read_bytes()
    assert download_info.value.suggested_filename == name.replace(".pdf", ".xml")
    assert SafeET.fromstring(xml).findtext(".//InvoiceNumber") == truth["Header"]["InvoiceNumber"]

    row.get_by_role("button", name=f"Share link for {name}").click()
    notice = page.locator("#toast")
    expect(notice).to_contain_text(f"valid for {SHARE_TTL_SECONDS // 60} minutes, until ")
    shared = page.request.get(notice.locator("input.share-url").input_value())
    assert shared.ok and SafeET.fromstring(shared.body()).findtext(".//InvoiceNumber") == truth["Header"]["InvoiceNumber"]

    page.screenshot(path=str(artifacts / "queue.png"), full_page=True)
    assert_accessible(page)

    row.get_by_role("link", name=f"Review {name}").click()
    expect(page.locator("pre.xml")).to_contain_text(truth["Header"]["InvoiceNumber"])
    assert_accessible(page)


def test_polling_fallback_brings_a_row_to_complete_then_stops(page, stack):
    polls = []
    page.route("**/api/events**", lambda route: route.abort())
    page.on("request", lambda request: "/queue/rows" in request.url and polls.append(time.monotonic()))
    stack.pause("worker")  # keep the job queued until the page is polling
    try:
        upload_via_api(page, stack.web_url, invoices(1, seed=200))
        page.goto(f"{stack.web_url}/queue")
        expect(page.locator("#live-state")).to_have_attribute("data-state", "polling")
        expect(page.locator("tr.job-row")).to_have_attribute("data-status", "queued")
    finally:
        stack.procs["worker"].send_signal(signal.SIGCONT)
    expect(page.locator("tr.job-row")).to_have_attribute("data-status", "complete", timeout=CONVERTED)
    expect(page.locator("#live-state")).to_have_attribute("data-state", "idle")
    expect(page.locator("#announcer")).to_have_text("fatura-200.pdf: complete")
    expect(page.locator("#totals .total-active dd")).to_have_text("0")
    assert polls, "the page never polled the rows partial"
    settled = len(polls)
    page.wait_for_timeout(4000)  # longer than one polling period
    assert len(polls) == settled, "polling went on after every job was finished"


def test_a_retry_wakes_polling_that_had_stopped(page, stack):
    page.route("**/api/events**", lambda route: route.abort())
    upload_via_api(page, stack.web_url, [("unreadable.pdf", pdf_bytes("unreadable"), None)])  # the gateway refuses it
    page.goto(f"{stack.web_url}/queue")
    row = page.locator("tr.job-row")
    expect(row).to_have_attribute("data-status", "failed", timeout=CONVERTED)
    expect(page.locator("#live-state")).to_have_attribute("data-state", "idle")
    failed_at = row.get_attribute("data-updated")
    with page.expect_request("**/queue/rows?since=**"):
        row.get_by_role("button", name="Retry unreadable.pdf").click()
    expect(page.locator("#toast")).to_have_text("unreadable.pdf is queued again.")
    expect(row).not_to_have_attribute("data-updated", failed_at)  # the polls bring the retried job's rows
    expect(row).to_have_attribute("data-status", "failed", timeout=CONVERTED)
    expect(page.locator("#live-state")).to_have_attribute("data-state", "idle")


def test_delete_takes_the_row_away_here_and_in_other_tabs(page, stack):
    names = ["keep.pdf", "doomed.pdf"]
    upload_via_api(page, stack.web_url, [(name, pdf_bytes(name), None) for name in names])
    page.goto(f"{stack.web_url}/queue")
    expect(page.locator("#live-state")).to_have_attribute("data-state", "live")
    polling = page.context.new_page()  # the same owner, in a tab without the stream
    polling.route("**/api/events**", lambda route: route.abort())
    polling.goto(f"{stack.web_url}/queue")
    expect(polling.locator("tr.job-row")).to_have_count(2)
    # Both jobs done, the tab has stopped polling: a poll's fresh copy of the row swapped in while the confirm dialog
    # is open would leave htmx's click on a row no longer in the page, and its DELETE never sent.
    expect(polling.locator("#live-state")).to_have_attribute("data-state", "idle")
    polling.on("dialog", lambda dialog: dialog.accept())
    polling.get_by_role("button", name="Delete doomed.pdf").click()
    for name, tab in (("the polling tab", polling), ("the streaming tab", page)):  # by the click's answer, the stream
        expect(tab.locator("tr.job-row"), f"{name} still shows the deleted row").to_have_count(1)
        expect(tab.locator("tr.job-row")).to_have_attribute("data-filename", "keep.pdf")
    expect(polling.locator("#announcer")).to_have_text("doomed.pdf deleted")


def test_the_first_job_brings_the_table_to_an_empty_queue(page, stack):
    page.goto(f"{stack.web_url}/queue")
    expect(page.get_by_role("heading", name="No jobs yet")).to_be_visible()
    expect(page.locator("#live-state")).to_have_attribute("data-state", "live")
    upload_via_api(page, stack.web_url, [("first.pdf", pdf_bytes("first"), None)])
    expect(page.get_by_role("table")).to_be_visible()
    expect(page.locator('tr.job-row[data-filename="first.pdf"]')).to_be_visible()
    expect(page.get_by_role("heading", name="No jobs yet")).to_have_count(0)


def test_keyboard_only_upload(page, stack):
    name, data, _ = invoices(1, seed=300)[0]
    # A standing listener turns on Playwright's file-chooser interception before the key is pressed;
    # enabling it inside expect_file_chooser races the first chooser of a fresh browser.
    page.on("filechooser", lambda chooser: None)
    page.goto(f"{stack.web_url}/")
    for _ in range(15):  # past the header's links and its language menu
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "dropzone":
            break
    else:
        pytest.fail("Tab never reached the drop zone")
    with page.expect_file_chooser() as chooser_info:
        page.keyboard.press("Enter")
    chooser_info.value.set_files([{"name": name, "mimeType": "application/pdf", "buffer": data}])
    expect(page.locator('#upload-list .upload[data-state="accepted"]')).to_have_count(1)
    page.wait_for_url("**/queue")
    expect(page.locator(f'tr.job-row[data-filename="{name}"]')).to_be_visible()


def test_files_the_browser_can_tell_are_wrong_are_flagged_before_sending(page, stack):
    page.goto(f"{stack.web_url}/")
    sent = []
    page.on("request", lambda request: "/api/upload" in request.url and sent.append(request.url))
    drop_files(page, "#dropzone", [("notes.txt", b"hello", None)])
    expect(page.locator('#upload-list .upload[data-state="rejected"]')).to_contain_text("Not a PDF")
    assert sent == []


def test_gateway_down_banner(fresh_page, tmp_path):
    from gateway.testing import free_port

    page = fresh_page
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: the worker's calls fail, the breaker opens
    with browser_stack(tmp_path / "down", gateway_url=dead, BREAKER_THRESHOLD=1) as down:
        let_in(page.context, down)
        upload_via_api(page, down.web_url, invoices(1, seed=400))
        page.goto(f"{down.web_url}/queue")
        banner = page.locator("#gateway-banner")
        expect(banner).to_be_visible(timeout=20000)
        expect(banner).to_contain_text("waiting, not lost")
        expect(page.locator("tr.job-row")).to_have_attribute("data-status", "queued")
        assert_accessible(page)
