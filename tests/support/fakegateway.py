"""A tiny gateway on loopback honouring the /process contract, with knobs for delay, status and outage."""
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

XML = '<?xml version="1.0" encoding="UTF-8"?>\n<Invoice mapping="{mapping}"><Header><InvoiceNumber>FT {cid}</InvoiceNumber></Header></Invoice>\n'


class FakeGateway:
    """Knobs: delay (s), status (int), body (bytes or None), hang (bool), healthy (bool), error_code (the code of
    a non-200 answer's JSON error) and error_body (bytes sent instead of it). Counts calls and health checks."""

    def __init__(self):
        self.delay, self.status, self.body, self.hang, self.healthy = 0.0, 200, None, False, True
        self.error_code, self.error_body, self.health_checks = "FAKE", None, 0
        self.calls = Counter()  # correlation id -> /process calls
        self.in_flight = self.peak_in_flight = 0
        self._lock = threading.Lock()
        self.release = threading.Event()  # set to let hung requests go
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else header and body writes wait out the client's delayed ACK

            def log_message(self, *args):
                pass

            def _send(self, status, body, content_type):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                gateway.health_checks += 1
                if self.path == "/healthz" and gateway.healthy:
                    self._send(200, json.dumps({"status": "ok", "mappings": ["pt_simon_invoice_v1"]}).encode(), "application/json")
                else:
                    self._send(503, b'{"error": {"code": "DOWN", "message": "down"}}', "application/json")

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else self._read_chunked()
                cid = self.headers.get("X-Correlation-ID", "")
                with gateway._lock:
                    gateway.calls[cid] += 1
                    gateway.in_flight += 1
                    gateway.peak_in_flight = max(gateway.peak_in_flight, gateway.in_flight)
                try:
                    if gateway.hang:
                        gateway.release.wait(60)
                    time.sleep(gateway.delay)
                    if gateway.status != 200:
                        message = gateway.error_body or json.dumps({"error": {
                            "code": gateway.error_code, "message": f"fake gateway says {gateway.status}"}}).encode()
                        self._send(gateway.status, message, "application/json")
                        return
                    mapping = "generic_v1" if b"generic_v1" in body[:4096] else "pt_simon_invoice_v1"
                    payload = gateway.body if gateway.body is not None else XML.format(mapping=mapping, cid=cid).encode()
                    self._send(200, payload, "application/xml; charset=utf-8")
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with gateway._lock:
                        gateway.in_flight -= 1

            def _read_chunked(self):
                data = b""
                while True:
                    size = int(self.rfile.readline().strip() or b"0", 16)
                    if not size:
                        self.rfile.readline()
                        return data
                    data += self.rfile.read(size)
                    self.rfile.readline()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def total_calls(self):
        return sum(self.calls.values())


if __name__ == "__main__":  # for benchmarks and manual runs: python -m tests.support.fakegateway PORT DELAY
    import sys
    fake = FakeGateway()
    fake.server.server_close()
    port, delay = int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    fake.server = ThreadingHTTPServer(("127.0.0.1", port), fake.server.RequestHandlerClass)
    fake.server.daemon_threads = True
    fake.delay = delay
    print(f"fake gateway on 127.0.0.1:{port}, delay {delay}s", flush=True)
    fake.server.serve_forever()
