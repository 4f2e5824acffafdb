"""Mutated copies of the test invoices and PDFs against the real gateway (tests/support/pdfmutate.py): whatever a
file is, the answer is the contract's — a converted document or a final refusal in the JSON error shape — and never
a 5xx but 503 OVER_LIMITS; and no such small file runs a parse over its limits.

Each case is named by its seed, mutation and base PDF (00042-stream-plain); `-k 00042-` runs it alone, and
bench/bench_fuzz.py runs thousands more.
"""

import json

import defusedxml.ElementTree as SafeET
import pytest
import requests
from gwhelpers import expected, invoice_from_xml
from tests.support import pdfmutate
from tests.support.invoicegen import make_invoice

from gateway.testing import running_gateway

CASES = 300
ROOTS = {"pt_simon_invoice_v1": "Invoice", "generic_v1": "Document"}
# What a file may be told, whatever its bytes (gateway/README.md's error codes); OVER_LIMITS is asserted apart.
REFUSALS = {(400, "EMPTY_FILE"), (415, "NOT_PDF"), (422, "UNREADABLE"), (422, "ENCRYPTED"), (422, "TOO_MANY_PAGES"),
            (422, "NOTHING_FOUND"), (422, "PARSE_FAILED"), (503, "OVER_LIMITS")}
# Limits well above what a file of a few KiB needs, below the defaults so that a runaway case ends sooner. Coverage
# is left out of this gateway: a parse child cannot write its data (RLIMIT_FSIZE=0), and restarting coverage in
# each of 300 children (patch = fork) would cost this module minutes instead of seconds.
GATEWAY_ENV = {"GATEWAY_WORKERS": "1", "GATEWAY_PARSE_TIMEOUT_S": "10", "GATEWAY_PARSE_CPU_S": "5",
               "GATEWAY_PARSE_MEMORY_MB": "256", "COVERAGE_PROCESS_CONFIG": None, "COVERAGE_PROCESS_START": None}


@pytest.fixture(scope="module")
def bases():
    return pdfmutate.corpus()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    """The real gateway under gunicorn, and one session to it."""
    log_path = tmp_path_factory.mktemp("fuzz") / "gateway.log"
    with log_path.open("w") as log, running_gateway(GATEWAY_ENV, log, start_timeout=90) as url, \
            requests.Session() as session:
        yield url, session


def post(gateway, pdf, case):
    url, session = gateway
    return session.post(f"{url}/process", files={"file": ("fuzz.pdf", pdf, "application/pdf")},
                        data={"mapping": case.mapping}, headers={"Accept": case.accept, "X-Correlation-ID": case.name},
                        timeout=60)


def check_answer(response, case):
    """Assert the answer is one the contract allows for any file; return (status, code or None)."""
    assert response.headers["X-Correlation-ID"] == case.name
    if response.status_code == 200:
        if case.accept == "application/json":
            assert response.headers["Content-Type"] == "application/json"
            assert list(json.loads(response.content)) == [ROOTS[case.mapping]]
        else:
            assert response.headers["Content-Type"] == "application/xml; charset=utf-8"
            assert SafeET.fromstring(response.content).tag == ROOTS[case.mapping]
        return 200, None
    assert response.headers["Content-Type"] == "application/json", response.content[:200]
    body = json.loads(response.content)
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    code, message = body["error"]["code"], body["error"]["message"]
    assert isinstance(message, str) and message and "\n" not in message, body
    assert (response.status_code, code) in REFUSALS, f"{case.name} answered {response.status_code} {code}: {message}"
    return response.status_code, code


@pytest.mark.parametrize("case", [pdfmutate.describe(seed) for seed in range(CASES)], ids=lambda case: case.name)
def test_a_mutated_pdf_gets_a_contract_answer_within_its_limits(gateway, bases, case):
    pdf = pdfmutate.mutate(case, bases)
    _, code = check_answer(post(gateway, pdf, case), case)
    assert code != "OVER_LIMITS", f"{case.name}: a file of {len(pdf)} bytes ran its parse over its limits"


def test_the_bases_convert_before_they_are_mutated(gateway, bases):
    """The cases start from files the gateway reads: a refusal of a mutation is the mutation's doing."""
    answers = {name: post(gateway, pdf, pdfmutate.Case(0, "none", name, "pt_simon_invoice_v1", "application/xml"))
               for name, pdf in bases.items()}
    assert {name: answer.status_code for name, answer in answers.items()} == {
        "invoice": 200, "plain": 200, "twopage": 200, "xref": 200, "text": 422, "encrypted": 422}
    assert invoice_from_xml(answers["plain"].content) == expected(make_invoice(n_lines=9, seed=2)[1])


def test_a_case_is_made_again_from_its_seed(bases):
    case = pdfmutate.describe(1234)
    assert pdfmutate.describe(1234) == case and case.name.startswith("01234-")
    assert pdfmutate.mutate(case, bases) == pdfmutate.mutate(pdfmutate.describe(1234), bases)
    assert {pdfmutate.describe(seed).mutation for seed in range(CASES)} == set(pdfmutate.MUTATIONS)
