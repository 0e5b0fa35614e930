"""Shadow traffic on real servers over loopback: a stable server mirrors to a shadow server (or to a fake one
that misbehaves) and compares; no client ever waits for, fails because of, or sees the candidate."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as oip
from prometheus_client.parser import text_string_to_metric_families

from regrow.cli import main
from regrow.inference import OnnxModel
from regrow.serving.mirror import (
    CHALLENGE_HEADER,
    MAX_MIRRORED_BYTES,
    PASS_HEADER,
    PROOF_HEADER,
    QUEUE,
    QUEUE_BYTES,
    SHADOW_PATH,
    Mirror,
    ShadowKey,
    ShadowOffer,
    Unreadable,
    compare,
)
from tests.cluster import free_port
from tests.helpers import wait_for
from tests.unit.test_server import ROWS, Server, local, publish_iris, running, v2, wait_ready

RNG = np.random.default_rng(7)
KEY = "the deployment's key"  # both sides hold it, as the operator's Secret gives it to both


def _samples(server: Server, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample of ``name`` on the server's /metrics, by its labels."""
    text = server.call("GET", "/metrics")[1]
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


def _shadow(server: Server, name: str, candidate: str, **labels: str) -> float:
    """The sum of ``name``'s samples of ``candidate`` (empty: of any) with ``labels``."""
    return sum(
        value
        for key, value in _samples(server, name).items()
        if dict(key).get("candidate") == (candidate or dict(key).get("candidate"))
        and all(dict(key).get(k) == v for k, v in labels.items())
    )


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A registry with two iris versions: the champion (logistic regression), and a random forest."""
    root = tmp_path_factory.mktemp("mirror")
    candidate = publish_iris(root, "randomForest", alias="candidate")
    stable = publish_iris(root)
    return root, stable, candidate


def _rows(n: int) -> list[list[float]]:
    return np.round(RNG.uniform([4.3, 2.0, 1.0, 0.1], [7.9, 4.4, 6.9, 2.5], size=(n, 4)), 1).tolist()  # type: ignore[no-any-return]


def test_the_stable_server_mirrors_what_it_answers_and_compares_row_by_row(versions: tuple[Path, str, str]) -> None:
    root, stable, candidate = versions
    shadow_config = local(root, feedback_key=KEY, version=candidate, shadow_percent=100, log_percent=100)
    with running(shadow_config) as shadow:
        wait_ready(shadow)
        config = local(root, feedback_key=KEY, alias="champion", shadow_url=f"http://127.0.0.1:{shadow_config.port}")
        with running(config) as server:
            wait_ready(server)
            wait_for(lambda: _ask_until_mirrored(server), 15, "the stable server to follow the shadow's offer")
            time.sleep(1)  # the last warm-up request's comparison lands
            before = _shadow(server, "regrow_shadow_compared_rows_total", candidate)
            agreed_before = _shadow(server, "regrow_shadow_agreed_rows_total", candidate, output="label")
            batches = [_rows(int(RNG.integers(1, 6))) for _ in range(60)]
            answers = [server.call("POST", "/v2/models/iris/infer", v2(rows)) for rows in batches[:20]]
            answers += [server.call("POST", "/v1/models/iris:predict", {"instances": rows}) for rows in batches[20:40]]
            client = oip.InferenceServerClient(f"127.0.0.1:{config.port}")
            for rows in batches[40:]:  # tritonclient's binary tensors: the body is mirrored as it came
                tensor = oip.InferInput("input", [len(rows), 4], "FP32")
                tensor.set_data_from_numpy(np.asarray(rows, dtype=np.float32), binary_data=True)
                assert client.infer("iris", [tensor]).get_response()["model_version"] == stable
            total = sum(len(b) for b in batches)
            wait_for(lambda: _shadow(server, "regrow_shadow_compared_rows_total", candidate) - before == total, 15,
                     "every row compared")  # fmt: skip
            direct = {
                v: OnnxModel((root / "registry/iris/versions" / v / "model.onnx").read_bytes()).predict(
                    np.asarray([r for b in batches for r in b], dtype=np.float32)
                )
                for v in (stable, candidate)
            }
            agreed = int((direct[stable].outputs == direct[candidate].outputs).sum())
            label = _shadow(server, "regrow_shadow_agreed_rows_total", candidate, output="label")
            assert label - agreed_before == agreed
            assert all(status == 200 for status, _ in answers)
            assert {a.get("model_version") for _, a in answers} == {stable}  # no client saw the candidate
            refused = shadow.call("POST", "/v2/models/iris/infer", v2(ROWS))  # a client of the shadow Service
            assert refused == (403, {"error": "a shadow pod answers only the requests the stable pods mirror to it"})
            shadow_requests = _samples(shadow, "regrow_inference_requests_total")
            assert sum(shadow_requests.values()) == _shadow(server, "regrow_shadow_requests_total", candidate)
            assert not _samples(shadow, "regrow_feature_bin_total")  # mirrored rows are no live traffic
            assert server.call("GET", SHADOW_PATH)[0] == 404  # a stable server offers nothing
            assert shadow.call("GET", SHADOW_PATH) == (200, {"model": "iris", "version": candidate, "percent": 100})
    assert not (root / "registry/iris/predictions" / candidate).exists()  # logged nowhere (the log flushes on stop)


def _ask_until_mirrored(server: Server) -> bool:
    """One request; whether any request has been answered by the shadow yet (the first poll may come before
    the shadow has loaded its model)."""
    server.call("POST", "/v2/models/iris/infer", v2(ROWS))
    return _shadow(server, "regrow_shadow_requests_total", "", outcome="answered") > 0


def test_the_shadow_samples_the_share_it_asks_for(versions: tuple[Path, str, str]) -> None:
    root, _, candidate = versions
    shadow_config = local(root, feedback_key=KEY, version=candidate, shadow_percent=30)
    with running(shadow_config) as shadow:
        wait_ready(shadow)
        with running(
            local(root, feedback_key=KEY, alias="champion", shadow_url=f"http://127.0.0.1:{shadow_config.port}")
        ) as server:
            wait_ready(server)
            wait_for(lambda: _ask_until_mirrored(server), 30, "a mirrored request")
            before = _shadow(server, "regrow_shadow_requests_total", candidate)
            for _ in range(1000):
                assert server.call("POST", "/v1/models/iris:predict", {"instances": ROWS[:1]})[0] == 200
            time.sleep(1)
            mirrored = _shadow(server, "regrow_shadow_requests_total", candidate) - before
            assert 235 <= mirrored <= 365, mirrored  # 30% of 1000, within 4.5 standard deviations


class FakeShadow:
    """A shadow that offers ``percent``, proving it holds the key (a ``stranger`` does not), and then answers
    every mirrored request as ``behaviour`` says."""

    def __init__(self, behaviour: str, version: str = "v9", percent: int = 100) -> None:
        self.behaviour, self.received = behaviour, 0
        offer = ShadowOffer(model="iris", version=version, percent=percent).model_dump_json().encode()
        key = ShadowKey(b"another key" if behaviour == "stranger" else KEY.encode())
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:
                pass

            def do_GET(self) -> None:
                challenge = self.headers.get(CHALLENGE_HEADER.decode(), "").encode()
                self._send(200, offer, headers={PROOF_HEADER.decode(): key.proof(challenge, offer).decode()})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                rows = len(body.get("instances") or body["inputs"][0]["data"])
                fake.received += 1
                fake.answer(self, rows)

            def _send(self, status: int, body: bytes, length: str | None = None,
                      headers: dict[str, str] | None = None) -> None:  # fmt: skip
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", length or str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"

    def answer(self, handler: Any, rows: int) -> None:
        how = self.behaviour
        if how == "hang":
            time.sleep(30)
        elif how in ("500", "429"):
            handler._send(int(how), b'{"error": "boom"}')
        elif how == "garbage":
            handler._send(200, b"\x00not json")
        elif how == "rows":
            handler._send(200, json.dumps({"model_version": "v9", "predictions": ["setosa"] * (rows + 1)}).encode())
        elif how == "no version":
            handler._send(200, json.dumps({"predictions": ["setosa"] * rows}).encode())
        elif how == "another version":  # answers as a version it did not offer: credited to none
            handler._send(200, json.dumps({"model_version": "v7", "predictions": ["setosa"] * rows}).encode())
        elif how == "slow":
            time.sleep(0.3)
            handler._send(200, json.dumps({"model_version": "v9", "predictions": ["setosa"] * rows}).encode())
        elif how == "huge":
            handler._send(200, b"{}", length=str(10**12))
        elif how == "close":
            handler.wfile.write(b"HTTP/1.1 200 OK\r\n\r\n")
            handler.close_connection = True

    @contextmanager
    def serving(self) -> Iterator[FakeShadow]:
        thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.http.shutdown()
            self.http.server_close()


@contextmanager
def mirroring_to(fake: FakeShadow, root: Path, **options: Any) -> Iterator[Server]:
    """A ready stable server of the champion, holding the key, that mirrors to ``fake`` while ``fake`` serves."""
    config = local(root, feedback_key=KEY, alias="champion", shadow_url=fake.url, **options)
    with fake.serving(), running(config) as server:
        wait_ready(server)
        yield server


@pytest.mark.parametrize("behaviour", ["500", "garbage", "rows", "no version", "another version", "huge", "close"])
def test_a_failing_candidate_is_counted_and_fails_no_client(versions: tuple[Path, str, str], behaviour: str) -> None:
    root, stable, _ = versions
    fake = FakeShadow(behaviour)
    with mirroring_to(fake, root) as server:
        wait_for(lambda: server.call("POST", "/v2/models/iris/infer", v2(ROWS))[0] == 200 and fake.received, 15,
                 "a mirrored request")  # fmt: skip
        answers = [server.call("POST", "/v2/models/iris/infer", v2(ROWS))[1] for _ in range(50)]
        assert {a["model_version"] for a in answers} == {stable}
        wait_for(lambda: _shadow(server, "regrow_shadow_requests_total", "v9", outcome="failed") >= 50, 15,
                 "every mirrored request counted as failed")  # fmt: skip
        assert _shadow(server, "regrow_shadow_requests_total", "v9", outcome="answered") == 0
        assert not _shadow(server, "regrow_shadow_compared_rows_total", "v9")
        assert _shadow(server, "regrow_shadow_request_duration_seconds_count", "v9") >= 50  # failures are timed
        candidates = {dict(k).get("candidate") for k in _samples(server, "regrow_shadow_requests_total")}
        assert candidates == {"v9"}  # only the offered version is credited, whatever an answer names


def test_no_body_is_sent_to_a_shadow_that_cannot_prove_it_holds_the_key(versions: tuple[Path, str, str]) -> None:
    """Any pod labelled as a shadow pod joins the shadow Service; one without the deployment's key offers in vain:
    nothing is mirrored to it, and no version it names is credited."""
    root, stable, _ = versions
    fake = FakeShadow("stranger", version="v666")
    with mirroring_to(fake, root) as server:
        time.sleep(1)  # its first poll
        for _ in range(100):
            assert server.call("POST", "/v2/models/iris/infer", v2(ROWS))[1]["model_version"] == stable
        assert fake.received == 0 and not _samples(server, "regrow_shadow_requests_total")


def test_after_a_rotation_each_side_takes_the_key_before_too() -> None:
    """Pods that rolled to a new key still admit and prove to those that hold it as their key before."""
    old, new = b"the key before the rotation, 32+ bytes", b"the key after the rotation, 32+ bytes"
    rolled, waiting, stranger = ShadowKey(new, old), ShadowKey(old), ShadowKey(b"another key entirely")
    challenge, offer = ShadowKey.challenge(), b'{"model":"iris"}'
    assert rolled.admits(waiting.mirror_pass(challenge)) and rolled.proves(
        challenge, offer, waiting.proof(challenge, offer)
    )
    assert rolled.admits(rolled.mirror_pass(challenge)) and not rolled.admits(stranger.mirror_pass(challenge))
    assert not rolled.proves(challenge, offer, stranger.proof(challenge, offer))


def test_a_shadow_pod_refuses_requests_that_no_stable_pod_mirrored(versions: tuple[Path, str, str]) -> None:
    """A pass is bound to its handshake's challenge by the key: made up, reused with another challenge, or made
    with another key, it is refused."""
    root, _, candidate = versions
    with running(local(root, feedback_key=KEY, version=candidate, shadow_percent=100)) as shadow:
        wait_ready(shadow)
        key, challenge = ShadowKey(KEY.encode()), ShadowKey.challenge()
        good = key.mirror_pass(challenge)
        forged = [b"", b"x.y", challenge, ShadowKey(b"other").mirror_pass(challenge),
                  ShadowKey.challenge() + good[len(challenge) :]]  # fmt: skip
        for token in forged:
            status, _ = shadow.call(
                "POST", "/v2/models/iris/infer", v2(ROWS), headers={PASS_HEADER.decode(): token.decode()}
            )
            assert status == 403, token
        status, answer = shadow.call(
            "POST", "/v2/models/iris/infer", v2(ROWS), headers={PASS_HEADER.decode(): good.decode()}
        )
        assert status == 200 and answer["model_version"] == candidate
        assert sum(_samples(shadow, "regrow_inference_requests_total").values()) == 1


def test_the_candidates_latency_is_what_the_stable_pods_timed(versions: tuple[Path, str, str]) -> None:
    """A shadow step's p99 gate reads how long the mirrored requests took, as the stable pod timed them."""
    root, _, _ = versions
    fake = FakeShadow("slow")
    with mirroring_to(fake, root) as server:
        for _ in range(12):
            assert server.call("POST", "/v2/models/iris/infer", v2(ROWS))[0] == 200
        wait_for(lambda: _shadow(server, "regrow_shadow_requests_total", "v9", outcome="answered") >= 12, 15,
                 "the mirrored requests answered")  # fmt: skip
        answered = _shadow(server, "regrow_shadow_requests_total", "v9", outcome="answered")
        assert _shadow(server, "regrow_shadow_request_duration_seconds_bucket", "v9", le="0.25") == 0
        assert _shadow(server, "regrow_shadow_request_duration_seconds_bucket", "v9", le="0.5") == answered


def test_a_candidate_that_sheds_load_drops_its_share_without_failing(versions: tuple[Path, str, str]) -> None:
    root, _, _ = versions
    fake = FakeShadow("429")
    with mirroring_to(fake, root) as server:
        for _ in range(60):
            assert server.call("POST", "/v2/models/iris/infer", v2(ROWS))[0] == 200
        wait_for(lambda: _shadow(server, "regrow_shadow_requests_total", "v9", outcome="dropped") >= 50, 15,
                 "shed requests counted as dropped")  # fmt: skip
        assert _shadow(server, "regrow_shadow_requests_total", "v9", outcome="failed") == 0


def test_a_hung_candidate_fills_the_queue_which_drops_and_no_client_waits(versions: tuple[Path, str, str]) -> None:
    root, stable, _ = versions
    fake = FakeShadow("hang")
    with mirroring_to(fake, root) as server:
        wait_for(lambda: server.call("POST", "/v2/models/iris/infer", v2(ROWS))[0] == 200 and fake.received, 15,
                 "a mirrored request")  # fmt: skip
        sent = QUEUE + 500
        statuses = [server.call("POST", "/v1/models/iris:predict", {"instances": ROWS[:1]})[0] for _ in range(sent)]
        assert set(statuses) == {200}
        dropped = _shadow(server, "regrow_shadow_requests_total", "v9", outcome="dropped")
        queued = sum(_samples(server, "regrow_shadow_queue_requests").values())
        assert dropped >= sent - QUEUE - 4 and queued <= QUEUE  # 4 workers hold one request each
        assert stable


def test_a_hung_candidate_holds_at_most_the_queues_bytes_however_large_the_bodies(
    versions: tuple[Path, str, str],
) -> None:
    """The queue is bounded in bytes as well as in count: a body over MAX_MIRRORED_BYTES is answered but not
    mirrored, and the bodies queued and being sent never pass QUEUE_BYTES (300 one-row requests padded to
    2 MiB once took the stable server up by 725 MB). Each dropped request is counted."""
    root, stable, _ = versions
    fake = FakeShadow("hang")
    with mirroring_to(fake, root, max_body=4 * MAX_MIRRORED_BYTES) as server:
        wait_for(lambda: server.call("POST", "/v2/models/iris/infer", v2(ROWS))[0] == 200 and fake.received, 15,
                 "a mirrored request")  # fmt: skip

        def padded(size: int) -> bytes:
            body = json.dumps({"instances": ROWS[:1]}).encode()
            return body + b" " * (size - len(body))  # JSON allows the whitespace

        def held() -> float:
            return sum(_samples(server, "regrow_shadow_queue_bytes").values())

        dropped = _shadow(server, "regrow_shadow_requests_total", "v9", outcome="dropped")
        for _ in range(20):  # too large to mirror at all
            assert server.call("POST", "/v1/models/iris:predict", raw=padded(2 * MAX_MIRRORED_BYTES))[0] == 200
        assert _shadow(server, "regrow_shadow_requests_total", "v9", outcome="dropped") - dropped == 20
        assert held() < MAX_MIRRORED_BYTES
        size = MAX_MIRRORED_BYTES // 4
        sent = QUEUE_BYTES // size + 40
        for _ in range(sent):
            assert server.call("POST", "/v1/models/iris:predict", raw=padded(size))[0] == 200
            assert held() <= QUEUE_BYTES
        assert held() > QUEUE_BYTES - 5 * size  # it filled up, to within the hung workers' few
        dropped = _shadow(server, "regrow_shadow_requests_total", "v9", outcome="dropped") - dropped - 20
        assert dropped >= sent - QUEUE_BYTES // size  # in bytes, long before QUEUE requests
        assert stable


def test_an_absent_candidate_is_never_sent_anything(versions: tuple[Path, str, str]) -> None:
    root, _, _ = versions
    with running(
        local(root, feedback_key=KEY, alias="champion", shadow_url=f"http://127.0.0.1:{free_port()}")
    ) as server:
        wait_ready(server)
        for _ in range(200):
            assert server.call("POST", "/v2/models/iris/infer", v2(ROWS))[0] == 200
        assert not _samples(server, "regrow_shadow_requests_total")


def test_compare_pairs_rows_or_says_why_not() -> None:
    assert compare(["a", "b", "c"], ["a", "x", "c"], classifier=True) == (3, 2.0, 0.0)
    assert compare([1, 2], [1, "2"], classifier=True) == (2, 1.0, 0.0)  # a label of another type disagrees
    assert compare([1.0, -2.0], [1.5, -2.0], classifier=False) == (2, 0.5, 3.0)
    assert compare([], [], classifier=False) == (0, 0.0, 0.0)
    cases: list[tuple[list[Any], object, bool]] = [
        (["a"], ["a", "b"], True),
        (["a"], "a", True),
        ([1.0], None, False),
        ([1.0], ["x"], False),
        ([1.0], [float("nan")], False),
        ([1.0], [[1.0, 2.0]], False),
    ]
    for stable, candidate, classifier in cases:
        with pytest.raises(Unreadable):
            compare(stable, candidate, classifier)


def test_the_shadow_url_and_percent_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    for url in ["https://shadow", "shadow:80", "http://", "file:///tmp/x"]:
        with pytest.raises(ValueError, match="must be http://host"):
            Mirror(url, "iris", ShadowKey(KEY.encode()))
    for percent in ["-1", "101", "x"]:
        with pytest.raises(SystemExit):
            main(["serve", "--registry", "file:///r", "--model", "iris", "--alias", "a", "--shadow-percent", percent])
    assert "--shadow-percent" in capsys.readouterr().err
