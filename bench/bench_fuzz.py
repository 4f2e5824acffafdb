"""Fuzz the gateway with thousands of mutated test PDFs (tests/support/pdfmutate.py) and count its answers.

    .venv/bin/python bench/bench_fuzz.py [--cases 3000] [--first 0]

The gateway's app runs in this process through Flask's test client, so each case is a real /process request with
its parse in a forked, capped child (gateway/sandbox.py), without the HTTP hop; the children's rusage is read as
they are reaped. Prints the answers by status and code, by mutation, the time per case, the children's CPU and
peak RSS, and the slowest cases; then figure | target | measured. Exits 1 if any answer is outside the contract
(a 5xx but 503 OVER_LIMITS, or a malformed answer), naming the cases: `pytest tests/gateway/test_gw_fuzz.py`
cannot reach seeds past 300, but `pdfmutate.mutate(pdfmutate.describe(seed), pdfmutate.corpus())` makes any case
again.
"""
import argparse
import io
import logging
import os
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.figures import percentile, rss_kib, table  # noqa: E402
from gateway import create_app  # noqa: E402
from tests.support import pdfmutate  # noqa: E402

# As tests/gateway/test_gw_fuzz.py: time and CPU well above what a file of a few KiB needs, below the defaults;
# memory at its default (512 MiB).
LIMITS = {"PARSE_TIMEOUT_S": 10, "PARSE_CPU_S": 5}


class ChildUsage:
    """The rusage of each parse child as the sandbox reaps it: os.waitpid, in this process only, becomes os.wait4
    (a bench's instrument; the gateway itself keeps waitpid)."""

    def __init__(self):
        self.last = None
        self._waitpid = os.waitpid

    def __enter__(self):
        def waitpid(pid, options):
            pid, status, self.last = os.wait4(pid, options)
            return pid, status
        os.waitpid = waitpid
        return self

    def __exit__(self, *exc):
        os.waitpid = self._waitpid


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=3000, help="how many seeds to run")
    parser.add_argument("--first", type=int, default=0, help="the first seed (the test suite runs 0-299)")
    args = parser.parse_args()

    app = create_app(LIMITS)
    limits = {name: app.config[name] for name in ("PARSE_TIMEOUT_S", "PARSE_CPU_S", "PARSE_MEMORY_MB")}
    logging.getLogger("gateway").setLevel(logging.ERROR)  # one access line per case would drown the table
    client = app.test_client()
    bases = pdfmutate.corpus()
    answers, by_mutation, problems = Counter(), defaultdict(Counter), []
    times, cpu, rss, cases = [], [], [], []
    began = time.perf_counter()
    with ChildUsage() as usage:
        for seed in range(args.first, args.first + args.cases):
            case = pdfmutate.describe(seed)
            pdf = pdfmutate.mutate(case, bases)
            usage.last = None
            started = time.perf_counter()
            response = client.post("/process", headers={"Accept": case.accept, "X-Correlation-ID": case.name}, data={
                "file": (io.BytesIO(pdf), "fuzz.pdf", "application/pdf"), "mapping": case.mapping})
            times.append(time.perf_counter() - started)
            cases.append(case.name)
            code, problem = pdfmutate.judge(case, response.status_code, response.content_type, response.data)
            answers[(response.status_code, code or "")] += 1
            by_mutation[case.mutation][_kind(response.status_code, code)] += 1
            if problem:
                problems.append(f"{case.name}: {problem}")
            if usage.last is not None:  # no child for answers given before the parse (415, 400)
                cpu.append(usage.last.ru_utime + usage.last.ru_stime)
                rss.append(usage.last.ru_maxrss)  # KiB on Linux
    elapsed = time.perf_counter() - began
    parent_mib = rss_kib(os.getpid()) / 1024

    print(f"gateway fuzz — seeds {args.first}..{args.first + args.cases - 1}, {os.cpu_count()} cores, in-process "
          f"app, limits {limits}, {elapsed:.0f} s in all")
    print()
    print(f"{'answer':<28} {'cases':>6} {'share':>7}")
    for (status, code), count in sorted(answers.items()):
        print(f"{status} {code:<24} {count:>6} {count / args.cases:>7.1%}")
    print()
    kinds = ["200", "422", "other 4xx", "503 OVER_LIMITS", "other 5xx"]
    print(f"{'mutation':<11}" + "".join(f"{kind:>17}" for kind in kinds))
    for mutation in pdfmutate.MUTATIONS:
        print(f"{mutation:<11}" + "".join(f"{by_mutation[mutation][kind]:>17}" for kind in kinds))
    print()
    slowest = sorted(zip(times, cases), reverse=True)[:5]
    print("slowest cases: " + ", ".join(f"{name} {seconds * 1000:.0f} ms" for seconds, name in slowest))
    print(f"parse children: {len(cpu)} (the others were refused before a parse); this process's RSS at the end "
          f"{parent_mib:.0f} MiB, which a forked child's RSS includes as it touches it")
    for problem in problems[:20]:
        print("OUTSIDE THE CONTRACT", problem)
    print()
    failures = sum(count for (status, code), count in answers.items() if status >= 500 and code != "OVER_LIMITS")
    over = answers[(503, "OVER_LIMITS")]
    table([
        (f"fuzz: 5xx other than 503 OVER_LIMITS, of {args.cases} mutated PDFs", "0", f"{failures} cases"),
        (f"fuzz: answers outside the contract, of {args.cases}", "0", f"{len(problems)} cases"),
        (f"fuzz: parses over their limits (503 OVER_LIMITS), of {args.cases}", "0", f"{over} cases"),
        (f"fuzz: 422 PARSE_FAILED (a parse that raised), of {args.cases}", "—",
         f"{answers[(422, 'PARSE_FAILED')]} cases"),
        ("fuzz: time per case (request, fork, parse)", "—",
         f"{percentile(times, 50) * 1000:.0f} ms p50 (p95 {percentile(times, 95) * 1000:.0f}, "
         f"max {max(times) * 1000:.0f}; {args.cases} cases)"),
        ("fuzz: CPU of one parse child", f"< {LIMITS['PARSE_CPU_S']} s",
         f"{max(cpu, default=0):.2f} s max (p50 {percentile(cpu, 50) * 1000:.0f} ms; {len(cpu)} children)"),
        ("fuzz: peak RSS of one parse child", "—",
         f"{max(rss, default=0) / 1024:.0f} MiB max (p50 {percentile(rss, 50) / 1024:.0f}; parent "
         f"{parent_mib:.0f} MiB; cap {limits['PARSE_MEMORY_MB']} MiB of address space over the parent's)"),
    ])
    return 1 if problems else 0


def _kind(status, code):
    if status == 200 or status == 422:
        return str(status)
    if status < 500:
        return "other 4xx"
    return "503 OVER_LIMITS" if code == "OVER_LIMITS" else "other 5xx"


if __name__ == "__main__":
    sys.exit(main())
