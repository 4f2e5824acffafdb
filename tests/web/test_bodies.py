"""A request body's deadline (webapp/bodies.py): a trickled body is cut off with 408."""
import socket
from pathlib import Path




def _trickle(port, headers, stop_after):
    """Send a request whose body never finishes, a byte a second; return what the server answered (or None)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(("POST /api/upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                  f"{headers}Content-Length: 1000000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; "
                  "filename=\"a.pdf\"\r\n\r\n%PDF-1.4\n").encode())
    sock.settimeout(1)
    answer = b""
    for _ in range(stop_after):
        try:
            sock.sendall(b"0")
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        except socket.timeout:
            continue
        except OSError:
            break
    sock.close()
    return answer


def test_a_trickled_body_is_cut_off_with_408():
    from tests.support.stack import owner_session, running_stack
    with running_stack(gateway_url="http://127.0.0.1:9", workers=0, BODY_TIMEOUT_SECONDS=1) as stack:
        token = owner_session(stack).headers["Authorization"]
        port = int(stack.web_url.rsplit(":", 1)[1])
        answer = _trickle(port, f"Authorization: {token}\r\n", stop_after=30)
        assert answer.startswith(b"HTTP/1.1 408")
        assert not list(Path(stack.data_dir, "uploads").glob(".incoming-*"))
        refused = _trickle(port, "", stop_after=30)  # refused unread (401): not drained for keep-alive either
        assert refused.startswith(b"HTTP/1.1 401")
