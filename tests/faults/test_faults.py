"""Fault drills: drive pdfqueue's real processes through failures; check nothing is lost, stuck or half-visible.

    make faults                                      # every drill, in a private mount namespace
    make faults PYTEST_ARGS="-k disk_full -s"        # one drill, printing what it injected

Marked `faults`, so `make test` leaves them out. Each drill starts its own stack (tests/support/stack.py: gunicorn web,
worker.py, and our gateway or the in-process FakeGateway whose knobs the drill turns), injects one fault and
checks what follows; its checks are soft (pytest-check), so a failing drill lists every check that failed.
After every drill the same invariants are checked: every job complete or failed with a code (none queued or
processing), every file a job shows is whole, and the gateway still answers. Settings are shrunk through the
environment (leases of seconds, a fast upkeep tick) so the drills take a few minutes; the gateway outage keeps
its full 60 s. Disk-full mounts a tmpfs of a few MB over uploads/ and results/: it runs only in the private
mount namespace `make faults` gives the run (PDFQUEUE_PRIVATE_MOUNTS=1).
"""
import hashlib
import os
import signal
import sqlite3
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager

import pytest
import requests
from pytest_check import check

from tests.support.invoicegen import make_flate_bomb_pdf, make_invoice
from tests.support.services import unavailable
from tests.support.stack import MONITOR, owner_session, running_stack

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]  # the drills bound their own waits; this is a backstop

# Small numbers so a drill takes seconds: leases lapse in 3 s, upkeep ticks twice a second, retries after ~1 s.
FAST = {"LEASE_SECONDS": 3, "MAINTENANCE_SECONDS": 0.5, "REAP_SECONDS": 2, "RETRY_BASE_SECONDS": 1,
        "RETRY_JITTER_SECONDS": 0.5, "BREAKER_THRESHOLD": 3, "GATEWAY_TIMEOUT": 2, "WORKER_SHUTDOWN_SECONDS": 2,
        "MAX_ATTEMPTS": 3, "UPLOADS_PER_MINUTE": 100000, "LOG_LEVEL": "INFO"}
OUTAGE_SECONDS = 60
ACTIVE = ("queued", "processing")


@pytest.fixture
def fake(fake):
    """The fake gateway answering in 50 ms; a killed client's connection reset is expected here, not printed."""
    fake.delay = 0.05
    fake.server.handle_error = lambda request, address: None
    return fake


@pytest.fixture
def start_stack(tmp_path):
    """Start the drill's stack in tmp_path with FAST settings and its own; it stops after the test."""
    with ExitStack() as running:
        yield lambda **settings: running.enter_context(running_stack(data_dir=tmp_path, **{**FAST, **settings}))


@pytest.fixture
def private_mounts():
    """Mount only in the private mount namespace `make faults` runs in, so no mount outlives the run."""
    if os.environ.get("PDFQUEUE_PRIVATE_MOUNTS") != "1":
        unavailable("disk_full mounts small filesystems: it needs the private mount namespace `make faults` makes "
                    "(unshare)")


def injected(text):
    print(f"injected: {text}", flush=True)


def note(text):
    print(f"note: {text}", flush=True)


# -- the stack's state, read straight from its files ---------------------------------------------------------


def jobs(stack, where="1", args=()):
    """Rows of the jobs table as dicts."""
    with sqlite3.connect(f"{stack.data_dir}/instance/pdfqueue.db", timeout=15) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute(f"SELECT * FROM jobs WHERE {where}", args)]


def wait_for(predicate, timeout, interval=0.05):
    """Poll predicate until it returns something truthy; return that, or its last value at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def settle(stack, timeout=60):
    """Wait until no job is queued or processing; True if that happened in time."""
    return bool(wait_for(lambda: not jobs(stack, "status IN ('queued', 'processing')"), timeout, 0.2))


def partials(stack):
    return sorted(p.relative_to(stack.data_dir).as_posix()
                  for folder in ("uploads", "results") for p in (stack.data_dir / folder).glob(".incoming-*"))


def healthz(stack):
    try:
        return requests.get(f"{stack.web_url}/api/healthz", timeout=5, headers=MONITOR).json()
    except (requests.RequestException, ValueError):
        return {}


def transitions(stack, job_id):
    """The worker's JSON log lines for one job's transitions, in order."""
    return [record for record in stack.log_records("worker") if record.get("job_id") == job_id and "to" in record]


def check_invariants(stack, gateway_url, expected_ids=()):
    """What must hold after every drill: nothing lost, stuck or half-visible; the gateway answers."""
    rows = jobs(stack)
    by_id = {row["id"]: row for row in rows}
    stuck = [f"{row['id']} {row['status']}" for row in rows if row["status"] in ACTIVE]
    missing = [job_id for job_id in expected_ids if job_id not in by_id]
    uncoded = [row["id"] for row in rows if row["status"] == "failed" and not row["error_code"]]
    counts = {status: sum(row["status"] == status for row in rows) for status in ("complete", "failed")}
    with check:
        assert not stuck and not missing and not uncoded, (
            f"no job lost or stuck: each complete, or failed with a code — {len(rows)} jobs: "
            f"{counts['complete']} complete, {counts['failed']} failed" + (f"; stuck {stuck[:5]}" if stuck else "")
            + (f"; lost {missing[:5]}" if missing else "") + (f"; failed without a code {uncoded[:5]}" if uncoded else ""))
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
    with check:
        assert not problems, ("no half file visible: each kept PDF hashes to its job's sha256, each result is whole "
                              f"XML — {'; '.join(problems[:5])} ({len(uploads)} PDFs, {len(results)} results)")
    try:
        status = requests.get(f"{gateway_url}/healthz", timeout=5).status_code
    except requests.RequestException as exc:
        status = type(exc).__name__
    with check:
        assert status == 200, f"the gateway still answers /healthz — {status}"
    stray = partials(stack)
    note(f"partial files left in uploads/ or results/: {len(stray)}"
         + (f" ({', '.join(stray[:3])}{'…' if len(stray) > 3 else ''})" if stray else ""))
    if stray:  # show retention does take them: age them past its 1 h and run it now
        for name in stray:
            os.utime(stack.data_dir / name, (time.time() - 7200,) * 2)
        stack.flask("cleanup")
        with check:
            assert not partials(stack), ("aged past 1 h, the partials are deleted by retention (`flask cleanup`) — "
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


# -- the drills -----------------------------------------------------------------------------------------------


def test_worker_sigkill_mid_job(fake, start_stack):
    fake.delay = 2.0
    # A lease of 10 minutes: the jobs killed mid-call can only be done within the drill's minute if the restarted
    # worker reclaims them at once, as leases of its own host's dead process (worker/leases.py reclaim_orphaned_leases).
    stack = start_stack(gateway_url=fake.url, WORKER_CONCURRENCY=2, GATEWAY_TIMEOUT=10, LEASE_SECONDS=600)
    ids = upload_ids(stack, owner_session(stack), [pdf(n) for n in range(4)])
    wait_for(lambda: fake.in_flight >= 2, 20)
    processing = [row["id"] for row in jobs(stack, "status = 'processing'")]
    pid = stack.procs["worker"].pid
    stack.stop("worker", signal.SIGKILL)
    injected(f"SIGKILL to the worker (pid {pid}) with {fake.in_flight} gateway calls in flight "
             f"and {len(processing)} jobs processing; a fresh worker started at once (LEASE_SECONDS=600)")
    restarted = time.monotonic()
    stack.start_again("worker")
    with check:
        assert settle(stack), "every job leaves queued/processing within 60 s, well before the lease would lapse"
    note(f"all jobs settled {time.monotonic() - restarted:.1f} s after the restart")
    rows = {row["id"]: row for row in jobs(stack)}
    with check:
        assert all(rows[i]["status"] == "complete" for i in ids), \
            f"all 4 jobs complete — {', '.join(rows[i]['status'] for i in ids)}"
    calls = {i: fake.calls[rows[i]["correlation_id"]] for i in ids}
    with check:
        assert max(calls.values()) <= 2, f"the gateway was called at most twice per job — calls per job {sorted(calls.values())}"
    with check:
        assert processing and all(rows[i]["attempts"] == 1 for i in processing), (
            "each job killed mid-call was reclaimed without spending an attempt — attempts "
            f"{[rows[i]['attempts'] for i in processing]}")
    with check:
        assert any("reclaimed from a worker that is gone" in record.get("message", "")
                   for record in stack.log_records("worker")), "the restarted worker says it reclaimed them"
    check_invariants(stack, fake.url, ids)


def test_gateway_stopped_for_a_minute_then_restarted(start_stack):
    invoices = iter(make_invoice(n_lines=3, seed=seed)[0] for seed in range(1000, 1100))
    stack = start_stack(BREAKER_THRESHOLD=2, GATEWAY_TIMEOUT=20)
    session = owner_session(stack)
    ids = upload_ids(stack, session, [next(invoices)])
    with check:
        assert settle(stack, 30) and jobs(stack, "status = 'complete'"), "before: a job converts through our gateway"
    stack.stop("gateway")
    began = time.monotonic()
    injected(f"the gateway process stopped (SIGTERM) for {OUTAGE_SECONDS} s; 4 uploads during the outage")
    for _ in range(4):
        ids += upload_ids(stack, session, [next(invoices)])
        time.sleep(1)
    down = wait_for(lambda: healthz(stack).get("gateway") == "down", 30)
    with check:
        assert down, f"GET /api/healthz says gateway \"down\" (the breaker is open) — {healthz(stack)}"
    failed_during = set()
    while time.monotonic() - began < OUTAGE_SECONDS:
        failed_during |= {row["id"] for row in jobs(stack, "status = 'failed'")}
        time.sleep(1)
    held = jobs(stack, "status = 'queued'")
    with check:
        assert not failed_during and len(held) == 4, (
            f"the jobs are held queued through the outage, none failed — {len(held)} queued, {len(failed_during)} "
            f"failed; codes {sorted({str(row['error_code']) for row in held})}")
    restart_at = time.monotonic()
    stack.start_again("gateway")
    injected("the gateway started again on the same port")
    with check:
        assert settle(stack, 120), ("after the restart every held job leaves the queue (the breaker's probe closes "
                                    f"it) — {time.monotonic() - restart_at:.0f} s after the restart")
    rows = jobs(stack)
    with check:
        assert all(row["status"] == "complete" for row in rows), "all 5 jobs complete, none failed — " + ", ".join(
            f"{row['status']}/{row['error_code']}" for row in rows if row["status"] != "complete")
    with check:
        assert healthz(stack).get("gateway") == "ok", "GET /api/healthz says gateway \"ok\" again"
    check_invariants(stack, stack.gateway_url, ids)


def test_gateway_answering_500_then_hanging_past_its_timeout(fake, start_stack):
    base = FAST["RETRY_BASE_SECONDS"]
    # The breaker stays out of this drill (threshold 100, no distinct-jobs rate: these are four distinct failing
    # jobs): it is the retries that are under test here.
    stack = start_stack(gateway_url=fake.url, BREAKER_THRESHOLD=100, BREAKER_DISTINCT_JOBS=0)
    session = owner_session(stack)
    fake.status = 500
    injected("the gateway answers every /process with 500; 2 uploads")
    ids = upload_ids(stack, session, [pdf("500-a"), pdf("500-b")])
    with check:
        assert settle(stack, 60), "both jobs leave the queue"
    rows = jobs(stack, "id IN (?, ?)", ids)
    with check:
        assert all(row["status"] == "failed" and row["error_code"] == "GW_5XX" and row["dead_letter"] for row in rows), \
            "each is failed with GW_5XX and dead-lettered — " + ", ".join(
                f"{r['status']}/{r['error_code']}/dead_letter={r['dead_letter']}" for r in rows)
    with check:
        assert all(fake.calls[row["correlation_id"]] == FAST["MAX_ATTEMPTS"] for row in rows), (
            f"the gateway was called MAX_ATTEMPTS={FAST['MAX_ATTEMPTS']} times per job — "
            f"{[fake.calls[row['correlation_id']] for row in rows]}")
    delays = [[t.get("retry_in") for t in transitions(stack, i) if t["to"] == "queued" and t.get("error_code") == "GW_5XX"]
              for i in ids]
    jitter = FAST["RETRY_JITTER_SECONDS"] + 0.1  # the log rounds to 0.1 s
    with check:
        assert all(len(d) == 2 and all(base * 2 ** n <= d[n] <= base * 2 ** n + jitter for n in (0, 1)) for d in delays), \
            f"retries backed off: base × 2^(attempt−1) + jitter (base {base} s) — retry_in per job {delays}"

    fake.status, fake.hang = 200, True
    injected("the gateway takes requests and never answers (hang > GATEWAY_TIMEOUT=2 s); 2 uploads")
    ids2 = upload_ids(stack, session, [pdf("hang-a"), pdf("hang-b")])
    timed_out = wait_for(lambda: len(jobs(stack, "id IN (?, ?) AND error_code = 'GW_TIMEOUT' AND status = 'queued'",
                                          ids2)) == 2, 30)
    with check:
        assert timed_out, "each job's first attempt ends in GW_TIMEOUT and is queued for a retry"
    fake.hang = False
    injected("the gateway answers again")
    with check:
        assert settle(stack, 60), "both jobs leave the queue"
    rows = jobs(stack, "id IN (?, ?)", ids2)
    with check:
        assert all(row["status"] == "complete" for row in rows), "each completes once the gateway is healthy — " + \
            ", ".join(f"{r['status']} after {r['attempts']} attempts" for r in rows)
    codes = [[t.get("error_code") for t in transitions(stack, i)] for i in ids2]
    with check:
        assert all("GW_TIMEOUT" in c for c in codes), f"the worker logged GW_TIMEOUT for the hung attempt — {codes}"
    check_invariants(stack, fake.url, ids + ids2)


def test_a_broken_process_behind_a_healthy_healthz_opens_the_breaker(fake, start_stack):
    stack = start_stack(gateway_url=fake.url, BREAKER_THRESHOLD=100, BREAKER_DISTINCT_JOBS=3, BREAKER_WINDOW_SECONDS=10)
    session = owner_session(stack)
    fake.status = 500  # /healthz still says ok: a shallow health check in front of a broken /process
    injected("the gateway answers every /process with 500 while /healthz says ok; 8 uploads")
    ids = upload_ids(stack, session, [pdf(f"shallow-{n}") for n in range(8)])
    with check:
        assert wait_for(lambda: healthz(stack).get("breaker") == "open", 30), \
            "the breaker opens once several distinct jobs failed"
    with check:
        assert wait_for(lambda: not jobs(stack, "status = 'processing'"), 10), "and holds the jobs queued"
    rows = jobs(stack, "id IN (%s)" % ",".join("?" * len(ids)), ids)
    with check:
        assert not [row for row in rows if row["status"] == "failed"], "no job spent all its attempts — " + \
            ", ".join(f"{r['status']}/{r['error_code']} after {r['attempts']}" for r in rows)
    with check:
        assert fake.total_calls() < len(ids) * FAST["MAX_ATTEMPTS"], \
            f"far fewer /process calls than every job's every attempt — {fake.total_calls()}"
    fake.status = 200
    injected("/process works again")
    with check:
        assert settle(stack, 90), "every job leaves the queue once a probe closes the breaker"
    rows = jobs(stack, "id IN (%s)" % ",".join("?" * len(ids)), ids)
    with check:
        assert all(row["status"] == "complete" for row in rows), "and completes — " + \
            ", ".join(f"{r['status']}/{r['error_code']}" for r in rows)
    check_invariants(stack, fake.url, ids)


def test_web_restarted_while_uploads_stream_in(fake, start_stack):
    stack = start_stack(gateway_url=fake.url)
    outcomes = []  # (sha256, status code or exception name, job id or None, phase)
    phase = ["before"]
    stop = threading.Event()
    authorization = owner_session(stack).headers["Authorization"]

    def send(payload, seconds):
        body, content_type = multipart(payload, "stream.pdf")
        sha = hashlib.sha256(payload).hexdigest()
        try:
            response = requests.post(f"{stack.web_url}/api/upload", data=SlowBody(body, seconds) if seconds else body,
                                     headers={"Content-Type": content_type, "Authorization": authorization},
                                     timeout=60)
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
        stack.restart("web")
        phase[0] = "after graceful restart"
        injected("web restarted gracefully (SIGTERM to gunicorn, then started again) with 4 clients uploading")
        time.sleep(4)
        phase[0] = "SIGKILL"
        stack.restart("web", hard=True)
        phase[0] = "after SIGKILL"
        injected("web killed (SIGKILL to gunicorn's master and worker) mid-upload, then started again")
        time.sleep(4)
        stop.set()
    accepted = [job_id for _, status, job_id, _ in outcomes if status == 202]
    cut = [(sha, status) for sha, status, _, _ in outcomes if status != 202]
    tally = Counter((when, status) for _, status, _, when in outcomes)
    note(f"{len(outcomes)} uploads: {len(accepted)} answered 202, {len(cut)} refused or cut; by phase: "
         + ", ".join(f"{when} {status} × {n}" for (when, status), n in tally.items()))
    with check:
        assert cut and accepted, f"the restarts did cut some uploads and others got through — {len(cut)} cut"
    with check:
        assert settle(stack, 60), "every job leaves the queue"
    rows = {row["id"]: row for row in jobs(stack)}
    with check:
        assert all(rows.get(i, {}).get("status") == "complete" for i in accepted), \
            f"every upload answered 202 has a job, and it completes — {len(accepted)} jobs"
    orphans = [sha for sha, _ in cut if any(row["sha256"] == sha for row in rows.values())]
    note(f"cut uploads that were nevertheless kept as a whole job (the answer was lost, not the file): {len(orphans)}")
    stray = [p for p in partials(stack) if p.startswith("uploads/")]
    note(f"partial uploads left by the SIGKILL: {len(stray)} (named .incoming-*, never shown as a job)")
    check_invariants(stack, fake.url, accepted)


@contextmanager
def tmpfs(path, size):
    """Mount a tmpfs of size over path for the with-block."""
    path.mkdir(exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                             text=True)
    if mounted.returncode:
        pytest.fail(f"mount a {size} tmpfs over {path}: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


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


def test_disk_full_under_uploads_and_results(private_mounts, fake, start_stack):
    # No free-space floor: the drill is the disk itself running out mid-write (the floor has its own test).
    stack = start_stack(gateway_url=fake.url, MIN_FREE_MB=0)
    with tmpfs(stack.data_dir / "uploads", "4m"), tmpfs(stack.data_dir / "results", "4m"):
        session = owner_session(stack)
        filler = fill(stack.data_dir / "uploads")
        injected(f"uploads/ is a 4 MB tmpfs, filled up ({filler.stat().st_size // 1024} KiB filler); "
                 "a 1 MB upload and a 20 KB one")
        before = len(jobs(stack))
        answers = [upload(session, stack.web_url, pdf("full", size)) for size in (1 << 20, 20_000)]
        with check:
            assert all(r.status_code == 507 and error_code(r) == "INSUFFICIENT_STORAGE" for r in answers), \
                "both answer 507 INSUFFICIENT_STORAGE — " + ", ".join(f"{r.status_code} {error_code(r)}" for r in answers)
        left = [p.name for p in (stack.data_dir / "uploads").iterdir() if p != filler]
        with check:
            assert len(jobs(stack)) == before and not left, \
                f"nothing kept: no job, no file in uploads/ — {len(jobs(stack)) - before} jobs, files {left}"
        filler.unlink()
        injected("the filler deleted")
        response = upload(session, stack.web_url, pdf("after-full", 1 << 20))
        with check:
            assert response.status_code == 202, f"the next 1 MB upload is accepted — {response.status_code}"
        ids = [response.json()["jobs"][0]["id"]] if response.status_code == 202 else []
        with check:
            assert settle(stack, 30) and all(r["status"] == "complete" for r in jobs(stack)), "and its job completes"

        filler = fill(stack.data_dir / "results")
        injected("results/ is a 4 MB tmpfs, filled up; 1 upload")
        ids += upload_ids(stack, session, [pdf("results-full")])
        io_error = wait_for(lambda: jobs(stack, "id = ? AND status = 'queued' AND error_code = 'IO_ERROR'", ids[-1:]),
                            20, 0.02)
        with check:
            assert io_error, ("the worker cannot store the XML: the job goes back to queued with IO_ERROR for a retry "
                              f"— {jobs(stack, 'id = ?', ids[-1:])[0]['status']}")
        filler.unlink()
        injected("the filler deleted")
        with check:
            assert settle(stack, 30), "the job leaves the queue"
        (row,) = jobs(stack, "id = ?", ids[-1:])
        with check:
            assert row["status"] == "complete" and row["attempts"] >= 2, (
                f"it completes on a later attempt — {row['status']} after {row['attempts']} attempts, "
                f"{fake.calls[row['correlation_id']]} gateway calls")
        check_invariants(stack, fake.url, ids)


def test_a_hundred_concurrent_uploads_while_the_worker_writes(fake, start_stack):
    fake.delay = 0.02
    stack = start_stack(gateway_url=fake.url)
    ids = upload_ids(stack, owner_session(stack), [pdf(f"busy-{n}") for n in range(30)])
    wait_for(lambda: jobs(stack, "status = 'complete'"), 20)
    sessions = [owner_session(stack) for _ in range(100)]
    start = threading.Barrier(100)

    def one(n):
        start.wait()
        return upload(sessions[n], stack.web_url, pdf(f"burst-{n}", 256_000))

    injected("30 jobs queued so the worker is claiming and writing, then 100 owners upload 256 KB at once")
    with ThreadPoolExecutor(100) as pool:
        answers = list(pool.map(one, range(100)))
    with check:
        assert all(r.status_code == 202 for r in answers), (
            f"all 100 answer 202 — statuses {sorted({r.status_code for r in answers})}, "
            f"{sum(r.status_code == 202 for r in answers)} × 202")
    ids += [r.json()["jobs"][0]["id"] for r in answers if r.status_code == 202]
    with check:
        assert settle(stack, 90), "all 130 jobs leave the queue"
    logs = "\n".join(stack.log(name) for name in stack.procs)
    with check:
        assert "database is locked" not in logs, (
            f"no \"database is locked\" in any log (web, worker) — {logs.count('database is locked')} occurrences, "
            f"{logs.count('OperationalError')} OperationalError")
    check_invariants(stack, fake.url, ids)


def test_the_same_file_uploaded_by_twenty_threads_at_once(fake, start_stack):
    stack = start_stack(gateway_url=fake.url)
    owner = owner_session(stack)
    payload = pdf("same", 200_000)
    start = threading.Barrier(20)

    def one(_):
        session = requests.Session()  # a Session per thread, all carrying the one owner's token
        session.headers["Authorization"] = owner.headers["Authorization"]
        start.wait()
        return upload(session, stack.web_url, payload, "same.pdf")

    injected("one owner sends the same 200 KB PDF from 20 threads released together")
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(one, range(20)))
    with check:
        assert all(r.status_code == 202 for r in answers), \
            f"all 20 answer 202 (repeats name the existing job) — statuses {sorted({r.status_code for r in answers})}"
    named = {r.json()["jobs"][0]["id"] for r in answers if r.status_code == 202}
    fresh = sum(not r.json()["jobs"][0]["duplicate"] for r in answers if r.status_code == 202)
    rows = jobs(stack, "sha256 = ?", (hashlib.sha256(payload).hexdigest(),))
    with check:
        assert len(rows) == 1 and len(named) == 1 and fresh == 1, ("exactly one job: every answer names it, one says "
                                                                   f"created — {len(rows)} rows, {len(named)} ids "
                                                                   f"named, {fresh} created")
    kept = [p.name for p in (stack.data_dir / "uploads").iterdir()]
    with check:
        assert rows and kept == [f"{rows[0]['id']}.pdf"], f"exactly one file in uploads/, no partial left — {kept}"
    with check:
        assert settle(stack, 30) and rows and fake.calls[rows[0]["correlation_id"]] == 1, (
            f"the job completes with one gateway call — {fake.calls[rows[0]['correlation_id']] if rows else 0} calls")
    check_invariants(stack, fake.url, list(named))


def test_a_pdf_bomb_at_the_gateway(start_stack):
    # BREAKER_THRESHOLD at its shipped default: whether one owner's bad files can open the breaker is checked here.
    stack = start_stack(GATEWAY_TIMEOUT=30, BREAKER_THRESHOLD=5)
    bomb = make_flate_bomb_pdf(gib=4)
    invoice = make_invoice(n_lines=3, seed=77)[0]
    injected(f"a {len(bomb) // 1024} KiB PDF whose content inflates to 4 GiB, POSTed to the gateway's /process")
    began = time.monotonic()
    response = requests.post(f"{stack.gateway_url}/process", files={"file": ("bomb.pdf", bomb, "application/pdf")},
                             data={"mapping": "pt_simon_invoice_v1"}, timeout=120)
    with check:
        assert response.status_code in (422, 503), ("the gateway refuses it with 422 or 503 — "
                                                    f"{response.status_code} {error_code(response)} in "
                                                    f"{time.monotonic() - began:.1f} s")
    health = requests.get(f"{stack.gateway_url}/healthz", timeout=5)
    with check:
        assert health.status_code == 200, f"the gateway still answers /healthz — {health.status_code}"
    converted = requests.post(f"{stack.gateway_url}/process", files={"file": ("next.pdf", invoice, "application/pdf")},
                              data={"mapping": "pt_simon_invoice_v1"}, timeout=60)
    with check:
        assert converted.status_code == 200 and ET.fromstring(converted.content) is not None, \
            f"and converts the next invoice — {converted.status_code}, {len(converted.content)} bytes of XML"

    injected("two such bombs (differing by a byte) uploaded through the app by one owner, then an invoice")
    session = owner_session(stack)
    ids, states = upload_ids(stack, session, [bomb, bomb + b"\n% 2\n"]), set()

    def settled():
        states.add(healthz(stack).get("gateway"))
        return not jobs(stack, "status IN ('queued', 'processing')")

    with check:
        assert wait_for(settled, 120, 0.2), "both bombs' jobs leave the queue"
    ids += upload_ids(stack, session, [make_invoice(n_lines=3, seed=78)[0]])
    with check:
        assert wait_for(settled, 60, 0.2), "then the invoice's"
    *bomb_rows, invoice_row = (jobs(stack, "id = ?", (i,))[0] for i in ids)
    with check:
        assert all(row["status"] == "failed" and row["error_code"] in ("GW_4XX", "GW_5XX", "GW_OVER_LIMITS") for row in bomb_rows), \
            "each bomb's job fails with a gateway code — " + "; ".join(
                f"{r['status']} {r['error_code']} after {r['attempts']} attempts: {r['error']}" for r in bomb_rows)
    with check:
        assert invoice_row["status"] == "complete", f"the invoice's job completes — {invoice_row['status']}"
    with check:
        assert states == {"ok"}, ("one owner's bad files do not open the breaker for everyone (GET /api/healthz says "
                                  f"gateway \"ok\" throughout) — gateway states seen: {sorted(map(str, states))}")
    check_invariants(stack, stack.gateway_url, ids)
