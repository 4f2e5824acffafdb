"""The review page in a real browser: the invoice read and checked, the source PDF drawn by pdf.js under the strict
CSP, next/previous by keyboard; and axe-core on every page, with no violation of any impact."""
import re
import time
from datetime import timedelta
from decimal import Decimal

from babel.numbers import format_currency
from playwright.sync_api import expect

from tests.browser.conftest import let_in
from tests.browser.test_browser import AXE, upload_via_api
from tests.support.app import pdf_bytes
from tests.support.invoicegen import make_invoice
from tests.support.people import new_email

CONVERTED = 60  # s: generous for a 2-core box converting with a cold gateway

# Collects the page's CSP violations (an init script runs through CDP, so the CSP it watches does not refuse it).
WATCH_CSP = """window.__csp = [];
document.addEventListener("securitypolicyviolation", e => window.__csp.push(e.violatedDirective + " " + e.blockedURI));"""


def jobs_of(page, url):
    return page.request.get(f"{url}/api/jobs?limit=200").json()["jobs"]


def wait_finished(page, url, count):
    """The page's owner's jobs once count of them are finished (complete or failed), newest first."""
    deadline = time.monotonic() + CONVERTED
    while time.monotonic() < deadline:
        jobs = jobs_of(page, url)
        if sum(job["status"] in ("complete", "failed") for job in jobs) >= count:
            return jobs
        time.sleep(0.25)
    raise AssertionError(f"not finished in {CONVERTED} s: {[(j['filename'], j['status']) for j in jobs_of(page, url)]}")


def axe_violations(page):
    """Every axe-core violation on the current page, whatever its impact, as (rule, impact, first targets)."""
    if not page.evaluate("typeof axe !== 'undefined'"):
        page.evaluate(AXE.read_text() + "\n;void 0")  # CDP evaluation: the page's CSP rightly refuses an inline copy
    result = page.evaluate("() => axe.run(document, {resultTypes: ['violations']})")
    return [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3]) for v in result["violations"]]


def canvas_ink(page, selector):
    """(share of painted pixels, share of dark ones) on the canvas: (0, 0) for one never drawn (transparent)."""
    return page.locator(selector).evaluate("""canvas => {
        const {data} = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
        let painted = 0, dark = 0;
        for (let i = 0; i < data.length; i += 4) {
            if (data[i + 3] === 0) continue;
            painted++;
            if (data[i] < 160 && data[i + 1] < 160 && data[i + 2] < 160) dark++;
        }
        return [painted / (data.length / 4), dark / (data.length / 4)];
    }""")


def test_the_review_page_reads_checks_and_draws_the_invoice(page, stack, artifacts):
    slipped, truth = make_invoice(n_lines=6, seed=940, line_total_deltas={3: "0.10"})
    right, _ = make_invoice(n_lines=3, seed=941)
    upload_via_api(page, stack.web_url, [("right.pdf", right, None)])
    upload_via_api(page, stack.web_url, [("slipped.pdf", slipped, None)])
    upload_via_api(page, stack.web_url, [("unreadable.pdf", pdf_bytes("unreadable"), None)])  # the gateway refuses it
    jobs = {job["filename"]: job for job in wait_finished(page, stack.web_url, 3)}
    assert jobs["slipped.pdf"]["status"] == "complete" and jobs["unreadable.pdf"]["status"] == "failed"

    page.add_init_script(WATCH_CSP)
    page.goto(f"{stack.web_url}/review/{jobs['slipped.pdf']['id']}")
    expect(page.locator("#invoice-number")).to_have_text(truth["Header"]["InvoiceNumber"])
    expect(page.locator("#supplier")).to_contain_text(truth["Supplier"]["TaxID"])
    expect(page.locator("#customer")).to_contain_text(truth["Customer"]["Name"])
    # As an English reader writes it (the browser asks for en-US): €1,234.56.
    grand = format_currency(Decimal(str(truth["Totals"]["GrandTotal"])), "EUR", locale="en")
    expect(page.locator("#grand-total")).to_have_text(grand)
    expect(page.locator("#lines tbody tr")).to_have_count(6)
    checks = page.locator("#checks li")
    expect(checks.nth(0)).to_have_class(re.compile(r"\bcheck-bad\b"))
    expect(checks.nth(0)).to_contain_text("✗")
    expect(checks.nth(1)).to_contain_text("✓")
    expect(checks.nth(2)).to_contain_text("line 4")
    bad = page.locator("#lines tr.line-bad")
    expect(bad).to_have_count(1)
    expect(bad).to_have_attribute("data-line", "4")
    assert bad.evaluate("row => getComputedStyle(row.cells[0]).backgroundColor") != "rgba(0, 0, 0, 0)"

    raw = page.locator("details.raw-xml")
    expect(raw.locator("pre.xml")).not_to_be_visible()
    raw.locator("summary").click()
    expect(raw.locator("pre.xml")).to_be_visible()
    expect(raw.locator("pre.xml")).to_contain_text(truth["Header"]["InvoiceNumber"])

    canvas = page.locator('#pdf-viewer canvas[data-page="1"]')
    expect(canvas).to_have_attribute("data-drawn", "true")
    expect(canvas).to_have_attribute("aria-label", re.compile(r"^Page 1 of \d+ of slipped\.pdf$"))
    painted, dark = canvas_ink(page, '#pdf-viewer canvas[data-page="1"]')
    assert painted == 1 and 0.002 < dark < 0.5, (painted, dark)  # a white page with text on it
    expect(page.locator("#history li")).to_have_count(3)
    expect(page.locator("#history")).to_contain_text("Attempt 1 converted it")
    page.screenshot(path=str(artifacts / "review.png"), full_page=True)
    assert page.evaluate("window.__csp") == []
    assert axe_violations(page) == []

    # Newest first, as the queue lists them: unreadable, slipped, right. j goes down the list, k up.
    page.keyboard.press("j")
    page.wait_for_url(f"**/review/{jobs['right.pdf']['id']}")
    expect(page.locator("#next-job")).to_have_count(0)
    page.keyboard.press("k")
    page.wait_for_url(f"**/review/{jobs['slipped.pdf']['id']}")
    page.get_by_label("keys k and j").uncheck()  # single-key shortcuts can be turned off, and stay off
    page.reload()
    page.keyboard.press("j")
    page.wait_for_timeout(300)
    assert page.url.endswith(f"/review/{jobs['slipped.pdf']['id']}")
    page.get_by_label("keys k and j").check()
    page.goto(f"{stack.web_url}/queue?status=failed")
    page.get_by_role("link", name="Review unreadable.pdf").click()
    expect(page.locator("#history")).to_contain_text("failed for good")
    expect(page.locator("#previous-job")).to_have_count(0)
    expect(page.locator("#next-job")).to_have_count(0)  # the only failed job
    expect(page.get_by_role("link", name="← Queue")).to_have_attribute("href", "/queue?status=failed")


def test_a_pdf_retention_removed_says_so(page, stack):
    upload_via_api(page, stack.web_url, [("old.pdf", pdf_bytes("unreadable-old"), None)])
    job = wait_finished(page, stack.web_url, 1)[0]
    from core import operations
    from sqlalchemy import update
    from core.clock import utcnow
    from core.db import write_transaction
    from core.jobs.model import Job
    app = stack.app()
    with app.app_context():  # this job alone is past retention: other tests' PDFs stay
        # Under the write lock from its start: a read turned write fails at once if the stack's worker wrote meanwhile.
        with write_transaction() as session:
            session.execute(update(Job).where(Job.id == job["id"]).values(
                created_at=utcnow() - timedelta(days=app.config["RETENTION_PDF_DAYS"] + 1)))
        assert operations.apply_retention()["pdf"] == 1
    assert page.request.get(f"{stack.web_url}/api/jobs/{job['id']}/pdf").status == 410
    page.goto(f"{stack.web_url}/review/{job['id']}")
    expect(page.get_by_text("The PDF was removed by retention.")).to_be_visible()


def test_every_page_is_accessible(fresh_page, stack, chromium):
    page = fresh_page
    failures = {}

    def visit(path, tab=page):
        tab.goto(f"{stack.web_url}{path}")
        found = axe_violations(tab)
        if found:
            failures[path] = found

    visit("/login")
    from core.accounts import INVITE, OneTimeLink
    with stack.app().app_context():
        secret = OneTimeLink.create(INVITE, timedelta(days=1), email=new_email("invited"))
    visit(f"/link/{secret}")  # the password form
    visit("/link/not-a-link")  # the error page

    let_in(page.context, stack, admin=True)
    upload_via_api(page, stack.web_url, [("a11y.pdf", make_invoice(n_lines=2, seed=960)[0], None)])
    job = wait_finished(page, stack.web_url, 1)[0]
    for path in ("/", "/queue", "/queue?status=complete", "/queue?owner=all", f"/review/{job['id']}", "/tokens",
                 "/admin/users", "/review/not-a-job"):
        visit(path)
    assert failures == {}
