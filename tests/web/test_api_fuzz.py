"""Schemathesis against a real stack (gunicorn web, worker, our gateway) with a personal token: requests generated
from GET /api/openapi.json, every answer checked against it — no 5xx, every status, body, header and content type
as the document says, valid input accepted.

The short run is part of the suite (about half a minute, with the stack's start); `make fuzz-api` runs the long one
(`-m fuzz`: thousands of requests, and stateful sequences that follow the document's links), which CI runs too.
Webhook URLs stay on this machine and the run never revokes its own token (tests/support/fuzz_hooks.py).
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import invoicegen
from tests.support.stack import ROOT, owner_session, running_stack

CONFIG = Path(__file__).resolve().parents[1] / "support" / "schemathesis.toml"
# What the checks are: answers as documented, no 5xx, valid input accepted; 405s say Allow (RFC 9110). Never
# negative_data_rejection: the API is lenient on input by design (tests/support/schemathesis.toml says why).
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,"
          "response_schema_conformance,positive_data_acceptance,unsupported_method,allow_header_conformance")
SHORT = {"max_examples": 3, "max_time": 30, "phases": "examples,coverage,fuzzing", "checks": CHECKS}
LONG = {"max_examples": int(os.environ.get("FUZZ_API_EXAMPLES", "60")),
        "max_time": int(os.environ.get("FUZZ_API_SECONDS", "420")),
        "phases": "examples,coverage,fuzzing,stateful", "checks": "all"}


@pytest.fixture(scope="module")
def fuzz_stack():
    """A stack with limits out of the way (the run is one user sending hundreds of requests a minute), streams that
    end within seconds, and 127.0.0.1 the one webhook host allowed; an admin's token, and real jobs to find."""
    with running_stack(UPLOADS_PER_MINUTE=10000, ACTIONS_PER_MINUTE=10000, STREAM_MAX_SECONDS=2,
                       STREAMS_PER_USER=50, WEBHOOK_ALLOWED_HOSTS="127.0.0.1", WEBHOOK_POLL_SECONDS=5) as stack:
        session = owner_session(stack, admin=True)
        yield stack, session, seed(stack, session)


def seed(stack, session):
    """Jobs for the generated requests to find, as schemathesis dictionaries: one complete (and shared), one failed."""
    base = stack.web_url
    pdfs = {"complete": invoicegen.make_invoice(n_lines=3, seed=25)[0], "failed": invoicegen.make_encrypted_pdf()}
    ids = {}
    for want, pdf in pdfs.items():
        answer = session.post(f"{base}/api/upload", files={"file": (f"{want}.pdf", pdf, "application/pdf")})
        assert answer.status_code == 202, answer.text
        ids[want] = answer.json()["jobs"][0]["id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        statuses = {want: session.get(f"{base}/api/jobs/{job_id}").json()["status"] for want, job_id in ids.items()}
        if statuses == {"complete": "complete", "failed": "failed"}:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"the seed jobs did not finish: {statuses}")
    share = session.post(f"{base}/api/jobs/{ids['complete']}/share").json()["url"].rsplit("/", 1)[1]
    return {"jobs": list(ids.values()), "shares": [share]}


def run_schemathesis(stack, session, data, tmp_path, max_examples, max_time, phases, checks):
    """Run the schemathesis CLI against the stack; (its exit code, its output, requests the web answered, seconds)."""
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG.read_text() + "\n".join([
        "", "[dictionaries.jobs]", f"values = {data['jobs']!r}",
        "[dictionaries.shares]", f"values = {data['shares']!r}",
        "[parameters]",
        '"path.job_id" = { dictionary = "jobs", probability = 0.7 }',
        '"path.token" = { dictionary = "shares", probability = 0.5 }', ""]))
    token = session.headers["Authorization"]
    own_id = session.get(f"{stack.web_url}/api/tokens").json()["tokens"][0]["id"]
    before, ok_before = _requests_answered(stack), _requests_answered(stack, ok=True)
    started = time.monotonic()
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
               f"{stack.web_url}/api/openapi.json", "-H", f"Authorization: {token}",
               "--max-examples", str(max_examples), "--max-time", str(max_time), "--phases", phases,
               "--checks", checks, "--exclude-checks", "negative_data_rejection", "--seed", os.environ.get("FUZZ_API_SEED", "25"), "--no-color", "--workers", "1"]
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=max_time + 300,
                              env={**_without_coverage(os.environ), "PDFQUEUE_FUZZ_TOKEN_ID": own_id})
    seconds = time.monotonic() - started
    answered = (_requests_answered(stack) - before, _requests_answered(stack, ok=True) - ok_before)
    return finished.returncode, finished.stdout + finished.stderr, answered, seconds


def _without_coverage(environ):
    """The environment less coverage's variables: schemathesis runs none of our code, and measuring it under
    `CI=true` only slowed the generating of requests."""
    return {name: value for name, value in environ.items() if not name.startswith("COVERAGE_")}


def _requests_answered(stack, ok=False):
    """How many requests the stack's web answered so far (with ok, only those answered 2xx): its access lines."""
    lines = [json.loads(line) for line in stack.log("web").splitlines() if '"logger": "gunicorn.access"' in line]
    return sum(1 for line in lines if not ok or 200 <= line["status"] < 300)


def report(label, code, output, requests, seconds):
    """One line of figures for the log (make fuzz-api prints it), and the whole output when the run failed."""
    wanted = ("generated", "Scenarios:", "API Links:")
    summary = [line.strip() for line in output.splitlines() if any(word in line for word in wanted)]
    answered, ok = requests
    print(f"\n{label}: {answered} requests ({ok} answered 2xx) in {seconds:.0f} s, exit {code}; " + " | ".join(summary))
    assert code == 0, output[-20000:]


@pytest.mark.timeout(300)  # the stack's start (up to 90 s on a busy box), the seed jobs, then at most SHORT's max_time
def test_generated_requests_get_documented_answers(fuzz_stack, tmp_path):
    stack, session, data = fuzz_stack
    code, output, requests, seconds = run_schemathesis(stack, session, data, tmp_path, **SHORT)
    report("schemathesis (short)", code, output, requests, seconds)
    # It reached the web, and as the token's user (about 500 requests on an idle box; how many depends on the
    # box's load alone, the run stopping at max_time).
    answered, ok = requests
    assert answered > 0 and ok > 0


@pytest.mark.fuzz
@pytest.mark.timeout(LONG["max_time"] + 600)
def test_thousands_of_generated_requests_and_stateful_sequences(fuzz_stack, tmp_path):
    stack, session, data = fuzz_stack
    code, output, requests, seconds = run_schemathesis(stack, session, data, tmp_path, **LONG)
    report("schemathesis (long)", code, output, requests, seconds)
    assert requests[0] > 1000
