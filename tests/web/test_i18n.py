"""Pages for every reader (webapp/i18n.py): the pt_PT catalogue complete and up to date with the sources, every page
in Portuguese without an English sentence left, numbers, money, dates and times as the reader writes them, the
language chosen in the menu (kept on the account), else Accept-Language, else DEFAULT_LOCALE, and live rows in the
subscriber's language."""
import io
import json
import re
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest
from babel.dates import format_datetime
from babel.messages.frontend import CommandLineInterface
from babel.messages.pofile import read_po

from core import config as config_module
from core.accounts import User
from core.clock import utcnow
from core.db import db
from core.jobs.model import Job
from tests.support.app import ApiClient, claim, finish, pdf_bytes, upload
from tests.support.invoicegen import make_invoice
from tests.web.test_review import complete_with, converted
from tests.web.test_stream import Browser, stop_hubs  # noqa: F401  (stop_hubs: the streams' hubs end with the test)

ROOT = Path(__file__).resolve().parents[2]
CATALOGUE = ROOT / "webapp" / "translations" / "pt_PT" / "LC_MESSAGES" / "messages.po"
PT = {"Accept-Language": "pt-PT,pt;q=0.9,en;q=0.5"}
EN = {"Accept-Language": "en-GB,en;q=0.8"}
PLACEHOLDER = re.compile(r"%\(\w+\)[sdr]|%%")


def catalogue():
    with CATALOGUE.open("rb") as file:
        return read_po(file, locale="pt_PT")


def forms(message):
    """A message's English forms and their translations, pairwise (a plural: singular and plural English, each
    with the pt_PT forms it stands for)."""
    if isinstance(message.id, tuple):
        one, other = message.id
        strings = message.string if isinstance(message.string, tuple) else (message.string,)
        return [(one, strings[0])] + [(other, string) for string in strings[1:]]
    return [(message.id, message.string)]


# -- the catalogue ------------------------------------------------------------------------------------------------


def test_every_message_is_translated_not_fuzzy_and_keeps_its_placeholders():
    messages = [message for message in catalogue() if message.id]
    assert len(messages) > 300  # the whole of the pages, emails and scripts, not a sample
    for message in messages:
        assert not message.fuzzy, message.id
        for english, portuguese in forms(message):
            assert portuguese, f"untranslated: {english!r}"
            assert sorted(PLACEHOLDER.findall(english)) == sorted(PLACEHOLDER.findall(portuguese)), english
    assert catalogue().plural_forms.startswith("nplurals=3;")  # CLDR's pt_PT: one, many, other
    assert all(len(message.string) == 3 for message in messages if message.pluralizable)
    # Babel's own checks (python-format placeholders and plural forms) find nothing either.
    assert [(message.id, errors) for message, errors in catalogue().check()] == []


def test_the_catalogue_has_every_message_a_fresh_extract_finds(tmp_path):
    """`make messages` was run after the last string changed: no msgid of the sources is missing from pt_PT."""
    template = tmp_path / "messages.pot"
    CommandLineInterface().run(["pybabel", "-q", "extract", "-F", str(ROOT / "babel.cfg"), "-k", "_l",
                                "-k", "lazy_pgettext:1c,2", "-k", "plural:1,2", "--no-location", "-o", str(template), str(ROOT)])
    with template.open("rb") as file:
        extracted = {(message.context, message.id) for message in read_po(file) if message.id}
    assert len(extracted) > 300
    known = {(message.context, message.id) for message in catalogue() if message.id}
    assert extracted - known == set(), "run `make messages` and translate what it adds"


# -- every page in Portuguese -------------------------------------------------------------------------------------


class VisibleText(HTMLParser):
    """The text a person reads on a page: text nodes (not scripts' nor styles'), and the words of aria-label, title,
    placeholder, alt and hx-confirm (a confirmation dialog's question)."""

    SAID = ("aria-label", "title", "placeholder", "alt", "hx-confirm")

    def __init__(self):
        super().__init__()
        self.texts, self.hidden = [], 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self.hidden += 1
        self.texts.extend(value for name, value in attrs if name in self.SAID and value)

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self.hidden -= 1

    def handle_data(self, data):
        if not self.hidden and data.strip():
            self.texts.append(data)


def visible_texts(html):
    parser = VisibleText()
    parser.feed(html)
    return [" ".join(text.split()) for text in parser.texts]


def english_patterns():
    """Each English sentence (or piece of one between its markup) the catalogue says otherwise in pt_PT, as a
    pattern a whole text of the page matches if it was left in English (placeholders match anything)."""
    patterns = {}
    for message in catalogue():
        if not message.id:
            continue
        for english, portuguese in forms(message):
            english_parts = [part for part in re.split(r"<[^>]+>", english)]
            portuguese_parts = set(" ".join(part.replace("&lt;", "<").replace("&gt;", ">").split())
                                   for part in re.split(r"<[^>]+>", portuguese))
            for part in english_parts:
                part = " ".join(part.replace("&lt;", "<").replace("&gt;", ">").split())
                words = PLACEHOLDER.sub("", part)
                if not re.search(r"[A-Za-z]{2}", words) or part in portuguese_parts:
                    continue  # no words of its own, or the same in both languages ("Email", "Token", "PDF")
                pieces = [re.escape(piece) for piece in PLACEHOLDER.split(part)]
                patterns[part] = re.compile(".+?".join(pieces).replace(re.escape("%%"), "%") + "$")
    return patterns


def untranslated(html, patterns):
    return sorted({text for text in visible_texts(html)
                   for english, pattern in patterns.items() if pattern.match(text)})


@pytest.fixture
def site(make_app, smtp_url, tmp_path):
    """An app with email (the notifications page's form), an admin with jobs in every state and an invitation,
    an invoice over a million, a failed job, and a folder source."""
    app = make_app(SMTP_URL=smtp_url, SMTP_FROM="pdfqueue@example.com", WEBHOOK_ALLOWED_HOSTS=["hooks.test"])
    admin = ApiClient(app.test_client(), admin=True)
    pdf, truth = make_invoice(n_lines=6, seed=0)  # its grand total is 1 453 511,88 €
    invoice = upload(admin, "fatura")
    complete_with(app, invoice["id"], converted(pdf))
    failed = upload(admin, "broken")
    finish(app, failed["id"], "failed")
    upload(admin, "waiting")
    page = admin.post("/admin/users/invite", data={"email": "nova@example.com", "csrf_token": admin.token})
    link = re.search(r'id="one-time-link" class="share-url" readonly value="([^"]+)"', page.get_data(as_text=True))
    admin.post("/tokens", data={"name": "fim do mês", "csrf_token": admin.token})
    made = admin.post("/notifications/webhooks", data={"url": "https://hooks.test/pdfqueue", "events": ["job.complete"],
                                                       "csrf_token": admin.token})
    assert made.status_code == 200 and "hooks.test/pdfqueue" in made.get_data(as_text=True)
    source = admin.post("/admin/sources", data={"url": f"folder://{tmp_path}", "owner": admin.user.email,
                                                "csrf_token": admin.token})
    assert source.status_code == 201, source.get_data(as_text=True)
    return app, admin, {"invoice": invoice["id"], "failed": failed["id"], "link": link.group(1), "truth": truth}


@pytest.fixture
def smtp_url():
    return "smtp://127.0.0.1:9"  # never called: the page only needs email to be set up


def every_page(app, admin, jobs):
    """(name, html) of every page a person reads, as the admin (or, for sign-in and a one-time link, no one) gets
    it with the given Accept-Language."""
    def pages(headers):
        anonymous = app.test_client()
        got = {
            "login": anonymous.get("/login", headers=headers),
            "link": anonymous.get(jobs["link"][jobs["link"].index("/link/"):], headers=headers),
            "upload": admin.get("/", headers=headers),
            "queue": admin.get("/queue", headers=headers),
            "queue of everyone": admin.get("/queue?owner=all", headers=headers),
            "empty view": admin.get("/queue?q=nothing-matches", headers=headers),
            "review of an invoice": admin.get(f"/review/{jobs['invoice']}", headers=headers),
            "review of a failed job": admin.get(f"/review/{jobs['failed']}", headers=headers),
            "tokens": admin.get("/tokens", headers=headers),
            "notifications": admin.get("/notifications", headers=headers),
            "deliveries": admin.get("/notifications/deliveries", headers=headers),
            "users": admin.get("/admin/users", headers=headers),
            "sources": admin.get("/admin/sources", headers=headers),
            "api docs": admin.get("/api/docs", headers=headers),
            "not found": admin.get("/review/nope", headers={**headers, "Accept": "text/html"}),
            "dead link": anonymous.get("/link/not-a-link", headers=headers),
            "bad upload": admin.post("/upload", data={"file": (io.BytesIO(pdf_bytes("x")[5:]), "not.pdf"),
                                                       "csrf_token": admin.token},
                                     headers={**headers, "Accept": "text/html"}),
        }
        for name, response in got.items():
            assert response.status_code < 500 and response.get_data(as_text=True).strip(), name
        return {name: response.get_data(as_text=True) for name, response in got.items()}
    return pages


def test_every_page_in_portuguese_leaves_no_english_sentence(site):
    app, admin, jobs = site
    pages, patterns = every_page(app, admin, jobs), english_patterns()
    english = pages(EN)
    # The check finds English where there is English: the same pages in English match dozens of sentences.
    found = {name: untranslated(html, patterns) for name, html in english.items()}
    assert all(found[name] for name in found), [name for name in found if not found[name]]
    assert sum(len(texts) for texts in found.values()) > 150
    for name, html in pages(PT).items():
        assert '<html lang="pt-PT">' in html or name == "deliveries", name  # that one a partial
        assert untranslated(html, patterns) == [], name


def test_the_scripts_sentences_come_in_the_readers_language(site):
    app, admin, _ = site
    block = re.compile(r'<script type="application/json" id="messages">(.*?)</script>', re.S)
    english = json.loads(block.search(admin.get("/queue", headers=EN).get_data(as_text=True)).group(1))
    portuguese = json.loads(block.search(admin.get("/queue", headers=PT).get_data(as_text=True)).group(1))
    assert english.keys() == portuguese.keys()
    assert english["confirm_delete"] == {"one": "Delete %(num)d job and its result?",
                                         "other": "Delete %(num)d jobs and their results?"}
    assert portuguese["confirm_delete"] == {"one": "Eliminar %(num)d tarefa e o seu resultado?",
                                            "other": "Eliminar %(num)d tarefas e os seus resultados?"}
    assert portuguese["statuses"]["queued"] == "na fila" and portuguese["locale"] == "pt-PT"
    differing = [key for key in english if key != "locale" and english[key] == portuguese[key]]
    assert differing == []


# -- numbers, money, dates and times ------------------------------------------------------------------------------


def normal(text):
    """CLDR's pt_PT groups with a no-break space (and some times with a narrow one): compare as plain spaces."""
    return text.replace("\u00a0", " ").replace("\u202f", " ")


def test_the_review_page_in_portuguese_writes_amounts_and_dates_as_a_portuguese_accountant(site):
    app, admin, jobs = site
    html = normal(admin.get(f"/review/{jobs['invoice']}", headers=PT).get_data(as_text=True))
    assert '<dd id="grand-total">1 453 511,88 €</dd>' in html
    header = jobs["truth"]["Header"]
    assert header["IssueDate"] == "2026-05-14" and '<dd id="invoice-issued">14/05/2026</dd>' in html
    assert '<dd id="invoice-due">12/08/2026</dd>' in html
    assert re.search(r'<dd id="net-total">\d{1,3}( \d{3})*,\d\d €</dd>', html)
    lines = re.findall(r'<td class="num">([^<]*)</td>', html)
    assert lines and all("." not in value for value in lines)  # 1 234,50 and 23,00 %, never 1234.50
    assert "Fatura FT" in html and "Total geral" in html and "IVA" in html
    english = normal(admin.get(f"/review/{jobs['invoice']}", headers=EN).get_data(as_text=True))
    assert '<dd id="grand-total">€1,453,511.88</dd>' in english and '<dd id="invoice-issued">May 14, 2026</dd>' in english


def test_sizes_and_durations_follow_the_reader(app):
    from webapp import i18n
    for locale, expected in (("en", ["0 B", "1,023 B", "2.0 KB", "5.0 MB", "—", "250 ms", "4.2 s", "1 min 15 s"]),
                             ("pt-PT", ["0 B", "1 023 B", "2,0 KB", "5,0 MB", "—", "250 ms", "4,2 s", "1 min 15 s"])):
        with app.test_request_context(headers={"Accept-Language": locale}):
            got = [i18n.filesize(n) for n in (0, 1023, 2048, 5 * 1024 ** 2)] + [
                i18n.seconds(s) for s in (None, 0.25, 4.25, 75)]
        assert [normal(text) for text in got] == expected, locale


def test_times_are_shown_in_default_timezone(make_app):
    app = make_app(DEFAULT_TIMEZONE="Asia/Tokyo")  # nine hours ahead of UTC all year
    client = ApiClient(app.test_client())
    job = upload(client, "tokyo")
    with app.app_context():
        created = db.session.get(Job, job["id"]).created_at
    html = normal(client.get("/queue", headers=PT).get_data(as_text=True))
    shown = normal(format_datetime(created + timedelta(hours=9), "medium", locale="pt_PT"))
    assert f'">{shown}</time>' in html and "Criada (Asia/Tokyo)" in html


# -- which language -----------------------------------------------------------------------------------------------


def test_the_language_is_the_browsers_else_default_locale(make_app):
    app = make_app()
    client = ApiClient(app.test_client())
    assert '<html lang="pt-PT">' in client.get("/", headers=PT).get_data(as_text=True)
    brazilian = client.get("/", headers={"Accept-Language": "pt-BR"}).get_data(as_text=True)
    assert '<html lang="pt-PT">' in brazilian and ">Carregar</a>" in brazilian  # the nearest we have
    french = client.get("/", headers={"Accept-Language": "fr-FR"}).get_data(as_text=True)
    assert '<html lang="en">' in french and ">Upload</a>" in french
    portuguese_default = ApiClient(make_app(DEFAULT_LOCALE="pt_PT").test_client())
    assert '<html lang="pt-PT">' in portuguese_default.get("/").get_data(as_text=True)
    assert '<html lang="en">' in portuguese_default.get("/", headers=EN).get_data(as_text=True)


def test_the_menu_keeps_the_choice_on_the_account_over_the_browsers(app, client):
    page = client.get("/queue", headers=EN).get_data(as_text=True)
    assert '<select id="language" name="locale">' in page and 'lang="pt-PT"' in page
    answer = client.post("/language", data={"locale": "pt_PT", "next": "/queue?status=failed",
                                            "csrf_token": client.token}, headers=EN)
    assert answer.status_code == 303 and answer.headers["Location"] == "/queue?status=failed"
    with app.app_context():
        assert db.session.get(User, client.user.id).locale == "pt_PT"
    html = client.get("/queue", headers=EN).get_data(as_text=True)
    assert '<html lang="pt-PT">' in html and "<h1>Fila</h1>" in html
    assert '<option value="pt_PT" lang="pt-PT" selected>' in html
    # Another browser of the same person: the account decides, not its Accept-Language.
    again = app.test_client()
    again.set_cookie(app.config["SESSION_COOKIE_NAME"], client.raw.get_cookie(app.config["SESSION_COOKIE_NAME"]).value)
    assert '<html lang="pt-PT">' in again.get("/", headers=EN).get_data(as_text=True)
    # Back to the browser's choice.
    client.post("/language", data={"locale": "", "next": "/", "csrf_token": client.token})
    assert '<html lang="en">' in client.get("/", headers=EN).get_data(as_text=True)
    with app.app_context():
        assert db.session.get(User, client.user.id).locale is None


def test_a_language_not_offered_is_refused_and_nothing_is_kept(app, client):
    answer = client.post("/language", data={"locale": "fr", "csrf_token": client.token},
                         headers={**PT, "Accept": "text/html"})
    assert answer.status_code == 400 and "Escolha uma das línguas disponíveis." in answer.get_data(as_text=True)
    with app.app_context():
        assert db.session.get(User, client.user.id).locale is None
    assert client.raw.post("/language", data={"locale": "pt_PT"}).status_code == 400  # no CSRF token


def test_before_signing_in_the_choice_is_kept_in_the_session(app):
    anonymous = app.test_client()
    login = anonymous.get("/login", headers=EN).get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', login).group(1)
    answer = anonymous.post("/language", data={"locale": "pt_PT", "next": "/login", "csrf_token": token},
                            headers={"Sec-Fetch-Site": "same-origin"})
    assert answer.status_code == 303 and answer.headers["Location"] == "/login"
    html = anonymous.get("/login", headers=EN).get_data(as_text=True)
    assert '<html lang="pt-PT">' in html and "<h1>Iniciar sessão</h1>" in html


@pytest.mark.parametrize("name, value", [("DEFAULT_LOCALE", "fr"), ("DEFAULT_LOCALE", "pt-BR"),
                                         ("DEFAULT_TIMEZONE", "Europe/Nowhere")])
def test_a_language_or_time_zone_we_do_not_have_stops_the_process(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit, match=name):
        config_module.read()


# -- errors: the API says English, the page the reader's language -------------------------------------------------


def test_the_api_answers_in_english_and_the_page_in_the_readers_language(client):
    api = client.upload((b"not a pdf", "nota.pdf"), headers=PT)
    assert api.status_code == 415
    assert api.get_json()["error"] == {"code": "NOT_PDF",
                                       "message": "nota.pdf is not a PDF (it does not start with %PDF-)."}
    page = client.post("/upload", data={"file": (io.BytesIO(b"not a pdf"), "nota.pdf"), "csrf_token": client.token},
                       headers={**PT, "Accept": "text/html"})
    html = page.get_data(as_text=True)
    assert page.status_code == 415 and "nota.pdf não é um PDF (não começa por %PDF-)." in html
    assert 'data-code="NOT_PDF"' in html


# -- live rows in the subscriber's language -----------------------------------------------------------------------


def test_live_rows_come_in_each_streams_own_language(app, live_server):
    """Two tabs of one person, one reading Portuguese and one English (no choice made, each browser's own): a row
    arriving over SSE is rendered for each in its language, though the two streams share one read of the changes."""
    browser = Browser(live_server, app)
    # One cursor for both (as two tabs resuming from the same event): the streams read each change once, together.
    cursor = (utcnow() - timedelta(seconds=2)).isoformat() + "Z"
    portuguese = browser.events(f"?html=1&last_id={cursor}", headers=PT)
    english = browser.events(f"?html=1&last_id={cursor}", headers=EN)
    job = browser.upload("live")

    def row(event, _id, data):
        return event == "row" and f'id="job-{job["id"]}"' in data

    assert '<span class="badge badge-queued">Na fila</span>' in portuguese.until(row)[2]
    assert '<span class="badge badge-queued">Queued</span>' in english.until(row)[2]
    # Chosen in the menu meanwhile: a stream opened after it speaks it, whatever the browser says.
    browser.http.post(f"{live_server}/language", data={"locale": "pt_PT", "csrf_token": browser.token})
    chosen = browser.events("?html=1", headers=EN)
    with app.app_context():
        assert claim(job["id"], "w", 30, capacity=4)
    processing = chosen.until(lambda event, _id, data: row(event, _id, data) and 'data-status="processing"' in data)
    assert '<span class="badge badge-processing">Em processamento</span>' in processing[2]
    for stream in (portuguese, english, chosen):
        stream.close()


def test_polled_rows_come_in_the_readers_language(app, client):
    since = (utcnow() - timedelta(seconds=5)).isoformat() + "Z"
    job = upload(client, "polled")
    with app.app_context():
        assert claim(job["id"], "w", 30, capacity=4)
    html = client.get(f"/queue/rows?since={since}", headers=PT).get_data(as_text=True)
    assert f'id="job-{job["id"]}"' in html and "Em processamento" in html and ">Eliminar</button>" in html
    assert "Processing" not in html


def test_streams_share_a_read_of_the_changes_only_within_one_language(app, client):
    """The rows one read renders are shared by the owner's streams woken together (webapp/stream.py): a stream in
    English never gets the rows rendered for one in Portuguese."""
    from core.changes import hub, subscribe
    from webapp.queue_view import queue_view
    from webapp.stream import Stream
    job = upload(client, "shared")
    cursor = utcnow() - timedelta(seconds=2)
    owner = client.user.id
    rows = {}
    # This process's changes only: the poll for other processes' would ring again between the two reads.
    hub(app).stop()
    with app.app_context():  # two open tabs (each request has its own context, and so its own language)
        portuguese, english = subscribe(owner), subscribe(owner)
        assert claim(job["id"], "w", 30, capacity=4)  # a change both hear of at once
    try:
        assert portuguese.wait(5) and english.wait(5)
        for name, headers, listener in (("pt", PT, portuguese), ("en", EN, english)):  # no change between them
            with app.test_request_context("/api/events?html=1", headers=headers):
                view = {**queue_view({}), "owner": owner, "owner_column": False}
                rows[name] = "".join(Stream(listener, cursor, view).changes())
    finally:
        portuguese.close()
        english.close()
    assert f'id="job-{job["id"]}"' in rows["pt"] and ">Em processamento</span>" in rows["pt"]
    assert f'id="job-{job["id"]}"' in rows["en"] and ">Processing</span>" in rows["en"]


def test_an_error_only_the_api_words_is_said_by_its_code_on_a_portuguese_page(client):
    """werkzeug's own English (a 405 here) is no sentence of ours: a Portuguese page says its code's instead."""
    portuguese = client.get("/upload", headers={**PT, "Accept": "text/html"})
    assert portuguese.status_code == 405
    assert '<p class="error-message" role="alert" data-code="METHOD_NOT_ALLOWED">Isso não se pode fazer aqui.</p>' in \
        portuguese.get_data(as_text=True)
    english = client.get("/upload", headers={**EN, "Accept": "text/html"}).get_data(as_text=True)
    assert "The method is not allowed for the requested URL." in english
    assert client.get("/api/jobs/nope", headers=PT).get_json()["error"]["message"] == "No such job."
