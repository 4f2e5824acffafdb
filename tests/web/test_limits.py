"""Rate limits (webapp/limits.py): file parts charged, actions limited, clients keyed by address (IPv6 by /64)."""
import io

import pytest

from tests.support.app import ApiClient, pdf_bytes, upload


def test_every_file_part_is_charged_whatever_its_name(make_app):
    client = ApiClient(make_app(UPLOADS_PER_MINUTE=3).test_client())
    data = {"file": (io.BytesIO(pdf_bytes("a")), "a.pdf"),
            **{f"other{n}": (io.BytesIO(pdf_bytes(str(n))), f"{n}.pdf") for n in range(3)}}
    response = client.post("/api/upload", data=data, content_type="multipart/form-data")
    assert response.status_code == 429


@pytest.mark.parametrize("method, path", [("post", "/api/jobs/{id}/retry"), ("post", "/api/jobs/{id}/share"),
                                          ("delete", "/api/jobs/{id}/share"), ("post", "/api/tokens")])
def test_actions_are_rate_limited(make_app, fake, method, path):
    app = make_app(GATEWAY_URL=fake.url, ACTIONS_PER_MINUTE=2)
    client = ApiClient(app.test_client())
    job = upload(client)
    statuses = [getattr(client, method)(path.format(id=job["id"]), json={"name": "t"}).status_code for _ in range(3)]
    assert statuses[2] == 429 and 429 not in statuses[:2]


def test_ipv6_clients_are_keyed_by_their_64(make_app):
    app = make_app(UPLOADS_PER_MINUTE=1)  # the address limit: 6 files a minute
    statuses = []
    for n in range(8):
        flask_client = app.test_client()
        flask_client.environ_base["REMOTE_ADDR"] = f"2001:db8:1:2::{n + 1:x}"
        statuses.append(ApiClient(flask_client).upload((pdf_bytes(str(n)), f"{n}.pdf")).status_code)
    assert statuses[:6] == [202] * 6 and statuses[6:] == [429, 429]


def test_client_address_keys():
    from flask import Flask
    from webapp.limits import client_address
    app = Flask(__name__)
    for raw, key in [("192.0.2.7", "192.0.2.7"), ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
                     ("::ffff:192.0.2.7", "192.0.2.7")]:
        with app.test_request_context(environ_base={"REMOTE_ADDR": raw}):
            assert client_address() == key


def test_bulk_is_limited_per_address_too_ipv6_by_its_64(make_app):
    app = make_app()
    statuses = []
    for person in range(5):  # each under the per-user 30 a minute; together over the address's 120
        flask_client = app.test_client()
        flask_client.environ_base["REMOTE_ADDR"] = f"2001:db8:7:7::{person + 1:x}"
        client = ApiClient(flask_client)
        statuses += [client.post("/api/jobs/bulk", json={"action": "retry", "ids": ["nope"]}).status_code
                     for _ in range(25)]
    assert 429 not in statuses[:120] and set(statuses[120:]) == {429}
