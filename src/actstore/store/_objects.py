"""Stores on object storage (``s3://bucket/prefix``), read-only, through pyarrow's S3
filesystem.

A store URL becomes an :class:`ObjectPath`: a :class:`~pathlib.PosixPath` subclass whose
file methods (``is_file``, ``is_dir``, ``glob``, ``iterdir``, ``read_bytes``, ``open``)
go to the object store, so the reader's path code reads a remote store unchanged; only
the hot paths branch on it (shard gathers use ranged reads, the SQL views register
pyarrow datasets). The filesystem is configured the standard AWS way: credentials from
the environment or ``~/.aws``, the endpoint from ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL``, the region from ``AWS_REGION`` / ``AWS_DEFAULT_REGION``. Every
request this module issues is counted in :data:`REQUESTS`.
"""

from __future__ import annotations

import fnmatch
import os
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path, PosixPath
from typing import TYPE_CHECKING, Any

from actstore.errors import StoreError, StoreNotFoundError, StoreWriteError

if TYPE_CHECKING:
    import pyarrow.fs as pafs

__all__ = [
    "REQUESTS",
    "ObjectPath",
    "Requests",
    "read_only_message",
    "refuse_write",
    "s3_filesystem",
    "store_path",
]

#: URL schemes read through pyarrow (others are refused with one line).
SCHEMES = ("s3",)


@dataclass
class Requests:
    """Requests issued to object storage by this process, and the bytes they returned."""

    gets: int = 0
    """Ranged or whole-object GETs."""
    heads: int = 0
    """Metadata requests (HEAD, LIST)."""
    nbytes: int = 0
    """Bytes received by the GETs."""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, gets: int = 0, heads: int = 0, nbytes: int = 0) -> None:
        """Count requests (thread-safe)."""
        with self._lock:
            self.gets += gets
            self.heads += heads
            self.nbytes += nbytes

    def reset(self) -> None:
        """Start counting from zero."""
        with self._lock:
            self.gets = self.heads = self.nbytes = 0


#: The counter of every request to object storage.
REQUESTS = Requests()


def store_path(path: str | os.PathLike[str]) -> Path:
    """The :class:`~pathlib.Path` of a store: an :class:`ObjectPath` for a URL.

    >>> str(store_path("s3://bucket/a/x.acts")), store_path("x.acts")
    ('s3://bucket/a/x.acts', PosixPath('x.acts'))

    Raises
    ------
    StoreError
        A URL of a scheme that is not supported, or without a bucket.
    """
    if isinstance(path, Path):
        return path
    text = os.fspath(path)
    if "://" not in text:
        return Path(text)
    scheme, _, rest = text.partition("://")
    if scheme not in SCHEMES:
        raise StoreError(
            f"store URL {text!r}: scheme {scheme}:// is not supported (supported: "
            f"{', '.join(s + '://' for s in SCHEMES)} and local paths)"
        )
    rest = rest.strip("/")
    if not rest:
        raise StoreError(f"store URL {text!r} names no bucket; use s3://BUCKET/PREFIX")
    return ObjectPath("/" + rest)


def _endpoint() -> tuple[str | None, str]:
    """``(host[:port] or None, scheme)`` of the S3 endpoint named by the environment."""
    url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not url:
        return None, "https"
    scheme, sep, host = url.partition("://")
    return (host.rstrip("/"), scheme) if sep else (url.rstrip("/"), "https")


_FS: dict[tuple[Any, ...], Any] = {}
_FS_LOCK = threading.Lock()


def s3_filesystem() -> pafs.S3FileSystem:
    """pyarrow's S3 filesystem configured from the environment (one per configuration).

    The endpoint comes from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (e.g.
    ``http://127.0.0.1:9000`` for MinIO or moto), the region from ``AWS_REGION`` or
    ``AWS_DEFAULT_REGION`` (default ``us-east-1``), credentials from the AWS SDK's usual
    chain (environment, ``~/.aws``, instance role).
    """
    import pyarrow.fs as pafs

    host, scheme = _endpoint()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    creds = tuple(
        os.environ.get(k)
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
    )
    key = (host, scheme, region, creds)
    with _FS_LOCK:
        if key not in _FS:
            _FS[key] = pafs.S3FileSystem(
                endpoint_override=host,
                scheme=scheme,
                region=region,
                # path-style addressing: what S3-compatible servers on an endpoint expect
                force_virtual_addressing=False,
                connect_timeout=10,
                request_timeout=60,
            )
        fs: pafs.S3FileSystem = _FS[key]
        return fs


class ObjectPath(PosixPath):
    """A path in an object store, ``s3://bucket/key`` (held as ``/bucket/key``).

    Derived paths (``/``, ``parent``) are ``ObjectPath`` too. Only reading is supported:
    the methods that would write raise :class:`~actstore.errors.StoreError`.
    """

    def __str__(self) -> str:
        return "s3:/" + PosixPath.__str__(self)

    def __repr__(self) -> str:
        return f"ObjectPath({str(self)!r})"

    def __fspath__(self) -> str:
        # a local open() of an object path must fail, never read a local file
        return str(self)

    @property
    def key(self) -> str:
        """``bucket/key`` as pyarrow's filesystem names it."""
        return PosixPath.__str__(self).lstrip("/")

    @property
    def fs(self) -> pafs.S3FileSystem:
        """The filesystem holding the object."""
        return s3_filesystem()

    def _info(self) -> Any:
        REQUESTS.add(heads=1)
        try:
            return self.fs.get_file_info(self.key)
        except OSError as e:
            raise _access_error(self, e) from e

    def is_file(self) -> bool:
        import pyarrow.fs as pafs

        return bool(self._info().type == pafs.FileType.File)

    def is_dir(self) -> bool:
        import pyarrow.fs as pafs

        return bool(self._info().type == pafs.FileType.Directory)

    def exists(self) -> bool:
        import pyarrow.fs as pafs

        return bool(self._info().type != pafs.FileType.NotFound)

    def total_bytes(self) -> int:
        """Bytes of every object under this prefix (one listing)."""
        import pyarrow.fs as pafs

        REQUESTS.add(heads=1)
        selector = pafs.FileSelector(self.key, allow_not_found=True, recursive=True)
        infos = self.fs.get_file_info(selector)
        return sum(int(i.size) for i in infos if i.type == pafs.FileType.File)

    def iterdir(self) -> Generator[ObjectPath, None, None]:
        """The objects and "folders" directly under this prefix."""
        import pyarrow.fs as pafs

        REQUESTS.add(heads=1)
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.key, allow_not_found=True))
        except OSError as e:
            raise _access_error(self, e) from e
        for info in sorted(infos, key=lambda i: i.path):
            yield self / info.base_name

    def glob(self, pattern: str) -> Iterator[ObjectPath]:  # type: ignore[override]
        """Objects directly under this prefix whose name matches ``pattern`` (no ``/``)."""
        if "/" in pattern:
            raise ValueError(f"only patterns of one path component are supported: {pattern!r}")
        return (p for p in self.iterdir() if fnmatch.fnmatchcase(p.name, pattern))

    def read_bytes(self) -> bytes:
        """The whole object (one GET).

        Raises
        ------
        FileNotFoundError
            No such object.
        """
        try:
            with self.fs.open_input_stream(self.key) as f:
                data = f.read()
        except FileNotFoundError:
            raise
        except OSError as e:
            raise _access_error(self, e) from e
        REQUESTS.add(gets=1, nbytes=len(data))
        return bytes(data)

    def read_text(self, encoding: str | None = None, errors: str | None = None) -> str:
        return self.read_bytes().decode(encoding or "utf-8", errors or "strict")

    def open(self, mode: str = "rb", *args: Any, **kwargs: Any) -> Any:
        """A random-access file of the object (``mode`` ``"rb"`` only): every read is a
        ranged GET."""
        if mode != "rb":
            raise StoreWriteError(read_only_message(self))
        return CountedFile(self.fs.open_input_file(self.key))

    def resolve(self, strict: bool = False) -> ObjectPath:
        """The path itself: object stores have no links (``.`` and ``..`` never occur)."""
        return self

    def is_symlink(self) -> bool:
        return False

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise StoreWriteError(read_only_message(self))

    mkdir = write_bytes = write_text = unlink = rename = replace = touch = _refuse


def fetch_tree(root: ObjectPath, path: str) -> dict[str, Any]:
    """Every object under ``root / path``, fetched concurrently, as zarr buffers keyed by
    their path relative to ``root`` (a zarr ``MemoryStore``'s contents)."""
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.fs as pafs
    from zarr.core.buffer import default_buffer_prototype

    folder = root / path
    REQUESTS.add(heads=1)
    infos = folder.fs.get_file_info(pafs.FileSelector(folder.key, recursive=True))
    files = [i for i in infos if i.type == pafs.FileType.File]
    if not files:
        raise FileNotFoundError(f"no objects under {folder}")
    base = len(root.key) + 1
    with ThreadPoolExecutor(8) as pool:
        data = list(pool.map(lambda i: (root / i.path[base:]).read_bytes(), files))
    proto = default_buffer_prototype()
    return {i.path[base:]: proto.buffer.from_bytes(d) for i, d in zip(files, data, strict=True)}


def refuse_write(store: str | os.PathLike[str]) -> None:
    """Raise :class:`~actstore.errors.StoreWriteError` if ``store`` is on object storage
    (a URL, or a local path that one became, ``s3:/bucket``): stores there are read-only.
    """
    text = str(store) if isinstance(store, ObjectPath) else os.fspath(store)
    if "://" in text or text.startswith(tuple(f"{s}:/" for s in SCHEMES)):
        raise StoreWriteError(read_only_message(text))


def read_only_message(path: str | Path) -> str:
    """The one line that refuses writing to an object store."""
    return (
        f"{path}: writing to object storage is not supported yet (stores on s3:// are "
        "read-only); write the store to a local path, then upload it (e.g. `aws s3 sync`)"
    )


class CountedFile:
    """A pyarrow random-access file whose reads are counted in :data:`REQUESTS`."""

    def __init__(self, f: Any) -> None:
        self._f = f

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> CountedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()

    def read(self, nbytes: int | None = None) -> bytes:
        data = self._f.read(nbytes)
        REQUESTS.add(gets=1, nbytes=len(data))
        return bytes(data)

    def read_at(self, nbytes: int, offset: int) -> bytes:
        data = self._f.read_at(nbytes, offset)
        REQUESTS.add(gets=1, nbytes=len(data))
        return bytes(data)


def _access_error(path: ObjectPath, e: OSError) -> StoreError:
    """One line for a failed request (no bucket, no access, no endpoint)."""
    msg = " ".join(str(e).split())[:200]
    bucket = path.key.split("/", 1)[0]
    if "NoSuchBucket" in msg or "does not exist" in msg.lower():
        return StoreNotFoundError(
            f"no actstore store at {path}: bucket {bucket!r} does not exist ({msg})"
        )
    host, scheme = _endpoint()
    where = f"{scheme}://{host}" if host else "AWS S3"
    return StoreError(
        f"cannot read {path} from {where} ({msg}); check the bucket, the credentials and "
        "AWS_ENDPOINT_URL"
    )
