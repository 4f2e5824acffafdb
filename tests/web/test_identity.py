"""Who is asking and CSRF (webapp/identity.py): the token is read from the header before any body."""
import io

import pytest

from tests.support.app import pdf_bytes


@pytest.fixture
def incoming(monkeypatch):
    """Every temp file a request opened for a file part, in order."""
    from webapp import uploads
    opened = []

    class Spy(uploads.IncomingFile):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            opened.append(self)

    monkeypatch.setattr(uploads, "IncomingFile", Spy)
    return opened


def test_a_multipart_post_without_the_csrf_header_is_refused_before_its_body_is_read(app, client, incoming):
    response = client.raw.post("/api/upload", data={"csrf_token": client.token,
                                                    "file": (io.BytesIO(pdf_bytes()), "a.pdf")},
                               content_type="multipart/form-data")
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "CSRF"
    assert incoming == []


def test_the_x_csrftoken_header_is_accepted_too(client):
    response = client.raw.post("/api/upload", data={"file": (io.BytesIO(pdf_bytes()), "a.pdf")},
                               headers={"X-CSRFToken": client.token}, content_type="multipart/form-data")
    assert response.status_code == 202
