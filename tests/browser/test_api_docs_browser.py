"""/api/docs in a real browser: Swagger UI (from npm, served from static/vendor) draws every operation of
GET /api/openapi.json under the pages' strict CSP, and "Try it out" works with the page's session and CSRF token."""
from playwright.sync_api import expect

from tests.browser.test_review_browser import WATCH_CSP


def test_the_reference_renders_under_the_csp_and_tries_requests_out(page, stack, artifacts):
    page.add_init_script(WATCH_CSP)
    page.goto(f"{stack.web_url}/tokens")
    page.get_by_role("link", name="API reference").click()
    page.wait_for_url("**/api/docs")
    operations = page.locator(".opblock")
    expect(operations.first).to_be_visible()
    expect(operations).to_have_count(30)  # 28 operations and the 2 webhooks
    expect(page.locator(".opblock-summary-path", has_text="/api/jobs/{job_id}/download").first).to_be_visible()
    page.screenshot(path=str(artifacts / "api-docs.png"))

    # A read with the session cookie: GET /api/session.
    session = page.locator("#operations-accounts-session_info")
    session.locator(".opblock-summary").click()
    session.get_by_role("button", name="Try it out").click()
    session.get_by_role("button", name="Execute").click()
    expect(session.locator(".live-responses-table tr.response .response-col_status").first).to_have_text("200")

    # A change with the session cookie needs the CSRF token, which apidocs.js adds: POST /api/tokens.
    create = page.locator("#operations-accounts-tokens_create")
    create.locator(".opblock-summary").click()
    create.get_by_role("button", name="Try it out").click()
    create.locator("textarea.body-param__text").fill('{"name": "from the reference"}')
    create.get_by_role("button", name="Execute").click()
    expect(create.locator(".live-responses-table tr.response .response-col_status").first).to_have_text("201")
    tokens = page.request.get(f"{stack.web_url}/api/tokens").json()["tokens"]
    assert [token["name"] for token in tokens] == ["from the reference"]

    assert page.evaluate("window.__csp") == []
