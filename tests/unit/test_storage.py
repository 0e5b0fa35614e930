"""The artifact stores (file:// and a real S3 endpoint) and the registry on top of them."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from regrow.contracts import AliasReading
from regrow.storage import (
    STALE_SECONDS,
    FileStore,
    NotFound,
    PreconditionFailed,
    Store,
    StoreUnavailable,
    open_store,
    read_uri,
)
from regrow.storage.registry import AliasMoved, Registry, content_version
from regrow.training.entrypoint import run
from regrow.training.sample_data import sample_csv


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "file":
        return open_store(f"file://{tmp_path}/registry")
    bucket = request.getfixturevalue("s3_bucket")
    return open_store(f"s3://{bucket}/models/prod", endpoint_url=request.getfixturevalue("s3_endpoint"))


def test_round_trip(store: Store) -> None:
    assert not store.exists("a/b.txt")
    with pytest.raises(NotFound):
        store.get("a/b.txt")
    store.put("a/b.txt", b"one")
    store.put("a/b.txt", b"two")
    store.put("a/c/d.bin", bytes(range(256)))
    store.put("z.txt", b"")
    assert store.get("a/b.txt") == b"two"
    assert store.get("a/c/d.bin") == bytes(range(256))
    assert store.exists("a/b.txt")
    assert not store.exists("a/b")  # a prefix is not an object
    assert store.list("a/") == ["a/b.txt", "a/c/d.bin"]
    assert store.list("") == ["a/b.txt", "a/c/d.bin", "z.txt"]
    assert store.list("nothing/") == []
    assert store.list("a/", start_after="a/b.txt") == ["a/c/d.bin"]  # the keys after one alone (S3's StartAfter)
    assert store.list("a/", start_after="a/b") == ["a/b.txt", "a/c/d.bin"]  # after: not necessarily a key
    assert store.list("", start_after="a/c/d.bin") == ["z.txt"]
    store.delete("z.txt")
    store.delete("z.txt")  # gone already: nothing to do
    assert not store.exists("z.txt") and store.list("") == ["a/b.txt", "a/c/d.bin"]


def test_file_store_keeps_keys_inside_its_root(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "root")
    with pytest.raises(ValueError, match="escapes the store root"):
        store.put("../outside.txt", b"x")
    assert not (tmp_path / "outside.txt").exists()


@pytest.mark.parametrize("uri", ["file:///var/lib/regrow/../../proc", "file:///srv/./store", "file:///srv/.."])
def test_a_file_store_root_has_no_dot_segments(uri: str) -> None:
    with pytest.raises(ValueError, match=r"may not contain \. or \.\. segments"):
        open_store(uri)


def test_file_store_leaves_no_temporary_files(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.put("k/v", b"data")
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == ["v"]


@pytest.mark.parametrize("uri", ["http://host/x", "gs://bucket/x", "file://relative/path"])
def test_unsupported_uris_are_refused(uri: str) -> None:
    with pytest.raises(ValueError, match=r"unsupported store scheme|absolute path"):
        open_store(uri)


def test_read_uri_reads_one_object(tmp_path: Path, s3_bucket: str, s3_endpoint: str) -> None:
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    assert read_uri(f"file://{tmp_path}/data.csv") == b"a,b\n1,2\n"
    open_store(f"s3://{s3_bucket}", endpoint_url=s3_endpoint).put("sets/data.csv", b"x,y\n")
    assert read_uri(f"s3://{s3_bucket}/sets/data.csv", endpoint_url=s3_endpoint) == b"x,y\n"
    with pytest.raises(ValueError, match="does not name an object"):
        read_uri(f"s3://{s3_bucket}")


def test_registry_publishes_versions_by_content(store: Store) -> None:
    registry = Registry(store)
    first = registry.publish("iris", b"onnx-1", b"profile-1", {"metrics": {"accuracy": 0.9}})
    again = registry.publish("iris", b"onnx-1", b"profile-1", {"metrics": {"accuracy": 0.1}})
    other = registry.publish("iris", b"onnx-2", b"profile-1", {})
    assert first.created and not again.created and other.created
    assert first.version == again.version == content_version(b"onnx-1", b"profile-1")
    assert other.version != first.version
    assert registry.metadata("iris", first.version)["metrics"] == {"accuracy": 0.9}  # never overwritten
    assert registry.versions("iris") == sorted([first.version, other.version])
    assert first.uri == f"{store.uri}/iris/versions/{first.version}"


def test_aliases_point_at_complete_versions(store: Store) -> None:
    registry = Registry(store)
    assert registry.resolve("iris", "champion") is None
    v1 = registry.publish("iris", b"a", b"p", {}).version
    v2 = registry.publish("iris", b"b", b"p", {}).version
    registry.set_alias("iris", "champion", v1)
    registry.set_alias("iris", "champion", v2)
    assert registry.resolve("iris", "champion") == v2
    with pytest.raises(NotFound):
        registry.set_alias("iris", "champion", "0123456789abcdef")
    assert registry.resolve("iris", "champion") == v2


def test_each_move_of_an_alias_raises_its_generation(store: Store) -> None:
    registry = Registry(store)
    v1, v2 = (registry.publish("iris", m, b"p", {}).version for m in (b"a", b"b"))
    assert registry.read_alias("iris", "champion") is None
    assert registry.set_alias("iris", "champion", v1) == AliasReading(version=v1, generation=1)
    assert registry.promote("iris", "champion", v2, over=v1) == AliasReading(version=v2, generation=2)
    assert registry.set_alias("iris", "champion", v2) == AliasReading(version=v2, generation=2)  # there: no move
    assert registry.set_alias("iris", "champion", v1) == AliasReading(version=v1, generation=3)  # back is a move
    with pytest.raises(AliasMoved):
        registry.promote("iris", "champion", v2, over=v2)
    assert registry.read_alias("iris", "champion") == AliasReading(version=v1, generation=3)
    assert json.loads(store.get("iris/aliases/champion.json"))["previous"] == v2
    # A record written before generations were kept reads as generation 0, and the next move makes it 1.
    store.put("iris/aliases/legacy.json", json.dumps({"version": v1, "previous": None, "updated": "x"}).encode())
    assert registry.read_alias("iris", "legacy") == AliasReading(version=v1, generation=0)
    assert registry.promote("iris", "legacy", v2, over=v1) == AliasReading(version=v2, generation=1)


def test_conditional_writes(store: Store) -> None:
    with pytest.raises(PreconditionFailed):
        store.put_if("a/k", b"1", "no-such-tag")  # absent: only a create (tag None) is taken
    store.put_if("a/k", b"1", None)
    with pytest.raises(PreconditionFailed):
        store.put_if("a/k", b"2", None)  # exists now
    first = store.read_tagged("a/k")
    assert first is not None and first[0] == b"1"
    store.put_if("a/k", b"2", first[1])
    with pytest.raises(PreconditionFailed):
        store.put_if("a/k", b"3", first[1])  # the tag it was read with is stale
    assert store.get("a/k") == b"2" and store.read_tagged("a/missing") is None


def test_of_promotions_racing_from_one_champion_exactly_one_wins(store: Store) -> None:
    """Eight runs gated against v0 promote at the same moment: one moves the alias, seven are told they
    lost, and none is written over another (before, each reported Promoted and the last writer won)."""
    registry = Registry(store)
    v0 = registry.publish("iris", b"champion", b"p", {}).version
    registry.set_alias("iris", "champion", v0)
    contenders = [registry.publish("iris", f"new {i}".encode(), b"p", {}).version for i in range(8)]
    start, outcomes = threading.Barrier(len(contenders)), {}

    def promote(version: str) -> None:
        start.wait()
        try:
            registry.promote("iris", "champion", version, v0)
            outcomes[version] = "won"
        except AliasMoved:
            outcomes[version] = "lost"

    threads = [threading.Thread(target=promote, args=(v,)) for v in contenders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    (winner,) = [v for v, outcome in outcomes.items() if outcome == "won"]
    assert len(outcomes) == 8 and registry.resolve("iris", "champion") == winner
    with pytest.raises(AliasMoved, match="moved to"):  # and a run gated against v0 later loses too
        registry.promote("iris", "champion", contenders[0] if contenders[0] != winner else contenders[1], v0)


def test_runs_are_recorded(store: Store) -> None:
    registry = Registry(store)
    registry.write_run("iris", "uid-1", {"version": "abc"})
    assert registry.read_run("iris", "uid-1") == {"version": "abc"}


def test_file_store_objects_are_readable_by_other_users(tmp_path: Path) -> None:
    FileStore(tmp_path).put("model.onnx", b"x")
    assert (tmp_path / "model.onnx").stat().st_mode & 0o777 == 0o644


def test_a_missing_bucket_says_so(s3_endpoint: str, tmp_path: Path) -> None:
    store = open_store("s3://no-such-bucket-here/models", endpoint_url=s3_endpoint)
    for call in (
        lambda: store.get("k"),
        lambda: store.put("k", b"v"),
        lambda: store.list(""),
        lambda: store.exists("k"),
    ):
        with pytest.raises(StoreUnavailable, match="the bucket no-such-bucket-here does not exist"):
            call()
    # The trainer reports it as the run's reason, not as a traceback.
    (tmp_path / "iris.csv").write_bytes(sample_csv("iris"))
    spec = {"dataset": {"uri": f"file://{tmp_path}/iris.csv", "target": "species"},
            "model": {"algorithm": "logisticRegression"},
            "output": {"registry": "s3://no-such-bucket-here/models", "modelName": "iris"},
            "storage": {"endpointUrl": s3_endpoint}}  # fmt: skip
    log = tmp_path / "termination-log"
    assert run(json.dumps(spec), {}, log) == 1
    report = json.loads(log.read_text())
    assert report["reason"] == "StoreUnavailable" and "does not exist" in report["message"]


def test_a_hung_endpoint_fails_after_the_attempts_not_never(monkeypatch: pytest.MonkeyPatch) -> None:
    """An endpoint that accepts and never answers: each attempt gives up at the read timeout."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "regrow-test")
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                held.append(listener.accept()[0])  # read nothing, answer nothing

    threading.Thread(target=accept, daemon=True).start()
    endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
    store = open_store("s3://bucket/models", endpoint_url=endpoint, read_timeout=0.3)
    with pytest.raises(StoreUnavailable, match=r"reading k failed after 4 attempts \(ReadTimeoutError\)"):
        store.get("k")
    assert len(held) == 4  # one connection an attempt
    listener.close()


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    killed = [sys.executable, "-c", "import os, sys, time; from regrow.storage import FileStore\n"
              "os.fdopen = lambda fd, mode: (os.kill(os.getpid(), 9), None)[1]\n"  # SIGKILL mid-write
              f"FileStore(__import__('pathlib').Path({str(tmp_path)!r})).put('m/v', b'data')"]  # fmt: skip
    assert subprocess.run(killed, check=False).returncode == -9
    (leftover,) = (tmp_path / "m").iterdir()
    assert leftover.name.startswith(".v.") and leftover.name.endswith(".tmp") and store.list("") == []
    fresh = tmp_path / "m" / ".v.another-writer.tmp"  # a write in progress elsewhere: kept
    fresh.write_bytes(b"")
    old = time.time() - STALE_SECONDS - 1
    os.utime(leftover, (old, old))
    store.put("m/v", b"data")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [fresh.name, "v"]


SLOW_DOWN = b"<Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>"


@dataclass
class Faults:
    """What a fault-injecting proxy in front of a real S3 endpoint does to each request, by method and path."""

    drop_conditions: bool = False  # drop If-Match and If-None-Match, as some S3-compatible stores ignore them
    fail: Callable[[str, str], bool] = lambda method, path: False  # answer 503 SlowDown instead
    stall: Callable[[str, str], float] = lambda method, path: 0.0  # seconds to hold it before forwarding
    seen: list[tuple[str, str, int]] = field(default_factory=list)  # (method, path, status answered)


@contextmanager
def s3_proxy(upstream: str, faults: Faults) -> Iterator[str]:
    """A loopback S3 endpoint that forwards to ``upstream`` (moto's server) with ``faults``; yields its URL."""

    class Proxy(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            time.sleep(faults.stall(self.command, self.path))
            if faults.fail(self.command, self.path):
                self._answer(503, [("Content-Type", "application/xml")], SLOW_DOWN)
                return
            dropped = {"host"} | ({"if-match", "if-none-match"} if faults.drop_conditions else set())
            headers = {k: v for k, v in self.headers.items() if k.lower() not in dropped}
            connection = http.client.HTTPConnection(upstream.removeprefix("http://"), timeout=10)
            connection.request(self.command, self.path, body=body, headers=headers)
            answer = connection.getresponse()
            self._answer(answer.status, answer.getheaders(), answer.read())

        def _answer(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
            faults.seen.append((self.command, self.path, status))
            self.send_response(status)
            for name, value in headers:
                if name.lower() not in ("transfer-encoding", "content-length", "connection"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward  # noqa: N815 - http.server's names

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


def test_a_store_that_ignores_conditional_writes_moves_no_alias(s3_endpoint: str, s3_bucket: str) -> None:
    with s3_proxy(s3_endpoint, Faults(drop_conditions=True)) as forgetful:
        registry = Registry(open_store(f"s3://{s3_bucket}/m", endpoint_url=forgetful))
        version = registry.publish("iris", b"a", b"p", {}).version  # plain writes work
        with pytest.raises(StoreUnavailable, match="ignores conditional writes"):
            registry.set_alias("iris", "champion", version)
        assert registry.resolve("iris", "champion") is None
    direct = Registry(open_store(f"s3://{s3_bucket}/m", endpoint_url=s3_endpoint))  # the store itself honours them
    direct.set_alias("iris", "champion", version)
    assert direct.resolve("iris", "champion") == version


def test_a_publish_rides_out_a_few_503s(s3_endpoint: str, s3_bucket: str) -> None:
    failed: list[str] = []

    def twice(method: str, path: str) -> bool:  # the model's first two PUTs
        if method == "PUT" and path.endswith("/model.onnx") and len(failed) < 2:
            failed.append(path)
            return True
        return False

    faults = Faults(fail=twice)
    with s3_proxy(s3_endpoint, faults) as flaky:
        registry = Registry(open_store(f"s3://{s3_bucket}/m", endpoint_url=flaky))
        version = registry.publish("iris", b"model", b"profile", {}).version
        assert registry.versions("iris") == [version] and registry.read("iris", version, "model.onnx") == b"model"
    puts = [status for method, path, status in faults.seen if method == "PUT" and path.endswith("/model.onnx")]
    assert puts == [503, 503, 200]


def test_a_publish_that_keeps_failing_stops_with_a_reason_and_publishes_nothing(
    s3_endpoint: str, s3_bucket: str, tmp_path: Path
) -> None:
    """The store refuses the last write of a version (503 at every attempt): the trainer stops within its
    attempts and says why, and no reader sees the version (its metadata, written last, is not there)."""
    faults = Faults(fail=lambda method, path: method == "PUT" and path.endswith("/metadata.json"))
    (tmp_path / "iris.csv").write_bytes(sample_csv("iris"))
    with s3_proxy(s3_endpoint, faults) as failing:
        spec = {"dataset": {"uri": f"file://{tmp_path}/iris.csv", "target": "species"},
                "model": {"algorithm": "logisticRegression"},
                "output": {"registry": f"s3://{s3_bucket}/m", "modelName": "iris"},
                "storage": {"endpointUrl": failing}}  # fmt: skip
        log = tmp_path / "termination-log"
        assert run(json.dumps(spec), {}, log) == 1
    report = json.loads(log.read_text())
    assert report["reason"] == "StoreUnavailable"
    assert re.fullmatch(
        r"s3://\S+/m: writing iris/versions/\w+/metadata.json was refused \(SlowDown\)", report["message"]
    )
    assert sum(1 for _, path, status in faults.seen if path.endswith("/metadata.json") and status == 503) == 4
    readers = Registry(open_store(f"s3://{s3_bucket}/m", endpoint_url=s3_endpoint))
    assert readers.versions("iris") == [] and readers.resolve("iris", "champion") is None


def test_a_stalled_publish_gives_up_after_its_attempts(s3_endpoint: str, s3_bucket: str) -> None:
    faults = Faults(stall=lambda method, path: 2.0 if method == "PUT" and path.endswith("/profile.json") else 0.0)
    with s3_proxy(s3_endpoint, faults) as stalling:
        registry = Registry(open_store(f"s3://{s3_bucket}/m", endpoint_url=stalling, read_timeout=0.5))
        with pytest.raises(StoreUnavailable, match=r"writing iris/versions/\w+/profile.json failed after 4 attempts"):
            registry.publish("iris", b"model", b"profile", {})
        assert registry.versions("iris") == []
