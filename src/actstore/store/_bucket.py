"""Writing a store on object storage (``s3://bucket/prefix``): uploads, and the manifest
replaced by a conditional PUT.

Object stores have no rename, no ``flock`` and no links, so a job never writes the bucket
the way it writes a disk. It writes its part into a local *staging store* (an ordinary
store, with its locks and checkpoints; :mod:`actstore.extract._remote`) and publishes
with the objects below:

* a complete part uploads only its own objects: ``runs/<run>/arrays/part-KKKK/**`` and
  its staging ``runs/<run>/parts/part-KKKK/**``, whose ``progress.json`` goes last (its
  presence, marked complete, says the part is in the bucket);
* the commit uploads the run's other files (tokens, vocab, docs, ``run.json``, ...), then
  adds the run to ``actstore.json`` by a **conditional PUT**: ``If-Match`` the ETag it
  read (``If-None-Match: *`` when the bucket has no manifest yet). A PUT that lost a race
  gets ``412 Precondition Failed`` and is redone on the manifest the winner wrote, so two
  committers never drop each other's runs, and readers see the old manifest or the new
  one, never a mixture (a PUT replaces an object atomically);
* the staging objects under ``runs/<run>/parts/`` are deleted after the manifest names
  the run.

The client is boto3 (pyarrow's S3 filesystem, used for reading, cannot send
``If-Match``), configured the standard AWS way like the reader. Every key read from the
bucket is checked before it names a local file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from actstore.errors import StoreError, StoreWriteError
from actstore.store._objects import ObjectPath, _endpoint
from actstore.store.format import MANIFEST_NAME, ManifestJSON
from actstore.store.manifest import _check_manifest, empty_manifest

__all__ = ["Bucket", "safe_relative"]

#: Concurrent uploads and downloads.
_THREADS = 8


def safe_relative(name: str) -> str:
    """``name`` if it is a relative path that stays below its folder, else raise.

    >>> safe_relative("tokens/000001.parquet")
    'tokens/000001.parquet'
    >>> safe_relative("../x")
    Traceback (most recent call last):
    ...
    actstore.errors.StoreError: object name '../x' would leave its folder; the bucket holds \
objects that actstore did not write
    """
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise StoreError(
            f"object name {name!r} would leave its folder; the bucket holds objects that "
            "actstore did not write"
        )
    return name


class Bucket:
    """The objects of one store on S3, for writing.

    Parameters
    ----------
    root : ObjectPath
        The store (``s3://bucket/prefix``).
    """

    def __init__(self, root: ObjectPath) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError as e:
            raise StoreWriteError(
                f"writing a store to {root} needs boto3, which is not installed: "
                "pip install 'actstore[s3]'"
            ) from e
        self.root = root
        self.name, _, self.prefix = root.key.partition("/")
        host, scheme = _endpoint()
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        try:
            self.client: Any = boto3.session.Session().client(
                "s3",
                region_name=region,
                endpoint_url=f"{scheme}://{host}" if host else None,
                config=Config(
                    retries={"max_attempts": 5, "mode": "standard"},
                    s3={"addressing_style": "path"},
                    max_pool_connections=2 * _THREADS,
                ),
            )
        except Exception as e:  # a malformed endpoint URL, a region botocore refuses
            raise self._error(e, "connect") from e

    def key(self, rel: str) -> str:
        """The object key of ``rel`` (a path relative to the store)."""
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _error(self, e: Exception, what: str) -> StoreError:
        msg = " ".join(str(e).split())[:200]
        host, scheme = _endpoint()
        where = f"{scheme}://{host}" if host else "AWS S3"
        return StoreWriteError(
            f"cannot {what} in {self.root} on {where} ({msg}); check the bucket, the "
            "credentials and AWS_ENDPOINT_URL, then run the same command again: it resumes"
        )

    def _call(self, what: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kwargs)
        except (ClientError, BotoCoreError, Boto3Error, OSError) as e:
            raise self._error(e, what) from e

    # ------------------------------------------------------------------ small objects

    def get_json(self, rel: str) -> tuple[Any, str | None]:
        """``(parsed JSON, ETag)`` of ``rel``; ``(None, None)`` when there is no such object."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            got = self.client.get_object(Bucket=self.name, Key=self.key(rel))
            body = got["Body"].read()
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None, None
            raise self._error(e, f"read {rel}") from e
        except (BotoCoreError, OSError) as e:
            raise self._error(e, f"read {rel}") from e
        try:
            return json.loads(body), str(got["ETag"])
        except ValueError as e:
            raise StoreError(f"{self.root}/{rel} is not valid JSON ({e}); it is damaged") from e

    def manifest(self) -> tuple[ManifestJSON | None, str | None]:
        """The bucket's manifest (checked like a local one) and its ETag, or ``(None, None)``."""
        data, etag = self.get_json(MANIFEST_NAME)
        if data is None:
            return None, None
        return _check_manifest(self.root / MANIFEST_NAME, data), etag

    def put_manifest(self, manifest: ManifestJSON, etag: str | None) -> bool:
        """Replace the manifest if it still has ``etag`` (None: only if there is none).

        Returns False, changing nothing, when another writer replaced (or created) it since.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        body = (json.dumps(manifest, indent=2) + "\n").encode()
        cond = {"IfMatch": etag} if etag is not None else {"IfNoneMatch": "*"}
        try:
            self.client.put_object(
                Bucket=self.name,
                Key=self.key(MANIFEST_NAME),
                Body=body,
                ContentType="application/json",
                **cond,
            )
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code"))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            # 412: the condition failed; 409: a concurrent conditional write (AWS) -- retry
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (
                409,
                412,
            ):
                return False
            raise self._error(e, "replace the manifest") from e
        except BotoCoreError as e:
            raise self._error(e, "replace the manifest") from e
        return True

    def update_manifest(self, change: Callable[[ManifestJSON], bool]) -> bool:
        """Apply ``change`` to the bucket's manifest and PUT it conditionally, redoing both
        on the newer manifest until a PUT succeeds. ``change`` returns False to write
        nothing (e.g. the run is there already); this returns what it returned last."""
        for _ in range(100):
            manifest, etag = self.manifest()
            if manifest is None:
                manifest = empty_manifest()
            if not change(manifest):
                return False
            if self.put_manifest(manifest, etag):
                return True
        raise StoreWriteError(
            f"cannot replace the manifest of {self.root}: 100 conditional writes in a row lost "
            "to other writers; run the same command again"
        )

    # ------------------------------------------------------------------ files and trees

    def list(self, rel_dir: str) -> list[str]:
        """Names (relative to ``rel_dir``, checked) of every object under ``rel_dir``."""
        base = self.key(rel_dir.rstrip("/")) + "/"
        names: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.name, Prefix=base):
                names.extend(
                    safe_relative(o["Key"][len(base) :])
                    for o in page.get("Contents", [])
                    if not o["Key"].endswith("/")  # a "folder" marker, no object of ours
                )
        except Exception as e:
            if isinstance(e, StoreError):
                raise
            raise self._error(e, f"list {rel_dir}") from e
        return names

    def upload(
        self, files: Iterable[tuple[Path, str]], last: Iterable[tuple[Path, str]] = ()
    ) -> int:
        """Upload ``(local file, store-relative name)`` pairs concurrently, then ``last``
        (in order, after all others are in the bucket). Returns the bytes uploaded."""
        from boto3.s3.transfer import TransferConfig

        transfer = TransferConfig(multipart_threshold=64 << 20, max_concurrency=4)

        def one(item: tuple[Path, str]) -> int:
            path, rel = item
            self._call(
                f"upload {rel}",
                self.client.upload_file,
                Filename=str(path),
                Bucket=self.name,
                Key=self.key(rel),
                Config=transfer,
            )
            return path.stat().st_size

        with ThreadPoolExecutor(_THREADS) as pool:
            total = sum(pool.map(one, list(files)))
        return total + sum(one(item) for item in last)

    def download(self, rel_dir: str, local: Path, *, last: str | None = None) -> None:
        """Copy every object under ``rel_dir`` into the folder ``local`` (``last``, a name
        relative to ``rel_dir``, after all others)."""
        names = self.list(rel_dir)

        def one(name: str) -> None:
            dest = local / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.download-{os.getpid()}")
            self._call(
                f"download {rel_dir}/{name}",
                self.client.download_file,
                Bucket=self.name,
                Key=self.key(f"{rel_dir}/{name}"),
                Filename=str(tmp),
            )
            tmp.replace(dest)

        with ThreadPoolExecutor(_THREADS) as pool:
            list(pool.map(one, [n for n in names if n != last]))
        if last is not None and last in names:
            one(last)

    def delete(self, rel_dir: str) -> None:
        """Delete every object under ``rel_dir``."""
        keys = [self.key(f"{rel_dir}/{n}") for n in self.list(rel_dir)]
        for i in range(0, len(keys), 1000):
            batch = {"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True}
            self._call(
                f"delete {rel_dir}", self.client.delete_objects, Bucket=self.name, Delete=batch
            )
