"""Accounts in a real browser: sign in, work, sign out; people see only their own jobs; the admins' live Everyone
view; the first run's set-up link."""
import re
import time

from playwright.sync_api import expect

from tests.browser.conftest import browser_stack, let_in
from tests.browser.test_browser import drop_files, invoices, upload_via_api
from tests.support.people import new_email, snapshot
from core.accounts import User

PASSWORD = "a long enough password"
CONVERTED = 60_000


def test_sign_in_drop_watch_download_and_sign_out(fresh_page, stack):
    page = fresh_page
    with stack.app().app_context():
        user = snapshot(User.create(new_email("browser"), PASSWORD))
    page.goto(f"{stack.web_url}/queue")
    expect(page).to_have_url(re.compile(r"/login\?next=/queue$"))
    page.get_by_label("Email").fill(user.email)
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("wrong")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/queue$"))
    expect(page.get_by_role("navigation", name="Main")).to_contain_text(user.email)
    page.goto(f"{stack.web_url}/")
    files = invoices(1, seed=700)
    drop_files(page, "#dropzone", files)
    page.wait_for_url("**/queue")
    row = page.locator(f'tr.job-row[data-filename="{files[0][0]}"]')
    expect(row).to_have_attribute("data-status", "complete", timeout=CONVERTED)
    with page.expect_download() as download:
        row.get_by_role("link", name=f"Download {files[0][0]}").click()
    assert download.value.suggested_filename == files[0][0].replace(".pdf", ".xml")
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/login$"))
    page.goto(f"{stack.web_url}/queue")
    expect(page).to_have_url(re.compile(r"/login\?next=/queue$"))


def test_a_second_user_sees_none_of_the_firsts_jobs(page, stack, chromium):
    upload_via_api(page, stack.web_url, invoices(2, seed=720))
    page.goto(f"{stack.web_url}/queue")
    expect(page.locator("tr.job-row")).to_have_count(2)
    other = chromium.new_context()
    try:
        let_in(other, stack)
        theirs = other.new_page()
        theirs.goto(f"{stack.web_url}/queue")
        expect(theirs.get_by_role("heading", name="No jobs yet")).to_be_visible()
        first_id = page.locator("tr.job-row").first.get_attribute("id").removeprefix("job-")
        assert theirs.request.get(f"{stack.web_url}/api/jobs/{first_id}").status == 404
    finally:
        other.close()


def test_the_admins_everyone_view_updates_live(fresh_page, stack, chromium):
    admin = fresh_page
    let_in(admin.context, stack, admin=True)
    admin.goto(f"{stack.web_url}/queue?owner=all")
    expect(admin.get_by_role("heading", name="Everyone's queue")).to_be_visible()
    expect(admin.locator("#live-state")).to_have_attribute("data-state", "live")
    member = chromium.new_context()
    try:
        user = let_in(member, stack)
        files = invoices(1, seed=740)
        upload_via_api(member.new_page(), stack.web_url, files)
        row = admin.locator(f'tr.job-row[data-filename="{files[0][0]}"]')
        expect(row).to_be_visible()
        expect(row.locator("td.col-owner")).to_have_text(user.email)
        expect(row).to_have_attribute("data-status", "complete", timeout=CONVERTED)
    finally:
        member.close()


def test_the_first_runs_set_up_link_makes_the_first_admin_once(fresh_page, tmp_path):
    page = fresh_page
    with browser_stack(tmp_path / "first-run") as fresh:
        deadline = time.monotonic() + 10
        while not (found := re.search(r"(http://\S+/setup/[\w-]+)", fresh.log("web"))) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert found, "the web process printed no set-up link"
        link = found.group(1)
        page.goto(link)
        page.get_by_label("Email").fill("first@example.com")
        page.get_by_label("Password", exact=True).fill(PASSWORD)
        page.get_by_label("Password again").fill(PASSWORD)
        page.get_by_role("button", name="Save and sign in").click()
        expect(page).to_have_url(re.compile(r"/queue$"))
        expect(page.get_by_role("link", name="Users")).to_be_visible()  # an admin
        page.get_by_role("button", name="Sign out").click()
        assert page.goto(link).status == 410
