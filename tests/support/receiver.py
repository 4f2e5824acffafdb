"""A webhook receiver on loopback: a real HTTP server that keeps what it was sent, with knobs for the answer
(status, a redirect), for hanging (a delivery in flight), and for being down and up again on the same port."""
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from gateway.testing import free_port


class Receiver:
    def __init__(self, port=None):
        self.port = port or free_port()
        self.status = 200
        self.location = None  # with a 3xx status: the Location header
        self.hanging = threading.Event()  # set: requests are held unanswered (until released) and not kept
        self.released = threading.Event()
        self.received = []  # (headers as a dict, body bytes) of each request answered 2xx, in order
        self.seen = []  # every request's (headers, body), answered or not
        self.server = None
        self.lock = threading.Lock()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as receivers behind a proxy answer
            disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK wait

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {key.lower(): value for key, value in self.headers.items()}
                with receiver.lock:
                    receiver.seen.append((headers, body))
                if receiver.hanging.is_set():
                    receiver.released.wait(30)
                    return  # never answered: the sender is gone (killed) or timed out
                self.send_response(receiver.status)
                if receiver.location:
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
                if 200 <= receiver.status < 300:
                    with receiver.lock:
                        receiver.received.append((headers, body))

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None  # a killed sender's reset is expected
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        """Stop listening: connections to the port are refused until start() again."""
        self.released.set()
        self.server.shutdown()
        self.server.server_close()
        self.server = None

    def ids(self):
        with self.lock:
            return {headers["webhook-id"] for headers, _ in self.received}

    def wait_for(self, count, timeout=30, source=None):
        """Wait until count distinct webhook-ids (or count requests in source) arrived; what arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = len(source) if source is not None else len(self.ids())
            if got >= count:
                break
            time.sleep(0.02)
        return list(self.received)
