"""Artifact stores: ``file://`` (the embedded default) and ``s3://`` (any S3-compatible endpoint).

A store is addressed by a root URI and holds objects under ``/``-separated keys. Writes are atomic:
a reader sees an object whole or not at all.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

# An S3 call: a connection within 5 s, no read waiting more than 30 s, and 4 attempts in all with
# adaptive retries (botocore's defaults are 60 s each and 3 legacy attempts: minutes on a hung endpoint).
S3_CONNECT_SECONDS = 5.0
S3_READ_SECONDS = 30.0
S3_ATTEMPTS = 4
PROBE = ".regrow/conditional-writes"  # the object an S3 store's handling of If-None-Match is checked with
STALE_SECONDS = 3600.0  # a file:// write's temporary file older than this was left by a killed writer


class NotFound(KeyError):
    """The key does not exist in the store."""


class PreconditionFailed(Exception):
    """A conditional write lost: the object changed since it was read."""


class StoreUnavailable(OSError):
    """The store could not be used: no such bucket, access denied, or no answer after the retries. The
    message names the store and what failed, never what an answer held."""


class Store(Protocol):
    uri: str

    def get(self, key: str) -> bytes: ...

    def put(self, key: str, data: bytes) -> None: ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str, start_after: str = "") -> list[str]:
        """The keys under ``prefix`` (those after ``start_after`` alone, when given), sorted."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object, if there is one."""
        ...

    def read_tagged(self, key: str) -> tuple[bytes, str] | None:
        """The object and a tag that changes whenever it does (None: no such object)."""
        ...

    def put_if(self, key: str, data: bytes, tag: str | None) -> None:
        """Write ``data`` only if the object's tag is still ``tag`` (None: only if there is no object); else
        PreconditionFailed. Atomic against other conditional writers."""
        ...


class FileStore:
    """Objects as files under a directory. A write goes to a temporary file, which is synced to disk before
    it is renamed over the object (and the directory after), so that a reader, or the node after a crash,
    sees the old object or the new one whole. A writer killed midway leaves its temporary file: the next
    write of that object removes those older than STALE_SECONDS."""

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
        stale = time.time() - STALE_SECONDS
        for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):  # another writer may clean it up first
                if leftover.stat().st_mtime < stale:
                    leftover.unlink()
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; artifacts are read by other users (serving pods)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself
        finally:
            os.close(directory)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def read_tagged(self, key: str) -> tuple[bytes, str] | None:
        try:
            data = self.get(key)
        except NotFound:
            return None
        return data, hashlib.sha256(data).hexdigest()

    def put_if(self, key: str, data: bytes, tag: str | None) -> None:
        """Under an exclusive lock on a file beside the object (flock: every writer on the node, and on a
        volume whose filesystem honours it), so that the check and the write are one step."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.parent / f".{path.name}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self.read_tagged(key)
            if (current[1] if current else None) != tag:
                raise PreconditionFailed(f"{self.uri}/{key} changed since it was read")
            self.put(key, data)

    def list(self, prefix: str, start_after: str = "") -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return []
        keys = (str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file() and not p.name.startswith("."))
        return sorted(key for key in keys if key > start_after)


class S3Store:
    """Objects in an S3 bucket under a prefix; a PUT is atomic in S3."""

    def __init__(self, bucket: str, prefix: str, client: Any) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._conditional = False  # the store was seen to honour conditional writes

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextmanager
    def _calling(self, action: str) -> Iterator[None]:
        """S3's failures as StoreUnavailable, saying which store and what failed."""
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415 - only S3 users import boto

        try:
            yield
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", "")) or "an error"
            if code == "NoSuchBucket":
                raise StoreUnavailable(f"{self.uri}: the bucket {self.bucket} does not exist") from None
            raise StoreUnavailable(f"{self.uri}: {action} was refused ({code})") from None
        except BotoCoreError as error:  # no connection, or no answer in time, after every attempt
            reason = type(error).__name__
            raise StoreUnavailable(f"{self.uri}: {action} failed after {S3_ATTEMPTS} attempts ({reason})") from None

    def get(self, key: str) -> bytes:
        found = self.read_tagged(key)
        if found is None:
            raise NotFound(f"{self.uri}/{key}")
        return found[0]

    def put(self, key: str, data: bytes) -> None:
        with self._calling(f"writing {key}"):
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def exists(self, key: str) -> bool:
        with self._calling(f"looking for {key}"):
            response = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._key(key), MaxKeys=1)
        return any(o["Key"] == self._key(key) for o in response.get("Contents", []))

    def delete(self, key: str) -> None:
        with self._calling(f"deleting {key}"):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def read_tagged(self, key: str) -> tuple[bytes, str] | None:
        with self._calling(f"reading {key}"):
            try:
                response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            except self.client.exceptions.NoSuchKey:
                return None
            body: bytes = response["Body"].read()
        return body, str(response["ETag"])

    def put_if(self, key: str, data: bytes, tag: str | None) -> None:
        """A PUT with If-Match (or If-None-Match: *), once the store has been seen to honour them."""
        self._check_conditional_writes()
        condition = {"IfMatch": tag} if tag is not None else {"IfNoneMatch": "*"}
        if not self._put_conditionally(key, data, condition):
            raise PreconditionFailed(f"{self.uri}/{key} changed since it was read")

    def _put_conditionally(self, key: str, data: bytes, condition: dict[str, str]) -> bool:
        """Whether the conditional PUT was taken (False: its condition failed, or lost to a concurrent one)."""
        from botocore.exceptions import ClientError  # noqa: PLC0415

        with self._calling(f"writing {key}"):
            try:
                self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **condition)
            except ClientError as error:
                # NoSuchKey: If-Match on an object that is gone; ConditionalRequestConflict: a concurrent one won
                if error.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict",
                                                                   "NoSuchKey"):  # fmt: skip
                    return False
                raise
        return True

    def _check_conditional_writes(self) -> None:
        """Refuse to move anything on a store that ignores If-None-Match (some S3-compatible stores do):
        there, two writers could both think they won. Checked once: a second create of the probe object must
        be refused."""
        if self._conditional:
            return
        self._put_conditionally(PROBE, b"", {"IfNoneMatch": "*"})  # taken, or refused: it already exists
        if self._put_conditionally(PROBE, b"", {"IfNoneMatch": "*"}):
            raise StoreUnavailable(
                f"{self.uri}: the store ignores conditional writes (If-None-Match), so concurrent alias moves "
                "could both think they won; regrow moves no alias there"
            )
        self._conditional = True

    def list(self, prefix: str, start_after: str = "") -> list[str]:
        keys: list[str] = []
        strip = len(self.prefix) + 1 if self.prefix else 0
        after = {"StartAfter": self._key(start_after)} if start_after else {}
        with self._calling(f"listing {prefix or '/'}"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._key(prefix), **after
            )
            for page in pages:
                keys.extend(o["Key"][strip:] for o in page.get("Contents", []))
        return sorted(keys)


def open_store(
    uri: str, *, endpoint_url: str | None = None, region: str | None = None, read_timeout: float = S3_READ_SECONDS
) -> Store:
    """The store at ``uri``. For ``s3://``, boto3 reads credentials (and ``AWS_ENDPOINT_URL``) from the
    environment unless ``endpoint_url`` is given; every call has the timeouts and attempts above."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        if parsed.netloc:
            raise ValueError(f"{uri}: a file:// URI needs an absolute path (file:///path)")
        if {".", ".."} & set(parsed.path.split("/")):
            raise ValueError(f"{uri}: a file:// URI may not contain . or .. segments")
        return FileStore(Path(parsed.path))
    if parsed.scheme == "s3":
        import boto3  # noqa: PLC0415 - only S3 users pay for importing boto3
        from botocore.config import Config  # noqa: PLC0415

        config = Config(connect_timeout=S3_CONNECT_SECONDS, read_timeout=read_timeout,
                        retries={"total_max_attempts": S3_ATTEMPTS, "mode": "adaptive"})  # fmt: skip
        client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
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
