"""How many open SSE streams one web process holds while a status change reaches all of them.

Starts the web app under the project's gunicorn.conf.py (once per worker class) in a temporary DATA_DIR,
opens N streams on loopback for one owner (the worst case: every stream must get every change; STREAMS_PER_USER
and STREAMS_PER_ADDRESS are lifted, as they are a policy and this measures capacity), then changes a job from
this process the way the worker does (another process, so the change travels through
the event hub's database poll, or Redis with --redis). Meanwhile a client times ordinary GET /api/jobs.

    .venv/bin/python bench/bench_sse.py [--streams 500] [--changes 5] [--classes gevent,gthread] [--redis]

Targets: 500 streams held, delivery p95 <= 1 s to all of them, ordinary API p95 <= 200 ms meanwhile.
"""
import argparse
import asyncio
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values, fraction):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(fraction * (len(values) - 1))))] if values else float("nan")


def start_web(data_dir, worker_class, extra_env):
    port = free_port()
    env = {**os.environ, "DATA_DIR": str(data_dir), "PORT": str(port), "HOST": "127.0.0.1", "SECRET_KEY": "bench-secret-key-0123456789abcdefghijklmnop",
           "WEB_WORKER_CLASS": worker_class, "LOG_LEVEL": "WARNING", "GATEWAY_URL": "http://127.0.0.1:9",
           # What is measured is what one web process holds; one person in many tabs, from one address, is the
           # worst case for the fan-out, so the per-person and per-address caps (10 and 30 by default) are lifted.
           "STREAMS_PER_USER": "100000", "STREAMS_PER_ADDRESS": "100000",
           **extra_env}
    subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    log = open(data_dir / "web.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--access-logfile", "/dev/null",
                                "wsgi:app"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(f"{url}/api/healthz", timeout=2)
            return process, url, port
        except requests.RequestException:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("the web app did not start; see " + str(data_dir / "web.log"))
            time.sleep(0.1)


async def open_stream(port, cookie, opened, received, marker_times):
    """Open one stream; note when it is open and when each change's event arrives."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write((f"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n"
                  "Accept: text/event-stream\r\n\r\n").encode())
    await writer.drain()
    arrivals = {}
    try:
        while True:
            line = await reader.readline()
            if not line:
                return
            if line.startswith(b": ping"):
                opened.append(time.monotonic())
            elif b'"progress": ' in line:
                progress = int(line.split(b'"progress": ')[1].split(b",")[0])
                if progress in marker_times and progress not in arrivals:
                    arrivals[progress] = time.monotonic()
                    received.append(arrivals[progress] - marker_times[progress])
    finally:
        writer.close()


def api_timer(url, cookie, stop, latencies):
    """Time GET /api/jobs back to back until stop is set."""
    http = requests.Session()
    http.headers["Cookie"] = cookie
    while not stop.is_set():
        started = time.monotonic()
        try:
            http.get(f"{url}/api/jobs", timeout=10).raise_for_status()
            latencies.append(time.monotonic() - started)
        except requests.RequestException:
            latencies.append(10.0)
        time.sleep(0.02)


def run(worker_class, n_streams, n_changes, extra_env):
    from webapp import create_app
    from core.jobs.model import Job

    data_dir = Path(tempfile.mkdtemp(prefix="bench-sse-"))
    process, url, port = start_web(data_dir, worker_class, extra_env)
    try:
        from tests.support.people import signed_in
        worker_app = create_app({"DATA_DIR": str(data_dir), "SECRET_KEY": "bench-secret-key-0123456789abcdefghijklmnop", "HUEY_MEMORY": True, **extra_env})
        _, signed = signed_in(worker_app)  # one person, signed in, watching the queue from many tabs
        http = requests.Session()
        http.cookies.set("session", signed, domain="127.0.0.1", path="/")
        token = http.get(f"{url}/api/session").json()["csrf_token"]
        cookie = "session=" + http.cookies["session"]  # now carrying the CSRF token too
        job = http.post(f"{url}/api/upload", headers={"X-CSRF-Token": token},
                        files={"file": ("bench.pdf", b"%PDF-1.4\n% bench\n%%EOF\n")}).json()["jobs"][0]

        opened, received, marker_times = [], [], {}
        latencies, stop = [], threading.Event()

        async def scenario():
            tasks = [asyncio.create_task(open_stream(port, cookie, opened, received, marker_times))
                     for _ in range(n_streams)]
            deadline = time.monotonic() + 20
            while len(opened) < n_streams and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            held = len(opened)
            timer = threading.Thread(target=api_timer, args=(url, cookie, stop, latencies), daemon=True)
            timer.start()
            await asyncio.sleep(1)
            with worker_app.app_context():
                Job.claim_next("bench", 600, capacity=10)
                for n in range(n_changes):
                    progress = 20 + n
                    marker_times[progress] = time.monotonic()
                    await asyncio.to_thread(Job.renew_lease, job["id"], "bench", 600, progress)
                    await asyncio.sleep(2)
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            return held

        held = asyncio.run(scenario())
        expected = held * n_changes
        return {"class": worker_class, "held": held, "delivered": f"{len(received)}/{expected}",
                "p50": percentile(received, 0.5), "p95": percentile(received, 0.95), "max": max(received or [float("nan")]),
                "api_p50": percentile(latencies, 0.5), "api_p95": percentile(latencies, 0.95), "api_n": len(latencies)}
    finally:
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(data_dir, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--changes", type=int, default=5)
    parser.add_argument("--classes", default="gevent,gthread")
    parser.add_argument("--redis", action="store_true", help="fan out through a throwaway redis-server")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.streams * 2 + 256)), hard))
    print(f"ulimit -n: {resource.getrlimit(resource.RLIMIT_NOFILE)[0]} (each stream is a socket at both ends)")
    extra_env, redis_proc = {}, None
    if args.redis:
        redis_port = free_port()
        redis_proc = subprocess.Popen(["redis-server", "--port", str(redis_port), "--save", ""], stdout=subprocess.DEVNULL)
        time.sleep(0.5)
        extra_env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
    try:
        rows = [run(worker_class, args.streams, args.changes, extra_env) for worker_class in args.classes.split(",")]
    finally:
        if redis_proc:
            redis_proc.terminate()
    print(f"\n{args.streams} streams requested, {args.changes} status changes, one owner, "
          f"fan-out via {'redis' if args.redis else 'database poll'}")
    print(f"{'worker class':<14}{'held':>6}{'delivered':>12}{'p50 s':>8}{'p95 s':>8}{'max s':>8}"
          f"{'api p50 ms':>12}{'api p95 ms':>12}{'api n':>7}")
    for row in rows:
        print(f"{row['class']:<14}{row['held']:>6}{row['delivered']:>12}{row['p50']:>8.3f}{row['p95']:>8.3f}"
              f"{row['max']:>8.3f}{row['api_p50'] * 1000:>12.1f}{row['api_p95'] * 1000:>12.1f}{row['api_n']:>7}")


if __name__ == "__main__":
    main()
