"""The pages in Portuguese in a real browser: axe passes on each, and a language chosen from the header's menu keeps
the live queue updating in it (rows arriving over SSE, and over polling)."""
import re
import signal

from playwright.sync_api import expect

from tests.browser.conftest import let_in
from tests.browser.test_browser import CONVERTED, invoices, upload_via_api
from tests.browser.test_review_browser import axe_violations, wait_finished
from tests.support.invoicegen import make_invoice


def test_every_main_page_in_portuguese_is_accessible(chromium, stack, artifacts):
    """A browser asking for pt-PT: each page speaks it (<html lang="pt-PT">) and axe finds no violation."""
    context = chromium.new_context(locale="pt-PT", viewport={"width": 1360, "height": 900})
    page = context.new_page()
    try:
        failures = {}

        def visit(path):
            page.goto(f"{stack.web_url}{path}")
            expect(page.locator("html")).to_have_attribute("lang", "pt-PT")
            found = axe_violations(page)
            if found:
                failures[path] = found

        visit("/login")
        expect(page.locator("h1")).to_have_text("Iniciar sessão")
        let_in(context, stack, admin=True)
        pdf, _ = make_invoice(n_lines=6, seed=0)  # its grand total passes a million: 1 453 511,88 €
        upload_via_api(page, stack.web_url, [("fatura-milhao.pdf", pdf, None)])
        job = wait_finished(page, stack.web_url, 1)[0]
        for path in ("/", "/queue", f"/review/{job['id']}", "/tokens", "/notifications", "/admin/users",
                     "/review/not-a-job"):
            visit(path)
        assert failures == {}

        page.goto(f"{stack.web_url}/review/{job['id']}")
        expect(page.locator("#grand-total")).to_have_text("1\u00a0453\u00a0511,88\u00a0€")
        expect(page.locator("#invoice-issued")).to_have_text("14/05/2026")
        expect(page.locator('#pdf-viewer canvas[data-page="1"]')).to_have_attribute(
            "aria-label", re.compile(r"^Página 1 de \d+ de fatura-milhao\.pdf$"))
        page.screenshot(path=str(artifacts / "review-pt_PT.png"), full_page=True)
        page.goto(f"{stack.web_url}/queue")
        expect(page.locator("#live-state")).to_have_attribute("data-state", "live")
        expect(page.locator(".live-text")).to_have_text("Em direto: as atualizações aparecem à medida que acontecem.")
        page.screenshot(path=str(artifacts / "queue-pt_PT.png"), full_page=True)
    finally:
        context.close()


def test_a_language_chosen_in_the_menu_keeps_the_live_queue_in_it(page, stack):
    page.goto(f"{stack.web_url}/queue")
    expect(page.locator("html")).to_have_attribute("lang", "en")
    page.locator("#language").select_option("pt_PT")
    page.get_by_role("button", name="Change").click()
    expect(page.locator("h1")).to_have_text("Fila")
    expect(page.locator("html")).to_have_attribute("lang", "pt-PT")
    assert page.url.endswith("/queue")
    expect(page.locator("#live-state")).to_have_attribute("data-state", "live")

    # A row arriving over the stream, and its changes after, in Portuguese.
    upload_via_api(page, stack.web_url, invoices(1, seed=300))
    row = page.locator('tr.job-row[data-filename="fatura-300.pdf"]')
    expect(row).to_have_attribute("data-status", "complete", timeout=CONVERTED)
    expect(row.locator(".badge")).to_have_text("Concluída")
    expect(row.get_by_role("link", name="Transferir fatura-300.pdf")).to_be_visible()
    expect(page.locator("#announcer")).to_have_text("fatura-300.pdf: concluída")
    expect(page.locator("#totals .total-complete dt")).to_have_text("Concluídas")

    # Without the stream the page polls, and what the polls bring is in Portuguese too.
    page.route("**/api/events**", lambda route: route.abort())
    stack.pause("worker")  # keep the next job queued until the page is polling
    try:
        upload_via_api(page, stack.web_url, invoices(1, seed=301))
        page.reload()
        expect(page.locator("#live-state")).to_have_attribute("data-state", "polling")
        expect(page.locator(".live-text")).to_have_text(
            "Atualizações em direto indisponíveis; a verificar a cada 3 segundos.")
        polled = page.locator('tr.job-row[data-filename="fatura-301.pdf"]')
        expect(polled.locator(".badge")).to_have_text("Na fila")
    finally:
        stack.procs["worker"].send_signal(signal.SIGCONT)
    expect(polled).to_have_attribute("data-status", "complete", timeout=CONVERTED)
    expect(polled.locator(".badge")).to_have_text("Concluída")
    expect(polled.get_by_role("button", name="Eliminar fatura-301.pdf")).to_be_visible()
    expect(page.locator("#announcer")).to_have_text("fatura-301.pdf: concluída")
