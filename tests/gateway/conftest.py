"""Fixtures for the gateway: the Flask app and test client, and a real gunicorn gateway on loopback."""

import io
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

from gateway import create_app  # noqa: E402
from gateway.testing import running_gateway  # noqa: E402


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


@dataclass
class LiveGateway:
    url: str
    log_path: Path

    def log_lines(self):
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.startswith("{")]


@pytest.fixture(scope="session")
def live_gateway(tmp_path_factory):
    """A real gunicorn gateway on a free loopback port, with tight limits, logging to a file."""
    log_path = tmp_path_factory.mktemp("gateway") / "gateway.log"
    env = {"GATEWAY_WORKERS": "2", "GATEWAY_PARSE_MEMORY_MB": "256", "GATEWAY_PARSE_TIMEOUT_S": "15",
           "GATEWAY_PARSE_CPU_S": "10"}
    with log_path.open("w") as log, running_gateway(env, log) as url:
        yield LiveGateway(url, log_path)
