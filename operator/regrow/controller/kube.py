"""A small synchronous Kubernetes REST client over the official client's ApiClient.

Reconcilers take plain dicts in and out and address objects by path, so one small class serves
every kind, and unit tests can pass a fake with the same four methods.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol, cast

import urllib3
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

Obj = dict[str, Any]
# Every call: a connection within CONNECT_SECONDS, then no read waits longer than READ_SECONDS (the API
# server answers a list of a large namespace's pods in well under a second), and an answer of at most
# MAX_RESPONSE_BYTES. A hung API server holds a worker for a bounded time, not for good.
CONNECT_SECONDS = 5.0
READ_SECONDS = 30.0
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
MANAGER = "regrow"  # the field manager of the operator's writes
CONTENT_TYPES = {"POST": "application/json", "PATCH": "application/merge-patch+json",
                 "APPLY": "application/apply-patch+yaml"}  # fmt: skip
# A watch ends after WATCH_SECONDS (the API server closes it; it is then resumed from where it was), and no read
# of it waits longer than that and WATCH_GRACE_SECONDS: a connection that went silent is given up, not kept.
WATCH_SECONDS = 240
WATCH_GRACE_SECONDS = 30.0


class Conflict(Exception):
    """The object already exists, or changed since it was read (HTTP 409)."""


class ApiUnreachable(OSError):
    """No answer from the API server: no connection, or none in time, after urllib3's retries."""


class ResponseTooLarge(OSError):
    """The API server's answer passed MAX_RESPONSE_BYTES (it was not read further)."""


class Expired(Exception):
    """A watch's resourceVersion is too old to resume from (HTTP 410): list again."""


class Api(Protocol):
    def get(self, path: str) -> Obj | None: ...

    def create(self, path: str, body: Obj) -> Obj: ...

    def patch(self, path: str, body: Obj) -> Obj: ...

    def list(self, path: str, label_selector: str = "") -> list[Obj]: ...


class Applier(Api, Protocol):
    """An Api that can also apply (server-side apply): what makes children."""

    def apply(self, path: str, body: Obj, manager: str = ...) -> Obj: ...


def path(api_version: str, plural: str, namespace: str, name: str = "") -> str:
    """The REST path of a namespaced collection, or of one object in it."""
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return f"{base}/namespaces/{namespace}/{plural}" + (f"/{name}" if name else "")


def resource(url: str) -> str:
    """The resource a REST path is about (``deployments``, ``modeldeployments/status``), or what else it asks
    (``discovery``)."""
    parts = url.strip("/").split("/")
    base = 2 if parts[0] == "api" else 3  # /api/v1/..., /apis/<group>/<version>/...
    if len(parts) > base + 1 and parts[base] == "namespaces":
        rest = parts[base + 2 :]
        return rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "") if rest else "namespaces"
    return parts[base] if len(parts) > base else "discovery"


class Kube:
    def __init__(
        self, api_client: ApiClient, connect: float = CONNECT_SECONDS, read: float = READ_SECONDS,
        max_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:  # fmt: skip
        self.api_client = api_client
        self.timeout = (connect, read)
        self.max_bytes = max_bytes
        self.answered_at = float("-inf")  # time.monotonic() of the API server's last answer, whatever it said
        # Told of each request: its verb (GET, WATCH, POST, PATCH, APPLY) and resource (``deployments``).
        self.sent: Callable[[str, str], None] = lambda verb, resource: None

    def _send(
        self, method: str, url: str, body: Obj | None, query: list[tuple[str, str]] | None,
        timeout: tuple[float, float],
    ) -> Any:  # fmt: skip
        """Send a request; the answer's status and its urllib3 response, unread."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = CONTENT_TYPES[method]
        request = self.api_client.param_serialize(
            method="PATCH" if method == "APPLY" else method,
            resource_path=url,
            query_params=query or [],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        self.sent("WATCH" if ("watch", "1") in (query or []) else method, resource(url))
        try:
            response = self.api_client.call_api(*request, _request_timeout=timeout)
        except urllib3.exceptions.HTTPError as error:  # not an OSError: callers that expect one would miss it
            raise ApiUnreachable(f"{method} {url}: {type(error).__name__}") from error
        self.answered_at = time.monotonic()
        return response

    def _call(self, method: str, url: str, body: Obj | None = None, query: list[tuple[str, str]] | None = None) -> Obj:
        response = self._send(method, url, body, query, self.timeout)
        raw = response.response  # urllib3's, not read yet
        data: bytes = raw.read(self.max_bytes + 1, decode_content=True)
        if len(data) > self.max_bytes:
            raw.close()  # the rest is unread: the connection cannot serve another request
            raise ResponseTooLarge(f"{method} {url}: the answer exceeds {self.max_bytes} bytes")
        raw.release_conn()
        if response.status == 409:
            raise Conflict(url)
        if response.status >= 400:
            raise ApiException(http_resp=response, body=data.decode(errors="replace"))
        return cast(Obj, json.loads(data))

    def get(self, path: str) -> Obj | None:
        try:
            return self._call("GET", path)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def create(self, path: str, body: Obj) -> Obj:
        """Create ``body`` in the collection at ``path``; Conflict when it exists."""
        return self._call("POST", path, body, [("fieldManager", MANAGER)])

    def patch(self, path: str, body: Obj) -> Obj:
        """Merge-patch the object at ``path``; a ``metadata.resourceVersion`` in ``body`` is a precondition
        (Conflict when the object changed since)."""
        return self._call("PATCH", path, body, [("fieldManager", MANAGER)])

    def apply(self, path: str, body: Obj, manager: str = MANAGER) -> Obj:
        """Server-side apply ``body`` (JSON, which is YAML) to the object at ``path`` as ``manager``, taking
        over the fields it sets from any other manager (created if it does not exist)."""
        return self._call("APPLY", path, body, [("fieldManager", manager), ("force", "true")])

    def list(self, path: str, label_selector: str = "") -> list[Obj]:
        return cast(list[Obj], self.collection(path, label_selector).get("items", []))

    def collection(self, path: str, label_selector: str = "") -> Obj:
        """The list object at ``path``: its ``items`` and the ``metadata.resourceVersion`` to watch from."""
        return self._call("GET", path, query=[("labelSelector", label_selector)] if label_selector else [])

    def watch(self, path: str, label_selector: str, resource_version: str) -> Iterator[Obj]:
        """The watch events (``type`` and ``object``, bookmarks included) of the collection at ``path`` after
        ``resource_version``, until the API server ends the watch (after WATCH_SECONDS); Expired when that
        version is too old. No event may pass MAX_RESPONSE_BYTES."""
        query = [("watch", "1"), ("allowWatchBookmarks", "true"), ("resourceVersion", resource_version),
                 ("timeoutSeconds", str(WATCH_SECONDS))]  # fmt: skip
        if label_selector:
            query.append(("labelSelector", label_selector))
        response = self._send("GET", path, None, query, (self.timeout[0], WATCH_SECONDS + WATCH_GRACE_SECONDS))
        raw = response.response
        try:
            if response.status == 410:
                raise Expired(path)
            if response.status >= 400:
                raise ApiException(http_resp=response, body=raw.read(self.max_bytes).decode(errors="replace"))
            pending = b""
            for chunk in raw.stream(1 << 16, decode_content=True):
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()
                if len(pending) > self.max_bytes:
                    raise ResponseTooLarge(f"GET {path}: a watch event exceeds {self.max_bytes} bytes")
                for line in lines:
                    if line.strip():
                        event = cast(Obj, json.loads(line))
                        if event.get("type") == "ERROR" and (event.get("object") or {}).get("code") == 410:
                            raise Expired(path)
                        yield event
        except urllib3.exceptions.HTTPError as error:
            raise ApiUnreachable(f"GET {path} (watch): {type(error).__name__}") from error
        finally:
            raw.close()
