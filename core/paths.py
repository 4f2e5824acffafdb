"""The files the database names: a job's upload_path and result_path, relative to DATA_DIR.

Every place that turns such a path into a file goes through stored_file, so a row that points anywhere but into
DATA_DIR's uploads/ or results/ (by `..`, an absolute path, or a symlink leading out) is never opened, served,
sent to the gateway or deleted: a tampered database, or one restored from a doctored backup, reads nothing else.
"""
import logging
from pathlib import Path

logger = logging.getLogger("pdfqueue.paths")

FOLDERS = ("uploads", "results")  # where under DATA_DIR a stored path may lead


class StoredPathError(Exception):
    """A stored path that leads outside DATA_DIR's uploads/ or results/."""


def stored_file(data_dir, relative):
    """The file a stored path names under data_dir, resolved; raise StoredPathError if it leads anywhere but into
    data_dir's uploads/ or results/ (each folder may itself be a symlink, to a bigger disk say)."""
    data_dir = Path(data_dir)
    try:
        path = (data_dir / relative).resolve()
        roots = [(data_dir / folder).resolve() for folder in FOLDERS]
    except (OSError, ValueError, RuntimeError, TypeError):  # a NUL byte, a symlink loop, not a path at all
        raise StoredPathError(f"{relative!r} is not a path under DATA_DIR") from None
    if not any(path.parent == root for root in roots):
        raise StoredPathError(f"{relative!r} leads outside DATA_DIR's {' and '.join(FOLDERS)}")
    return path


def kept_file(data_dir, relative):
    """stored_file, or None if there is no path or it is refused (logged: the row was tampered with)."""
    if not relative:
        return None
    try:
        return stored_file(data_dir, relative)
    except StoredPathError as error:
        logger.warning("refused a stored path: %s", error)
        return None
