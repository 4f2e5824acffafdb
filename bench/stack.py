"""Start pdfqueue's real processes on loopback in a throwaway DATA_DIR, for benchmarks and fault drills."""
import os
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from gateway.testing import free_port, wait_until_answering  # noqa: E402


class Stack:
    """Handles to the processes of one run: web_url, gateway_url, data_dir, and the Popen objects."""

    def __init__(self, data_dir, env):
        self.data_dir, self.env, self.procs = Path(data_dir), env, {}

    def start(self, name, argv, health_url=None, **extra_env):
        log = open(self.data_dir / f"{name}.log", "ab")
        proc = subprocess.Popen(argv, cwd=ROOT, env={**self.env, **extra_env}, stdout=log, stderr=log)
        self.procs[name] = proc
        if health_url:
            wait_until_answering(health_url, proc, name)
        return proc

    def start_worker(self, name="worker", **extra_env):
        return self.start(name, [sys.executable, "worker.py"], **extra_env)

    def stop(self, name, sig=None):
        proc = self.procs.pop(name)
        if sig is None:
            proc.terminate()
        else:
            proc.send_signal(sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop_all(self):
        for name in list(self.procs):
            self.stop(name)


@contextmanager
def running_stack(gateway_delay=None, worker=True, gateway_url=None, **settings):
    """Web (gunicorn), worker and a gateway — ours, or the fake one with a fixed delay when gateway_delay is set.

    With gateway_url, no gateway is started: the stack uses that one (an in-process FakeGateway, say)."""
    with ExitStack() as cleanup:
        data_dir = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="pdfqueue-bench-"))
        port, gateway_port = free_port(), free_port()
        env = {**os.environ, "DATA_DIR": data_dir, "PORT": str(port), "GATEWAY_PORT": str(gateway_port),
               "GATEWAY_URL": gateway_url or f"http://127.0.0.1:{gateway_port}", "SECRET_KEY": "bench", "LOG_LEVEL": "WARNING",
               "GATEWAY_HOST": "127.0.0.1", **{k: str(v) for k, v in settings.items()}}
        stack = Stack(data_dir, env)
        cleanup.callback(stack.stop_all)
        subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"], cwd=ROOT, env=env,
                       check=True, capture_output=True)
        if gateway_url is None and gateway_delay is None:
            stack.start("gateway", [sys.executable, "-m", "gunicorn", "-c", "gateway/gunicorn.conf.py", "gateway.wsgi:app"],
                        f"{env['GATEWAY_URL']}/healthz")
        elif gateway_url is None:
            stack.start("gateway", [sys.executable, "-m", "tests.fakegateway", str(gateway_port), str(gateway_delay)],
                        f"{env['GATEWAY_URL']}/healthz")
        stack.web_url = f"http://127.0.0.1:{port}"
        stack.gateway_url = env["GATEWAY_URL"]
        stack.start("web", [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"], f"{stack.web_url}/api/healthz")
        if worker:
            stack.start_worker()
        yield stack


def owner_session(web_url):
    """A requests session with its own owner and CSRF header set."""
    session = requests.Session()
    token = session.get(f"{web_url}/api/session", timeout=10).json()["csrf_token"]
    session.headers["X-CSRF-Token"] = token
    return session


def rss_kib(pid, field="VmRSS"):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def children(pid):
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def percentile(values, q):
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(values):
    return {"p50": statistics.median(values), "p95": percentile(values, 95), "p99": percentile(values, 99),
            "min": min(values), "max": max(values), "n": len(values)}


def table(rows, headers=("figure", "target", "measured")):
    """Print rows as a Markdown table and return its text."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    text = "\n".join(lines)
    print(text, flush=True)
    return text
