"""The HTTP/1.1 server under the inference endpoints: asyncio and httptools (llhttp, uvicorn's parser too),
answering each complete request synchronously.

An inference request is CPU work that runs to completion on the event loop. An ASGI server's task per
request, its message dicts and its awaits buy nothing then, and on this workload they cost more than the
model does. On the benchmark machine a constant reply takes about 26 µs per request through uvicorn and
11 µs here (``benchmarks/serving.py``: 37,000 against 83,000 requests a second, one core).

Kept from a full server is what one behind a Kubernetes Service needs:
- keep-alive and pipelined requests; HTTP/1.0 (one request per connection);
- chunked request bodies and ``Expect: 100-continue``;
- a body size limit: 413, before the body when ``Content-Length`` says so; 431 for over 64 KiB of headers;
- a timeout for silent connections, 408 for a request that does not arrive whole within it (however slowly
  it trickles in), and back-pressure on clients that do not read: once a connection's unsent responses pass
  the transport's high-water mark, its requests are queued, unanswered, and no more are read until the
  client has read; a connection that goes silent with responses unsent is aborted, not closed (a close
  would wait for them for good);
- a cap on connections: past it, a new one gets 503 and is closed; every connection waiting in the kernel's
  queue is accepted at once (libuv lets in one per loop iteration: behind busy keep-alive clients, a crowd
  of new connections, kubelet's probes among them, waited there for seconds, unseen by the loop's lag);
- how long the loop has been busy running the I/O callbacks of one iteration: a request read that late into
  them waited at least about as long (behind the requests answered before it), for the handler to shed
  load by; and the event loop's lag, measured every 20 ms (how late a timer runs), as a gauge of load;
- a ``Date`` header;
- a graceful shutdown: while draining, each response closes its connection, so that keep-alive clients
  reconnect (to other pods, once the endpoints have changed); then stop accepting, close idle connections,
  and let requests in progress finish.

A connection that is closed after an error is half-closed: the response goes out, then whatever the client
still sends is read and dropped until it hangs up (for the idle timeout at most), so that a reset does not
destroy the response before the client reads it.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import socket
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import cast

import httptools
import orjson

log = logging.getLogger(__name__)

# Longer than the idle timeouts of the proxies that pool connections to pods (nginx ingress and AWS load
# balancers: 60 s), so that a proxy never sends a request on a connection the server is closing (nginx: 75 s).
IDLE_TIMEOUT_SECONDS = 75.0
MAX_HEAD = 64 * 1024  # request line and headers, in bytes
LAG_INTERVAL = 0.02  # seconds between two measurements of the event loop's lag
ACCEPT_RETRY_SECONDS = 1.0  # after accept() fails for want of file descriptors or memory (as asyncio waits)
REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
JSON = b"application/json"


@dataclass(slots=True)  # not frozen: a frozen dataclass takes 2.5x as long to build, on every request
class Request:
    method: str
    path: str  # percent-decoded, without the query
    headers: dict[bytes, bytes]  # names in lower case
    body: bytes
    started: float  # time.perf_counter() at its first byte
    query: str = ""  # what follows the path's "?", as it came


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    content_type: bytes = JSON
    headers: bytes = b""  # more header lines, each ending in CRLF


def json_response(status: int, body: object) -> Response:
    return Response(status, orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY))


def error_response(status: int, message: str) -> Response:
    return json_response(status, {"error": message})


Handler = Callable[[Request], Response]


class HttpServer:
    def __init__(
        self, handler: Handler, max_body: int, max_connections: int, idle_timeout: float = IDLE_TIMEOUT_SECONDS
    ) -> None:
        self.handler = handler
        self.max_body = max_body
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.connections: set[Connection] = set()
        self.draining = False  # answer each request, then close its connection (clients reconnect elsewhere)
        self.date = b""
        self.lag = 0.0  # seconds the last timer ran late
        self.busy_since: float | None = None  # perf_counter() when the I/O callbacks the loop runs now began
        self._listener: socket.socket | None = None
        self._accepting: set[asyncio.Task[object]] = set()  # connections accepted, their transports in the making
        self._ticker: asyncio.Task[None] | None = None
        self._lag_timer: asyncio.TimerHandle | None = None

    def in_flight(self) -> int:
        """Requests received in part or whole and not answered yet."""
        return sum((c.started is not None) + len(c.queued) for c in self.connections)

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._tick()
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        self._listener = socket.create_server((host, port), family=family, backlog=self.max_connections)
        self._listener.setblocking(False)
        self._listen()
        self._ticker = loop.create_task(self._every_second())
        self._measure_lag(loop.time())

    def _listen(self) -> None:
        if self._listener is not None and self._listener.fileno() >= 0:  # not shut down
            asyncio.get_running_loop().add_reader(self._listener, self._accept)

    def _accept(self) -> None:
        """Accept every connection waiting (past the cap, each is accepted to be told 503)."""
        assert self._listener is not None
        loop = asyncio.get_running_loop()
        for _ in range(self.max_connections + 1):
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as error:  # out of file descriptors or memory: try again later, not at every iteration
                if error.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    raise
                log.warning("Cannot accept connections for now (%s): retrying in %gs", error, ACCEPT_RETRY_SECONDS)
                loop.remove_reader(self._listener)
                loop.call_later(ACCEPT_RETRY_SECONDS, self._listen)
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = loop.create_task(loop.connect_accepted_socket(lambda: Connection(self), sock))
            self._accepting.add(task)
            task.add_done_callback(self._accepted)

    def _accepted(self, task: asyncio.Task[object]) -> None:
        self._accepting.discard(task)
        if not task.cancelled() and task.exception() is not None:  # the client was gone before its transport
            log.debug("Could not open an accepted connection: %s", task.exception())

    def busy(self) -> float:
        """Seconds since the loop began the I/O callbacks it is running now: about how long the request being
        answered waited, behind those answered before it in this iteration."""
        return 0.0 if self.busy_since is None else time.perf_counter() - self.busy_since

    def _begin(self) -> None:
        self.busy_since = time.perf_counter()
        asyncio.get_running_loop().call_soon(self._rest)  # ready callbacks run once this iteration's I/O is done

    def _rest(self) -> None:
        self.busy_since = None

    def _measure_lag(self, expected: float) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self.lag = max(0.0, now - expected)
        self._lag_timer = loop.call_at(now + LAG_INTERVAL, self._measure_lag, now + LAG_INTERVAL)

    async def _every_second(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._tick()

    def _tick(self) -> None:
        """Refresh the Date header; answer 408 to requests not whole within the idle timeout of their first
        byte, however slowly they trickle in, and close connections silent for longer than it."""
        self.date = b"date: " + formatdate(usegmt=True).encode() + b"\r\n"
        cutoff = time.perf_counter() - self.idle_timeout  # the clock of both last_read and started
        for connection in list(self.connections):
            stuck = connection.queued or connection.transport.get_write_buffer_size()
            if connection.last_read < cutoff and stuck:  # a client that does not read what it asked for
                connection.transport.abort()
            elif connection.started is not None and connection.started < cutoff:
                connection.refuse(408, f"the request did not arrive whole within {self.idle_timeout:g} s")
            elif connection.last_read < cutoff:
                connection.transport.close()

    async def shutdown(self, timeout: float) -> None:
        """Stop accepting, close idle connections, give requests in progress ``timeout`` seconds, close the rest."""
        self.draining = True
        if self._listener is not None:
            asyncio.get_running_loop().remove_reader(self._listener)
            self._listener.close()
        for connection in [c for c in self.connections if c.started is None and not c.queued]:
            connection.transport.close()
        deadline = time.monotonic() + timeout
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            connection.transport.abort()
        if self._ticker is not None:
            self._ticker.cancel()
        if self._lag_timer is not None:
            self._lag_timer.cancel()


class Connection(asyncio.Protocol):
    """One client connection: parse its requests as bytes arrive, answer each as soon as it is complete."""

    transport: asyncio.Transport

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.last_read = time.perf_counter()
        self.started: float | None = None  # the request in progress, if any
        self.ending = False  # answered for the last time: read and drop the rest
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.body: list[bytes] = []
        self.size = self.head_size = 0
        self.keep_alive = True
        self.paused = False  # its unsent responses passed the high-water mark
        self.finished = False  # its last response is written
        # What waits to be answered, in order, while paused: requests, or a final error response.
        self.queued: collections.deque[Request | Response] = collections.deque()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's TCP transports do not subclass it
        if len(self.server.connections) >= self.server.max_connections:
            refusal = error_response(503, "too many connections: try again")
            self.transport.write(_render(refusal, self.server.date, last=True))
            self.transport.close()
            return
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)

    def pause_writing(self) -> None:  # the client does not read its responses: stop reading its requests
        self.paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        while self.queued and not self.paused and not self.finished:
            item = self.queued.popleft()
            if isinstance(item, Request):
                self._answer(item)
            else:
                self._respond(item, last=True)
        if not self.paused and not self.ending:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.ending:
            return
        self.last_read = time.perf_counter()
        if self.server.busy_since is None:
            self.server._begin()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # no protocol switch is offered; what came before it is answered
            self._end()
        except httptools.HttpParserError as error:
            if not self.ending:
                self.refuse(400, f"malformed HTTP request: {error}")

    # httptools callbacks, in the order the parser makes them.

    def on_message_begin(self) -> None:
        if self.ending:
            return
        self.started = time.perf_counter()
        self.url, self.headers, self.body, self.size, self.head_size = b"", {}, [], 0, 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value
        self._head(len(name) + len(value))

    def _head(self, size: int) -> None:
        self.head_size += size
        if self.head_size > MAX_HEAD and not self.ending:
            self.refuse(431, f"the request line and headers exceed {MAX_HEAD} bytes")

    def on_headers_complete(self) -> None:
        if self.ending:
            return
        self.keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
        length = self.headers.get(b"content-length")
        if length is not None and int(length) > self.server.max_body:
            self._too_large()
        elif self.headers.get(b"expect", b"").lower() == b"100-continue":
            self.transport.write(CONTINUE)

    def on_body(self, chunk: bytes) -> None:
        if self.ending:
            return
        self.size += len(chunk)
        if self.size > self.server.max_body:
            self._too_large()
        else:
            self.body.append(chunk)

    def on_message_complete(self) -> None:
        if self.ending or self.started is None:
            return
        path, _, query = self.url.decode("latin-1").partition("?")
        request = Request(
            self.parser.get_method().decode(),
            urllib.parse.unquote(path) if "%" in path else path,
            self.headers,
            b"".join(self.body),
            self.started,
            query,
        )
        self.started = None
        if self.paused or self.queued:  # answered once the client has read what came before
            self.queued.append(request)
        else:
            self._answer(request)

    def _answer(self, request: Request) -> None:
        try:
            response = self.server.handler(request)
        except Exception:
            log.exception("Failed to answer %s %s", request.method, request.path)
            response = error_response(500, "the server failed to answer; its log says why")
        last = not self.keep_alive or self.server.draining
        self._respond(response, last=last, head=request.method == "HEAD")

    def _too_large(self) -> None:
        self.refuse(413, f"the body exceeds the limit of {self.server.max_body} bytes")

    def refuse(self, status: int, message: str) -> None:
        """Answer the request in progress with an error, as the last response on this connection (after the
        ones queued before it)."""
        self.started = None
        if self.queued:
            self.ending = True  # read nothing more; the error goes out after the queue
            self.queued.append(error_response(status, message))
        else:
            self._respond(error_response(status, message), last=True)

    def _respond(self, response: Response, last: bool, head: bool = False) -> None:
        self.started = None
        self.transport.write(_render(response, self.server.date, last, head))
        if last:
            self._end()

    def _end(self) -> None:
        """Send what is written, then FIN; drop what the client still sends until it hangs up (or goes silent)."""
        self.ending = self.finished = True
        self.started = None
        self.queued.clear()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        else:
            self.transport.close()


def _render(response: Response, date: bytes, last: bool, head: bool = False) -> bytes:
    return b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s%s%s\r\n%s" % (
        response.status,
        REASONS.get(response.status, b""),
        response.content_type,
        len(response.body),
        response.headers,
        date,
        b"connection: close\r\n" if last else b"",
        b"" if head else response.body,
    )
