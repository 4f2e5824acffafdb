"""Slow-body attack: N clients each start a multipart upload (a signed-in token, or none) and then trickle one byte
every few seconds. Prints the web worker's open file descriptors and the connections still held, over time.

    .venv/bin/python bench/bench_slow_body.py [N] [ROOT]     (ROOT: a checkout to measure, default this one)
"""
import os
import socket
import sys
import threading
import time
from pathlib import Path

N = int(sys.argv[1]) if len(sys.argv) > 1 else 100
ROOT = Path(sys.argv[2] if len(sys.argv) > 2 else Path(__file__).resolve().parents[1]).resolve()
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)

from tests.support.stack import children, owner_session, running_stack  # noqa: E402

BOUNDARY = "slowbody"
HEAD = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.pdf\"\r\n"
        "Content-Type: application/pdf\r\n\r\n%PDF-1.4\n").encode()


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def attack(port, token, held, stop):
    sock = socket.create_connection(("127.0.0.1", port))
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    sock.sendall((f"POST /api/upload HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: multipart/form-data; boundary={BOUNDARY}"
                  f"\r\nContent-Length: 10000000\r\n\r\n").encode() + HEAD)
    held.append(sock)
    sock.settimeout(0.1)
    while not stop.is_set():
        try:
            sock.sendall(b"0")
            try:
                if sock.recv(65536) == b"":
                    break
            except socket.timeout:
                pass
        except OSError:
            break
        stop.wait(2)
    held.remove(sock)
    sock.close()


def run(token_kind):
    with running_stack(gateway_url="http://127.0.0.1:9", workers=0, BODY_TIMEOUT_SECONDS=10) as stack:
        worker_pid = children(stack.procs["web"].pid)[0]
        token = owner_session(stack).headers["Authorization"].split()[1] if token_kind == "token" else None
        port = int(stack.web_url.rsplit(":", 1)[1])
        base = open_fds(worker_pid)
        held, stop = [], threading.Event()
        threads = [threading.Thread(target=attack, args=(port, token, held, stop), daemon=True) for _ in range(N)]
        for thread in threads:
            thread.start()
        rows = []
        for at in (5, 15, 25):
            time.sleep(at - (rows[-1][0] if rows else 0))
            rows.append((at, open_fds(worker_pid), len(held)))
        stop.set()
        print(f"| {token_kind:7} | {N} | {base} | " + " | ".join(f"{fds} fds, {conns} held" for _, fds, conns in rows)
              + " |")
        return rows[-1]


if __name__ == "__main__":
    print(f"{ROOT}: BODY_TIMEOUT_SECONDS=10 (ignored where unknown), one byte per 2 s per client")
    print("| client | N | fds idle | t=5 s | t=15 s | t=25 s |")
    print("|---|---|---|---|---|---|")
    last = {kind: run(kind) for kind in ("token", "none")}
    print("\n| figure | target | measured |\n|---|---|---|")
    for kind, (at, fds, held) in last.items():
        who = "signed in with a token" if kind == "token" else "not signed in"
        print(f"| slow-body uploads still held {at} s after they began, {N} clients {who} (BODY_TIMEOUT_SECONDS=10) "
              f"| 0 | {held} ({fds} fds open) |")
