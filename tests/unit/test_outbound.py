"""The operator's calls to its pods and to Prometheus, against real loopback servers that misbehave."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator

import pytest

from regrow.controller import outbound
from regrow.controller.outbound import pod_fetch

SECRET = b'{"password": "hunter2"}'


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/secret":
            self._answer(200, SECRET)
        elif self.path.startswith("/moved"):
            self.send_response(302)
            self.send_header("Location", "/secret")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/big":
            self._answer(200, b"x" * (2 << 20))
        elif self.path == "/trickle":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            for _ in range(100):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.1)
        else:
            self._answer(503, b'{"ready": false}')

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_redirect_is_an_answer_not_a_place_to_go(base: str) -> None:
    answer = outbound.get(f"http://{base}/moved", 2, 1 << 20)
    assert answer.status == 302 and SECRET not in answer.body
    assert pod_fetch(base, "/moved") is None  # a pod's 302 is no profile, and not followed to one


def test_error_statuses_are_answers(base: str) -> None:
    assert outbound.get(f"http://{base}/down", 2, 1 << 20) == outbound.Answer(503, b'{"ready": false}')
    assert pod_fetch(base, "/down") is None


def test_an_answer_past_the_limit_is_not_read_on(base: str) -> None:
    with pytest.raises(outbound.AnswerTooLarge):
        outbound.get(f"http://{base}/big", 2, 1 << 20)
    assert outbound.get(f"http://{base}/big", 2, 2 << 20).body == b"x" * (2 << 20)  # exactly the limit is fine


def test_a_trickle_ends_at_the_deadline(base: str) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        outbound.get(f"http://{base}/trickle", 0.5, 1 << 20)  # 10 s to send it whole
    assert time.monotonic() - started < 5  # sent whole, it takes 10 s
