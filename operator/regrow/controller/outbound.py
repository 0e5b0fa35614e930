"""The operator's HTTP calls to anything but the API server: its serving pods (model metadata, reference
profiles, metrics) and Prometheus.

Each call has a deadline for the whole answer, reads at most a given number of bytes, and follows no
redirect: a 3xx is an answer like any other, so a URL cannot send the operator somewhere its spec did not
name. What an answer holds is for the caller to check; none of it is ever copied into a status or an Event.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

CHUNK = 64 * 1024
MAX_POD_ANSWER = 16 << 20  # bytes of a pod's /metrics or profile (a profile of 1,000 features is ~2 MiB)
Fetch = Callable[[str, str], bytes | None]  # (pod IP:port, path) -> body


class NotFollowed(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_: Any) -> None:  # the 3xx itself is the answer
        return None


_OPENER = urllib.request.build_opener(NotFollowed())


class AnswerTooLarge(OSError):
    """The answer was longer than the caller reads (it was not read further)."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes


def get(url: str, timeout: float, max_bytes: int) -> Answer:
    """GET ``url``: the status and body of its answer, 3xx, 4xx and 5xx included. Raises OSError (TimeoutError,
    AnswerTooLarge, ...) when the server cannot be reached, when no whole answer comes within ``timeout``
    seconds (each read waits ``timeout`` at most, so a trickle ends by ``2 * timeout``), or when the answer
    passes ``max_bytes``."""
    deadline = time.monotonic() + timeout
    try:
        response = _OPENER.open(url, timeout=timeout)
        status = int(response.status)
    except urllib.error.HTTPError as error:  # an answer all the same
        response, status = error, error.code
    with response:
        body = bytearray()
        while chunk := response.read1(min(CHUNK, max_bytes + 1 - len(body))):  # what has come, not all asked
            body += chunk
            if len(body) > max_bytes:
                raise AnswerTooLarge(f"the answer is longer than {max_bytes} bytes")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no whole answer within {timeout:g} s")
    return Answer(status, bytes(body))


def pod_fetch(address: str, url_path: str) -> bytes | None:
    """A serving pod's answer to ``GET url_path`` when it is a 200, else None."""
    try:
        answer = get(f"http://{address}{url_path}", 3.0, MAX_POD_ANSWER)
    except OSError:
        return None
    return answer.body if answer.status == 200 else None
