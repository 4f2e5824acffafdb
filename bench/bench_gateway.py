"""Benchmark the embedded gateway: start it under gunicorn on a free loopback port, time conversions, stop it.

    .venv/bin/python bench/bench_gateway.py [--runs 9] [--requests 40]

Prints one table: the round trip for a 510-line invoice (target <= 0.5 s) and a 1-page one, the in-process
stages of the 510-line parse, and requests per second with 4 concurrent clients.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.figures import table  # noqa: E402
from gateway import engine, mappings, render  # noqa: E402
from gateway.pdftext import read_pdf  # noqa: E402
from gateway.testing import running_gateway  # noqa: E402
from tests.support.invoicegen import make_invoice  # noqa: E402

TARGET_S = 0.5
CLIENTS = 4


def post(session, url, pdf, mapping="pt_simon_invoice_v1"):
    response = session.post(f"{url}/process", files={"file": ("bench.pdf", pdf, "application/pdf")},
                            data={"mapping": mapping}, timeout=60)
    response.raise_for_status()
    return response


def timed(func, runs):
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        func()
        times.append(time.perf_counter() - started)
    return times


def row(label, times, target=None):
    median = statistics.median(times)
    verdict = "" if target is None else ("ok" if median <= target else "OVER TARGET")
    target_text = "" if target is None else f"<= {target:g} s"
    return f"{label:<44} {median:>9.3f} s   {min(times):.3f}–{max(times):.3f} s   {target_text:<9} {verdict}"


def throughput(url, pdf, total):
    def one(_):
        with requests.Session() as session:
            post(session, url, pdf)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        list(pool.map(one, range(total)))
    return total / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9, help="timed runs per row (median reported)")
    parser.add_argument("--requests", type=int, default=40, help="requests per throughput row")
    args = parser.parse_args()

    big, big_truth = make_invoice(n_lines=510, seed=510)
    small, small_truth = make_invoice(n_lines=12, seed=1)
    mapping = mappings.load_all()["pt_simon_invoice_v1"]

    rows = []
    document = read_pdf(big)
    rows.append(row("in-process: pdfium read, 510 lines", timed(lambda: read_pdf(big), args.runs)))
    rows.append(row("in-process: mapping, 510 lines",
                    timed(lambda: engine.apply_mapping(mapping, document), args.runs)))
    tree = engine.apply_mapping(mapping, document)
    rows.append(row("in-process: XML, 510 lines", timed(lambda: render.to_xml(tree), args.runs)))

    with tempfile.NamedTemporaryFile("w", prefix="bench-gateway-", suffix=".log", delete=False) as log, \
            running_gateway(log=log) as url, requests.Session() as session:
        for _ in range(3):  # warm every worker
            post(session, url, small)
        big_times = timed(lambda: post(session, url, big), args.runs)
        small_times = timed(lambda: post(session, url, small), args.runs)
        rows.append(row(f"HTTP: 510-line invoice ({big_truth['pages']} pages, {len(big) // 1024} KiB)", big_times, TARGET_S))
        rows.append(row(f"HTTP: 1-page invoice ({small_truth['pages']} page, 12 lines)", small_times))
        rows.append(row("HTTP: 510-line invoice as generic_v1",
                        timed(lambda: post(session, url, big, "generic_v1"), args.runs)))
        small_rps = throughput(url, small, args.requests)
        big_rps = throughput(url, big, max(8, args.requests // 4))

    print(f"gateway benchmark — {os.cpu_count()} cores, gunicorn on loopback, median of {args.runs} runs")
    print(f"{'what':<44} {'median':>11}   {'min–max':<15} {'target':<9} verdict")
    print("\n".join(rows))
    print(f"{f'{CLIENTS} concurrent clients, 1-page invoice':<44} {small_rps:>7.1f} req/s")
    print(f"{f'{CLIENTS} concurrent clients, 510-line invoice':<44} {big_rps:>7.1f} req/s")
    print()
    table([
        ("gateway round trip, 510-line invoice", f"≤ {TARGET_S:g} s", spread(big_times)),
        ("gateway round trip, 1-page invoice", "—", spread(small_times)),
        (f"gateway throughput, {CLIENTS} clients, 1-page invoice", "—", f"{small_rps:.1f} req/s"),
        (f"gateway throughput, {CLIENTS} clients, 510-line invoice", "—", f"{big_rps:.1f} req/s"),
    ])


def spread(times):
    return f"{statistics.median(times):.3f} s (min {min(times):.3f}, max {max(times):.3f}; {len(times)} runs)"


if __name__ == "__main__":
    main()
