"""Uploads: 100 concurrent 1 MB uploads (latency, errors), and web memory while a 50 MB upload streams in.

    .venv/bin/python bench/bench_uploads.py
"""
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.figures import rss_kib, summary, table  # noqa: E402
from tests.support.stack import children, owner_session, running_stack  # noqa: E402

CONCURRENCY = 100
MB = 1024 * 1024


def pdf_of(size, tag):
    head = f"%PDF-1.4\n% {tag}\n".encode()
    return head + os.urandom(size - len(head))


def concurrent_uploads(stack):
    web_url = stack.web_url
    sessions = [owner_session(stack) for _ in range(CONCURRENCY)]
    payloads = [pdf_of(MB, n) for n in range(CONCURRENCY)]
    start = threading.Barrier(CONCURRENCY)

    def one(n):
        start.wait()
        began = time.perf_counter()
        response = sessions[n].post(f"{web_url}/api/upload", files={"file": (f"{n}.pdf", payloads[n], "application/pdf")}, timeout=120)
        return time.perf_counter() - began, response.status_code

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        results = list(pool.map(one, range(CONCURRENCY)))
    latencies = [seconds for seconds, status in results if status == 202]
    errors = sum(1 for _, status in results if status != 202)
    return summary(latencies), errors


def big_upload_memory(stack):
    web = stack.procs["web"].pid
    worker_pid = (children(web) or [web])[0]  # gunicorn's worker process holds the request
    session = owner_session(stack)
    body = pdf_of(50 * MB - 1024, "big")
    baseline = rss_kib(worker_pid)
    peak, done = [baseline], threading.Event()

    def sample():
        while not done.is_set():
            peak.append(rss_kib(worker_pid))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    began = time.perf_counter()
    response = session.post(f"{stack.web_url}/api/upload", files={"file": ("big.pdf", body, "application/pdf")}, timeout=300)
    elapsed = time.perf_counter() - began
    done.set()
    sampler.join()
    return response.status_code, elapsed, baseline, max(peak)


def main():
    with running_stack(workers=0, UPLOADS_PER_MINUTE=100000) as stack:
        # warm the process (imports, first connections) so the figures are steady-state
        owner_session(stack).post(f"{stack.web_url}/api/upload", files={"file": ("w.pdf", pdf_of(1024, "warm"))})
        status, elapsed, baseline, peak = big_upload_memory(stack)
        latency, errors = concurrent_uploads(stack)
    table([
        ("100 concurrent 1 MB uploads: p50 / p95", "—", f"{latency['p50'] * 1000:.0f} ms / {latency['p95'] * 1000:.0f} ms (min {latency['min'] * 1000:.0f}, max {latency['max'] * 1000:.0f})"),
        ("100 concurrent 1 MB uploads: errors", "0", f"{errors}"),
        ("50 MB upload: time", "—", f"{elapsed:.2f} s (status {status})"),
        ("50 MB upload: web RSS growth", "≤ 20 MB", f"{(peak - baseline) / 1024:.1f} MB (from {baseline / 1024:.0f} MB)"),
    ])


if __name__ == "__main__":
    main()
