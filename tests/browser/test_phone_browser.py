"""The pages on a phone (Chromium's touch emulation at 360 and 390 px wide): nothing wider than the screen, axe-core
clean, the header behind a menu button, touch targets of 44 × 44 px, and the upload-and-watch flow by tapping."""
import json
from datetime import timedelta
from types import SimpleNamespace

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import let_in
from tests.browser.test_browser import AXE, CONVERTED, invoices, upload_via_api
from tests.browser.test_review_browser import wait_finished
from tests.support.app import pdf_bytes

PHONES = (360, 390)  # the narrowest phone the issue asks for, and a common one (390 × 844)
HEIGHT = 844
TARGET = 44  # px: WCAG 2.5.5's touch target
# Every page a person meets, as (name, path); "{job}" is the converted invoice's id, "{link}" an invitation's secret.
PAGES = [("upload", "/"), ("queue", "/queue"), ("review", "/review/{job}"), ("users", "/admin/users"),
         ("tokens", "/tokens"), ("notifications", "/notifications"), ("password", "/link/{link}"),
         ("login", "/login"), ("api-docs", "/api/docs"), ("error", "/review/not-a-job")]
SIGNED_OUT = {"password", "login"}
# Swagger UI's own markup (its <main>s, buttons in buttons, its grey on grey) fails axe at any width, a phone's or a
# desktop's: on /api/docs axe checks the page around it, which is ours, and not the second <main> it brings.
AXE_EXCLUDE = {"api-docs": (["#swagger-ui"], ["landmark-no-duplicate-main"])}
HOOK_URL = "https://hooks.example.com/pdfqueue/a-rather-long-path/for-the-phone"
# A file name as long as scanners write them, which must wrap or be cut rather than widen its row.
LONG_NAME = "FATURA-FT-2025-000123-fornecedor-de-materiais-de-construcao-lda.pdf"


def phone_context(chromium, width):
    """A fresh touch-screen context width px wide (a phone's: mobile viewport, device scale 3)."""
    context = chromium.new_context(viewport={"width": width, "height": HEIGHT}, has_touch=True, is_mobile=True,
                                   device_scale_factor=3)
    context.set_default_timeout(15000)
    return context


@pytest.fixture(scope="module")
def site(stack, chromium):
    """An admin with two jobs (an invoice converted, a PDF the gateway refused), a webhook, a pending invitation."""
    from core.accounts import INVITE, OneTimeLink
    from core.outbox import WEBHOOK_EVENTS, Subscription
    from tests.support.people import new_email

    context = chromium.new_context()
    admin = let_in(context, stack, admin=True)
    page = context.new_page()
    invoice = invoices(1, seed=1300)[0][1]
    refused = pdf_bytes("unreadable-phone")  # the gateway cannot open it: a failed job
    upload_via_api(page, stack.web_url, [(LONG_NAME, invoice, None), ("unreadable.pdf", refused, None)])
    jobs = {job["filename"]: job for job in wait_finished(page, stack.web_url, 2)}
    cookies = context.cookies()
    context.close()
    with stack.app().app_context():
        # Straight in the database: the box has no DNS for the URL, which the API would resolve (a public address).
        Subscription.add_webhook(admin.id, HOOK_URL, list(WEBHOOK_EVENTS), [],
                                 resolve=lambda *args, **kwargs: [(2, 1, 6, "", ("93.184.216.34", 443))])
        invited = new_email("invited-with-a-long-address")
        OneTimeLink.create(INVITE, timedelta(days=1), email=invited)
        link = OneTimeLink.create(INVITE, timedelta(days=1), email=new_email("phone"))
    assert jobs[LONG_NAME]["status"] == "complete" and jobs["unreadable.pdf"]["status"] == "failed"
    return SimpleNamespace(admin=admin, cookies=cookies, link=link, job=jobs[LONG_NAME]["id"])


@pytest.fixture(scope="module", params=PHONES, ids=lambda width: f"{width}px")
def phone(request, chromium):
    """A phone's browser context, signed in nowhere (tests add the admin's cookies), and its width."""
    context = phone_context(chromium, request.param)
    yield SimpleNamespace(context=context, width=request.param)
    context.close()


def open_page(phone, stack, site, name, path):
    """A tab of phone on the page name, signed in as the admin unless the page is for people signed out."""
    phone.context.clear_cookies()
    if name not in SIGNED_OUT:
        phone.context.add_cookies(site.cookies)
    tab = phone.context.new_page()
    tab.goto(stack.web_url + path.format(job=site.job, link=site.link))
    settled(tab, name)
    return tab


def settled(tab, name):
    """Wait for what draws the page after it loads: the stream, pdf.js, Swagger UI."""
    if name == "queue":
        expect(tab.locator("#live-state")).to_have_attribute("data-state", "live")
    elif name == "review":
        expect(tab.locator('#pdf-viewer canvas[data-page="1"]')).to_have_attribute("data-drawn", "true")
    elif name == "api-docs":
        expect(tab.locator(".opblock").first).to_be_visible()


def axe_violations(tab, exclude=(), rules_off=()):
    """Every axe-core violation on the page outside the exclude selectors, but for rules_off, whatever its impact,
    as (rule, impact, first targets)."""
    if not tab.evaluate("typeof axe !== 'undefined'"):
        tab.evaluate(AXE.read_text() + "\n;void 0")  # CDP evaluation: the page's CSP rightly refuses an inline copy
    result = tab.evaluate("""([exclude, off]) => axe.run({exclude: exclude.map(selector => [selector])}, {
        resultTypes: ["violations"], rules: Object.fromEntries(off.map(rule => [rule, {enabled: false}]))})""",
                          [list(exclude), list(rules_off)])
    return [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3]) for v in result["violations"]]


def overflowing(tab):
    """The page's scrollWidth, and the elements whose right edge passes the viewport (the culprits, for a failure)."""
    return tab.evaluate("""() => {
        const width = document.documentElement.clientWidth, wide = [];
        // Inside a box that scrolls or clips it (an absolutely placed one escapes those below its containing block).
        const clipped = el => {
            let escaping = getComputedStyle(el).position;
            for (let up = el.parentElement; up && up !== document.body; up = up.parentElement) {
                const style = getComputedStyle(up);
                if (escaping === "absolute" && style.position !== "static") escaping = "";
                if (escaping !== "absolute" && escaping !== "fixed" && style.overflowX !== "visible") return true;
            }
            return false;
        };
        const named = el => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "")
            + (typeof el.className === "string" && el.className ? "." + el.className.trim().replace(/\\s+/g, ".") : "");
        for (const el of document.querySelectorAll("body *")) {
            const box = el.getBoundingClientRect();
            if (box.right > width + 0.5 && box.width > 0 && !clipped(el)) {
                wide.push(named(el) + " " + Math.round(box.right));
            }
        }
        return [document.documentElement.scrollWidth, wide.slice(0, 8)];
    }""")


@pytest.mark.parametrize("name,path", PAGES, ids=[name for name, _ in PAGES])
def test_no_page_is_wider_than_the_phone_and_axe_passes(phone, stack, site, artifacts, name, path):
    tab = open_page(phone, stack, site, name, path)
    try:
        width, culprits = overflowing(tab)
        record = artifacts / "phone-widths.json"
        widths = json.loads(record.read_text()) if record.exists() else {}
        widths.setdefault(str(phone.width), {})[name] = width
        record.write_text(json.dumps(widths, indent=1, sort_keys=True))
        tab.screenshot(path=str(artifacts / f"phone-{phone.width}-{name}.png"), full_page=True)
        assert width <= phone.width, (width, culprits)
        violations = axe_violations(tab, *AXE_EXCLUDE.get(name, ()))
        assert violations == [], [(rule, impact) for rule, impact, _ in violations]
    finally:
        tab.close()


def too_small(locator):
    """The visible ones of locator's elements smaller than a touch target, as (text or label, width, height)."""
    return [tuple(each) for each in locator.evaluate_all("""(elements, target) => elements
        .filter(el => el.checkVisibility() && el.getBoundingClientRect().width > 0)
        .map(el => [el.getAttribute("aria-label") || el.innerText.trim() || el.outerHTML.slice(0, 80),
                    el.getBoundingClientRect().width, el.getBoundingClientRect().height])
        .filter(([, width, height]) => width < target - 0.5 || height < target - 0.5)
        .map(([name, width, height]) => [name, Math.round(width), Math.round(height)])""", TARGET)]


def test_the_header_folds_into_a_menu_whose_links_are_reachable(phone, stack, site, artifacts):
    tab = open_page(phone, stack, site, "queue", "/queue")
    try:
        menu = tab.get_by_role("button", name="Menu")
        nav = tab.get_by_role("navigation", name="Main")
        expect(menu).to_have_attribute("aria-expanded", "false")
        expect(nav).to_be_hidden()
        assert too_small(menu) == []
        menu.tap()
        expect(menu).to_have_attribute("aria-expanded", "true")
        links = nav.get_by_role("link")
        expect(links).to_have_text(["Upload", "Queue", "API tokens", "Notifications", "Users"])
        expect(nav.get_by_role("button", name="Sign out")).to_be_visible()
        expect(nav).to_contain_text(site.admin.email)
        tab.screenshot(path=str(artifacts / f"phone-{phone.width}-menu.png"))
        assert too_small(nav.locator("a, button")) == []
        for index in range(links.count()):  # each one on the screen, none under another
            box = links.nth(index).bounding_box()
            assert 0 <= box["x"] and box["x"] + box["width"] <= phone.width, box
            middle = [box["x"] + box["width"] / 2, box["y"] + box["height"] / 2]
            on_top = tab.evaluate("([x, y]) => document.elementFromPoint(x, y).closest('a')?.getAttribute('href')",
                                  middle)
            assert on_top == links.nth(index).get_attribute("href")
        tab.keyboard.press("Escape")
        expect(menu).to_have_attribute("aria-expanded", "false")
        expect(menu).to_be_focused()
        menu.tap()
        nav.get_by_role("link", name="API tokens").tap()
        tab.wait_for_url("**/tokens")
        expect(tab.get_by_role("heading", name="API tokens")).to_be_visible()
        expect(tab.get_by_role("navigation", name="Main")).to_be_hidden()  # a new page starts with it folded
    finally:
        tab.close()


def test_touch_targets_are_44_px(phone, stack, site):
    tab = open_page(phone, stack, site, "queue", "/queue")
    try:
        notify = tab.locator("#notify")
        expect(notify).to_be_visible()
        box = notify.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= phone.width, box  # "Notify me…" stays on the screen
        assert too_small(tab.locator("#menu-button")) == []
        assert too_small(tab.locator(".page-actions .btn, .filters a, .filters button, .filters select, "
                                     ".filters input[type=search]")) == []
        assert too_small(tab.locator("#bulk button")) == []
        actions = tab.locator("tr.job-row .actions > *, tr.job-row .select-hit, thead .select-hit")
        assert actions.count() >= 2 * 5 + 1
        assert too_small(actions) == []
        for name in ("upload", "review", "users", "tokens", "notifications", "login"):
            path = dict(PAGES)[name]
            tab.close()
            tab = open_page(phone, stack, site, name, path)
            # A checkbox's target is its label; the file input's, the drop zone.
            fields = "main input:not([type=hidden]):not([type=file]):not([type=checkbox])"
            targets = f"main .btn, main label.check, main .check label, #dropzone, main select, {fields}"
            assert too_small(tab.locator(targets)) == [], name
    finally:
        tab.close()


def test_a_phone_uploads_through_the_file_picker_and_watches_the_row_complete(stack, chromium):
    context = phone_context(chromium, 390)
    try:
        let_in(context, stack)
        tab = context.new_page()
        polls = []
        tab.on("request", lambda request: "/queue/rows" in request.url and polls.append(request.url))
        tab.goto(f"{stack.web_url}/")
        zone = tab.locator("#dropzone")
        expect(zone).to_contain_text("Tap to choose PDFs")
        expect(zone.get_by_text("Drop PDF files here")).to_be_hidden()
        expect(zone.get_by_text("press Enter")).to_be_hidden()
        assert too_small(zone) == []
        name, data, _ = invoices(1, seed=1310)[0]
        with tab.expect_file_chooser() as chooser:  # the tap opens the phone's picker
            zone.tap()
        chooser.value.set_files([{"name": name, "mimeType": "application/pdf", "buffer": data}])
        expect(tab.locator('#upload-list .upload[data-state="accepted"]')).to_have_count(1)
        tab.wait_for_url("**/queue")
        row = tab.locator(f'tr.job-row[data-filename="{name}"]')
        expect(row).to_be_visible()
        expect(tab.locator("#live-state")).to_have_attribute("data-state", "live")
        expect(row).to_have_attribute("data-status", "complete", timeout=CONVERTED)
        expect(row.get_by_role("link", name=f"Download {name}")).to_be_visible()
        assert polls == [], "the page polled while the stream was live"
        box = row.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390, box  # a card on the screen, not a table row
        assert tab.evaluate("document.documentElement.scrollWidth") <= 390
        with tab.expect_download() as download:
            row.get_by_role("link", name=f"Download {name}").tap()
        assert download.value.suggested_filename == name.replace(".pdf", ".xml")
    finally:
        context.close()


def test_filters_selection_and_a_bulk_retry_by_tapping(stack, chromium, site):
    context = phone_context(chromium, 360)
    try:
        context.add_cookies(site.cookies)
        tab = context.new_page()
        tab.goto(f"{stack.web_url}/queue")
        expect(tab.locator("#live-state")).to_have_attribute("data-state", "live")
        tab.get_by_role("link", name="Failed").tap()
        tab.wait_for_url("**/queue?status=failed")
        rows = tab.locator("tr.job-row")
        expect(rows).to_have_count(1)
        expect(rows).to_have_attribute("data-filename", "unreadable.pdf")
        tab.get_by_role("link", name="All").tap()
        tab.wait_for_url("**/queue?status=")
        expect(rows).to_have_count(2)
        expect(tab.locator("#live-state")).to_have_attribute("data-state", "live")
        row = tab.locator('tr.job-row[data-filename="unreadable.pdf"]')
        failed_at = row.get_attribute("data-updated")
        row.locator(".select-hit").tap()  # the box's 44 px hit area, not the box itself
        expect(row.get_by_role("checkbox", name="Select unreadable.pdf")).to_be_checked()
        expect(tab.locator("#bulk-count")).to_have_text("1 job selected")
        tab.locator("#bulk").get_by_role("button", name="Retry failed").tap()
        expect(tab.locator("#toast")).to_have_text("1 job queued again.")
        expect(tab.locator("#bulk-count")).to_have_text("No job selected")
        expect(row).not_to_have_attribute("data-updated", failed_at)  # the stream brings the retried job's rows
        expect(row).to_have_attribute("data-status", "failed", timeout=CONVERTED)
        assert tab.evaluate("document.documentElement.scrollWidth") <= 360
    finally:
        context.close()


def test_a_tablet_scrolls_the_pdf_in_a_focusable_box(stack, chromium, site):
    context = phone_context(chromium, 768)  # one column, and the PDF's pages taller than its box
    try:
        context.add_cookies(site.cookies)
        tab = context.new_page()
        tab.goto(f"{stack.web_url}/review/{site.job}")
        settled(tab, "review")
        viewer = tab.get_by_role("region", name=LONG_NAME)
        assert viewer.evaluate("box => box.scrollHeight > box.clientHeight")
        viewer.focus()
        tab.keyboard.press("PageDown")
        expect(viewer).not_to_have_js_property("scrollTop", 0)
        assert tab.evaluate("document.documentElement.scrollWidth") <= 768
        assert axe_violations(tab) == []
    finally:
        context.close()


def test_without_javascript_the_links_wrap_and_the_pages_fit(stack, chromium, site):
    context = chromium.new_context(viewport={"width": 360, "height": HEIGHT}, has_touch=True, is_mobile=True,
                                   java_script_enabled=False)
    try:
        context.add_cookies(site.cookies)
        tab = context.new_page()
        for path in ("/", "/queue", "/admin/users"):
            tab.goto(stack.web_url + path)
            expect(tab.get_by_role("button", name="Menu")).to_be_hidden()  # nothing would open it
            expect(tab.get_by_role("navigation", name="Main").get_by_role("link", name="Users")).to_be_visible()
            width, culprits = overflowing(tab)
            assert width <= 360, (path, width, culprits)
    finally:
        context.close()
