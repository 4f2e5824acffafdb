"""Fixtures for the gateway: the Flask app and test client, and a real gunicorn gateway on loopback."""

import io
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
# tests/ holds invoicegen.py, shared with the other test suites; make it importable from here too.
sys.path.insert(0, str(ROOT / "tests"))

from gateway import create_app  # noqa: E402


@pytest.fixture
def app():
    return create_app({"PARSE_TIMEOUT_S": 20})


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def convert(client):
    """POST a PDF to /process through the test client; returns the response."""
    def post(pdf, mapping="pt_simon_invoice_v1", headers=None, **form):
        data = {"file": (io.BytesIO(pdf), "upload.pdf", "application/pdf"), "mapping": mapping, **form}
        return client.post("/process", data=data, headers=headers or {})
    return post


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveGateway:
    url: str
    log_path: Path

    def log_lines(self):
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.startswith("{")]


@pytest.fixture(scope="session")
def live_gateway(tmp_path_factory):
    """A real gunicorn gateway on a free loopback port, with tight limits, logging to a file."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("gateway") / "gateway.log"
    log_file = log_path.open("w")
    env = {**os.environ, "GATEWAY_PORT": str(port), "GATEWAY_WORKERS": "2", "GATEWAY_PARSE_MEMORY_MB": "256",
           "GATEWAY_PARSE_TIMEOUT_S": "15", "GATEWAY_PARSE_CPU_S": "10"}
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gateway/gunicorn.conf.py", "gateway.wsgi:app"],
        cwd=ROOT, env=env, stdout=log_file, stderr=log_file,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"gateway did not start: {log_path.read_text()[-2000:]}")
        time.sleep(0.1)
    yield LiveGateway(url, log_path)
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
    log_file.close()
