"""Webhooks: how soon a completed job's signed event reaches a receiver, and how many deliveries a second one
worker sends.

    .venv/bin/python bench/bench_webhooks.py [--jobs 20] [--events 2000]

Real processes (tests/support/stack.py: gunicorn web, worker.py, the fake gateway answering in 50 ms) and a receiver
on loopback (tests/support/receiver.py, HTTP/1.1, keep-alive). Latency: upload one file at a time and time from the
job's completed_at to the receiver having its verified event. Throughput: write --events events into the
outbox in one transaction and time until the receiver has every one, from the commit (so the deliverer's
poll, at most WEBHOOK_POLL_SECONDS, is inside the figure).
"""
import argparse
import json
import sqlite3
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from standardwebhooks import Webhook  # noqa: E402

from bench.figures import summary, table  # noqa: E402
from tests.support.receiver import Receiver  # noqa: E402
from tests.support.stack import owner_session, running_stack  # noqa: E402


def pdf(tag):
    return f"%PDF-1.4\n% bench {tag} {time.time_ns()}\n".encode() + b"0" * 2_000


def latencies(stack, session, receiver, secret, n):
    samples = []
    for i in range(n):
        before = len(receiver.received)
        assert session.post(f"{stack.web_url}/api/upload", files={"file": (f"{i}.pdf", pdf(i))}).status_code == 202
        deadline = time.monotonic() + 30
        while len(receiver.received) <= before and time.monotonic() < deadline:
            time.sleep(0.002)
        arrived = datetime.now(timezone.utc)
        headers, body = receiver.received[before]
        payload = Webhook(secret).verify(body, headers)
        completed = datetime.fromisoformat(payload["data"]["completed_at"].replace("Z", "+00:00"))
        samples.append((arrived - completed).total_seconds())
    return samples


def throughput(stack, hook_id, owner, receiver, n):
    """Seconds from committing n outbox events to the receiver having them all."""
    now = datetime.now(timezone.utc).replace(tzinfo=None).isoformat(sep=" ")
    body = json.dumps({"type": "job.complete", "timestamp": now, "data": {"id": "bench"}})
    rows = [(f"msg_bench_{i}", hook_id, owner, "job.complete", "bench", body, "pending", 0, now, now) for i in range(n)]
    before = len(receiver.ids())
    with sqlite3.connect(stack.data_dir / "instance" / "pdfqueue.db", timeout=15) as connection:
        connection.executemany("INSERT INTO outbox (id, subscription_id, owner, type, job_id, payload, state, attempts,"
                               " created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    began = time.perf_counter()
    deadline = time.monotonic() + 300
    while len(receiver.ids()) < before + n and time.monotonic() < deadline:
        time.sleep(0.01)
    return time.perf_counter() - began, len(receiver.ids()) - before


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--events", type=int, default=2000)
    args = parser.parse_args()
    receiver = Receiver().start()
    try:
        with running_stack(gateway_delay=0.05, WEBHOOK_ALLOWED_HOSTS="127.0.0.1", UPLOADS_PER_MINUTE=100000,
                           LOG_LEVEL="WARNING") as stack:
            session = owner_session(stack)
            made = session.post(f"{stack.web_url}/api/webhooks", json={"url": receiver.url + "/hook",
                                                                       "events": ["job.complete"]}).json()
            samples = latencies(stack, session, receiver, made["secret"], args.jobs)
            seconds, got = throughput(stack, made["id"], session.user.id, receiver, args.events)
            concurrency = 4
    finally:
        receiver.stop()
    latency = summary(samples)
    table([
        (f"completion → signed job.complete at the receiver ({latency['n']} jobs, one at a time)", "p95 ≤ 1 s",
         f"{latency['p95']:.3f} s (p50 {latency['p50']:.3f}, max {latency['max']:.3f})"),
        (f"webhook deliveries per second, one worker ({got} of {args.events} events, WEBHOOK_CONCURRENCY "
         f"{concurrency}, from the outbox commit)", "—", f"{got / seconds:.0f} per s ({seconds:.2f} s)"),
    ])


if __name__ == "__main__":
    main()
