"""Memory of each process after real work: web, worker and our gateway, with the worker converting real invoices.

    .venv/bin/python bench/bench_memory.py [--invoices 20]

The stack runs our gateway (not the fake), so the worker stores real XML, including a 510-line invoice's.
Peak RSS is VmHWM from /proc; gunicorn's figures are its master plus each of its worker processes.
"""
import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.figures import rss_kib, table  # noqa: E402
from tests.support.invoicegen import make_invoice  # noqa: E402
from tests.support.stack import children, owner_session, running_stack  # noqa: E402


def peak_mb(pid):
    return rss_kib(pid, "VmHWM") / 1024


def gunicorn_mb(pid):
    """'total (master + workers)' peak RSS of a gunicorn and its workers, in MB."""
    workers = [peak_mb(child) for child in children(pid)]
    master = peak_mb(pid)
    return f"{master + sum(workers):.0f} MB (master {master:.0f} + {len(workers)} × {max(workers, default=0):.0f})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--invoices", type=int, default=20)
    args = parser.parse_args()
    pdfs = [make_invoice(n_lines=510, seed=510)[0]] + [make_invoice(n_lines=12, seed=n)[0] for n in range(args.invoices - 1)]
    with running_stack(UPLOADS_PER_MINUTE=100000, GATEWAY_TIMEOUT=60) as stack:
        session = owner_session(stack)
        began = time.perf_counter()
        for n, pdf in enumerate(pdfs):
            response = session.post(f"{stack.web_url}/api/upload", files={"file": (f"{n}.pdf", pdf, "application/pdf")})
            response.raise_for_status()
        while True:
            jobs = session.get(f"{stack.web_url}/api/jobs?limit=200").json()["jobs"]
            if all(job["status"] in ("complete", "failed") for job in jobs):
                break
            time.sleep(0.2)
        elapsed = time.perf_counter() - began
        failed = sum(job["status"] == "failed" for job in jobs)
        worker = peak_mb(stack.procs["worker"].pid)
        gateway = gunicorn_mb(stack.procs["gateway"].pid)
        web = gunicorn_mb(stack.procs["web"].pid)
    table([
        (f"worker peak RSS, real gateway ({len(pdfs)} invoices incl. one of 510 lines)", "≤ 100 MB",
         f"{worker:.0f} MB ({len(pdfs)} jobs in {elapsed:.1f} s, {failed} failed)"),
        ("gateway peak RSS (gunicorn, after the same work)", "—", gateway),
        ("web peak RSS (gunicorn, after the same work)", "—", web),
    ])


if __name__ == "__main__":
    main()
