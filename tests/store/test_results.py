"""Saved results on disk: atomic for readers, validated names, nothing left by a killed save."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import actstore
from actstore.errors import ConfigError, ResultNotFoundError
from actstore.store.results import list_results, read_result, result_dir, write_result
from actstore.store.synthetic import write_synthetic_run


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "r.acts"
    write_synthetic_run(path, "a", n_docs=4, tokens_per_doc=5, d=4, vocab_size=20)
    return path


def test_write_read_replace(store: Path) -> None:
    write_result(store, "a", pa.table({"x": [1, 2]}), meta={"k": 1}, arrays={"w": np.eye(2)})
    table, meta, arrays = read_result(store, "a")
    assert table.column("x").to_pylist() == [1, 2]
    assert meta["k"] == 1
    np.testing.assert_array_equal(arrays["w"], np.eye(2))
    with pytest.raises(ConfigError, match="pass --overwrite"):
        write_result(store, "a", pa.table({"x": [3]}), meta={"k": 2})
    write_result(store, "a", pa.table({"x": [3]}), meta={"k": 2}, overwrite=True)
    table, meta, arrays = read_result(store, "a")
    assert table.column("x").to_pylist() == [3]
    assert arrays == {}
    # old versions are pruned: at most the current and the previous one stay
    versions = list((store / "results" / ".versions").glob("a-*"))
    assert 1 <= len(versions) <= 2
    assert result_dir(store, "a").is_symlink()


def test_names_differing_in_case_are_refused(store: Path) -> None:
    write_result(store, "abc", pa.table({"x": [1]}), meta={})
    with pytest.raises(ConfigError, match="would clash with saved result 'abc'"):
        write_result(store, "ABC", pa.table({"x": [1]}), meta={})
    with actstore.open(store) as s:
        assert s.sql("SELECT count(*) FROM abc").fetchall() == [(1,)]


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "runs", ""])
def test_bad_names_are_refused_on_read_and_write(store: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="is not allowed"):
        write_result(store, name, pa.table({"x": [1]}), meta={})
    with pytest.raises(ConfigError, match="is not allowed"):
        read_result(store, name)
    with pytest.raises(ResultNotFoundError):
        read_result(store, "nothing_here")


def test_readers_never_see_a_missing_or_torn_result(store: Path) -> None:
    """A reader racing 30 saves of the same name always reads a whole result."""
    write_result(store, "r", pa.table({"x": np.zeros(1000)}), meta={"v": 0})
    stop = threading.Event()
    errors: list[str] = []

    def read() -> None:
        while not stop.is_set():
            try:
                table, meta, _ = read_result(store, "r")
                xs = set(table.column("x").to_pylist())
                if xs != {float(meta["v"])}:
                    errors.append(f"torn: meta {meta['v']} vs values {xs}")
            except Exception as e:
                errors.append(repr(e))

    t = threading.Thread(target=read)
    t.start()
    try:
        for v in range(1, 31):
            table = pa.table({"x": np.full(1000, float(v))})
            write_result(store, "r", table, meta={"v": v}, overwrite=True)
    finally:
        stop.set()
        t.join()
    assert errors == []


def test_killed_save_is_invisible(store: Path) -> None:
    """A save killed after writing its data (before publishing) leaves nothing visible, and
    SQL over the store still works."""
    code = (
        "import os, signal, numpy as np, pyarrow as pa\n"
        "import actstore.store.results as r\n"
        "def die(*a, **k):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "r.os.symlink = die\n"
        f"r.write_result({str(store)!r}, 'killed', pa.table({{'x': [1]}}), meta={{}})\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=dict(os.environ), check=False)
    assert proc.returncode == -9
    assert list((store / "results" / ".versions").glob("killed-*"))  # its data was written
    assert "killed" not in list_results(store)
    with actstore.open(store) as s:
        assert "killed" not in s.tables
        assert s.sql("SELECT count(*) FROM runs").fetchall()[0][0] >= 1
    write_result(store, "killed", pa.table({"x": [2]}), meta={})  # the name is still free
    assert read_result(store, "killed")[0].column("x").to_pylist() == [2]
