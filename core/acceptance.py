"""What every incoming file goes through, from the upload form or from a source (core/intake/): a PDF, within
MAX_UPLOAD_MB, room for it (the owner's quota, the disk's floor), kept under a name we choose as a queued job, or
the live job it repeats (dedupe by content)."""
import os
import re
import shutil
import unicodedata
from pathlib import Path

from flask import current_app
from flask_babel import lazy_gettext as _l
from sqlalchemy.exc import IntegrityError

from core import codes
from core.accounts import storage_used
from core.db import db
from core.errors import ApiError, from_os_error, insufficient_storage
from core.jobs.model import Job, new_id
from core.paths import kept_file

PDF_MAGIC = b"%PDF-"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
MAX_FILENAME = 255


def display_name(raw):
    """The file name as given, made safe to show: no control characters, no format characters (Unicode
    category Cf: bidi overrides that make "fdp.exe" read "exe.pdf", zero-width ones that hide a difference), not
    absurdly long."""
    name = unicodedata.normalize("NFC", raw or "")
    name = _CONTROL.sub("", name.encode("utf-8", "replace").decode("utf-8", "replace"))
    name = "".join(char for char in name if unicodedata.category(char) != "Cf").strip()
    return name[:MAX_FILENAME] or "upload.pdf"


def check_pdf(head, size, name):
    """Raise EMPTY (400) or NOT_PDF (415) unless the file's first bytes (head) say PDF."""
    if size == 0:
        raise ApiError(codes.EMPTY, 400, _l("%(name)s is empty.", name=name))
    if head[:len(PDF_MAGIC)] != PDF_MAGIC:
        raise ApiError(codes.NOT_PDF, 415, _l("%(name)s is not a PDF (it does not start with %%PDF-).", name=name))


def check_size(size, name):
    """Raise TOO_LARGE (413) if size is past MAX_UPLOAD_MB."""
    limit = current_app.config["MAX_UPLOAD_MB"]
    if size > limit * 1024 * 1024:
        raise ApiError(codes.TOO_LARGE, 413, _l("%(name)s is larger than %(mb)s MB.", name=name, mb=limit))


def check_room(owner, size, name):
    """Raise 507 if keeping size more bytes would pass the owner's quota or the disk's free-space floor."""
    config = current_app.config
    mb = 1024 * 1024
    if shutil.disk_usage(config["UPLOAD_DIR"]).free < config["MIN_FREE_MB"] * mb:
        raise insufficient_storage()
    if storage_used(owner) + size > config["USER_QUOTA_MB"] * mb:
        raise ApiError(codes.INSUFFICIENT_STORAGE, 507,
                       _l("%(name)s would take you past your storage quota of %(mb)s MB; delete old jobs and try "
                          "again. Nothing of it was kept.", name=name, mb=config["USER_QUOTA_MB"]))


def keep(temp_path, owner, mapping, name, size, sha256, **source):
    """Keep a checked temp file (in UPLOAD_DIR) as a queued job: (job, outcome), outcome "new", "duplicate" (the
    live job returned, the file dropped) or "reconverted" (Job.reconvert). Raise 507 if there is no room.

    source: the job's source columns (Job.source_*), for a file a source brought."""
    check_room(owner, size, name)
    job_id = new_id()
    final = Path(current_app.config["UPLOAD_DIR"]) / f"{job_id}.pdf"
    try:
        os.replace(temp_path, final)
    except OSError as exc:
        raise from_os_error(exc) from exc
    upload_path = f"uploads/{job_id}.pdf"
    try:
        job = Job.create(id=job_id, owner=owner, filename=name, mapping=mapping, bytes=size, sha256=sha256,
                         upload_path=upload_path, **source)
    except IntegrityError:
        existing = Job.query.filter_by(owner=owner, sha256=sha256, mapping=mapping, bytes=size).one()
        job, outcome = _dedupe(existing, upload_path, name)
        if outcome == "duplicate":
            final.unlink(missing_ok=True)
    except BaseException:
        final.unlink(missing_ok=True)
        raise
    else:
        outcome = "new"
    return job, outcome


def log_queued(logger, job, outcome):
    """Log a job that a kept file queued (new or reconverted) on the caller's logger."""
    if outcome != "duplicate":
        logger.info("job %s queued", job.id, extra={
            "job_id": job.id, "correlation_id": job.correlation_id, "bytes": job.bytes, "mapping": job.mapping,
            "to": "queued", "reconverted": outcome == "reconverted"})


def _dedupe(existing, upload_path, name):
    """The same file again: (the live job, "duplicate"), or the spent job converted again from the new PDF
    (Job.reconvert, "reconverted"), since "same file, same result" must hold after retention too."""
    old_upload = existing.upload_path
    if existing.spent and Job.reconvert(existing.id, upload_path, name):
        if old_upload and old_upload != upload_path:  # an expired job may still have had its PDF
            if kept := kept_file(current_app.config["DATA_DIR"], old_upload):
                kept.unlink(missing_ok=True)
        db.session.refresh(existing)
        return existing, "reconverted"
    return existing, "duplicate"
