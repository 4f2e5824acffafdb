"""Where the web and the worker spend their CPU while real invoices go through: py-spy on both, top functions.

    .venv/bin/python bench/profile_stack.py [--jobs 40] [--rounds 3] [--top 25] [--out bench/out/profile]

Starts a stack on loopback with our gateway (tests/support/stack.py), samples worker.py, the web's gunicorn worker
and the gateway's first gunicorn worker (its parse children are short-lived processes py-spy cannot follow) with py-spy (`pip install py-spy`; it needs ptrace, as root or with CAP_SYS_PTRACE) while the invoices are
uploaded and converted, and prints for each process the functions holding the most samples: "self" where
the CPU is spent, "total" with what they call. The raw stacks are kept in --out (py-spy's "raw" format, one
line a stack, for flame graph tools). Not a benchmark: run_all.py does not run it.
"""
import argparse
import collections
import shutil
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_overhead import CONCURRENCY, app_round  # noqa: E402
from tests.support.invoicegen import make_invoice  # noqa: E402
from tests.support.stack import children, owner_session, running_stack  # noqa: E402


def top(raw, count):
    """(samples, self counts, total counts) from py-spy's raw output: "frame;frame;... N" per line."""
    own, total, samples = collections.Counter(), collections.Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = [frame for frame in stack.split(";") if not frame.startswith("process ") and
                  not frame.startswith("thread ")]
        n = int(n)
        samples += n
        if frames:
            own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    return samples, own.most_common(count), total.most_common(count)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--rate", type=int, default=250)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "profile")
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    args.out.mkdir(parents=True, exist_ok=True)
    with running_stack(WORKER_CONCURRENCY=CONCURRENCY, UPLOADS_PER_MINUTE=100000, GATEWAY_TIMEOUT=60) as stack:
        session = owner_session(stack)
        targets = {"worker": stack.procs["worker"].pid, "web": children(stack.procs["web"].pid)[0],
                   "gateway": children(stack.procs["gateway"].pid)[0]}
        spies = {name: subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", str(args.rate), "--format", "raw",
                                         "--nonblocking", "--output", str(args.out / f"{name}.txt")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for name, pid in targets.items()}
        for round_ in range(args.rounds):
            pdfs = [make_invoice(n_lines=15 + (n * 37 + round_ * 11) % 56, seed=90000 + round_ * 1000 + n)[0]
                    for n in range(args.jobs)]
            app_round(stack, session, pdfs)
        for proc in spies.values():
            proc.send_signal(signal.SIGINT)
        for proc in spies.values():
            proc.wait(timeout=30)
    jobs = args.jobs * args.rounds
    for name in targets:
        samples, own, total = top(args.out / f"{name}.txt", args.top)
        print(f"\n== {name}: {samples} samples at {args.rate}/s over {jobs} jobs "
              f"({samples / args.rate * 1000 / jobs:.1f} ms of busy thread time a job)")
        print("  self:")
        for frame, n in own:
            print(f"  {100 * n / samples:5.1f}%  {frame}")
        print("  total:")
        for frame, n in total:
            print(f"  {100 * n / samples:5.1f}%  {frame}")


if __name__ == "__main__":
    main()
