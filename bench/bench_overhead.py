"""What the queue costs in front of our real gateway: throughput ratio with CPU per job, one job's latency, crash
recovery, and the fair claim's time with 100k jobs queued.

    .venv/bin/python bench/bench_overhead.py [--jobs 40] [--rounds 5] [--latency-samples 7] [--queued 100000]
    .venv/bin/python bench/bench_overhead.py --only-throughput    # throughput, CPU, latency and memory rows only

- Throughput: the same N invoices (15–70 lines) parsed in-process on every core (the physical limit), posted
  straight to the gateway by CONCURRENCY threads, then uploaded through the app (one client, one file a
  request; done when every job is complete), in alternating rounds; the ratios are app ÷ limit and direct ÷ app,
  each its median over rounds. The limit: one warm process per core (gateway.convert.convert_pdf, as the
  gateway's children run it), pulling the round's invoices from one shared counter, wall time from a common
  start; their CPU per invoice is the in-process parse's. CPU ms per job of web, worker and gateway (each a
  gunicorn master and every process under it: workers, the gateway's zygotes and parse children; or worker.py)
  from /proc over each app round; the gateway's also over the direct rounds, for comparison.
- Latency: one invoice at a time on the idle stack; upload → complete (the job's completed_at) minus a direct
  call for the same file just before, and minus its in-process parse (a warm process of the limit's, just
  before); the median of those differences.
- Memory: RSS of each process tree after the throughput rounds (the gateway's master, workers and zygotes).
- Crash recovery: worker.py SIGKILLed while the (fake, 2 s) gateway converts a job, started again at once
  with LEASE_SECONDS=600; seconds from the restart to that job complete.
- Fair share: with a 2 s fake gateway and every slot busy with a first owner's jobs, 10 (then 500) more of
  them queued, a second owner uploads one: seconds from its upload to its start (≤ one conversion: 2 s).
- Request floor: web CPU of one request that does nearly nothing, on the idle stack (a static file; an API
  request signed in with a token: GET /api/session), beside one upload: what any request costs before the app
  does its work, and so how far the queue's CPU a job can fall at best.
- Claim: Job.claim_next against a SQLite database of N queued jobs of 20 owners (one owner holding half),
  in this process; the median of 200 claims (each released again, not timed).
"""
import argparse
import itertools
import multiprocessing
import os
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.figures import db_rows, rss_kib, table  # noqa: E402
from tests.support.invoicegen import make_invoice  # noqa: E402
from tests.support.stack import children, owner_session, running_stack  # noqa: E402

CONCURRENCY = 4
MAPPING = "pt_simon_invoice_v1"
TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def descendants(pid):
    """Every process under pid (a gunicorn master's workers, their zygotes, the zygotes' parse children)."""
    found = []
    for child in children(pid):
        found += [child, *descendants(child)]
    return found


def cpu_ms(pid):
    """CPU (user + system) of a process and every process under it now living, with the children each reaped
    (the gateway's zygotes fork one per parse), in ms."""
    total = 0
    for each in [pid, *descendants(pid)]:
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(value) for value in fields[11:15])  # utime, stime, cutime, cstime
    return total * TICK_MS


def cpu_all(stack):
    return {name: cpu_ms(stack.procs[name].pid) for name in ("web", "worker", "gateway")}


def tree_rss(pid):
    """RSS in MB of a process and of each level under it: [[pid's], [its children's], [theirs]...]."""
    levels, level = [], [pid]
    while level:
        levels.append([rss_kib(each) / 1024 for each in level])
        level = [child for each in level for child in children(each)]
    return levels


def describe_rss(levels, names):
    """'160 MB (master 43 + 3 × 44 workers + 3 × 27 zygotes)'."""
    total = sum(sum(level) for level in levels)
    parts = []
    for name, level in zip(names, levels):
        if level:
            parts.append(f"{name} {level[0]:.0f}" if len(level) == 1 else
                         f"{len(level)} × {statistics.median(level):.0f} {name}")
    return f"{total:.0f} MB ({' + '.join(parts)})"


def _parser(conn, counter):
    """A warm in-process parser (one per core) for the physical limit; commands come over conn."""
    from gateway.convert import convert_pdf
    from gateway.mappings import load_all
    mapping = load_all()[MAPPING]
    pdfs = []
    while True:
        kind, value = conn.recv()
        if kind == "load":
            pdfs = value
            conn.send("ready")
        elif kind == "go":  # parse invoices from the shared counter until none is left, from a common start
            time.sleep(max(0.0, value - time.monotonic()))
            cpu, done = time.process_time(), 0
            while True:
                with counter.get_lock():
                    index = counter.value
                    counter.value += 1
                if index >= len(pdfs):
                    break
                convert_pdf(pdfs[index], mapping, "xml", False, 2000)
                done += 1
            conn.send((time.process_time() - cpu, time.monotonic(), done))
        elif kind == "one":
            began = time.perf_counter()
            convert_pdf(value, mapping, "xml", False, 2000)
            conn.send(time.perf_counter() - began)
        else:
            return


class Limit:
    """The physical limit: one warm process per core parsing the invoices in-process, as the gateway's children do,
    with none of the stack (HTTP, queue, sandbox) around it."""

    def __init__(self, cores):
        context = multiprocessing.get_context("spawn")  # fresh interpreters: none of this process's threads or pools
        self.counter = context.Value("i", 0)
        self.conns, self.procs = [], []
        for _ in range(cores):
            ours, theirs = context.Pipe()
            proc = context.Process(target=_parser, args=(theirs, self.counter), daemon=True)
            proc.start()
            self.conns.append(ours)
            self.procs.append(proc)
        warm = [make_invoice(n_lines=15 + 10 * n, seed=777 + n)[0] for n in range(6)]
        for _ in range(2):
            self.round(warm)

    def round(self, pdfs):
        """(wall seconds from the common start to the last invoice parsed, CPU ms per invoice)."""
        for conn in self.conns:
            conn.send(("load", pdfs))
        for conn in self.conns:
            assert conn.recv() == "ready"
        self.counter.value = 0
        start = time.monotonic() + 0.05
        for conn in self.conns:
            conn.send(("go", start))
        results = [conn.recv() for conn in self.conns]
        assert sum(done for _, _, done in results) == len(pdfs)
        return max(end for _, end, _ in results) - start, sum(cpu for cpu, _, _ in results) / len(pdfs) * 1000

    def parse_time(self, pdf):
        """Seconds one warm process takes to parse pdf."""
        self.conns[0].send(("one", pdf))
        return self.conns[0].recv()

    def close(self):
        for conn in self.conns:
            conn.send(("stop", None))
        for proc in self.procs:
            proc.join(timeout=10)


def post_direct(gateway_url, pdf, tag):
    response = requests.post(f"{gateway_url}/process", files={"file": ("a.pdf", pdf, "application/pdf")},
                             data={"mapping": MAPPING}, headers={"X-Correlation-ID": f"direct-{tag}"}, timeout=60)
    response.raise_for_status()


def direct_round(stack, pdfs):
    began = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(lambda pair: post_direct(stack.gateway_url, pair[1], pair[0]), enumerate(pdfs)))
    return time.perf_counter() - began


def app_round(stack, session, pdfs):
    began = time.perf_counter()
    for n, pdf in enumerate(pdfs):
        response = session.post(f"{stack.web_url}/api/upload", files={"file": (f"{n}.pdf", pdf, "application/pdf")})
        assert response.status_code == 202, response.text
    while db_rows(stack.data_dir, "SELECT count(*) FROM jobs WHERE status IN ('queued', 'processing')")[0][0]:
        time.sleep(0.005)
    elapsed = time.perf_counter() - began
    failed = db_rows(stack.data_dir, "SELECT count(*) FROM jobs WHERE status = 'failed'")[0][0]
    assert not failed, f"{failed} jobs failed"
    return elapsed


def throughput(stack, limit, jobs, rounds):
    """Alternating rounds of the limit, the direct calls and the app on the same invoices; medians over rounds."""
    session = owner_session(stack)
    ratios, directs, apps, cpu, gateway_direct = [], [], [], {"web": [], "worker": [], "gateway": []}, []
    limits, parse_cpu, of_limit, gateway_of_parse = [], [], [], []
    for round_ in range(rounds):
        # Distinct files each round (the app keeps one job per owner and file); the direct calls post the same ones.
        pdfs = [make_invoice(n_lines=15 + (n * 37 + round_ * 11) % 56, seed=round_ * 1000 + n)[0] for n in range(jobs)]
        wall, parse_ms = limit.round(pdfs)
        limits.append(wall)
        parse_cpu.append(parse_ms)
        before = cpu_all(stack)
        directs.append(direct_round(stack, pdfs))
        middle = cpu_all(stack)
        apps.append(app_round(stack, session, pdfs))
        after = cpu_all(stack)
        ratios.append(directs[-1] / apps[-1])
        of_limit.append(limits[-1] / apps[-1])
        gateway_direct.append((middle["gateway"] - before["gateway"]) / jobs)
        for name in cpu:
            cpu[name].append((after[name] - middle[name]) / jobs)
        gateway_of_parse.append(cpu["gateway"][-1] / parse_ms)
    median = statistics.median
    return {"ratios": ratios, "directs": directs, "apps": apps, "cpu": {name: median(v) for name, v in cpu.items()},
            "gateway_direct": median(gateway_direct), "limits": limits, "parse_cpu": median(parse_cpu),
            "of_limit": of_limit, "gateway_of_parse": gateway_of_parse}


def utc_now():
    return datetime.now(timezone.utc).replace(tzinfo=None)


def latency(stack, limit, samples):
    """(median of app − direct, median app, median direct, median of app − in-process parse, median parse),
    seconds, for one invoice at a time on the idle stack."""
    pdf = make_invoice(n_lines=40, seed=424242)[0]
    app_times, direct_times, parse_times = [], [], []
    for n in range(samples):
        time.sleep(1.5)  # idle again
        began = time.perf_counter()
        post_direct(stack.gateway_url, pdf, f"latency-{n}")
        direct_times.append(time.perf_counter() - began)
        time.sleep(1.5)
        parse_times.append(limit.parse_time(pdf))
        session = owner_session(stack)  # a new owner each time: the same file is a new job for them
        uploaded = utc_now()
        response = session.post(f"{stack.web_url}/api/upload", files={"file": ("l.pdf", pdf, "application/pdf")})
        job_id = response.json()["jobs"][0]["id"]
        while not (done := db_rows(stack.data_dir, "SELECT completed_at FROM jobs WHERE id = ?", (job_id,))[0][0]):
            time.sleep(0.002)
        app_times.append((datetime.fromisoformat(done) - uploaded).total_seconds())
    # Each sample pairs an upload with a direct call made just before it; the median of the pairs' differences
    # stands the box's passing load better than the difference of two medians.
    overhead = statistics.median(app - direct for app, direct in zip(app_times, direct_times))
    over_parse = statistics.median(app - parse for app, parse in zip(app_times, parse_times))
    return overhead, statistics.median(app_times), statistics.median(direct_times), over_parse, \
        statistics.median(parse_times)


def request_floor(stack, session, count=300):
    """Web CPU ms per request (mean of count, after a warm-up) for a static file, a token-signed GET /api/session
    and an upload of a 5 KB PDF, one at a time on the idle stack."""
    anonymous = requests.Session()
    # Its own cookie jar: /api/session hands out a CSRF token in a session cookie, and a token request that also
    # carries a session cookie must send that token (shared/spec/api.md), which the uploads do not.
    asking = requests.Session()
    asking.headers.update(session.headers)
    pdf = make_invoice(n_lines=30, seed=515151)[0]
    uploads = itertools.count()

    def upload():
        n = next(uploads)  # a new file name and content each time: each upload is a new job
        return session.post(f"{stack.web_url}/api/upload",
                            files={"file": (f"floor{n}.pdf", pdf + f"%{n}\n".encode(), "application/pdf")})

    kinds = {"static file": lambda: anonymous.get(f"{stack.web_url}/static/vendor/htmx.min.js"),
             "GET /api/session (token)": lambda: asking.get(f"{stack.web_url}/api/session"),
             "upload": upload}
    web = stack.procs["web"].pid
    floors = {}
    for name, call in kinds.items():
        for _ in range(20):
            call()
        time.sleep(1)
        before = cpu_ms(web)
        for _ in range(count):
            response = call()
            assert response.status_code in (200, 202), response.text
        floors[name] = (cpu_ms(web) - before) / count
    return floors


def crash_recovery():
    """Seconds from restarting a SIGKILLed worker to the job it was converting being complete."""
    with running_stack(gateway_delay=2.0, LEASE_SECONDS=600, UPLOADS_PER_MINUTE=100000) as stack:
        session = owner_session(stack)
        response = session.post(f"{stack.web_url}/api/upload", files={"file": ("k.pdf", b"%PDF-1.4\n% kill me\n")})
        job_id = response.json()["jobs"][0]["id"]
        while db_rows(stack.data_dir, "SELECT status FROM jobs WHERE id = ?", (job_id,))[0][0] != "processing":
            time.sleep(0.01)
        time.sleep(0.5)  # mid-call
        stack.stop("worker", signal.SIGKILL)
        restarted = time.perf_counter()
        stack.start_again("worker")
        while db_rows(stack.data_dir, "SELECT status FROM jobs WHERE id = ?", (job_id,))[0][0] != "complete":
            if time.perf_counter() - restarted > 120:
                return float("inf"), None
            time.sleep(0.01)
        elapsed = time.perf_counter() - restarted
        (attempts,) = db_rows(stack.data_dir, "SELECT attempts FROM jobs WHERE id = ?", (job_id,))[0]
        return elapsed, attempts


def fair_share_wait(ahead):
    """Seconds from a second owner's upload to its job starting, behind `ahead` queued jobs of a first owner
    (a 2 s fake gateway, CONCURRENCY slots, all busy with the first owner's jobs)."""
    with running_stack(gateway_delay=2.0, WORKER_CONCURRENCY=CONCURRENCY, UPLOADS_PER_MINUTE=100000) as stack:
        first, second = owner_session(stack), owner_session(stack)
        for n in range(ahead + CONCURRENCY):
            pdf = f"%PDF-1.4\n% first {n}\n".encode()
            response = first.post(f"{stack.web_url}/api/upload", files={"file": (f"f{n}.pdf", pdf)})
            assert response.status_code == 202, response.text
        while db_rows(stack.data_dir, "SELECT count(*) FROM jobs WHERE status = 'processing'")[0][0] < CONCURRENCY:
            time.sleep(0.01)
        response = second.post(f"{stack.web_url}/api/upload", files={"file": ("s.pdf", b"%PDF-1.4\n% second\n")})
        job_id = response.json()["jobs"][0]["id"]
        query = "SELECT created_at, started_at FROM jobs WHERE id = ?"
        while not (row := db_rows(stack.data_dir, query, (job_id,))[0])[1]:
            time.sleep(0.01)
        return (datetime.fromisoformat(row[1]) - datetime.fromisoformat(row[0])).total_seconds()


def claim_time(queued):
    """Median seconds of one Job.claim_next with this many jobs queued (20 owners; one with half of them)."""
    from flask_migrate import upgrade

    from webapp import create_app
    from core.db import db
    from core.jobs.model import Job
    with tempfile.TemporaryDirectory(prefix="pdfqueue-claim-") as data_dir:
        app = create_app({"DATA_DIR": data_dir, "TESTING": True, "SECRET_KEY": "bench-secret-key-0123456789abcdefghijklmnop", "HUEY_MEMORY": True})
        with app.app_context():
            upgrade(directory=app.config["MIGRATIONS_DIR"])
            db.session.remove()
        with sqlite3.connect(f"{data_dir}/instance/pdfqueue.db") as conn:
            columns = [row[1] for row in conn.execute("PRAGMA table_info(jobs)")]
            now = utc_now()
            rows = []
            for n in range(queued):
                owner = "big" if n % 2 else f"owner{n % 38}"
                at = now.replace(microsecond=0).isoformat(" ") + f".{n % 1000000:06d}"
                row = {"id": f"j{n:07d}", "owner": owner, "filename": f"{n}.pdf", "mapping": MAPPING, "bytes": n,
                       "sha256": f"{n:064d}", "status": "queued", "progress": 0, "attempts": 0,
                       "correlation_id": f"c{n}", "upload_path": "uploads/x.pdf", "created_at": at, "updated_at": at,
                       "dead_letter": 0, "queue_key": at}
                rows.append(tuple(row.get(column) for column in columns))
            conn.executemany(f"INSERT INTO jobs VALUES ({', '.join('?' * len(columns))})", rows)
        times = []
        with app.app_context():
            for _ in range(200):
                began = time.perf_counter()
                row = Job.claim_next("bench", 600, 4)
                times.append(time.perf_counter() - began)
                Job.release(row.id, "bench")
            db.engine.dispose()
        return statistics.median(times), max(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--latency-samples", type=int, default=15)
    parser.add_argument("--queued", type=int, default=100000)
    parser.add_argument("--only-throughput", action="store_true",
                        help="only the throughput, CPU, latency and memory rows (no floors, drills or claim)")
    args = parser.parse_args()
    cores = os.cpu_count()
    limit = Limit(cores)
    with running_stack(WORKER_CONCURRENCY=CONCURRENCY, UPLOADS_PER_MINUTE=100000, GATEWAY_TIMEOUT=60) as stack:
        got = throughput(stack, limit, args.jobs, args.rounds)
        memory = {name: tree_rss(stack.procs[name].pid) for name in ("gateway", "web", "worker")}
        overhead, app_latency, direct_latency, over_parse, parse_latency = latency(stack, limit, args.latency_samples)
        floors = None if args.only_throughput else request_floor(stack, owner_session(stack))
    limit.close()
    median = statistics.median
    ratio, of_limit, gateway_of_parse = median(got["ratios"]), median(got["of_limit"]), median(got["gateway_of_parse"])
    cpu = got["cpu"]
    rows = [
        (f"stack ÷ physical limit: invoices/s through the app (upload → complete, real gateway) ÷ the same {args.jobs} "
         f"invoices parsed in-process on all {cores} cores (median of {args.rounds} alternating rounds)",
         "≥ 0.6 (goal 0.75)",
         f"{of_limit:.3f} (min {min(got['of_limit']):.3f}, max {max(got['of_limit']):.3f}; app "
         f"{args.jobs / median(got['apps']):.1f}/s, limit {args.jobs / median(got['limits']):.1f}/s)"),
        ("CPU per invoice: in-process parse; through the app: web / worker / gateway (its zygotes and children "
         "included)", "—",
         f"{got['parse_cpu']:.1f} ms; {cpu['web']:.1f} ms / {cpu['worker']:.1f} ms / {cpu['gateway']:.1f} ms"),
        ("gateway CPU per invoice ÷ in-process parse CPU (median of the rounds' ratios)", "≤ 1.5 (goal 1.2)",
         f"{gateway_of_parse:.2f} (min {min(got['gateway_of_parse']):.2f}, max {max(got['gateway_of_parse']):.2f})"),
        (f"one invoice on an idle stack, upload → complete minus its in-process parse (median of "
         f"{args.latency_samples} pairs)", "≤ 20 ms (goal 10)",
         f"{over_parse * 1000:.0f} ms (app {app_latency * 1000:.0f} ms, parse {parse_latency * 1000:.0f} ms)"),
        ("RSS after the rounds: gateway / web / worker", "—",
         f"{describe_rss(memory['gateway'], ('master', 'workers', 'zygotes', 'spares'))} / "
         f"{describe_rss(memory['web'], ('master', 'workers'))} / {describe_rss(memory['worker'], ('worker',))}"),
        (f"real-gateway throughput ratio app ÷ direct ({args.jobs} invoices of 15–70 lines, {CONCURRENCY} at a time; "
         f"median of {args.rounds})", "≥ 0.9",
         f"{ratio:.3f} (min {min(got['ratios']):.3f}, max {max(got['ratios']):.3f}; direct "
         f"{median(got['directs']):.2f} s, app {median(got['apps']):.2f} s)"),
        ("CPU per job through the app: web / worker / gateway", "—",
         f"{cpu['web']:.1f} ms / {cpu['worker']:.1f} ms / {cpu['gateway']:.1f} ms "
         f"(gateway {got['gateway_direct']:.1f} ms when called directly)"),
        (f"latency of one invoice on an idle stack, upload → complete minus a direct call just before (median of "
         f"{args.latency_samples} pairs)", "≤ 20 ms",
         f"{overhead * 1000:.0f} ms (app {app_latency * 1000:.0f} ms, direct {direct_latency * 1000:.0f} ms)"),
    ]
    if not args.only_throughput:
        recovered, attempts = crash_recovery()
        waits = {ahead: fair_share_wait(ahead) for ahead in (10, 500)}
        claim, claim_max = claim_time(args.queued)
        rows += [
            ("web CPU per request on the idle stack: " + " / ".join(floors), "—",
             " / ".join(f"{ms:.2f} ms" for ms in floors.values())),
            ("crash recovery: restart of a SIGKILLed worker → its job complete (2 s gateway, LEASE_SECONDS=600)",
             "≤ 5 s", f"{recovered:.1f} s (attempts {attempts})"),
            *((f"fair share: a second owner's job, upload → started, behind {ahead} queued of a first owner's "
               f"({CONCURRENCY} slots busy, 2 s gateway)", "≤ 2 s", f"{wait:.2f} s") for ahead, wait in waits.items()),
            (f"fair claim (Job.claim_next) with {args.queued} jobs queued, 20 owners", "—",
             f"{claim * 1000:.2f} ms (max {claim_max * 1000:.2f})"),
        ]
    table(rows)


if __name__ == "__main__":
    main()
