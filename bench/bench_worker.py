"""Worker: throughput through the app vs straight to the gateway, pickup latency after idling, worker RSS.

    .venv/bin/python bench/bench_worker.py [--idle 60] [--jobs 40] [--samples 30]

The gateway is the fake one (tests/support/fakegateway.py) answering every call in 0.25 s, so the ratio measures
what the app adds: upload, queue, claim, lease, storing the XML. bench_overhead.py has the same ratio against
our real gateway, where the app's CPU competes with the conversions'. The worker's CPU while idle is read
from /proc over the idle wait.
"""
import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_overhead import cpu_ms  # noqa: E402
from bench.figures import db_rows, rss_kib, summary, table  # noqa: E402
from tests.support.stack import owner_session, running_stack  # noqa: E402

DELAY = 0.25
CONCURRENCY = 4


def pdf(tag):
    return f"%PDF-1.4\n% bench {tag} {time.time_ns()}\n".encode() + b"0" * 20_000


def direct_calls(gateway_url, n):
    payload = pdf("direct")

    def call(i):
        response = requests.post(f"{gateway_url}/process", files={"file": ("a.pdf", payload, "application/pdf")},
                                 data={"mapping": "pt_simon_invoice_v1"}, headers={"X-Correlation-ID": f"direct-{i}"}, timeout=30)
        response.raise_for_status()

    began = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(call, range(n)))
    return time.perf_counter() - began


def through_app(stack, n):
    session = owner_session(stack)
    began = time.perf_counter()
    for i in range(n):
        assert session.post(f"{stack.web_url}/api/upload", files={"file": (f"{i}.pdf", pdf(i))}).status_code == 202
    while db_rows(stack.data_dir, "SELECT count(*) FROM jobs WHERE status != 'complete'")[0][0]:
        time.sleep(0.01)
    return time.perf_counter() - began


def pickup(stack, session):
    """Upload one file; seconds from the job's created_at (the web, as it keeps the upload) to its started_at (the
    worker's claim): both written by this box's clock. (Timed from the client's answer instead, a worker quicker
    than the answer's way back read as a negative pickup.)"""
    response = session.post(f"{stack.web_url}/api/upload", files={"file": ("p.pdf", pdf("pickup"))})
    job_id = response.json()["jobs"][0]["id"]
    while True:
        created, started = db_rows(stack.data_dir, "SELECT created_at, started_at FROM jobs WHERE id = ?", (job_id,))[0]
        if started:
            return (datetime.fromisoformat(started) - datetime.fromisoformat(created)).total_seconds()
        time.sleep(0.002)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--idle", type=float, default=60)
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with running_stack(gateway_delay=DELAY, WORKER_CONCURRENCY=CONCURRENCY, UPLOADS_PER_MINUTE=100000) as stack:
        ratios, directs, apps = [], [], []
        for _ in range(args.rounds):  # side by side, alternating, so machine noise hits both
            directs.append(direct_calls(stack.gateway_url, args.jobs))
            apps.append(through_app(stack, args.jobs))
            ratios.append(directs[-1] / apps[-1])
        session = owner_session(stack)
        time.sleep(1)  # the last round's upkeep done
        idle_began, idle_cpu = time.perf_counter(), cpu_ms(stack.procs["worker"].pid)
        time.sleep(args.idle)
        idle_cpu = (cpu_ms(stack.procs["worker"].pid) - idle_cpu) / (time.perf_counter() - idle_began)  # ms a second
        after_idle = pickup(stack, session)
        samples = []
        for _ in range(args.samples):
            time.sleep(1.5)  # past the consumer's poll back-off ceiling: every sample is an idle pickup
            samples.append(pickup(stack, session))
        worker_rss = rss_kib(stack.procs["worker"].pid, "VmHWM")
    latency, ratio = summary(samples), summary(ratios)
    table([
        (f"throughput ratio app ÷ direct ({args.jobs} jobs, {CONCURRENCY} at a time, gateway {DELAY} s; "
         f"median of {args.rounds})", "≥ 0.95",
         f"{ratio['p50']:.3f} (min {ratio['min']:.3f}, max {ratio['max']:.3f}; direct {statistics.median(directs):.2f} s, "
         f"app {statistics.median(apps):.2f} s)"),
        (f"pickup after {args.idle:.0f} s idle", "p50 ≤ 50 ms", f"{after_idle * 1000:.0f} ms"),
        (f"pickup p50 / p99 ({latency['n']} idle pickups)", "p50 ≤ 50 ms",
         f"{latency['p50'] * 1000:.0f} ms / {latency['p99'] * 1000:.0f} ms (max {latency['max'] * 1000:.0f})"),
        ("worker peak RSS", "≤ 100 MB", f"{worker_rss / 1024:.0f} MB"),
        (f"worker CPU while idle ({args.idle:.0f} s, upkeep every 5 s included)", "—",
         f"{idle_cpu:.1f} ms a second ({idle_cpu / 10:.2f} % of a core)"),
    ])


if __name__ == "__main__":
    main()
