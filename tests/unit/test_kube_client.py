"""The operator's Kubernetes client against a misbehaving API server on a loopback socket: every call is
bounded in time and in the size of the answer it reads."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from kubernetes import client
from urllib3.exceptions import MaxRetryError, ReadTimeoutError

from regrow.controller.kube import ApiUnreachable, Kube, ResponseTooLarge, path, resource
from tests.cluster import free_port

Behaviour = Callable[[socket.socket], None]


def hang(sock: socket.socket) -> None:
    """Read the request, answer nothing, hold the connection."""
    sock.recv(65536)
    time.sleep(10)


def endless(sock: socket.socket) -> None:
    """Answer 200 with a JSON body that never ends (1 MiB chunks, as fast as they are read)."""
    sock.recv(65536)
    sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
    chunk = b'{"items": [' + b" " * (1 << 20)
    try:
        while True:
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    except OSError:  # the client hung up
        return


@contextmanager
def api_server(behaviour: Behaviour) -> Iterator[tuple[Kube, list[float]]]:
    """A Kube client for a server that treats each connection with ``behaviour``; also the seconds each
    connection stayed open (the client's hang-up ends it)."""
    listener = socket.create_server(("127.0.0.1", free_port()))
    held: list[float] = []

    def serve() -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            started = time.monotonic()
            with sock:
                behaviour(sock)
            held.append(time.monotonic() - started)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        yield Kube(client.ApiClient(configuration), connect=1.0, read=0.5, max_bytes=4 << 20), held
    finally:
        listener.close()


def test_a_hung_api_server_costs_a_call_its_read_timeout_not_forever() -> None:
    with api_server(hang) as (kube, _):
        started = time.monotonic()
        with pytest.raises(ApiUnreachable, match="MaxRetryError") as failure:
            kube.get(path("v1", "pods", "default", "p"))
        assert time.monotonic() - started < 5  # 0.5 s a try, retried by urllib3; the server holds on for 10
        assert isinstance(failure.value.__cause__, MaxRetryError)
        assert isinstance(failure.value.__cause__.reason, ReadTimeoutError)


def test_an_endless_answer_is_cut_at_the_size_limit_and_its_connection_closed() -> None:
    with api_server(endless) as (kube, held):
        with pytest.raises(ResponseTooLarge, match="exceeds 4194304 bytes"):
            kube.list(path("v1", "pods", "default"))
        deadline = time.monotonic() + 5
        while not held and time.monotonic() < deadline:  # the server's send fails once the client closes
            time.sleep(0.05)
        assert held, "the client kept the connection of an answer it would not read"


def test_each_request_is_counted_by_the_resource_it_is_about() -> None:
    assert resource("/api/v1/namespaces/ml/pods") == "pods"
    assert resource("/apis/apps/v1/namespaces/ml/deployments/iris-predictor") == "deployments"
    assert resource("/apis/regrow.dev/v1alpha1/namespaces/ml/modeldeployments/iris/status") == "modeldeployments/status"
    assert resource("/apis/apps/v1/deployments") == "deployments"  # every namespace's
    assert resource("/apis/coordination.k8s.io/v1/namespaces/ns/leases/regrow-operator") == "leases"
    assert resource("/api/v1/namespaces/ml") == "namespaces"
    assert resource("/version") == resource("/apis/autoscaling") == "discovery"
