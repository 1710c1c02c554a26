"""Writing a store that cannot be written: one line, and no temporary file left behind."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from actstore.errors import StoreWriteError
from actstore.store import arrays, manifest, writable
from actstore.store.arrays import Layout, RowArrayWriter
from actstore.store.manifest import atomic_write_json
from actstore.store.results import write_result
from actstore.store.synthetic import write_synthetic_run
from actstore.store.writable import check_writable, write_error, write_errors

ENOSPC = OSError(errno.ENOSPC, "No space left on device")


class FullDisk:
    """``open`` for writing whose files take ``room`` bytes, then fail with ENOSPC."""

    def __init__(self, room: int) -> None:
        self.room = room

    def __call__(self, path: Any, mode: str = "r", *args: Any, **kw: Any) -> Any:
        f = open(path, mode, *args, **kw)  # noqa: SIM115 - returned to the caller
        if "w" not in mode:
            return f
        disk = self

        class File:
            def write(self, data: Any) -> int:
                n = memoryview(data).nbytes
                if n > disk.room:
                    raise OSError(errno.ENOSPC, "No space left on device", str(path))
                disk.room -= n
                return f.write(data)

            def __getattr__(self, name: str) -> Any:
                return getattr(f, name)

            def __enter__(self) -> Any:
                return self

            def __exit__(self, *exc: object) -> None:
                f.close()

        return File()


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp" in p.name or ".part" in p.name]


def test_write_error_messages(tmp_path: Path) -> None:
    store = tmp_path / "s.acts"
    full = write_error(OSError(errno.ENOSPC, "No space", str(store / "x")), store)
    assert isinstance(full, StoreWriteError)
    assert "no space left" in str(full)
    assert "run the same command again" in str(full)
    ro = write_error(OSError(errno.EROFS, "Read-only file system", str(store)), store)
    assert "read-only" in str(ro)
    assert "writable --store" in str(ro)
    # a permission error elsewhere (a model file) is not the store's
    assert write_error(OSError(errno.EACCES, "denied", "/models/x.bin"), store) is None
    assert write_error(OSError(errno.ENOENT, "missing", str(store)), store) is None
    with pytest.raises(FileNotFoundError), write_errors(store):
        raise FileNotFoundError(errno.ENOENT, "missing")
    with pytest.raises(StoreWriteError, match="no space left"), write_errors(store):
        raise ENOSPC


def test_check_writable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    check_writable(tmp_path / "new.acts")  # made if missing
    assert list((tmp_path / "new.acts").iterdir()) == []  # the probe is gone
    monkeypatch.setattr(writable, "open", FullDisk(100), raising=False)
    with pytest.raises(StoreWriteError, match="no space left"):
        check_writable(tmp_path / "new.acts")
    assert list((tmp_path / "new.acts").iterdir()) == []

    def read_only(*args: Any, **kw: Any) -> Any:
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "new.acts"))

    monkeypatch.setattr(writable, "open", read_only, raising=False)
    with pytest.raises(StoreWriteError, match="read-only"):
        check_writable(tmp_path / "new.acts")


def test_full_disk_leaves_no_temp_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = RowArrayWriter(tmp_path, "a", 6, "float32", Layout(chunk_rows=4, shard_rows=12))
    writer.append(np.ones((12, 6), np.float32))  # one whole shard
    monkeypatch.setattr(arrays, "open", FullDisk(150), raising=False)
    with pytest.raises(OSError, match="No space"):
        writer.append(np.ones((12, 6), np.float32))
    assert temp_files(tmp_path) == []
    assert [p.name for p in (tmp_path / "a/c").rglob("*") if p.is_file()] == ["0"]


def test_full_disk_leaves_no_temp_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest, "open", FullDisk(10), raising=False)
    with pytest.raises(OSError, match="No space"):
        atomic_write_json(tmp_path / "actstore.json", {"format": "actstore", "runs": {}})
    assert list(tmp_path.iterdir()) == []


def test_full_disk_while_saving_a_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "s.acts"
    write_synthetic_run(store, "r", n_docs=2, tokens_per_doc=3)

    def no_space(*args: Any, **kw: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("actstore.store.results.pq.write_table", no_space)
    with pytest.raises(StoreWriteError, match="no space left"):
        write_result(store, "res", pa.table({"x": [1]}), meta={"analysis": "test"})
    assert not (store / "results/res").exists()
    assert list((store / "results/.versions").iterdir()) == []
