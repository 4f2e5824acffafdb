"""The worker's gateway client (worker/gateway_client.py): an error answer is read only so far."""
import io




def test_the_gateway_clients_error_answer_is_read_only_so_far():
    import requests
    from worker import gateway_client

    class Endless(io.RawIOBase):
        read_so_far = 0

        def readable(self):
            return True

        def readinto(self, buffer):
            Endless.read_so_far += len(buffer)
            buffer[:] = b"x" * len(buffer)
            return len(buffer)

    response = requests.Response()
    response.status_code, response.raw = 503, io.BufferedReader(Endless())
    code, message = gateway_client._error(response)
    assert (code, message) == ("", "the gateway answered 503")
    assert Endless.read_so_far <= gateway_client.ERROR_BODY_BYTES + 2 * gateway_client.CHUNK
