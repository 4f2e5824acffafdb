"""What the benchmarks measure with and how they print it: memory of a process, percentiles, a Markdown table."""
import sqlite3
import statistics
from pathlib import Path


def rss_kib(pid, field="VmRSS"):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


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


_readers = {}


def db_rows(data_dir, sql, args=()):
    """Rows of a query on a stack's SQLite database, through one connection kept open per database: benches poll
    it every few ms, and opening a connection each time would take its CPU from the app being measured."""
    path = f"{data_dir}/instance/pdfqueue.db"
    if path not in _readers:
        _readers[path] = sqlite3.connect(path, timeout=15, isolation_level=None)  # autocommit: each read is fresh
    return _readers[path].execute(sql, args).fetchall()
