"""Two web processes and two workers on Redis and PostgreSQL: no job processed twice, one shared upload limit,
every live viewer sees every change, and /metrics on either web process sees the workers' numbers."""
import json
import threading
import time

import redis
import requests

from tests.support.app import pdf_bytes
from tests.support.stack import MONITOR

JOBS_PER_OWNER = 10  # the per-owner limit: three owners make 30 jobs


def test_thirty_jobs_through_two_workers_each_processed_once(stack, gateway, owner_factory):
    owners = [owner_factory() for _ in range(3)]
    uploaded, done = [], []
    # The first owner's jobs go through worker1 alone, the second's through worker2 alone (the other one stopped),
    # the third's through both at once. Left to race, one worker may take them all: WORKER_CONCURRENCY is the
    # gateway's slots, not each worker's, and a thread keeps its slot while jobs are due.
    for o, (owner, stopped) in enumerate(zip(owners, ("worker2", "worker1", None))):
        if stopped:
            stack.stop(stopped)
        for n in range(JOBS_PER_OWNER):
            response = owner.upload(n % 2, pdf_bytes(f"o{o}-{n}"), f"o{o}-{n}.pdf")  # alternate web processes
            assert response.status_code == 202, response.text
            uploaded.append(response.json()["jobs"][0])
        done += owner.wait_done(JOBS_PER_OWNER)
        if stopped:
            stack.start_again(stopped)

    assert {job["id"] for job in done} == {job["id"] for job in uploaded}
    assert all(job["status"] == "complete" and job["attempts"] == 1 for job in done)
    # the gateway saw each job exactly once, and nothing else
    assert {cid: gateway.calls[cid] for cid in (job["correlation_id"] for job in done)} == \
        {job["correlation_id"]: 1 for job in done}
    assert gateway.total_calls() == len(done)

    # both workers took jobs, neither took one the other had; every job line names its job and correlation id
    claimed = {}
    for worker in ("worker1", "worker2"):
        records = stack.log_records(worker)  # every line is one JSON event
        job_lines = [r for r in records if "job_id" in r]
        assert all(r.get("correlation_id") for r in job_lines), [r for r in job_lines if not r.get("correlation_id")]
        claimed[worker] = {r["job_id"] for r in job_lines if r.get("to") == "processing"}
    assert {job["id"] for job in done[:JOBS_PER_OWNER]} <= claimed["worker1"], claimed
    assert {job["id"] for job in done[JOBS_PER_OWNER:2 * JOBS_PER_OWNER]} <= claimed["worker2"], claimed
    assert not claimed["worker1"] & claimed["worker2"]
    assert claimed["worker1"] | claimed["worker2"] == {job["id"] for job in done}

    # either web process reports the latency the workers recorded, and the same job counts
    # (workers write their counters once a second, so allow a few seconds for the last batch)
    for url in stack.web_urls:
        latency = f'pdfqueue_gateway_request_seconds_count{{outcome="ok"}} {float(len(done))}'
        deadline = time.monotonic() + 5
        while latency not in (text := requests.get(f"{url}/metrics", timeout=5, headers=MONITOR).text) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert latency in text
        assert f'pdfqueue_jobs{{state="complete"}} {float(len(done))}' in text


def test_the_per_owner_upload_limit_holds_across_web_processes(owner_factory):
    owner = owner_factory()
    statuses = [owner.upload(n % 2, pdf_bytes(f"limit{n}"), f"limit{n}.pdf").status_code for n in range(10)]
    assert statuses == [202] * 10
    for web in (1, 0):  # the 11th file is refused by whichever process it reaches
        refused = owner.upload(web, pdf_bytes(f"limit-extra{web}"), "extra.pdf")
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "RATE_LIMITED"
        assert int(refused.headers["Retry-After"]) > 0
    assert owner_factory().upload(1, pdf_bytes("someone-else"), "a.pdf").status_code == 202


class Viewer(threading.Thread):
    """An SSE client on one web process: records every job JSON it is sent."""

    def __init__(self, owner, web):
        super().__init__(daemon=True)
        self.owner, self.web = owner, web
        self.seen = {}  # job id -> list of (status, updated_at)
        self.connected = threading.Event()
        self.response = None

    def run(self):
        url = f"{self.owner.stack.web_urls[self.web]}/api/events"
        self.response = self.owner.http.get(url, stream=True, timeout=(5, 30))
        event = None
        try:
            for line in self.response.iter_lines(chunk_size=None, decode_unicode=True):  # each chunk as it comes
                self.connected.set()
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "job":
                    job = json.loads(line[6:])
                    self.seen.setdefault(job["id"], []).append((job["status"], job["updated_at"]))
        except (requests.RequestException, ValueError, OSError):
            pass  # the stack stopped: the test reads what was seen before that


    def final(self, job_id):
        states = self.seen.get(job_id)
        return states[-1] if states else None


def test_every_viewer_on_every_web_process_sees_every_change(stack, owner_factory):
    owner = owner_factory()
    viewers = [Viewer(owner, 0), Viewer(owner, 1)]
    for viewer in viewers:
        viewer.start()
        assert viewer.connected.wait(10)
    # each web process's event hub listens on Redis pub/sub (not only on its fallback poll)
    client = redis.Redis.from_url(stack.env["REDIS_URL"])
    deadline = time.monotonic() + 10
    while dict(client.pubsub_numsub("pdfqueue:changes")).get(b"pdfqueue:changes", 0) < 2:
        assert time.monotonic() < deadline, "the web processes did not subscribe to pdfqueue:changes"
        time.sleep(0.1)
    published = client.pubsub()
    published.subscribe("pdfqueue:changes")

    jobs = [owner.upload(n % 2, pdf_bytes(f"sse{n}"), f"sse{n}.pdf").json()["jobs"][0] for n in range(6)]
    done = {job["id"]: job for job in owner.wait_done(len(jobs))}
    deadline = time.monotonic() + 15
    while any(viewer.final(job_id) != (job["status"], job["updated_at"]) for viewer in viewers
              for job_id, job in done.items()):
        assert time.monotonic() < deadline, [viewer.seen for viewer in viewers]
        time.sleep(0.1)
    for viewer in viewers:
        assert set(viewer.seen) == set(done)
        assert all(viewer.final(job_id)[0] == "complete" for job_id in done)

    # the changes went through Redis: from the web processes (queued) and the workers (the rest)
    messages = []
    while (message := published.get_message(timeout=0.5)) is not None:
        if message["type"] == "message":
            messages.append(json.loads(message["data"]))
    published.close()
    assert messages, "no change was published on Redis"


def test_a_session_made_on_one_web_process_works_on_the_other_and_ends_on_both(stack, owner_factory):
    owner = owner_factory()  # signed in through /login on the first web process
    first, second = stack.web_urls
    assert owner.http.get(f"{second}/api/session", timeout=5).json()["user"]["email"] == owner.email
    copied = dict(owner.http.cookies)
    assert owner.http.post(f"{second}/logout", headers={"X-CSRF-Token": owner.token}, allow_redirects=False,
                           timeout=5).status_code == 303
    replay = requests.Session()
    replay.cookies.update(copied)
    assert replay.get(f"{first}/api/jobs", timeout=5).status_code == 401  # signed out on the other process too


class RunsCode:
    """What an attacker with access to Redis would push: a pickle that runs a command when it is loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return os.system, (f"touch {self.marker}",)


def test_a_forged_message_pushed_into_redis_is_refused_unread_and_logged(stack, owner_factory, tmp_path):
    import pickle
    from huey.registry import Message
    from core.queue import PROCESS_JOB
    marker = tmp_path / "the worker ran my code"
    forged = Message("forged", PROCESS_JOB, None, 0, 0, None, (RunsCode(marker),), {}, None, None, None, None,
                     None, None, None)
    client = redis.Redis.from_url(stack.env["REDIS_URL"])
    for message in (pickle.dumps(forged), pickle.dumps(forged) + b":" + b"0" * 40):  # unsigned; a made-up signature
        client.lpush("huey.redis.pdfqueue", message)
    deadline = time.monotonic() + 15
    while sum(stack.log(worker).count("refused a queue message not signed") for worker in ("worker1", "worker2")) < 2:
        assert time.monotonic() < deadline, "the workers did not log the forged messages"
        time.sleep(0.2)
    assert not marker.exists() and client.llen("huey.redis.pdfqueue") == 0
    # and the workers go on with real work
    owner = owner_factory()
    assert owner.upload(0, pdf_bytes("after-forgery"), "after.pdf").status_code == 202
    assert [job["status"] for job in owner.wait_done(1)] == ["complete"]
