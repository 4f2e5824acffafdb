"""Throwaway redis-server and PostgreSQL cluster on loopback, in a temp dir, for scale-out tests and by hand.

    python -m tests.support.services        # start both, print REDIS_URL and DATABASE_URL, Ctrl-C stops and removes them

As root, PostgreSQL runs as the `postgres` user the Debian package creates (it refuses to run as root).
"""
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest


def unavailable(message):
    """Skip the test for want of something the machine lacks; under CI=true, where nothing may skip, fail it."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def require(binary, why):
    """The binary's path; under CI=true a missing one fails the test, elsewhere it skips it."""
    path = shutil.which(binary) or (binary if os.path.isabs(binary) and os.access(binary, os.X_OK) else None)
    if path is None:
        unavailable(f"{binary} is not installed ({why}); `make system-deps` installs it")
    return path


def postgres_bin():
    """The newest PostgreSQL server binaries directory (Debian keeps them off PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parent.parent.name))
    return str(Path(require(found[-1] if found else "postgres", "PostgreSQL server")).parent)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_port(port, process, deadline, name):
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{name} exited with status {process.returncode} while starting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{name} did not listen on {port} in time")


@contextmanager
def redis_server(workdir=None):
    """Run redis-server on a free loopback port, without persistence; yield its URL."""
    binary = require("redis-server", "Redis")
    port = free_port()
    with tempfile.TemporaryDirectory(dir=workdir, prefix="redis-") as folder:
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", folder, "--protected-mode", "yes", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_port(port, process, time.monotonic() + 10, "redis-server")
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(timeout=10)


def _as_postgres(command):
    """Run command as the postgres user when we are root (PostgreSQL refuses root), else as ourselves."""
    if os.geteuid() == 0:
        return [require("runuser", "to run PostgreSQL as a non-root user"), "-u", "postgres", "--", *command]
    return command


@contextmanager
def postgres_cluster(database="pdfqueue"):
    """initdb a cluster in a temp dir, start it on a free loopback port (trust auth); yield a DATABASE_URL.

    The dir is made under the system temp dir, which the postgres user can reach (pytest's tmp_path it cannot)."""
    bindir = postgres_bin()
    port = free_port()
    root = Path(tempfile.mkdtemp(prefix="pdfqueue-pg-"))
    data, sockets = root / "data", root / "run"
    sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(sockets, "postgres", "postgres")
    user = "postgres" if os.geteuid() == 0 else os.environ.get("USER") or "postgres"
    try:
        subprocess.run(_as_postgres([f"{bindir}/initdb", "-D", str(data), "-U", user, "-A", "trust", "-E", "UTF8",
                                     "--no-sync", "--no-instructions"]),
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        options = (f"-c listen_addresses=127.0.0.1 -p {port} -k {sockets} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        subprocess.run(_as_postgres([f"{bindir}/pg_ctl", "-D", str(data), "-o", options, "-l", str(root / "log"),
                                     "-w", "-t", "30", "start"]),
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            subprocess.run(_as_postgres([f"{bindir}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", user, database]),
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            yield f"postgresql+psycopg://{user}@127.0.0.1:{port}/{database}"
        finally:
            subprocess.run(_as_postgres([f"{bindir}/pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop"]),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    with redis_server() as redis_url, postgres_cluster() as database_url:
        print(f"REDIS_URL={redis_url}\nDATABASE_URL={database_url}\n(Ctrl-C stops both)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
