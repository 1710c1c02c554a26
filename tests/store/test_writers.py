"""Writers of a store: one writer per part, a commit that survives kill -9 at every step,
stores created by many processes at once, and drops that touch only their own run."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from actstore.errors import RunExistsError, RunLockedError
from actstore.store import _faults
from actstore.store.arrays import Layout
from actstore.store.claim import drop_run, prepare_run
from actstore.store.commit import commit_run
from actstore.store.info import store_info
from actstore.store.locks import PartLock, claim_part
from actstore.store.manifest import (
    create_store,
    read_manifest,
    remove_store_if_unused,
    store_lock,
    use_store,
)
from actstore.store.part import discard_part
from actstore.store.synthetic import stage_synthetic_run, write_synthetic_run

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the tests fork writers")

IDENTITY = {"synthetic": True, "seed": 0, "sites": ["hidden.0", "hidden.1"], "dtype": "float32"}


def fork(fn: Callable[[], object], *, wait: bool = True) -> int:
    """Run ``fn`` in a forked child process; its exit code (``-9`` if SIGKILLed), or its
    pid with ``wait=False``. The child exits 0, or 1 after printing an exception."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            fn()
        except BaseException:
            traceback.print_exc()
            code = 1
        os._exit(code)
    if not wait:
        return pid
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.fixture
def hold() -> Iterator[Callable[[Callable[[], object]], int]]:
    """``hold(fn)`` forks a child that runs ``fn`` (taking a lock), keeps what it returns
    and blocks; returns the child's pid once ``fn`` is done. ``hold.kill()`` (also at the
    end of the test) SIGKILLs the children."""
    children: list[tuple[int, int]] = []

    def start(fn: Callable[[], object]) -> int:
        ready_r, ready_w = os.pipe()
        hold_r, hold_w = os.pipe()

        def child() -> None:
            os.close(ready_r)
            os.close(hold_w)  # so that the read below ends if the parent dies
            held = fn()  # kept: dropping a lock object releases its lock
            os.write(ready_w, b"1")
            os.read(hold_r, 1)
            del held

        pid = fork(child, wait=False)
        os.close(ready_w)
        os.close(hold_r)
        children.append((pid, hold_w))
        ok = os.read(ready_r, 1) == b"1"
        os.close(ready_r)
        assert ok, "the child failed before holding its lock"
        return pid

    def kill() -> None:  # kill -9: the kernel releases the child's locks
        while children:
            pid, hold_w = children.pop()
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(hold_w)

    start.kill = kill  # type: ignore[attr-defined]
    yield start
    kill()


def stage(store: Path, num_parts: int = 2) -> None:
    stage_synthetic_run(
        store,
        "r",
        n_docs=24,
        tokens_per_doc=6,
        d=8,
        vocab_size=40,
        num_parts=num_parts,
        docs_per_pool=5,
        centroids=True,
        layout=Layout(chunk_rows=8, shard_rows=32),
    )


def _without_times(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {
            k: _without_times(v) for k, v in obj.items() if k not in ("committed_at", "created_at")
        }
    return obj


def tree(store: Path, *, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every file and folder of ``store`` (paths relative to it) with its bytes; commit
    times left out of the JSON files, lock files (they name their last holder) skipped."""
    out: dict[str, bytes] = {}
    for p in sorted(store.rglob("*")):
        rel = p.relative_to(store).as_posix() + ("/" if p.is_dir() else "")
        if rel.startswith((".locks/", ".actstore.lock", *skip)):
            continue
        if p.is_dir():
            out[rel] = b""
        elif p.name in ("actstore.json", "run.json"):
            out[rel] = json.dumps(_without_times(json.loads(p.read_text()))).encode()
        else:
            out[rel] = p.read_bytes()
    return out


def assert_same_tree(got: dict[str, bytes], want: dict[str, bytes], what: str) -> None:
    assert got.keys() == want.keys(), (
        f"{what}: extra {sorted(got.keys() - want.keys())}, "
        f"missing {sorted(want.keys() - got.keys())}"
    )
    differ = [k for k in want if got[k] != want[k]]
    assert not differ, f"{what}: files differ: {differ}"


def commit_armed(store: Path, spec: str) -> int:
    """Commit run ``r`` of ``store`` in a child armed to die at crash point ``spec``."""
    return fork(lambda: (_faults.arm(spec), commit_run(store, "r", 2)))


def test_commit_killed_at_every_step_and_redone_ends_identical(tmp_path: Path) -> None:
    staged = tmp_path / "staged.acts"
    write_synthetic_run(staged, "other", n_docs=3, tokens_per_doc=4, d=4, vocab_size=10)
    stage(staged)
    ref = tmp_path / "ref.acts"
    shutil.copytree(staged, ref)
    # the commit's crash points, counted on an uninterrupted commit
    _faults.arm(str(10**9))
    try:
        assert commit_run(ref, "r", 2) is not None
        names = _faults.crash_point_names()
    finally:
        _faults.arm(None)
    assert [n for n in names if n.startswith("commit.")] == [
        f"commit.{s}" for s in ("tokens", "vocab", "docs", "centroids", "run_json")
    ] + ["commit.manifest", "commit.staging"]
    assert names.count("atomic_write") >= 4  # docs of both parts, run.json, manifest
    want = tree(ref)
    visible = tree(ref, skip=("runs/r/parts",))
    before = tree(staged)
    rng = random.Random(7)
    reps = 3
    for at, name in enumerate(names, start=1):
        for rep in range(reps):
            what = f"killed at crash point {at} ({name}), try {rep}"
            store = tmp_path / f"s{at}-{rep}.acts"
            shutil.copytree(staged, store)
            assert commit_armed(store, str(at)) == -9, what
            # what readers see: the old store, or the run complete (staging aside)
            if "r" in read_manifest(store)["runs"]:
                assert_same_tree(tree(store, skip=("runs/r/parts",)), visible, what)
            else:
                assert read_manifest(store) == read_manifest(staged), what
                assert {k: v for k, v in tree(store).items() if k.startswith("docs/other")} == {
                    k: v for k, v in before.items() if k.startswith("docs/other")
                }, what
            if rep == 1:  # killed again while redoing the commit
                code = commit_armed(store, str(rng.randint(1, len(names))))
                assert code in (0, -9), what
            assert commit_run(store, "r", 2) is not None, what
            assert_same_tree(tree(store), want, what)


def test_commit_leaves_no_temp_file_of_a_killed_commit(tmp_path: Path) -> None:
    store = tmp_path / "s.acts"
    stage(store)
    code = commit_armed(store, "atomic_write#3")
    assert code == -9  # killed between writing run.json's temp file and renaming it
    assert list((store / "runs/r").glob(".run.json.tmp-*"))
    commit_run(store, "r", 2)
    assert not [p for p in store.rglob("*") if ".tmp-" in p.name]


def test_create_store_from_many_processes_at_once(tmp_path: Path) -> None:
    failures: list[str] = []
    for trial in range(10):
        path = tmp_path / f"t{trial}" / "new.acts"
        go_r, go_w = os.pipe()
        err = tmp_path / f"t{trial}.err"

        def create(path: Path = path, err: Path = err, go: tuple[int, int] = (go_r, go_w)) -> None:
            os.close(go[1])
            os.read(go[0], 1)  # all start together
            try:
                create_store(path)
            except Exception as e:
                with open(err, "a") as f:
                    f.write(f"{type(e).__name__}: {e}\n")
                raise

        pids = [fork(create, wait=False) for _ in range(8)]
        os.close(go_r)
        os.close(go_w)
        codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
        if any(codes):
            failures.append(f"trial {trial}: {codes.count(1)} of 8 failed: {err.read_text()}")
        assert read_manifest(path)["runs"] == {}
    assert not failures, "\n".join(failures)


def test_create_store_refuses_a_folder_that_is_not_a_store(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(Exception, match="not a store"):
        create_store(other)
    assert sorted(p.name for p in other.iterdir()) == ["keep.txt"]
    # a folder holding only the lock file of a creator that died is taken over
    half = tmp_path / "half.acts"
    half.mkdir()
    (half / ".actstore.lock").touch()
    assert create_store(half)["runs"] == {}


def test_drop_touches_no_run_with_a_longer_name(tmp_path: Path) -> None:
    store = tmp_path / "s.acts"
    write_synthetic_run(store, "a", n_docs=4, tokens_per_doc=3, d=4, vocab_size=10)
    write_synthetic_run(store, "a.part-0000", n_docs=5, tokens_per_doc=3, d=4, vocab_size=10)
    kept = tree(store, skip=("runs/a/", "docs/a.part-0000.parquet"))
    drop_run(store, "a")
    assert list(read_manifest(store)["runs"]) == ["a.part-0000"]
    assert not (store / "runs/a").exists()
    assert not (store / "docs/a.part-0000.parquet").exists()
    assert_same_tree(tree(store, skip=(".trash",)), _without_manifest_run(kept, "a"), "drop a")
    assert store_info(store)["docs"] == 5


def _without_manifest_run(files: dict[str, bytes], run: str) -> dict[str, bytes]:
    out = dict(files)
    manifest = json.loads(out["actstore.json"])
    del manifest["runs"][run]
    out["actstore.json"] = json.dumps(manifest).encode()
    return out


def test_second_writer_of_a_part_is_refused_until_the_first_dies(tmp_path: Path, hold: Any) -> None:
    store = tmp_path / "s.acts"
    create_store(store)
    pid = hold(lambda: prepare_run(store, "r", IDENTITY, overwrite=False, num_parts=1, shard=0))
    with pytest.raises(RunLockedError) as e:
        prepare_run(store, "r", IDENTITY, overwrite=False, num_parts=1, shard=0)
    msg = str(e.value)
    assert "\n" not in msg
    assert f"process {pid} on host {socket.gethostname()}" in msg
    assert "part 0 of run 'r'" in msg
    assert "wait for that job to end" in msg
    # another part of the same run is free
    prepare_run(store, "r", IDENTITY, overwrite=False, num_parts=2, shard=1).lock.release()
    hold.kill()  # kill -9: the kernel releases the lock
    with prepare_run(store, "r", IDENTITY, overwrite=False, num_parts=1, shard=0) as done:
        assert done is None


def test_writer_with_other_arguments_is_refused_while_another_part_is_claimed(
    tmp_path: Path, hold: Any
) -> None:
    store = tmp_path / "s.acts"
    create_store(store)
    hold(lambda: prepare_run(store, "r", IDENTITY, overwrite=False, num_parts=2, shard=1))
    other = {**IDENTITY, "seed": 1}
    for overwrite in (False, True):
        with pytest.raises(RunLockedError, match="with other arguments"):
            prepare_run(store, "r", other, overwrite=overwrite, num_parts=2, shard=0)
    # a fellow shard of the same job goes ahead
    prepare_run(store, "r", IDENTITY, overwrite=False, num_parts=2, shard=0).lock.release()


def test_overwrite_takes_the_locks_of_every_part(tmp_path: Path, hold: Any) -> None:
    store = tmp_path / "s.acts"
    write_synthetic_run(store, "r", n_docs=6, tokens_per_doc=3, d=4, vocab_size=10, num_parts=2)
    committed = tree(store)

    def hold_part_1() -> PartLock:
        with store_lock(store):
            return claim_part(store, "r", 1, identity=IDENTITY)

    pid = hold(hold_part_1)
    other = {**IDENTITY, "seed": 1}
    with pytest.raises(RunLockedError, match=f"process {pid} on host"):
        prepare_run(store, "r", other, overwrite=True, num_parts=1, shard=0)
    with pytest.raises(RunLockedError, match=f"process {pid} on host"):
        drop_run(store, "r")
    assert_same_tree(tree(store), committed, "refused overwrite")
    with pytest.raises(RunExistsError, match="--overwrite"):
        prepare_run(store, "r", other, overwrite=False, num_parts=1, shard=0)
    hold.kill()
    with prepare_run(store, "r", other, overwrite=True, num_parts=1, shard=0) as done:
        assert done is None
        assert read_manifest(store)["runs"] == {}
        assert not (store / "runs/r").exists()
        assert not list((store / "docs").iterdir())
        assert not (store / ".trash").exists()


def test_discarding_a_part_never_deletes_a_committed_run(tmp_path: Path) -> None:
    store = tmp_path / "s.acts"
    write_synthetic_run(store, "r", n_docs=6, tokens_per_doc=3, d=4, vocab_size=10)
    committed = tree(store)
    discard_part(store, "r", 0)
    assert_same_tree(tree(store), committed, "discard_part on a committed run")


def test_discarding_a_part_keeps_the_run_folder_another_writer_claimed(
    tmp_path: Path, hold: Any
) -> None:
    store = tmp_path / "s.acts"
    stage(store)
    hold(lambda: prepare_run(store, "r", IDENTITY, overwrite=False, num_parts=3, shard=2))
    discard_part(store, "r", 0)
    discard_part(store, "r", 1)
    assert (store / "runs/r").is_dir()  # part 2's writer will write here
    hold.kill()
    discard_part(store, "r", 2)
    assert not (store / "runs/r").exists()


def test_a_drop_killed_midway_leaves_nothing_behind(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh.acts"
    write_synthetic_run(fresh, "r", n_docs=5, tokens_per_doc=3, d=4, vocab_size=10)
    store = tmp_path / "s.acts"
    write_synthetic_run(
        store, "r", n_docs=9, tokens_per_doc=3, d=4, vocab_size=10, num_parts=3, centroids=True
    )
    assert fork(lambda: (_faults.arm("drop.manifest"), drop_run(store, "r"))) == -9
    assert read_manifest(store)["runs"] == {}
    assert (store / "runs/r/arrays/part-0002").is_dir()  # killed before moving the files
    # the next run of that name (one part, no centroids) finds nothing of the old one
    with prepare_run(store, "r", IDENTITY, overwrite=False, num_parts=1) as done:
        assert done is None
    write_synthetic_run(store, "r", n_docs=5, tokens_per_doc=3, d=4, vocab_size=10)
    assert_same_tree(tree(store, skip=(".trash",)), tree(fresh), "the run after the drop")
    # trash of a drop killed before deleting it goes at the next drop on this host
    write_synthetic_run(store, "x", n_docs=2, tokens_per_doc=3, d=4, vocab_size=10)
    assert fork(lambda: (_faults.arm("drop.trash"), drop_run(store, "x"))) == -9
    assert any((store / ".trash").iterdir())
    drop_run(store, "r")
    assert not (store / ".trash").exists()
    assert read_manifest(store)["runs"] == {}


def test_an_unused_new_store_is_removed_only_when_no_job_uses_it(tmp_path: Path, hold: Any) -> None:
    store = tmp_path / "new.acts"

    def use() -> object:
        using = use_store(store)
        using.__enter__()
        return using

    hold(use)  # another job on the same new store (e.g. the one a refused job lost to)
    with use_store(store):
        pass
    assert not remove_store_if_unused(store)
    assert read_manifest(store)["runs"] == {}
    hold.kill()
    assert remove_store_if_unused(store)
    assert not store.exists()
    # a store with a run stays, used or not
    write_synthetic_run(store, "r", n_docs=2, tokens_per_doc=3, d=4, vocab_size=10)
    assert not remove_store_if_unused(store)
    assert list(read_manifest(store)["runs"]) == ["r"]


def test_a_resumed_part_removes_zarr_temp_files_of_a_killed_writer(tmp_path: Path) -> None:
    """zarr writes metadata as ``<name>.<uuid>.partial`` and renames it; a writer killed in
    between leaves the temp file, which the resumed part deletes (the committed run holds
    only its own files)."""
    import numpy as np

    from actstore.store.arrays import Layout
    from actstore.store.manifest import create_store
    from actstore.store.part import PartWriter

    store = tmp_path / "s.acts"
    create_store(store)
    kw: dict[str, Any] = {"sites": {"hidden.0": 4}, "dtype": "float32", "layout": Layout(4, 8)}
    part = PartWriter(store, "r", 0, resume=None, **kw)
    tokens = {
        k: np.zeros(3, t)
        for k, t in (("doc_id", np.int64), ("pos", np.int32), ("token_id", np.int32))
    }
    tokens |= {"start": np.zeros(3, np.int32), "end": np.zeros(3, np.int32)}
    tokens |= {"special": np.zeros(3, bool)}
    part.add_batch({"hidden.0": np.ones((3, 4), np.float32)}, tokens)
    progress = part.checkpoint(consumed=1, counts={}, timings={})
    debris = store / "runs/r/arrays/part-0000/hidden.0/zarr.0123abcd.partial"
    debris.write_text("{")
    PartWriter(store, "r", 0, resume=progress, **kw)
    assert not debris.exists()
    assert (store / "runs/r/arrays/part-0000/hidden.0/zarr.json").is_file()
