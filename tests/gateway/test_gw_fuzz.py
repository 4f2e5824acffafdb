"""Mutated copies of the test invoices and PDFs against the real gateway (tests/support/pdfmutate.py): whatever a
file is, the answer is the contract's — a converted document or a final refusal in the JSON error shape — and never
a 5xx but 503 OVER_LIMITS; and no such small file runs a parse over its limits.

Each case is named by its seed, mutation and base PDF (00168-number-xref); `-k 00168-` runs it alone, and
bench/bench_fuzz.py runs thousands more.
"""

import pytest
import requests
from gwhelpers import expected, invoice_from_xml
from tests.support import pdfmutate
from tests.support.invoicegen import make_invoice

from gateway.testing import running_gateway

CASES = 300
# Time and CPU well above what a file of a few KiB needs, below the defaults so that a runaway case ends sooner;
# memory at its default 512 MiB, since a few KiB can rightly need 256 (seed 168: a MediaBox 2^31 points wide costs
# pdfium about that). Coverage is left out of this gateway: a parse child cannot write its data (RLIMIT_FSIZE=0),
# and restarting coverage in each of 300 children (patch = fork) would cost this module minutes, not seconds.
GATEWAY_ENV = {"GATEWAY_WORKERS": "1", "GATEWAY_PARSE_TIMEOUT_S": "10", "GATEWAY_PARSE_CPU_S": "5",
               "COVERAGE_PROCESS_CONFIG": None, "COVERAGE_PROCESS_START": None}


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


@pytest.mark.parametrize("case", [pdfmutate.describe(seed) for seed in range(CASES)], ids=lambda case: case.name)
def test_a_mutated_pdf_gets_a_contract_answer_within_its_limits(gateway, bases, case):
    pdf = pdfmutate.mutate(case, bases)
    response = post(gateway, pdf, case)
    assert response.headers["X-Correlation-ID"] == case.name
    code, problem = pdfmutate.judge(case, response.status_code, response.headers["Content-Type"], response.content)
    assert problem is None, f"{case.name}: {problem}"
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


@pytest.mark.parametrize("status, content_type, body", [
    (502, "application/json", b'{"error": {"code": "GATEWAY_ERROR", "message": "the parser failed"}}'),
    (500, "text/html; charset=utf-8", b"<h1>Internal Server Error</h1>"),
    (422, "application/json", b'{"error": {"code": "UNREADABLE"}}'),
    (422, "application/json", b'{"error": {"code": "UNREADABLE", "message": "two\\nlines"}}'),
    (422, "application/json", b'{"error": {"code": "UNREADABLE", "message": "m"}, "trace": "..."}'),
    (200, "application/xml; charset=utf-8", b"<Invoice><open></Invoice>"),
    (200, "application/xml; charset=utf-8", b"<Document/>"),  # the other mapping's root
    (200, "application/json", b'{"Invoice": {}}'),  # XML was asked for
])
def test_the_judge_of_an_answer_refuses_what_the_contract_does_not_allow(status, content_type, body):
    case = pdfmutate.Case(0, "none", "invoice", "pt_simon_invoice_v1", "application/xml")
    assert pdfmutate.judge(case, status, content_type, body)[1] is not None
    assert pdfmutate.judge(case, 422, "application/json",
                           b'{"error": {"code": "PARSE_FAILED", "message": "m"}}') == ("PARSE_FAILED", None)
    assert pdfmutate.judge(case, 200, "application/xml; charset=utf-8", b"<Invoice/>") == (None, None)
