"""The app as tests and benchmarks drive it: small PDFs, a client that signs in and sends its CSRF token, and
shortcuts through the worker's own code (run a job, claim one, read one back)."""
import os

from core.db import db
from tests.support.people import signed_in


MINIMAL_PDF = (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
               b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n")


def pdf_bytes(tag="x", size=None):
    """A small distinct PDF-looking payload (the web app only checks the magic bytes)."""
    body = MINIMAL_PDF + f"% {tag}\n".encode()
    if size:
        body += b"0" * max(0, size - len(body))
    return body


# Retries at once and a breaker that stays closed, so a test drives each attempt itself.
WORKER_SETTINGS = {"RETRY_BASE_SECONDS": 0, "RETRY_JITTER_SECONDS": 0, "BREAKER_THRESHOLD": 100,
                   "BREAKER_DISTINCT_JOBS": 0, "GATEWAY_TIMEOUT": 2}


def upload(api, tag="x"):
    """Upload one small distinct PDF; return its job (asserting it was accepted)."""
    response = api.upload((pdf_bytes(tag), f"{tag}.pdf"))
    assert response.status_code == 202, response.get_json()
    return response.get_json()["jobs"][0]


def run(app, job_id):
    """Run the worker's task body for one job, in this process."""
    from worker.run import run_job
    with app.app_context():
        run_job(job_id)
        db.session.remove()


def claim(job_id, worker="w", lease_seconds=30, capacity=4):
    """Claim as a worker does (Job.claim_next: fair share chooses), checking that the choice is this job; what the
    claim returns, or None if nothing was claimable (capacity full, nothing due). In an app context."""
    from core.jobs.model import Job
    claimed = Job.claim_next(worker, lease_seconds, capacity)
    assert claimed is None or claimed.id == job_id, f"fair share chose {claimed.id}, not {job_id}"
    return claimed


def load(app, job_id):
    """The job's row as the database has it now."""
    from core.jobs.model import Job
    with app.app_context():
        job = db.session.get(Job, job_id)
        db.session.expunge_all()
        return job


class ApiClient:
    """The Flask test client as our pages' JavaScript drives it: signed in as a new user (admin if asked), with
    its CSRF token on every change and, as a browser adds to each request a page makes to its own site,
    `Sec-Fetch-Site: same-origin`."""

    def __init__(self, flask_client, admin=False):
        self.raw = flask_client
        app = flask_client.application
        if app.config["AUTH"] != "none":
            self.user, cookie = signed_in(app, admin=admin)
            flask_client.set_cookie(app.config["SESSION_COOKIE_NAME"], cookie)
        self.token = flask_client.get("/api/session").get_json()["csrf_token"]

    def _headers(self, headers):
        return {"X-CSRF-Token": self.token, "Sec-Fetch-Site": "same-origin", **(headers or {})}

    def get(self, url, headers=None, **kw):
        return self.raw.get(url, headers={"Sec-Fetch-Site": "same-origin", **(headers or {})}, **kw)

    def post(self, url, headers=None, **kw):
        return self.raw.post(url, headers=self._headers(headers), **kw)

    def delete(self, url, headers=None, **kw):
        return self.raw.delete(url, headers=self._headers(headers), **kw)

    def upload(self, *files, mapping=None, headers=None):
        """POST files given as (bytes, filename) pairs to /api/upload, in a body as browsers and requests write it.

        Not the test client's own encoding: it leaves out the blank line that ends an empty file part's headers
        (so the part's end is the next boundary's line break), which no real client does and the app's parser
        reads as a malformed body."""
        parts = [(f'Content-Disposition: form-data; name="file"; filename="{name}"\r\n'
                  "Content-Type: application/pdf\r\n\r\n").encode() + content for content, name in files]
        if mapping is not None:
            parts.append(f'Content-Disposition: form-data; name="mapping"\r\n\r\n{mapping}'.encode())
        boundary = "----pdfqueueTestBoundary" + os.urandom(8).hex()
        body = b"".join(f"--{boundary}\r\n".encode() + part + b"\r\n" for part in parts) + f"--{boundary}--\r\n".encode()
        return self.post("/api/upload", data=body, headers=headers, content_type=f"multipart/form-data; boundary={boundary}")


def finish(app, job_id, status="complete", xml="<Invoice><InvoiceNumber>FT 1/1</InvoiceNumber></Invoice>", error=None):
    """Drive a job through the model's transitions to complete (with a stored result) or failed."""
    from pathlib import Path
    from core.jobs.model import Job
    with app.app_context():
        assert claim(job_id, "w1", 30, capacity=4)
        if status == "complete":
            Path(app.config["RESULT_DIR"], f"{job_id}.xml").write_text(xml)
            assert Job.complete(job_id, "w1", f"results/{job_id}.xml")
        elif status == "failed":
            assert Job.fail(job_id, "w1", "GW_4XX", error or "The gateway refused the file: no invoice number.\nmore")
