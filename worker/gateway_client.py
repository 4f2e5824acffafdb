"""Talking to the conversion gateway: one pooled HTTP session, streamed uploads, capped answers."""
import json
import os
import secrets
import threading
import time
from contextlib import contextmanager

import requests
from requests.adapters import HTTPAdapter
from requests_toolbelt.multipart.encoder import MultipartEncoder

from core import codes
from core.codes import GW_4XX, GW_5XX, GW_OVER_LIMITS, GW_PARSE_FAILED, GW_TIMEOUT, TOO_LARGE
from core.counters import observe_gateway
from worker.retry import ConversionError, FinalError, TransientError

OVER_LIMITS = "OVER_LIMITS"  # the gateway's code for a file that ran past its parse limits (gateway/sandbox.py)
PARSE_FAILED = "PARSE_FAILED"  # its 422 for a file whose parse raised (gateway/convert.py)


class PoisonFile(FinalError):
    """The gateway's parse of this file ran past its memory, CPU or time limits: every attempt would, and the
    gateway that said so is up, so neither a retry nor the breaker is called for."""

    blames_gateway = False

    def __init__(self, message):
        super().__init__(GW_OVER_LIMITS, f"The file is too costly to convert ({message}); it will not be retried. "
                                         "Check the PDF (a corrupt or hostile file, or a huge scan) and upload a "
                                         "fixed copy.")


class ParseFailed(FinalError):
    """The gateway's parse of this file raised (a pdfium or mapping bug the file walks into): the file's own final
    answer from a gateway that is up, so it is never counted toward the breaker, however many files get it."""

    blames_gateway = False

    def __init__(self, message):
        super().__init__(GW_PARSE_FAILED, f"The converter failed on this file ({message}); it will not be retried. "
                                          "The gateway's log has the details under this job's correlation id: "
                                          "retry the job once the converter is fixed, or upload a re-exported copy.")


CONNECT_TIMEOUT = 5
HEALTH_TIMEOUT = 3
CHUNK = 64 * 1024
IN_MEMORY_BYTES = 1024 * 1024  # a PDF up to this size is sent from memory (see _multipart)

_local = threading.local()
DEFAULT_HEADERS = {"User-Agent": requests.utils.default_user_agent()}


def _session():
    # One session per thread: requests' Session is not documented as thread-safe; each keeps its pool.
    session = getattr(_local, "session", None)
    if session is None:
        session = _local.session = requests.Session()
        # The gateway's address is configured (GATEWAY_URL): no proxy, .netrc or CA bundle from the environment,
        # whose lookup at every request is a fifth of the call's CPU.
        session.trust_env = False
        session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=1))
        session.mount("https://", HTTPAdapter(pool_connections=1, pool_maxsize=1))
    return session


def _multipart(pdf, mapping):
    """The /process request body for the open PDF, and its Content-Type.

    A PDF up to IN_MEMORY_BYTES is sent as one bytes body, built with a join: it costs a fraction of the
    streaming encoder's CPU, and the request goes out in one write. A larger one is streamed, so the worker's
    memory does not grow with the file."""
    size = os.fstat(pdf.fileno()).st_size
    if size > IN_MEMORY_BYTES:
        body = MultipartEncoder(fields={"mapping": mapping, "file": ("document.pdf", pdf, "application/pdf")})
        return body, body.content_type
    boundary = secrets.token_hex(16)
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="mapping"\r\n\r\n{mapping}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="document.pdf"\r\n'
            'Content-Type: application/pdf\r\n\r\n')
    body = b"".join((head.encode(), pdf.read(), f"\r\n--{boundary}--\r\n".encode()))
    return body, f"multipart/form-data; boundary={boundary}"


ERROR_BODY_BYTES = 64 * 1024  # an error answer is one line of JSON: read no more of it than this


def _error(response):
    """(code, message) of the gateway's JSON error answer, reading at most ERROR_BODY_BYTES of it."""
    body = b""
    try:
        for chunk in response.iter_content(CHUNK):
            body += chunk
            if len(body) >= ERROR_BODY_BYTES:
                break
        error = json.loads(body[:ERROR_BODY_BYTES])["error"]
        return str(error.get("code", ""))[:64], " ".join(str(error["message"]).split())[:500]
    except (ValueError, KeyError, TypeError, AttributeError, requests.RequestException):
        return "", f"the gateway answered {response.status_code}"


def process(base_url, pdf_path, mapping, correlation_id, out, read_timeout, max_bytes, deadline=None, clock=None):
    """POST the PDF to {base_url}/process and stream the XML into out (anything with write(bytes))."""
    with open(pdf_path, "rb") as pdf:
        body, content_type = _multipart(pdf, mapping)
        headers = {"Content-Type": content_type, "Accept": "application/xml", "X-Correlation-ID": correlation_id}
        url = f"{base_url}/process"
        try:
            # Prepared and sent by the session's adapter: Session.post's merging of session settings, cookies
            # and redirects (none of which a gateway call uses) costs a sixth of the call's CPU.
            request = requests.Request("POST", url, data=body, headers={**DEFAULT_HEADERS, **headers}).prepare()
            response = _session().get_adapter(url).send(request, stream=True, timeout=(CONNECT_TIMEOUT, read_timeout))
        except requests.Timeout as exc:
            raise TransientError(GW_TIMEOUT, f"the gateway did not answer within {read_timeout:g} s") from exc
        except requests.ConnectionError as exc:
            raise TransientError(GW_5XX, "the gateway cannot be reached") from exc
    with response:
        if response.status_code == 413:  # the PDF is over the gateway's size limit: final, and said as such
            raise FinalError(TOO_LARGE, _error(response)[1])
        if 400 <= response.status_code < 500:
            code, message = _error(response)
            if code == PARSE_FAILED:
                raise ParseFailed(message)
            raise FinalError(GW_4XX, message)
        if response.status_code != 200:
            code, message = _error(response)
            if code == OVER_LIMITS:
                raise PoisonFile(message)
            raise TransientError(GW_5XX, message)
        received = 0
        try:
            for chunk in response.iter_content(CHUNK):
                received += len(chunk)
                if received > max_bytes:
                    raise TransientError(GW_5XX, f"the gateway's answer is over {max_bytes} bytes")
                if deadline is not None and clock() > deadline:
                    raise TransientError(GW_TIMEOUT, "the conversion ran past its time limit")
                out.write(chunk)
        except requests.Timeout as exc:
            raise TransientError(GW_TIMEOUT, f"the gateway stalled for {read_timeout:g} s") from exc
        except requests.RequestException as exc:
            raise TransientError(GW_5XX, "the gateway's answer broke off") from exc
    return received


def healthy(base_url):
    """True if the gateway's /healthz says it can take work."""
    try:
        response = _session().get(f"{base_url}/healthz", timeout=(CONNECT_TIMEOUT, HEALTH_TIMEOUT))
        return response.status_code == 200 and response.json().get("status") == "ok"
    except (requests.RequestException, ValueError):
        return False


@contextmanager
def gateway_call():
    """Time the gateway call in the block and record it with its outcome."""
    started = time.monotonic()
    outcome = "ok"
    try:
        yield
    except ConversionError as error:
        outcome = error.code
        raise
    except OSError:
        outcome = codes.IO_ERROR
        raise
    finally:
        observe_gateway(time.monotonic() - started, outcome)
