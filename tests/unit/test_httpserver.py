"""The HTTP/1.1 layer of the inference server, spoken to byte by byte over a real loopback socket."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest
import uvloop

from regrow.serving.httpserver import HttpServer, Request, Response, json_response
from tests.cluster import free_port

MAX_BODY = 1024
T = TypeVar("T")


def echo(request: Request) -> Response:
    """What the server made of the request, as JSON; /fail raises, as a bug in a handler would; /big
    answers 16 KiB."""
    if request.path == "/fail":
        raise RuntimeError("a bug")
    if request.path == "/big":
        return Response(200, b"x" * 16384)
    return json_response(200, {"method": request.method, "path": request.path, "body": request.body.decode(),
                               "type": request.headers.get(b"content-type", b"").decode()})  # fmt: skip


class Running:
    """An HttpServer on a loopback port, on a uvloop loop in a thread of its own."""

    def __init__(self, max_connections: int = 1000, handler: Callable[[Request], Response] = echo) -> None:
        self.server = HttpServer(handler, MAX_BODY, max_connections, idle_timeout=0.5)
        self.port = free_port()
        self.loop = uvloop.new_event_loop()
        self.loop.run_until_complete(self.server.start("127.0.0.1", self.port))
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.stopping: concurrent.futures.Future[None] | None = None

    def connect(self) -> Client:
        return Client(self.port)

    def wait_in_flight(self, count: int) -> None:
        deadline = time.monotonic() + 5
        while self.server.in_flight() != count:
            assert time.monotonic() < deadline, f"{self.server.in_flight()} requests in flight, not {count}"
            time.sleep(0.01)

    def on_loop(self, call: Callable[[], T]) -> T:
        """``call``'s result, computed on the server's loop (its connections change only there)."""

        async def run() -> T:
            return call()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(5)

    def shutdown(self, timeout: float) -> None:
        self.stopping = asyncio.run_coroutine_threadsafe(self.server.shutdown(timeout), self.loop)

    def close(self) -> None:
        if self.stopping is None:
            self.shutdown(1)
        assert self.stopping is not None
        self.stopping.result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def http() -> Iterator[Running]:
    running = Running()
    yield running
    running.close()


class Client:
    """A raw HTTP/1.1 connection: send bytes, read responses by their content-length."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buffer = b""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.send(data)

    def recv(self) -> bytes:
        try:
            return self.sock.recv(65536)
        except ConnectionResetError:
            return b""

    def response(self, head: bool = False) -> tuple[int, dict[str, str], bytes]:
        """The next response: status, headers (lower-case names) and body (none for a HEAD request)."""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.recv()
            assert chunk, f"the server closed the connection mid-response: {self.buffer!r}"
            self.buffer += chunk
        top, _, rest = self.buffer.partition(b"\r\n\r\n")
        status_line, *lines = top.decode().split("\r\n")
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        length = 0 if head else int(headers["content-length"])
        while len(rest) < length:
            chunk = self.recv()
            assert chunk, "the server closed the connection mid-body"
            rest += chunk
        self.buffer = rest[length:]
        return int(status_line.split()[1]), headers, rest[:length]

    def closed_by_server(self) -> bool:
        return self.buffer == b"" and self.recv() == b""


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def test_keep_alive_and_pipelined_requests_are_answered_in_order(http: Running) -> None:
    with http.connect() as sock:
        sock.send(post("/a", b"one"))
        status, headers, body = sock.response()
        assert status == 200 and json.loads(body)["body"] == "one"
        assert headers["content-type"] == "application/json" and "connection" not in headers
        assert headers["date"].endswith(" GMT")
        sock.send(post("/b", b"two") + post("/c?x=1", b"three") + b"GET /d%20e HTTP/1.1\r\nHost: t\r\n\r\n")
        assert [json.loads(sock.response()[2])["path"] for _ in range(2)] == ["/b", "/c"]
        assert json.loads(sock.response()[2]) == {"method": "GET", "path": "/d e", "body": "", "type": ""}


def test_http_1_0_gets_one_response_then_the_connection_closes(http: Running) -> None:
    with http.connect() as sock:
        sock.send(b"GET /old HTTP/1.0\r\n\r\n")
        status, headers, _ = sock.response()
        assert status == 200 and headers["connection"] == "close"
        assert sock.closed_by_server()
    with http.connect() as sock:
        sock.send(b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert sock.response()[1]["connection"] == "close" and sock.closed_by_server()


def test_chunked_bodies_and_expect_100_continue(http: Running) -> None:
    with http.connect() as sock:
        sock.send(b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        assert json.loads(sock.response()[2])["body"] == "abcde"
        sock.send(b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        assert sock.recv() == b"HTTP/1.1 100 Continue\r\n\r\n"  # before the client sends the body
        sock.send(b"body")
        assert json.loads(sock.response()[2])["body"] == "body"


def test_a_body_over_the_limit_gets_413_and_the_client_still_reads_it(http: Running) -> None:
    with http.connect() as sock:  # the length announced: refused before the body, even one sent anyway
        sock.send(post("/big", b"x" * (MAX_BODY + 1)))
        status, headers, body = sock.response()
        assert status == 413 and f"limit of {MAX_BODY} bytes" in json.loads(body)["error"]
        assert headers["connection"] == "close" and sock.closed_by_server()
    with http.connect() as sock:  # chunked: found out while reading
        chunk = b"%x\r\n%s\r\n" % (600, b"y" * 600)
        sock.send(b"POST /big HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 3)
        assert sock.response()[0] == 413 and sock.closed_by_server()


def test_endless_headers_get_431(http: Running) -> None:
    with http.connect() as sock:
        sock.send(b"GET / HTTP/1.1\r\nHost: t\r\n")
        for n in range(10000):  # a client that never ends its headers: 40 bytes at a time, all different
            try:
                sock.send(b"x-header-%05d: %s\r\n" % (n, b"v" * 20))
            except OSError:  # the server answered and stopped reading
                break
        status, headers, body = sock.response()
        assert status == 431 and "exceed 65536 bytes" in json.loads(body)["error"] and headers["connection"] == "close"


def test_malformed_http_gets_400_and_a_failing_handler_500(http: Running) -> None:
    with http.connect() as sock:
        sock.send(b"NOT HTTP AT ALL\r\n\r\n")
        status, _, body = sock.response()
        assert status == 400 and "malformed HTTP request" in json.loads(body)["error"]
        assert sock.closed_by_server()
    with http.connect() as sock:
        sock.send(b"GET /fail HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, body = sock.response()
        assert status == 500 and "its log says why" in json.loads(body)["error"]
        sock.send(b"HEAD /after HTTP/1.1\r\nHost: t\r\n\r\n")  # the connection still works
        status, headers, body = sock.response(head=True)
        assert status == 200 and int(headers["content-length"]) > 0 and body == b""  # HEAD: no body


def test_silent_connections_are_closed_and_in_flight_counts_unanswered_requests(http: Running) -> None:
    with http.connect() as idle, http.connect() as busy:
        busy.send(b"POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nab")
        http.wait_in_flight(1)
        busy.send(b"cd")
        assert busy.response()[0] == 200 and http.server.in_flight() == 0
        started = time.monotonic()
        assert idle.closed_by_server() and busy.closed_by_server()  # after 0.5 s of silence, on the next tick
        assert time.monotonic() - started < 3


def test_a_request_trickling_in_gets_408_and_then_the_connection_closes(http: Running) -> None:
    refused = threading.Event()

    def trickle(client: Client) -> None:  # a byte every 0.2 s: never silent for the 0.5 s idle timeout
        try:
            for _ in range(50):
                client.send(b"x")
                time.sleep(0.2)
        except OSError:  # the server closed the connection
            refused.set()

    with http.connect() as slow:
        slow.send(b"POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n")
        started = time.monotonic()
        threading.Thread(target=trickle, args=(slow,), daemon=True).start()
        status, headers, body = slow.response()
        assert status == 408 and headers["connection"] == "close"
        assert json.loads(body) == {"error": "the request did not arrive whole within 0.5 s"}
        assert 0.5 <= time.monotonic() - started < 3
        assert refused.wait(5)  # what it sends after the 408 does not keep the connection open


def test_draining_closes_each_connection_after_its_response(http: Running) -> None:
    with http.connect() as sock:
        sock.send(b"GET /before HTTP/1.1\r\nHost: t\r\n\r\n")
        assert "connection" not in sock.response()[1]
        http.server.draining = True
        sock.send(b"GET /during HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, _ = sock.response()
        assert status == 200 and headers["connection"] == "close" and sock.closed_by_server()
    with http.connect() as sock:  # still accepting: the endpoints may not have dropped this server yet
        sock.send(b"GET /new HTTP/1.1\r\nHost: t\r\n\r\n")
        assert sock.response()[0] == 200


def test_shutdown_closes_idle_connections_and_finishes_requests_in_progress(http: Running) -> None:
    with http.connect() as idle, http.connect() as busy:
        idle.send(b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n")
        assert idle.response()[0] == 200
        busy.send(b"POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nab")
        http.wait_in_flight(1)
        http.shutdown(timeout=5)
        assert idle.closed_by_server()
        with pytest.raises(OSError):
            http.connect()  # no longer accepting
        busy.send(b"cd")
        status, headers, body = busy.response()
        assert status == 200 and json.loads(body)["body"] == "abcd" and headers["connection"] == "close"


def test_a_client_that_does_not_read_holds_a_bounded_buffer_and_blocks_no_one(http: Running) -> None:
    """256 KiB of pipelined requests for 16 KiB each (266 MiB of answers), never read: once the unsent
    answers pass the high-water mark the rest wait as requests, unanswered; others are answered at once;
    the silent connection is aborted at the idle timeout, unsent answers and all."""
    request = b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n"
    hog = socket.create_connection(("127.0.0.1", http.port), timeout=5)
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hog.sendall(request * (256 * 1024 // len(request)))
    time.sleep(0.3)
    buffered, queued = http.on_loop(
        lambda: max((c.transport.get_write_buffer_size(), len(c.queued)) for c in http.server.connections)
    )
    assert buffered < 1024 * 1024 and queued > 1000, (buffered, queued)  # before: every answer buffered
    with http.connect() as sock:
        started = time.perf_counter()
        sock.send(b"GET /fine HTTP/1.1\r\nHost: t\r\n\r\n")
        assert sock.response()[0] == 200 and time.perf_counter() - started < 0.5
    deadline = time.monotonic() + 5
    while http.on_loop(lambda: len(http.server.connections)):  # idle timeout 0.5 s, ticks every second
        assert time.monotonic() < deadline, "a connection that does not read was kept"
        time.sleep(0.1)
    hog.close()


def test_queued_requests_are_answered_in_order_once_the_client_reads(http: Running) -> None:
    with http.connect() as sock:
        sock.send(b"".join(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n" for _ in range(2000)))  # 32 MiB of answers
        sock.send(b"".join(f"GET /{i} HTTP/1.1\r\nHost: t\r\n\r\n".encode() for i in range(50)) + b"BAD\r\n\r\n")
        time.sleep(0.3)  # more than the socket buffers take: the server pauses on this client's unread answers
        assert http.on_loop(lambda: max(len(c.queued) for c in http.server.connections)) > 0
        assert [sock.response()[0] for _ in range(2000)] == [200] * 2000
        assert [json.loads(sock.response()[2])["path"] for _ in range(50)] == [f"/{i}" for i in range(50)]
        status, headers, _ = sock.response()  # the malformed request's 400 comes last, as it came
        assert status == 400 and headers["connection"] == "close"


def test_connections_past_the_cap_get_503() -> None:
    running = Running(max_connections=2)
    try:
        with running.connect() as one, running.connect() as two, running.connect() as three:
            status, headers, body = three.response()
            assert status == 503 and b"too many connections" in body and headers["connection"] == "close"
            for sock in (one, two):
                sock.send(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n")
                assert sock.response()[0] == 200
    finally:
        running.close()


def test_a_crowd_of_new_connections_is_accepted_at_once_behind_busy_keep_alive_ones() -> None:
    """libuv accepts one connection per loop iteration: behind keep-alive clients that keep the loop busy,
    new connections (kubelet's probes among them) would wait in the kernel's queue, one more let in per
    iteration, for seconds, and unseen by the lag that load is shed by. All that wait are let in at once."""
    served: list[str] = []  # paths, in the order the loop answered them

    def handler(request: Request) -> Response:
        if request.path == "/busy":  # a millisecond of inference
            end = time.perf_counter() + 0.001
            while time.perf_counter() < end:
                pass
        served.append(request.path)
        return Response(200, b"")

    running = Running(handler=handler)
    stop = threading.Event()

    def keep_busy() -> None:
        with running.connect() as sock:
            while not stop.is_set():
                sock.send(b"GET /busy HTTP/1.1\r\nHost: t\r\n\r\n")
                assert sock.response()[0] == 200

    busy = [threading.Thread(target=keep_busy) for _ in range(10)]
    try:
        for thread in busy:
            thread.start()
        while len(served) < 100:
            time.sleep(0.01)
        napping = threading.Event()  # the loop, held while the crowd arrives in the kernel's queue, all at once

        def nap() -> None:
            napping.set()
            time.sleep(0.5)

        running.loop.call_soon_threadsafe(nap)
        napping.wait(5)
        crowd = [running.connect() for _ in range(200)]
        for sock in crowd:
            sock.send(b"GET /new HTTP/1.1\r\nHost: t\r\n\r\n")
        assert [sock.response()[0] for sock in crowd] == [200] * 200
    finally:
        stop.set()
        for thread in busy:
            thread.join(10)
        running.close()
    first, last = served.index("/new"), len(served) - served[::-1].index("/new")
    # Accepted together, the crowd is answered within a few iterations: a few busy requests per client.
    assert served[first:last].count("/busy") < 10 * len(busy)
