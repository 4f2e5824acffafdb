"""Hostile and oversized files against a real gunicorn gateway: each gets the contract's code, and the
gateway keeps serving."""

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
import requests
from gwhelpers import expected, invoice_from_xml
from tests.support.invoicegen import (make_broken_xref_pdf, make_encrypted_pdf, make_flate_bomb_pdf, make_invoice,
                        make_page_tree_loop_pdf, make_png_bytes, make_truncated_pdf, make_zero_page_pdf)

FIFTY_MIB = 50 << 20

HOSTILE = {
    "flate bomb": (lambda: make_flate_bomb_pdf(gib=4), 503, "OVER_LIMITS"),
    "truncated": (make_truncated_pdf, 422, "UNREADABLE"),
    "page tree loop": (make_page_tree_loop_pdf, 422, "UNREADABLE"),
    "password": (make_encrypted_pdf, 422, "ENCRYPTED"),
    "zero pages": (make_zero_page_pdf, 422, "UNREADABLE"),
    "png named .pdf": (make_png_bytes, 415, "NOT_PDF"),
    "50 MiB + 1 byte": (lambda: one_byte_over(), 413, "TOO_LARGE"),
}


def one_byte_over():
    return b"%PDF-1.7\n" + b"\0" * (FIFTY_MIB + 1 - 9)


def post(url, pdf, mapping="pt_simon_invoice_v1", **headers):
    return requests.post(f"{url}/process", files={"file": ("upload.pdf", pdf, "application/pdf")},
                         data={"mapping": mapping}, headers=headers, timeout=60)


def assert_healthy(url):
    response = requests.get(f"{url}/healthz", timeout=5)
    assert response.status_code == 200 and response.json()["status"] == "ok"


@pytest.mark.parametrize("mapping", ["pt_simon_invoice_v1", "generic_v1"])
@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_file_gets_its_code_and_gateway_survives(live_gateway, name, mapping):
    make, status, code = HOSTILE[name]
    response = post(live_gateway.url, make(), mapping, **{"X-Correlation-ID": f"hostile-{name}"})
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.headers["X-Correlation-ID"] == f"hostile-{name}"
    assert_healthy(live_gateway.url)


def test_malformed_xref_is_rebuilt_and_converts(live_gateway):
    pdf, truth = make_broken_xref_pdf(n_lines=30, seed=12)
    response = post(live_gateway.url, pdf)
    assert response.status_code == 200
    assert invoice_from_xml(response.content) == expected(truth)


def test_oversized_file_is_one_byte_over():
    assert len(one_byte_over()) == FIFTY_MIB + 1


def test_still_converts_after_hostile_files(live_gateway):
    for make, _, _ in HOSTILE.values():
        post(live_gateway.url, make())
    pdf, truth = make_invoice(n_lines=20, seed=31)
    response = post(live_gateway.url, pdf)
    assert response.status_code == 200
    assert invoice_from_xml(response.content) == expected(truth)


def test_failures_are_logged_with_the_correlation_id(live_gateway):
    post(live_gateway.url, make_flate_bomb_pdf(gib=4), **{"X-Correlation-ID": "bomb-log"})
    deadline = time.monotonic() + 5
    while not (lines := [line for line in live_gateway.log_lines() if line.get("correlation_id") == "bomb-log"]):
        assert time.monotonic() < deadline, "no log line for the request"
        time.sleep(0.1)
    (line,) = lines
    assert (line["status"], line["error"], line["mapping"]) == (503, "OVER_LIMITS", "pt_simon_invoice_v1")
    assert line["bytes"] > 0 and line["duration_ms"] > 0


def test_oversized_upload_is_refused_before_the_body_is_read(live_gateway):
    """Content-Length over the limit gets 413 at once; the client never sends the 200 MiB."""
    address = urlsplit(live_gateway.url)
    with socket.create_connection((address.hostname, address.port), timeout=5) as sock:
        sock.sendall(b"POST /process HTTP/1.1\r\nHost: gateway\r\n"
                     b"Content-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: %d\r\n\r\n--b\r\n" % (200 << 20))
        head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 413")
    assert b'"TOO_LARGE"' in head or b"application/json" in head
    assert_healthy(live_gateway.url)


def test_chunked_upload_over_the_limit_is_cut_off(live_gateway):
    """Without a Content-Length the body is read only up to the limit, then refused."""
    def body():
        yield (b'--b\r\nContent-Disposition: form-data; name="mapping"\r\n\r\ngeneric_v1\r\n--b\r\n'
               b'Content-Disposition: form-data; name="file"; filename="big.pdf"\r\n\r\n%PDF-1.7\n')
        for _ in range(51):
            yield bytes(1 << 20)
        yield b"\r\n--b--\r\n"
    response = requests.post(f"{live_gateway.url}/process", data=body(), timeout=60,
                             headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "TOO_LARGE"
    assert_healthy(live_gateway.url)


def test_four_concurrent_clients(live_gateway):
    invoices = [make_invoice(n_lines=80, seed=seed) for seed in range(8)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        responses = list(pool.map(lambda invoice: post(live_gateway.url, invoice[0]), invoices))
    for response, (_, truth) in zip(responses, invoices):
        assert response.status_code == 200
        assert invoice_from_xml(response.content) == expected(truth)


def test_the_gateway_answers_healthz_while_its_only_worker_parses_a_bomb():
    import threading
    import requests
    from gateway.testing import running_gateway
    from tests.support.invoicegen import make_flate_bomb_pdf
    bomb = make_flate_bomb_pdf(gib=4)
    # Memory enough that the bomb runs until its wall-time cap, which is long.
    env = {"GATEWAY_WORKERS": "1", "GATEWAY_PARSE_MEMORY_MB": "4096", "GATEWAY_PARSE_CPU_S": "4",
           "GATEWAY_PARSE_TIMEOUT_S": "4"}
    with running_gateway(env) as url:
        answers = []
        parsing = threading.Thread(target=lambda: answers.append(requests.post(
            f"{url}/process", files={"file": ("a.pdf", bomb, "application/pdf")},
            data={"mapping": "pt_simon_invoice_v1"}, timeout=60)))
        parsing.start()
        time.sleep(1)  # the bomb is in its child by now
        health = requests.get(f"{url}/healthz", timeout=30)
        assert health.status_code == 200 and parsing.is_alive()  # answered while the parse still ran
        parsing.join()
    assert answers[0].status_code == 503 and answers[0].json()["error"]["code"] == "OVER_LIMITS"
