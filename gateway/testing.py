"""Run the real gateway under gunicorn on a free loopback port, for tests and benchmarks elsewhere."""

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_gateway(env=None, log=subprocess.DEVNULL, start_timeout=30):
    """Start `gunicorn -c gateway/gunicorn.conf.py gateway.wsgi:app` with env added (a None value unsets that
    variable); yield its base URL."""
    port = free_port()
    env = {**os.environ, **(env or {}), "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port)}
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gateway/gunicorn.conf.py", "gateway.wsgi:app"],
        cwd=ROOT, env={name: value for name, value in env.items() if value is not None},
        stdout=log, stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(f"{url}/healthz", process, "the gateway", start_timeout)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_answering(url, process, what, timeout=30):
    """Return once url answers below 500; raise if process exits first or timeout passes."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode} while starting")
        try:
            if requests.get(url, timeout=2).status_code < 500:
                return
        except requests.RequestException:  # not listening, or still booting its workers
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer {url} in time")
        time.sleep(0.1)
