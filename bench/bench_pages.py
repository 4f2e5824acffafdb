"""Time to first byte of the dashboard and the jobs API with 100k jobs in the table, 10k of them mine.

Migrates a temporary DATA_DIR, starts the web app under the project's gunicorn.conf.py, takes an owner
from its session, inserts the rows with one executemany, prints the query plans of the reads the pages
make, then times each URL.

    .venv/bin/python bench/bench_pages.py [--jobs 100000] [--mine 10000] [--requests 200]

Target: p95 <= 50 ms for /queue and /api/jobs, filtered (status, a file-name search that matches a few jobs or
none, so every one of my jobs is read) and on later pages of a filter.
"""
import argparse
import random
import secrets
import sqlite3
import statistics
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_sse import percentile, start_web  # noqa: E402

STATUSES = ["complete"] * 80 + ["failed"] * 8 + ["queued"] * 8 + ["processing"] * 4


def fill(db_path, owner, total, mine):
    """Insert total jobs, mine of them for owner, spread over the last 30 days."""
    rnd = random.Random(7)
    now = datetime.utcnow()
    others = [secrets.token_urlsafe(16) for _ in range(200)]
    rows = []
    for n in range(total):
        created = now - timedelta(seconds=rnd.uniform(0, 30 * 86400))
        status = rnd.choice(STATUSES)
        started = created + timedelta(seconds=rnd.uniform(0, 5)) if status != "queued" else None
        done = started + timedelta(seconds=rnd.uniform(0.2, 9)) if status in ("complete", "failed") else None
        stamp = lambda value: value and value.strftime("%Y-%m-%d %H:%M:%S.%f")  # noqa: E731
        rows.append((secrets.token_urlsafe(12), owner if n < mine else rnd.choice(others), f"fatura-{n}.pdf",
                     "pt_simon_invoice_v1", rnd.randint(20_000, 900_000), secrets.token_hex(32), status,
                     100 if status == "complete" else 0, 1, "GW_4XX" if status == "failed" else None,
                     "The gateway refused the file." if status == "failed" else None, secrets.token_hex(8),
                     f"uploads/{n}.pdf", f"results/{n}.xml" if status == "complete" else None,
                     stamp(created), stamp(done or started or created), stamp(started), stamp(done), stamp(created)))
    with sqlite3.connect(db_path) as conn:
        conn.executemany(
            "INSERT INTO jobs (id, owner, filename, mapping, bytes, sha256, status, progress, attempts, error_code,"
            " error, correlation_id, upload_path, result_path, created_at, updated_at, started_at, completed_at,"
            " queue_key, dead_letter) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,0)", rows)
        conn.execute("ANALYZE")


def plans(db_path, owner):
    """EXPLAIN QUERY PLAN of the reads behind /queue, /api/jobs, the totals box and the change poll."""
    since = (datetime.utcnow() - timedelta(seconds=5)).strftime("%Y-%m-%d %H:%M:%S.%f")
    queries = {
        "page of my jobs": ("SELECT * FROM jobs WHERE owner = ? ORDER BY created_at DESC, id DESC LIMIT 51", (owner,)),
        "next page (cursor)": ("SELECT * FROM jobs WHERE owner = ? AND (created_at, id) < (?, 'x') "
                               "ORDER BY created_at DESC, id DESC LIMIT 51", (owner, since)),
        "my changes since": ("SELECT * FROM jobs WHERE owner = ? AND updated_at > ? ORDER BY updated_at, id",
                             (owner, since)),
        "totals box": ("SELECT count(*), count(*) FILTER (WHERE status = 'complete'), avg(CASE WHEN status = "
                       "'complete' THEN julianday(completed_at) - julianday(started_at) END) FROM jobs "
                       "WHERE owner = ?", (owner,)),
        "search (q)": ("SELECT * FROM jobs WHERE owner = ? AND lower(filename) LIKE lower('%nothing%') "
                       "ORDER BY created_at DESC, id DESC LIMIT 51", (owner,)),
        "failed page": ("SELECT * FROM jobs WHERE owner = ? AND status IN ('failed') "
                        "ORDER BY created_at DESC, id DESC LIMIT 51", (owner,)),
        "chart (24 h)": ("SELECT status, started_at, completed_at FROM jobs WHERE owner = ? AND updated_at > ? AND "
                         "status IN ('complete', 'failed') AND completed_at > ?", (owner, since, since)),
        "active count": ("SELECT count(*) FROM jobs WHERE owner = ? AND status IN ('queued', 'processing')", (owner,)),
        "change poll": ("SELECT owner, max(updated_at) FROM jobs WHERE updated_at > ? GROUP BY owner "
                        "UNION ALL SELECT owner, removed_at FROM job_removals WHERE removed_at > ?",
                        (since, since)),
    }
    with sqlite3.connect(db_path) as conn:
        for name, (sql, args) in queries.items():
            detail = "; ".join(row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, args))
            print(f"  {name:<20} {detail}")


def ttfb(http, url, count):
    """Seconds from request to the response's headers (stream=True stops reading there), count times."""
    times = []
    for _ in range(count):
        started = time.perf_counter()
        response = http.get(url, stream=True)
        times.append(time.perf_counter() - started)
        response.raise_for_status()
        response.content  # drain, so the connection is reused
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--mine", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()

    import tempfile
    data_dir = Path(tempfile.mkdtemp(prefix="bench-pages-"))
    process, url, _ = start_web(data_dir, "gevent", {})
    try:
        from tests.support.people import signed_in
        from webapp import create_app
        accounts = create_app({"DATA_DIR": str(data_dir), "SECRET_KEY": "bench-secret-key-0123456789abcdefghijklmnop", "HUEY_MEMORY": True, "MIGRATE": False})
        user, cookie = signed_in(accounts)
        http = requests.Session()
        http.headers["Cookie"] = f"session={cookie}"
        owner = user.id
        db_path = data_dir / "instance" / "pdfqueue.db"
        started = time.monotonic()
        fill(db_path, owner, args.jobs, args.mine)
        print(f"inserted {args.jobs} jobs ({args.mine} mine) in {time.monotonic() - started:.1f} s")
        print("query plans:")
        plans(db_path, owner)
        body = http.get(f"{url}/api/jobs").json()
        failed = http.get(f"{url}/api/jobs?status=failed").json()
        urls = {
            "/queue": "/queue",
            "/queue (page 2)": "/queue?cursor=" + body["next_cursor"],
            "/api/jobs": "/api/jobs",
            "/api/jobs?cursor=": "/api/jobs?cursor=" + body["next_cursor"],
            "/api/jobs?status=failed": "/api/jobs?status=failed",
            "  … its page 2": "/api/jobs?status=failed&cursor=" + failed["next_cursor"],
            "/api/jobs?q=fatura-99": "/api/jobs?q=fatura-99",  # 1 in 90 or so of my jobs match
            "/api/jobs?q=nothing": "/api/jobs?q=nothing",  # none match: every one of my jobs is read
            "/queue?status=active": "/queue?status=active",
            "/queue?q=fatura-99": "/queue?q=fatura-99",
            "/queue?q=nothing": "/queue?q=nothing",
            "/queue/rows?since=": "/queue/rows?since=" + body["server_time"],
            "/queue/totals": "/queue/totals",
        }
        print(f"\nTTFB over {args.requests} requests each (one client, keep-alive)")
        print(f"{'url':<26}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}")
        for name, path in urls.items():
            ttfb(http, url + path, 10)  # warm up
            times = ttfb(http, url + path, args.requests)
            print(f"{name:<26}{statistics.median(times) * 1000:>9.1f}{percentile(times, 0.95) * 1000:>9.1f}"
                  f"{max(times) * 1000:>9.1f}")
    finally:
        process.terminate()
        process.wait(timeout=30)


if __name__ == "__main__":
    main()
