"""Named labellers: who may label a deployment's predictions, each by a token.

A ModelDeployment's ``labellers`` each name a Secret, which its serving pods mount at ``<directory>/<name>`` (the
operator never reads it). Every file there (a key of the Secret) holds a token of that labeller, so that two
are valid while one is rotated; the kubelet updates a mounted Secret within about a minute without restarting
the pod, and the pod reads the folder again every RELOAD_SECONDS, so a token deleted from the Secret is revoked
then. A token shorter than MIN_TOKEN_BYTES is ignored.

A feedback request carries its token in the header ``regrow-labeller-token`` (regrow's own: the API server's
service proxy strips ``Authorization``), and the labeller's name is recorded with each label it gives. With
labellers named, feedback without a token of one of them is refused (401); with none, any client that was given
a prediction id may label it, anonymously.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from pathlib import Path

from regrow.serving.feedback import Rejected

log = logging.getLogger(__name__)

HEADER = b"regrow-labeller-token"
MIN_TOKEN_BYTES = 16
RELOAD_SECONDS = 10.0


class Labellers:
    """The labellers named in ``directory`` (None: none are) and their tokens, read again every RELOAD_SECONDS."""

    def __init__(self, directory: str | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.directory = Path(directory) if directory else None
        self.clock = clock
        self.tokens: dict[str, list[bytes]] = {}
        self.loaded: float | None = None

    def _load(self) -> None:
        assert self.directory is not None
        tokens: dict[str, list[bytes]] = {}
        try:
            folders = sorted(p for p in self.directory.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            folders = []
        for folder in folders:
            tokens[folder.name] = []
            for item in sorted(folder.iterdir()):  # a Secret's keys are links to files in a hidden folder
                if item.name.startswith(".") or not item.is_file():
                    continue
                token = item.read_bytes().strip()
                if len(token) >= MIN_TOKEN_BYTES:
                    tokens[folder.name].append(token)
                else:
                    log.warning("Ignored a token of labeller %s shorter than %d bytes", folder.name, MIN_TOKEN_BYTES)
        self.tokens, self.loaded = tokens, self.clock()

    def who(self, token: bytes | None) -> str | None:
        """The labeller whose token a request carries; None for an anonymous label where no labeller is named.
        Rejected (``unauthorized``) for a request without a valid token where they are, or with one where
        they are not."""
        if self.directory is None:
            if token is not None:
                raise Rejected("unauthorized", "this deployment names no labellers: send no regrow-labeller-token", 401)
            return None
        if self.loaded is None or self.clock() - self.loaded >= RELOAD_SECONDS:
            self._load()
        if token is None:
            raise Rejected("unauthorized", "this deployment takes labels from its named labellers alone: send the "
                           "regrow-labeller-token header", 401)  # fmt: skip
        found = None
        for name, tokens in self.tokens.items():
            for known in tokens:  # every one compared, in constant time each
                if hmac.compare_digest(token, known):
                    found = name
        if found is None:
            raise Rejected("unauthorized", "the regrow-labeller-token is not a token of a labeller here", 401)
        return found
