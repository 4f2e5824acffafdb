"""Fault drills: drive pdfqueue's real processes through failures; check nothing is lost, stuck or half-visible.

    .venv/bin/python bench/faults.py [--only worker_sigkill,disk_full ...] [--list]

Each drill starts its own stack (bench/stack.py: gunicorn web, worker.py, and our gateway or an in-process
FakeGateway whose knobs the drill turns), injects one fault, and prints what it injected and each check it
made. After every drill the same invariants are checked: every job complete or failed with a code (none
queued or processing), every file a job shows is whole, and the gateway still answers. Settings are shrunk
through the environment (leases of seconds, a fast upkeep tick) so the suite takes a few minutes; the
gateway outage keeps its full 60 s. The last line is `N passed, M failed`; the exit status is 1 if any failed.

Disk-full needs small filesystems: the suite re-runs itself in a private mount namespace (`unshare -m`, or
`unshare -rm` when not root) and mounts a tmpfs of a few MB over uploads/ and results/.
"""
import argparse
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import requests

from stack import ROOT, children, owner_session, running_stack

from fakegateway import FakeGateway  # tests/ is on sys.path through stack
from invoicegen import make_flate_bomb_pdf, make_invoice

NAMESPACE_MARK = "PDFQUEUE_FAULTS_NAMESPACE"
# Small numbers so a drill takes seconds: leases lapse in 3 s, upkeep ticks twice a second, retries after ~1 s.
FAST = {"LEASE_SECONDS": 3, "MAINTENANCE_SECONDS": 0.5, "REAP_SECONDS": 2, "RETRY_BASE_SECONDS": 1,
        "RETRY_JITTER_SECONDS": 0.5, "BREAKER_THRESHOLD": 3, "GATEWAY_TIMEOUT": 2, "WORKER_SHUTDOWN_SECONDS": 2,
        "MAX_ATTEMPTS": 3, "UPLOADS_PER_MINUTE": 100000, "LOG_LEVEL": "INFO"}
OUTAGE_SECONDS = 60
ACTIVE = ("queued", "processing")


class Checks:
    """Counts and prints checks: one line each, ok or FAIL, with what was seen."""

    def __init__(self):
        self.passed = self.failed = 0

    def __call__(self, ok, what, seen=""):
        self.passed += bool(ok)
        self.failed += not ok
        print(f"   {'ok  ' if ok else 'FAIL'}  {what}" + (f" — {seen}" if seen else ""), flush=True)
        return ok


def injected(text):
    print(f"   injected: {text}", flush=True)


def note(text):
    print(f"   note: {text}", flush=True)


# -- the stack's state, read straight from its files ---------------------------------------------------------


def jobs(stack, where="1", args=()):
    """Rows of the jobs table as dicts."""
    with sqlite3.connect(f"{stack.data_dir}/instance/pdfqueue.db", timeout=15) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute(f"SELECT * FROM jobs WHERE {where}", args)]


def wait_for(predicate, timeout, interval=0.05):
    """Poll predicate until it returns something truthy; return that, or None at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def settle(stack, timeout=60):
    """Wait until no job is queued or processing; True if that happened in time."""
    return bool(wait_for(lambda: not jobs(stack, "status IN ('queued', 'processing')"), timeout, 0.2))


def log_text(stack):
    return "\n".join(path.read_text(errors="replace") for path in stack.data_dir.glob("*.log"))


def partials(stack):
    return sorted(p.relative_to(stack.data_dir).as_posix()
                  for folder in ("uploads", "results") for p in (stack.data_dir / folder).glob(".incoming-*"))


def check_invariants(stack, check, gateway_url, expected_ids=()):
    """What must hold after every drill: nothing lost, stuck or half-visible; the gateway answers."""
    rows = jobs(stack)
    by_id = {row["id"]: row for row in rows}
    stuck = [f"{row['id']} {row['status']}" for row in rows if row["status"] in ACTIVE]
    missing = [job_id for job_id in expected_ids if job_id not in by_id]
    uncoded = [row["id"] for row in rows if row["status"] == "failed" and not row["error_code"]]
    counts = {status: sum(row["status"] == status for row in rows) for status in ("complete", "failed")}
    check(not stuck and not missing and not uncoded, "no job lost or stuck: each complete, or failed with a code",
          f"{len(rows)} jobs: {counts['complete']} complete, {counts['failed']} failed"
          + (f"; stuck {stuck[:5]}" if stuck else "") + (f"; lost {missing[:5]}" if missing else "")
          + (f"; failed without a code {uncoded[:5]}" if uncoded else ""))
    uploads = {row["upload_path"]: row for row in rows if row["upload_path"]}
    results = {row["result_path"]: row for row in rows if row["result_path"]}
    problems = []
    for folder in ("uploads", "results"):
        for path in (stack.data_dir / folder).iterdir():
            if path.name.startswith("."):
                continue  # partials (.incoming-*) and drill fillers are not visible as anything
            name = f"{folder}/{path.name}"
            if name not in uploads and name not in results:
                problems.append(f"{name} belongs to no job")
    for name, row in uploads.items():
        path = stack.data_dir / name
        if path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() != row["sha256"]:
            problems.append(f"{name} differs from what was uploaded")
    for name, row in results.items():
        try:
            ET.parse(stack.data_dir / name)
        except (OSError, ET.ParseError) as exc:
            problems.append(f"{name} of a {row['status']} job is not whole XML ({exc})")
    check(not problems, "no half file visible: each kept PDF hashes to its job's sha256, each result is whole XML",
          "; ".join(problems[:5]) or f"{len(uploads)} PDFs, {len(results)} results")
    try:
        status = requests.get(f"{gateway_url}/healthz", timeout=5).status_code
    except requests.RequestException as exc:
        status = type(exc).__name__
    check(status == 200, "the gateway still answers /healthz", f"{status}")
    stray = partials(stack)
    note(f"partial files left in uploads/ or results/: {len(stray)}"
         + (f" ({', '.join(stray[:3])}{'…' if len(stray) > 3 else ''})" if stray else ""))
    if stray:  # show retention does take them: age them past its 1 h and run it now
        for name in stray:
            os.utime(stack.data_dir / name, (time.time() - 7200,) * 2)
        subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "cleanup"], cwd=ROOT, env=stack.env,
                       check=True, capture_output=True)
        check(not partials(stack), "aged past 1 h, the partials are deleted by retention (`flask cleanup`)",
              f"{len(partials(stack))} left")


# -- uploading ------------------------------------------------------------------------------------------------


def pdf(tag, size=20_000):
    head = f"%PDF-1.4\n% fault drill {tag} {time.time_ns()}\n".encode()
    return head + b"0" * max(0, size - len(head))


def upload(session, web_url, payload, name="drill.pdf", timeout=60):
    return session.post(f"{web_url}/api/upload", files={"file": (name, payload, "application/pdf")}, timeout=timeout)


def upload_ids(stack, session, payloads):
    ids = []
    for n, payload in enumerate(payloads):
        response = upload(session, stack.web_url, payload, f"{n}.pdf")
        response.raise_for_status()
        ids.append(response.json()["jobs"][0]["id"])
    return ids


def error_code(response):
    try:
        return response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


class SlowBody:
    """A request body that trickles out over `seconds`, so a restart lands while it is being sent."""

    def __init__(self, data, seconds, pieces=40):
        self.data, self.pause, self.piece, self.offset = data, seconds / pieces, max(1, len(data) // pieces), 0

    def __len__(self):
        return len(self.data) - self.offset

    def read(self, _size=-1):
        if self.offset:
            time.sleep(self.pause)
        chunk = self.data[self.offset:self.offset + self.piece]
        self.offset += len(chunk)
        return chunk


def multipart(payload, name):
    boundary = f"drill{time.time_ns()}"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/pdf\r\n\r\n").encode() + payload + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def restart(stack, name, hard=False):
    """Stop one process (SIGTERM, or SIGKILL to it and its children) and start it again on the same port."""
    proc = stack.procs[name]
    if hard:
        kids = children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        for kid in kids:
            os.kill(kid, signal.SIGKILL)
        proc.wait()
        stack.procs.pop(name)
    else:
        stack.stop(name)
    health = {"web": f"{stack.web_url}/api/healthz", "gateway": f"{stack.gateway_url}/healthz"}.get(name)
    stack.start(name, proc.args, health)


def healthz(stack):
    try:
        return requests.get(f"{stack.web_url}/api/healthz", timeout=5).json()
    except (requests.RequestException, ValueError):
        return {}


# -- the drills -----------------------------------------------------------------------------------------------

DRILLS = []


def drill(title):
    def register(func):
        DRILLS.append((func.__name__, title, func))
        return func
    return register


@contextmanager
def fake_stack(delay=0.05, **settings):
    """A stack whose gateway is an in-process FakeGateway (knobs: delay, status, hang); yield (stack, fake)."""
    fake = FakeGateway().start()
    fake.delay = delay
    fake.server.handle_error = lambda request, address: None  # a killed client's reset is expected here
    try:
        with running_stack(gateway_url=fake.url, **{**FAST, **settings}) as stack:
            yield stack, fake
    finally:
        fake.stop()


@drill("worker SIGKILL mid-job")
def worker_sigkill(check):
    with fake_stack(delay=2.0, WORKER_CONCURRENCY=2, GATEWAY_TIMEOUT=10) as (stack, fake):
        ids = upload_ids(stack, owner_session(stack.web_url), [pdf(n) for n in range(4)])
        wait_for(lambda: fake.in_flight >= 2, 20)
        processing = [row["id"] for row in jobs(stack, "status = 'processing'")]
        pid = stack.procs["worker"].pid
        stack.stop("worker", signal.SIGKILL)
        injected(f"SIGKILL to the worker (pid {pid}) with {fake.in_flight} gateway calls in flight "
                 f"and {len(processing)} jobs processing; a fresh worker started at once (LEASE_SECONDS=3)")
        stack.start_worker()
        check(settle(stack), "every job leaves queued/processing within 60 s")
        rows = {row["id"]: row for row in jobs(stack)}
        check(all(rows[i]["status"] == "complete" for i in ids), "all 4 jobs complete",
              ", ".join(f"{rows[i]['status']}" for i in ids))
        calls = {i: fake.calls[rows[i]["correlation_id"]] for i in ids}
        check(max(calls.values()) <= 2, "the gateway was called at most twice per job",
              f"calls per job {sorted(calls.values())}")
        retried = [i for i in processing if rows[i]["attempts"] == 2]
        check(processing and len(retried) == len(processing),
              "each job killed mid-call was re-run once after its lease lapsed",
              f"{len(retried)} of {len(processing)} killed jobs on attempt 2")
        check_invariants(stack, check, fake.url, ids)


@drill(f"gateway stopped for {OUTAGE_SECONDS} s, then restarted")
def gateway_outage(check):
    invoices = iter(make_invoice(n_lines=3, seed=seed)[0] for seed in range(1000, 1100))
    with running_stack(**{**FAST, "BREAKER_THRESHOLD": 2, "GATEWAY_TIMEOUT": 20}) as stack:
        session = owner_session(stack.web_url)
        ids = upload_ids(stack, session, [next(invoices)])
        check(settle(stack, 30) and jobs(stack, "status = 'complete'"), "before: a job converts through our gateway")
        stack.stop("gateway")
        began = time.monotonic()
        injected(f"the gateway process stopped (SIGTERM) for {OUTAGE_SECONDS} s; 4 uploads during the outage")
        for n in range(4):
            ids += upload_ids(stack, session, [next(invoices)])
            time.sleep(1)
        down = wait_for(lambda: healthz(stack).get("gateway") == "down", 30)
        check(down, "GET /api/healthz says gateway \"down\" (the breaker is open)", f"{healthz(stack)}")
        failed_during = set()
        while time.monotonic() - began < OUTAGE_SECONDS:
            failed_during |= {row["id"] for row in jobs(stack, "status = 'failed'")}
            time.sleep(1)
        held = jobs(stack, "status = 'queued'")
        check(not failed_during and len(held) == 4, "the jobs are held queued through the outage, none failed",
              f"{len(held)} queued, {len(failed_during)} failed; codes {sorted({str(row['error_code']) for row in held})}")
        restart_at = time.monotonic()
        stack.start("gateway", [sys.executable, "-m", "gunicorn", "-c", "gateway/gunicorn.conf.py", "gateway.wsgi:app"],
                    f"{stack.gateway_url}/healthz")
        injected("the gateway started again on the same port")
        check(settle(stack, 120), "after the restart every held job leaves the queue (the breaker's probe closes it)",
              f"{time.monotonic() - restart_at:.0f} s after the restart")
        rows = jobs(stack)
        check(all(row["status"] == "complete" for row in rows), "all 5 jobs complete, none failed",
              ", ".join(f"{row['status']}/{row['error_code']}" for row in rows if row["status"] != "complete"))
        check(healthz(stack).get("gateway") == "ok", "GET /api/healthz says gateway \"ok\" again")
        check_invariants(stack, check, stack.gateway_url, ids)


def transitions(stack, job_id):
    """The worker's JSON log lines for one job's transitions, in order."""
    lines = []
    for line in (stack.data_dir / "worker.log").read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("job_id") == job_id and "to" in record:
            lines.append(record)
    return lines


@drill("gateway answering 500, then hanging past GATEWAY_TIMEOUT")
def gateway_errors(check):
    base = FAST["RETRY_BASE_SECONDS"]
    # The breaker stays out of this drill (threshold 100): it is the retries that are under test here.
    with fake_stack(BREAKER_THRESHOLD=100) as (stack, fake):
        session = owner_session(stack.web_url)
        fake.status = 500
        injected("the gateway answers every /process with 500; 2 uploads")
        ids = upload_ids(stack, session, [pdf("500-a"), pdf("500-b")])
        check(settle(stack, 60), "both jobs leave the queue")
        rows = jobs(stack, "id IN (?, ?)", ids)
        check(all(row["status"] == "failed" and row["error_code"] == "GW_5XX" and row["dead_letter"] for row in rows),
              "each is failed with GW_5XX and dead-lettered",
              ", ".join(f"{r['status']}/{r['error_code']}/dead_letter={r['dead_letter']}" for r in rows))
        check(all(fake.calls[row["correlation_id"]] == FAST["MAX_ATTEMPTS"] for row in rows),
              f"the gateway was called MAX_ATTEMPTS={FAST['MAX_ATTEMPTS']} times per job",
              f"{[fake.calls[row['correlation_id']] for row in rows]}")
        delays = [[t.get("retry_in") for t in transitions(stack, i)
                   if t["to"] == "queued" and t.get("error_code") == "GW_5XX"] for i in ids]
        jitter = FAST["RETRY_JITTER_SECONDS"] + 0.1  # the log rounds to 0.1 s
        backoff = all(len(d) == 2 and all(base * 2 ** n <= d[n] <= base * 2 ** n + jitter for n in (0, 1)) for d in delays)
        check(backoff, f"retries backed off: base × 2^(attempt−1) + jitter (base {base} s)", f"retry_in per job {delays}")

        fake.status, fake.hang = 200, True
        injected("the gateway takes requests and never answers (hang > GATEWAY_TIMEOUT=2 s); 2 uploads")
        ids2 = upload_ids(stack, session, [pdf("hang-a"), pdf("hang-b")])
        timed_out = wait_for(lambda: len(jobs(stack, "id IN (?, ?) AND error_code = 'GW_TIMEOUT' AND status = 'queued'",
                                              ids2)) == 2, 30)
        check(timed_out, "each job's first attempt ends in GW_TIMEOUT and is queued for a retry")
        fake.hang = False
        injected("the gateway answers again")
        check(settle(stack, 60), "both jobs leave the queue")
        rows = jobs(stack, "id IN (?, ?)", ids2)
        check(all(row["status"] == "complete" for row in rows), "each completes once the gateway is healthy",
              ", ".join(f"{r['status']} after {r['attempts']} attempts" for r in rows))
        codes = [[t.get("error_code") for t in transitions(stack, i)] for i in ids2]
        check(all("GW_TIMEOUT" in c for c in codes), "the worker logged GW_TIMEOUT for the hung attempt", f"{codes}")
        check_invariants(stack, check, fake.url, ids + ids2)


@drill("web restarted while uploads stream in")
def web_restart(check):
    with fake_stack() as (stack, fake):
        outcomes = []  # (sha256, status code or exception name, job id or None, phase)
        phase = ["before"]
        stop = threading.Event()
        session = owner_session(stack.web_url)
        cookies, token = session.cookies.get_dict(), session.headers["X-CSRF-Token"]

        def send(payload, seconds):
            body, content_type = multipart(payload, "stream.pdf")
            sha = hashlib.sha256(payload).hexdigest()
            try:
                response = requests.post(f"{stack.web_url}/api/upload", data=SlowBody(body, seconds) if seconds else body,
                                         headers={"Content-Type": content_type, "X-CSRF-Token": token},
                                         cookies=cookies, timeout=60)
                job_id = response.json()["jobs"][0]["id"] if response.status_code == 202 else None
                outcomes.append((sha, response.status_code, job_id, phase[0]))
            except (requests.RequestException, ValueError) as exc:
                outcomes.append((sha, type(exc).__name__, None, phase[0]))
                time.sleep(0.2)  # the web is down: try again shortly, as a client would

        def stream_in(tag):
            n = 0
            while not stop.is_set():
                n += 1
                slow = n % 3 == 0  # every third upload trickles in over 3 s
                send(pdf(f"{tag}-{n}", 512_000 if slow else 50_000), 3 if slow else 0)

        with ThreadPoolExecutor(4) as pool:
            for tag in range(4):
                pool.submit(stream_in, tag)
            time.sleep(4)
            phase[0] = "graceful restart"
            restart(stack, "web")
            phase[0] = "after graceful restart"
            injected("web restarted gracefully (SIGTERM to gunicorn, then started again) with 4 clients uploading")
            time.sleep(4)
            phase[0] = "SIGKILL"
            restart(stack, "web", hard=True)
            phase[0] = "after SIGKILL"
            injected("web killed (SIGKILL to gunicorn's master and worker) mid-upload, then started again")
            time.sleep(4)
            stop.set()
        accepted = [job_id for _, status, job_id, _ in outcomes if status == 202]
        cut = [(sha, status) for sha, status, _, _ in outcomes if status != 202]
        tally = Counter((when, status) for _, status, _, when in outcomes)
        note(f"{len(outcomes)} uploads: {len(accepted)} answered 202, {len(cut)} refused or cut; by phase: "
             + ", ".join(f"{when} {status} × {n}" for (when, status), n in tally.items()))
        check(cut and accepted, "the restarts did cut some uploads and others got through", f"{len(cut)} cut")
        check(settle(stack, 60), "every job leaves the queue")
        rows = {row["id"]: row for row in jobs(stack)}
        check(all(rows.get(i, {}).get("status") == "complete" for i in accepted),
              "every upload answered 202 has a job, and it completes", f"{len(accepted)} jobs")
        orphans = [sha for sha, _ in cut if any(row["sha256"] == sha for row in rows.values())]
        note(f"cut uploads that were nevertheless kept as a whole job (the answer was lost, not the file): {len(orphans)}")
        stray = [p for p in partials(stack) if p.startswith("uploads/")]
        note(f"partial uploads left by the SIGKILL: {len(stray)} (named .incoming-*, never shown as a job)")
        check_invariants(stack, check, fake.url, accepted)


def mount_tmpfs(path, size):
    path.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True, capture_output=True)


def fill(path):
    """Write a hidden filler file until the filesystem is full; return it."""
    filler = path / ".filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        while os.write(fd, b"\0" * 65536):
            pass
    except OSError:  # ENOSPC: full
        pass
    finally:
        os.close(fd)
    return filler


@drill("disk full under uploads/ and under results/ (small tmpfs)")
def disk_full(check):
    with fake_stack() as (stack, fake):
        mounted = []
        try:
            for folder in ("uploads", "results"):
                mount_tmpfs(stack.data_dir / folder, "4m")
                mounted.append(stack.data_dir / folder)
            session = owner_session(stack.web_url)
            filler = fill(stack.data_dir / "uploads")
            injected(f"uploads/ is a 4 MB tmpfs, filled up ({filler.stat().st_size // 1024} KiB filler); "
                     "a 1 MB upload and a 20 KB one")
            before = len(jobs(stack))
            answers = [upload(session, stack.web_url, pdf("full", size)) for size in (1 << 20, 20_000)]
            check(all(r.status_code == 507 and error_code(r) == "INSUFFICIENT_STORAGE" for r in answers),
                  "both answer 507 INSUFFICIENT_STORAGE", ", ".join(f"{r.status_code} {error_code(r)}" for r in answers))
            left = [p.name for p in (stack.data_dir / "uploads").iterdir() if p != filler]
            check(len(jobs(stack)) == before and not left, "nothing kept: no job, no file in uploads/",
                  f"{len(jobs(stack)) - before} jobs, files {left}")
            filler.unlink()
            injected("the filler deleted")
            response = upload(session, stack.web_url, pdf("after-full", 1 << 20))
            check(response.status_code == 202, "the next 1 MB upload is accepted", f"{response.status_code}")
            ids = [response.json()["jobs"][0]["id"]] if response.status_code == 202 else []
            check(settle(stack, 30) and all(r["status"] == "complete" for r in jobs(stack)), "and its job completes")

            filler = fill(stack.data_dir / "results")
            injected("results/ is a 4 MB tmpfs, filled up; 1 upload")
            ids += upload_ids(stack, session, [pdf("results-full")])
            io_error = wait_for(lambda: jobs(stack, "id = ? AND status = 'queued' AND error_code = 'IO_ERROR'", ids[-1:]),
                                20, 0.02)
            check(io_error, "the worker cannot store the XML: the job goes back to queued with IO_ERROR for a retry",
                  f"{jobs(stack, 'id = ?', ids[-1:])[0]['status']}")
            filler.unlink()
            injected("the filler deleted")
            check(settle(stack, 30), "the job leaves the queue")
            (row,) = jobs(stack, "id = ?", ids[-1:])
            check(row["status"] == "complete" and row["attempts"] >= 2, "it completes on a later attempt",
                  f"{row['status']} after {row['attempts']} attempts, {fake.calls[row['correlation_id']]} gateway calls")
            check_invariants(stack, check, fake.url, ids)
        except subprocess.CalledProcessError as exc:
            check(False, "mount a 4 MB tmpfs over uploads/ and results/", exc.stderr.decode().strip())
        finally:
            for path in mounted:
                subprocess.run(["umount", "-l", str(path)], check=False)


@drill("100 concurrent uploads while the worker writes")
def concurrent_uploads(check):
    with fake_stack(delay=0.02) as (stack, fake):
        ids = upload_ids(stack, owner_session(stack.web_url), [pdf(f"busy-{n}") for n in range(30)])
        wait_for(lambda: jobs(stack, "status = 'complete'"), 20)
        sessions = [owner_session(stack.web_url) for _ in range(100)]
        start = threading.Barrier(100)

        def one(n):
            start.wait()
            return upload(sessions[n], stack.web_url, pdf(f"burst-{n}", 256_000))

        injected("30 jobs queued so the worker is claiming and writing, then 100 owners upload 256 KB at once")
        with ThreadPoolExecutor(100) as pool:
            answers = list(pool.map(one, range(100)))
        statuses = sorted({r.status_code for r in answers})
        check(all(r.status_code == 202 for r in answers), "all 100 answer 202",
              f"statuses {statuses}, {sum(r.status_code == 202 for r in answers)} × 202")
        ids += [r.json()["jobs"][0]["id"] for r in answers if r.status_code == 202]
        check(settle(stack, 90), "all 130 jobs leave the queue")
        logs = log_text(stack)
        check("database is locked" not in logs, "no \"database is locked\" in any log (web, worker)",
              f"{logs.count('database is locked')} occurrences, {logs.count('OperationalError')} OperationalError")
        check_invariants(stack, check, fake.url, ids)


@drill("the same file uploaded by 20 threads at once (one owner)")
def same_file(check):
    with fake_stack() as (stack, fake):
        owner = owner_session(stack.web_url)
        payload = pdf("same", 200_000)
        start = threading.Barrier(20)

        def one(_):
            session = requests.Session()  # a Session per thread, all carrying the one owner's cookie
            session.cookies.update(owner.cookies)
            session.headers["X-CSRF-Token"] = owner.headers["X-CSRF-Token"]
            start.wait()
            return upload(session, stack.web_url, payload, "same.pdf")

        injected("one owner sends the same 200 KB PDF from 20 threads released together")
        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(one, range(20)))
        check(all(r.status_code == 202 for r in answers), "all 20 answer 202 (repeats name the existing job)",
              f"statuses {sorted({r.status_code for r in answers})}")
        named = {r.json()["jobs"][0]["id"] for r in answers if r.status_code == 202}
        fresh = sum(not r.json()["jobs"][0]["duplicate"] for r in answers if r.status_code == 202)
        rows = jobs(stack, "sha256 = ?", (hashlib.sha256(payload).hexdigest(),))
        check(len(rows) == 1 and len(named) == 1 and fresh == 1, "exactly one job: every answer names it, one says created",
              f"{len(rows)} rows, {len(named)} ids named, {fresh} created")
        kept = [p.name for p in (stack.data_dir / "uploads").iterdir()]
        check(bool(rows) and kept == [f"{rows[0]['id']}.pdf"], "exactly one file in uploads/, no partial left", f"{kept}")
        check(settle(stack, 30) and fake.calls[rows[0]["correlation_id"]] == 1, "the job completes with one gateway call",
              f"{fake.calls[rows[0]['correlation_id']] if rows else 0} calls")
        check_invariants(stack, check, fake.url, list(named))


@drill("a PDF bomb at the gateway")
def pdf_bomb(check):
    # BREAKER_THRESHOLD at its shipped default: whether one owner's bad files can open the breaker is checked here.
    with running_stack(**{**FAST, "GATEWAY_TIMEOUT": 30, "BREAKER_THRESHOLD": 5}) as stack:
        bomb = make_flate_bomb_pdf(gib=4)
        invoice = make_invoice(n_lines=3, seed=77)[0]
        injected(f"a {len(bomb) // 1024} KiB PDF whose content inflates to 4 GiB, POSTed to the gateway's /process")
        began = time.monotonic()
        response = requests.post(f"{stack.gateway_url}/process", files={"file": ("bomb.pdf", bomb, "application/pdf")},
                                 data={"mapping": "pt_simon_invoice_v1"}, timeout=120)
        check(response.status_code in (422, 503), "the gateway refuses it with 422 or 503",
              f"{response.status_code} {error_code(response)} in {time.monotonic() - began:.1f} s")
        health = requests.get(f"{stack.gateway_url}/healthz", timeout=5)
        check(health.status_code == 200, "the gateway still answers /healthz", f"{health.status_code}")
        converted = requests.post(f"{stack.gateway_url}/process", files={"file": ("next.pdf", invoice, "application/pdf")},
                                  data={"mapping": "pt_simon_invoice_v1"}, timeout=60)
        check(converted.status_code == 200 and ET.fromstring(converted.content) is not None,
              "and converts the next invoice", f"{converted.status_code}, {len(converted.content)} bytes of XML")

        injected("two such bombs (differing by a byte) uploaded through the app by one owner, then an invoice")
        session = owner_session(stack.web_url)
        ids, states = upload_ids(stack, session, [bomb, bomb + b"\n% 2\n"]), set()

        def settled():
            states.add(healthz(stack).get("gateway"))
            return not jobs(stack, "status IN ('queued', 'processing')")

        check(wait_for(settled, 120, 0.2), "both bombs' jobs leave the queue")
        ids += upload_ids(stack, session, [make_invoice(n_lines=3, seed=78)[0]])
        check(wait_for(settled, 60, 0.2), "then the invoice's")
        *bomb_rows, invoice_row = (jobs(stack, "id = ?", (i,))[0] for i in ids)
        check(all(row["status"] == "failed" and row["error_code"] in ("GW_4XX", "GW_5XX") for row in bomb_rows),
              "each bomb's job fails with a gateway code",
              "; ".join(f"{r['status']} {r['error_code']} after {r['attempts']} attempts: {r['error']}" for r in bomb_rows))
        check(invoice_row["status"] == "complete", "the invoice's job completes", invoice_row["status"])
        check(states == {"ok"}, "one owner's bad files do not open the breaker for everyone "
              "(GET /api/healthz says gateway \"ok\" throughout)", f"gateway states seen: {sorted(map(str, states))}")
        check_invariants(stack, check, stack.gateway_url, ids)


# -- running them ---------------------------------------------------------------------------------------------


def enter_mount_namespace():
    """Re-run this script in a private mount namespace, so its tmpfs mounts vanish with it; False if impossible."""
    if os.environ.get(NAMESPACE_MARK):
        return True
    argv = ["unshare", "--mount", "--propagation", "private"] if os.geteuid() == 0 else ["unshare", "-rm"]
    try:
        if subprocess.run([*argv, "true"], capture_output=True).returncode != 0:
            return False
    except FileNotFoundError:
        return False
    os.environ[NAMESPACE_MARK] = "1"
    os.execvp(argv[0], [*argv, sys.executable, *sys.argv])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated drill names (see --list)")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    if args.list:
        for name, title, _ in DRILLS:
            print(f"{name:<20} {title}")
        return 0
    if not enter_mount_namespace():
        print("note: no private mount namespace (unshare failed); disk-full mounts go in the current one", flush=True)
    wanted = set(filter(None, args.only.split(",")))
    unknown = wanted - {name for name, _, _ in DRILLS}
    if unknown:
        parser.error(f"unknown drill(s): {', '.join(sorted(unknown))}")
    check = Checks()
    began = time.monotonic()
    selected = [(name, title, func) for name, title, func in DRILLS if not wanted or name in wanted]
    for number, (name, title, func) in enumerate(selected, 1):
        print(f"\n== {number}. {title} [{name}]", flush=True)
        started = time.monotonic()
        try:
            func(check)
        except Exception as exc:  # a drill that breaks is a failed check; the next drill still runs
            traceback.print_exc()
            check(False, f"the drill ran to its end", f"{type(exc).__name__}: {exc}")
        print(f"   ({time.monotonic() - started:.0f} s)", flush=True)
    print(f"\n{len(selected)} drills in {time.monotonic() - began:.0f} s", flush=True)
    print(f"{check.passed} passed, {check.failed} failed", flush=True)
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
