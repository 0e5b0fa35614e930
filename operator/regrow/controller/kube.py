"""A small synchronous Kubernetes REST client over the official client's ApiClient.

Reconcilers take plain dicts in and out and address objects by path, so one small class serves
every kind, and unit tests can pass a fake with the same four methods.
"""

from __future__ import annotations

import json
import time
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


class Conflict(Exception):
    """The object already exists, or changed since it was read (HTTP 409)."""


class ApiUnreachable(OSError):
    """No answer from the API server: no connection, or none in time, after urllib3's retries."""


class ResponseTooLarge(OSError):
    """The API server's answer passed MAX_RESPONSE_BYTES (it was not read further)."""


class Api(Protocol):
    def get(self, path: str) -> Obj | None: ...

    def create(self, path: str, body: Obj) -> Obj: ...

    def patch(self, path: str, body: Obj) -> Obj: ...

    def list(self, path: str, label_selector: str = "") -> list[Obj]: ...


def path(api_version: str, plural: str, namespace: str, name: str = "") -> str:
    """The REST path of a namespaced collection, or of one object in it."""
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return f"{base}/namespaces/{namespace}/{plural}" + (f"/{name}" if name else "")


class Kube:
    def __init__(
        self, api_client: ApiClient, connect: float = CONNECT_SECONDS, read: float = READ_SECONDS,
        max_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:  # fmt: skip
        self.api_client = api_client
        self.timeout = (connect, read)
        self.max_bytes = max_bytes
        self.answered_at = float("-inf")  # time.monotonic() of the API server's last answer, whatever it said

    def _call(self, method: str, url: str, body: Obj | None = None, query: list[tuple[str, str]] | None = None) -> Obj:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/merge-patch+json" if method == "PATCH" else "application/json"
        request = self.api_client.param_serialize(
            method=method,
            resource_path=url,
            query_params=query or [],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self.api_client.call_api(*request, _request_timeout=self.timeout)
        except urllib3.exceptions.HTTPError as error:  # not an OSError: callers that expect one would miss it
            raise ApiUnreachable(f"{method} {url}: {type(error).__name__}") from error
        self.answered_at = time.monotonic()
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
        return self._call("POST", path, body)

    def patch(self, path: str, body: Obj) -> Obj:
        """Merge-patch the object at ``path``; a ``metadata.resourceVersion`` in ``body`` is a precondition
        (Conflict when the object changed since)."""
        return self._call("PATCH", path, body)

    def list(self, path: str, label_selector: str = "") -> list[Obj]:
        query = [("labelSelector", label_selector)] if label_selector else []
        return cast(list[Obj], self._call("GET", path, query=query).get("items", []))
