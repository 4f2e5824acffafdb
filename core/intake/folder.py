"""A folder source: every *.pdf that has stopped changing becomes a job, then moves to done/ beside it (or to
rejected/ with a NAME.reason.txt saying why). A file still being written is never taken: it must have been left
alone for INTAKE_SETTLE_SECONDS, and must not change while it is copied into uploads/.

The worker watches the folder (watchfiles, worker/intake.py) and polls it as a backstop; this module is the poll.
"""
import os
import time
from pathlib import Path

from flask import current_app

from core.intake.failures import PollFailed, Rejected

DONE, REJECTED = "done", "rejected"
# Names writers give a file they have not finished (browsers, rsync, editors): left alone, never rejected.
UNFINISHED = (".part", ".partial", ".tmp", ".crdownload", ".download", "~", ".swp")
CHUNK = 1024 * 1024


def poll(run):
    """Take every settled file of the source's folder (run: a core.intake.runner.Poll)."""
    root = Path(run.source.parts["path"])
    settle = current_app.config["INTAKE_SETTLE_SECONDS"]
    try:
        entries = sorted(os.scandir(root), key=lambda entry: entry.name)
        for sub in (DONE, REJECTED):
            (root / sub).mkdir(exist_ok=True)
    except OSError as exc:
        raise PollFailed(f"Folder {root}: {exc.strerror or exc}.") from None
    for entry in entries:
        name = entry.name
        if name.startswith(".") or name.lower().endswith(UNFINISHED) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            stat = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # taken away meanwhile
        age = time.time() - stat.st_mtime
        if age < settle:
            run.soon(settle - age)  # still being written, perhaps: look again once it has settled
            continue
        if not run.room():
            break
        path = Path(entry.path)
        if not name.lower().endswith(".pdf"):
            run.reject(name, f"{name} is not a PDF (its name does not end in .pdf).")
            move_aside(path, root / REJECTED, f"{name} is not a PDF (its name does not end in .pdf).")
            continue
        take_file(run, path, stat, settle)
        run.renew()


def take_file(run, path, stat, settle):
    """Copy one settled file into a job, then move it to done/ (or rejected/); left in place if it changed."""
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        return
    except OSError as exc:
        raise PollFailed(f"Cannot read {path}: {exc.strerror}.") from None
    with handle:
        before = os.fstat(handle.fileno())
        if (before.st_size, before.st_mtime_ns) != (stat.st_size, stat.st_mtime_ns):
            run.soon(settle)  # written to since we looked
            return
        try:
            run.take(iter(lambda: handle.read(CHUNK), b""), path.name, size=stat.st_size)
        except Rejected as refusal:
            move_aside(path, path.parent / REJECTED, str(refusal))
            return
        after = os.fstat(handle.fileno())
    if (after.st_size, after.st_mtime_ns) != (stat.st_size, stat.st_mtime_ns):
        # Written to while we copied it: the job holds a copy that may be short. The file stays, and once it
        # settles its whole content is taken (a different file, so a job of its own).
        run.soon(settle)
        return
    # Only now, its job committed, does the file leave: killed before this, it is found again.
    move_aside(path, path.parent / DONE)


def move_aside(path, folder, reason=None):
    """Move path into folder under a name not yet taken there; with reason, write NAME.reason.txt beside it."""
    target = folder / path.name
    count = 1
    while target.exists() or (reason and target.with_name(target.name + ".reason.txt").exists()):
        target = folder / f"{path.stem}-{count}{path.suffix}"
        count += 1
    try:
        if reason:
            target.with_name(target.name + ".reason.txt").write_text(reason + "\n")
        os.replace(path, target)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise PollFailed(f"Cannot move {path.name} to {folder}: {exc.strerror}.") from None
