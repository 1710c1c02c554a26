"""A store that cannot be written: a read-only store fails before the model loads, a full
disk is one line, and the same command re-run after space is freed ends with the store
an uninterrupted run makes."""

from __future__ import annotations

import errno
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from actstore.cli import main
from actstore.store.format import LOCK_NAME, USERS_NAME

from .test_extract import run, write_corpus
from .test_resume import ARGS, assert_same, make_corpus, snapshot


def is_temp(path: Path) -> bool:
    """A temporary-looking file: hidden (but the store's lock and users files), or a zarr
    ``.partial``."""
    return (path.name.startswith(".") and path.name not in {LOCK_NAME, USERS_NAME}) or (
        ".partial" in path.name
    )


def temp_files(store: Path, *, staging: bool = True) -> list[str]:
    """Temporary-looking files of ``store`` (outside the staging of unfinished parts
    unless ``staging``)."""
    return [
        str(p.relative_to(store))
        for p in store.rglob("*")
        if p.is_file() and is_temp(p) and (staging or "parts" not in p.relative_to(store).parts)
    ]


def extract_argv(model: Path, data: Path, store: Path) -> list[str]:
    return ["extract", "--model", str(model), "--data", str(data), "--store", str(store), *ARGS]


@pytest.fixture(scope="module")
def clean(
    tiny_model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, dict[str, Any]]:
    """The corpus, a store an uninterrupted job made, and its snapshot."""
    root = tmp_path_factory.mktemp("full")
    data = make_corpus(root / "c.jsonl")
    store = root / "clean.acts"
    assert main(extract_argv(tiny_model_dirs["bert"], data, store)) == 0
    return data, store, snapshot(store)


def test_read_only_store_fails_before_the_model_loads(
    tiny_model_dirs: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from actstore.extract import model
    from actstore.store import writable

    data = write_corpus(tmp_path / "c.jsonl", ["a dog barks"])
    store = tmp_path / "s.acts"
    run(tiny_model_dirs["bert"], data, store, sites="hidden.1")

    def read_only(path: Any, *args: Any, **kw: Any) -> Any:
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    def no_load(*args: Any, **kw: Any) -> Any:
        raise AssertionError("the model was loaded before the store was checked")

    monkeypatch.setattr(writable, "open", read_only, raising=False)
    monkeypatch.setattr(model, "load_model", no_load)
    argv = extract_argv(tiny_model_dirs["bert"], data, store)
    assert main([*argv, "--run", "other"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert "read-only" in err[0]
    assert str(store) in err[0]
    assert temp_files(store) == []


# Runs the command line with shard files limited to `room` bytes in all, then ENOSPC.
_FULL_DISK_MAIN = """
import errno, sys
from actstore.store import arrays

room = [int(sys.argv[1])]

def full_disk_open(path, mode="r", *args, **kw):
    f = open(path, mode, *args, **kw)
    if "w" not in mode:
        return f
    real_write = f.write
    def write(data):
        n = memoryview(data).nbytes
        if n > room[0]:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        room[0] -= n
        return real_write(data)
    f.write = write
    return f

arrays.open = full_disk_open
from actstore.cli import main
from actstore.store.format import LOCK_NAME, USERS_NAME
sys.exit(main(sys.argv[2:]))
"""


def test_full_disk_then_rerun_equals_a_clean_run(
    tiny_model_dirs: dict[str, Path], clean: tuple[Path, Path, dict[str, Any]], tmp_path: Path
) -> None:
    data, ref_store, ref = clean
    store = tmp_path / "s.acts"
    shard_bytes = sum(p.stat().st_size for p in ref_store.glob("runs/r/arrays/part-*/*/c/*/0"))
    argv = extract_argv(tiny_model_dirs["bert"], data, store)
    proc = subprocess.run(
        [sys.executable, "-c", _FULL_DISK_MAIN, str(shard_bytes // 2), *argv],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1, proc.stderr
    assert "no space left" in err[0]
    assert "run the same command again" in err[0]
    assert temp_files(store, staging=False) == []
    assert main(argv) == 0  # space freed: the same command resumes and finishes
    assert temp_files(store) == []
    assert_same(snapshot(store), ref)


def _can_mount_tmpfs(where: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    mount = f"mount -t tmpfs -o size=64k tmpfs '{where}'"
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", mount],
        capture_output=True,
        timeout=30,
        check=False,
    )
    return probe.returncode == 0


@pytest.mark.slow
def test_full_tmpfs_then_rerun_equals_a_clean_run(
    tiny_model_dirs: dict[str, Path], clean: tuple[Path, Path, dict[str, Any]], tmp_path: Path
) -> None:
    """A real full disk: a small tmpfs (in a user and mount namespace of its own), too
    small for the store; then the same tmpfs grown, the same command again; then the
    same file system read-only, where a new job fails before loading its model."""
    data, ref_store, ref = clean
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if not _can_mount_tmpfs(mnt):
        pytest.skip("cannot mount a tmpfs in a user namespace here")
    pages = sum(-(-p.stat().st_size // 4096) for p in ref_store.rglob("*") if p.is_file())
    store, out = mnt / "s.acts", tmp_path / "out.acts"
    cli = f"'{sys.executable}' -m actstore.cli"
    argv = " ".join(f"'{a}'" for a in extract_argv(tiny_model_dirs["bert"], data, store)[1:])
    script = f"""
mount -t tmpfs -o size={pages * 2}k tmpfs '{mnt}'
{cli} extract {argv} 2> '{tmp_path}/full.err'; echo $? > '{tmp_path}/full.rc'
find '{store}' -type f > '{tmp_path}/full.files'
mount -o remount,size=64m '{mnt}'
{cli} extract {argv} 2> '{tmp_path}/again.err'; echo $? > '{tmp_path}/again.rc'
cp -a '{store}' '{out}'
mount -o remount,ro '{mnt}'
{cli} extract {argv} --run other --model /no/such/model 2> '{tmp_path}/ro.err'
echo $? > '{tmp_path}/ro.rc'
"""
    subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
        timeout=600,
        check=True,
    )

    def result(name: str) -> tuple[int, list[str]]:
        code = int((tmp_path / f"{name}.rc").read_text())
        return code, (tmp_path / f"{name}.err").read_text().strip().splitlines()

    code, err = result("full")
    assert code == 1, err
    assert len(err) == 1, err
    assert "no space left" in err[0]
    left = [Path(f) for f in (tmp_path / "full.files").read_text().split()]
    assert [f for f in left if is_temp(f) and "parts" not in f.relative_to(store).parts] == []
    code, err = result("again")
    assert code == 0, err
    assert temp_files(out) == []
    assert_same(snapshot(out), ref)
    code, err = result("ro")
    assert code == 1, err
    assert len(err) == 1, err
    assert "read-only" in err[0]  # the store was checked before the (missing) model
