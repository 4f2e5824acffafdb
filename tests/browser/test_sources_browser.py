"""Sources in a real browser: an admin adds a folder source on /admin/sources, and a file dropped into the folder
appears live on the owner's open queue (the worker watches the folder)."""
import re

from playwright.sync_api import expect

from tests.browser.conftest import let_in
from tests.browser.test_browser import assert_accessible, invoices

CONVERTED = 60_000


def test_an_admin_adds_a_folder_source_and_a_dropped_file_appears_live_on_the_owners_queue(fresh_page, stack,
                                                                                              chromium, tmp_path):
    admin = fresh_page
    let_in(admin.context, stack, admin=True)
    owner_context = chromium.new_context()
    try:
        owner = let_in(owner_context, stack)
        queue = owner_context.new_page()
        queue.goto(f"{stack.web_url}/queue")
        expect(queue.locator("#live-state")).to_have_attribute("data-state", "live")

        folder = tmp_path / "scanner"
        folder.mkdir()
        admin.goto(f"{stack.web_url}/")
        admin.get_by_role("navigation", name="Main").get_by_role("link", name="Sources").click()
        expect(admin).to_have_url(re.compile(r"/admin/sources$"))
        assert_accessible(admin)
        admin.get_by_label("Address").fill(f"folder://{folder}")
        admin.get_by_label("Owner's email").fill(owner.email)
        admin.get_by_role("button", name="Add the source").click()
        expect(admin.get_by_role("status")).to_contain_text("added")
        row = admin.locator("#sources tbody tr")
        expect(row).to_have_count(1)
        expect(row).to_contain_text(owner.email)
        assert_accessible(admin)

        [(name, pdf, _truth)] = invoices(1, seed=900)
        part = folder / (name + ".part")  # the scanner writes under another name, then renames: as most do
        part.write_bytes(pdf)
        part.rename(folder / name)
        job_row = queue.locator(f'tr.job-row[data-filename="{name}"]')
        expect(job_row).to_be_visible(timeout=30_000)  # live: the page was not reloaded
        expect(job_row.locator("a.filename")).to_have_attribute("title", re.compile("Arrived in a watched folder"))
        expect(job_row).to_have_attribute("data-status", "complete", timeout=CONVERTED)
        assert (folder / "done" / name).exists()
        admin.reload()
        expect(admin.locator("#sources tbody tr td").nth(4)).not_to_have_text("never")
    finally:
        owner_context.close()
