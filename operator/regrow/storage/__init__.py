"""Artifact stores: ``file://`` (the embedded default) and ``s3://`` (any S3-compatible endpoint).

A store is addressed by a root URI and holds objects under ``/``-separated keys. Writes are atomic:
a reader sees an object whole or not at all.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse


class NotFound(KeyError):
    """The key does not exist in the store."""


class Store(Protocol):
    uri: str

    def get(self, key: str) -> bytes: ...

    def put(self, key: str, data: bytes) -> None: ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str) -> list[str]: ...


class FileStore:
    """Objects as files under a directory; a write goes to a temporary file that is then renamed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = f"file://{root}"

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"key {key!r} escapes the store root {self.root}")
        return path

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"{self.uri}/{key}") from None

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; artifacts are read by other users (serving pods)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return []
        return sorted(
            str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file() and not p.name.startswith(".")
        )


class S3Store:
    """Objects in an S3 bucket under a prefix; a PUT is atomic in S3."""

    def __init__(self, bucket: str, prefix: str, client: Any) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def get(self, key: str) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except self.client.exceptions.NoSuchKey:
            raise NotFound(f"{self.uri}/{key}") from None
        body: bytes = response["Body"].read()
        return body

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def exists(self, key: str) -> bool:
        response = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._key(key), MaxKeys=1)
        return any(o["Key"] == self._key(key) for o in response.get("Contents", []))

    def list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        strip = len(self.prefix) + 1 if self.prefix else 0
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
            keys.extend(o["Key"][strip:] for o in page.get("Contents", []))
        return sorted(keys)


def open_store(uri: str, *, endpoint_url: str | None = None, region: str | None = None) -> Store:
    """The store at ``uri``. For ``s3://``, boto3 reads credentials (and ``AWS_ENDPOINT_URL``) from the
    environment unless ``endpoint_url`` is given."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        if parsed.netloc:
            raise ValueError(f"{uri}: a file:// URI needs an absolute path (file:///path)")
        if {".", ".."} & set(parsed.path.split("/")):
            raise ValueError(f"{uri}: a file:// URI may not contain . or .. segments")
        return FileStore(Path(parsed.path))
    if parsed.scheme == "s3":
        import boto3  # noqa: PLC0415 - only S3 users pay for importing boto3

        client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region)
        return S3Store(parsed.netloc, parsed.path, client)
    raise ValueError(f"{uri}: unsupported store scheme {parsed.scheme!r}; use s3:// or file://")


def read_uri(uri: str, *, endpoint_url: str | None = None, region: str | None = None) -> bytes:
    """The object a full URI names, such as ``s3://bucket/data/iris.csv`` or ``file:///data/iris.csv``."""
    root, _, name = uri.rpartition("/")
    if root == "file://":
        root = "file:///"
    if not name or root in ("", "s3:/"):
        raise ValueError(f"{uri}: does not name an object")
    return open_store(root, endpoint_url=endpoint_url, region=region).get(name)
