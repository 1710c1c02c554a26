"""Extraction into a store on object storage (``--store s3://...``) against a real
S3-compatible server: the store equals one written to a local disk, parts written on
different machines are committed once, a job killed anywhere and run again ends in the
same store, and racing commits never lose a run or tear the manifest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import actstore
from actstore.errors import ConfigError, StoreError
from actstore.extract.config import ExtractConfig
from actstore.extract.runner import extract
from actstore.store._bucket import Bucket
from actstore.store._faults import crash_point_names
from actstore.store._objects import store_path
from tests.conftest import one_torch_thread

from ..extract.test_resume import ARGS, assert_same, make_corpus, snapshot
from .conftest import BUCKET, S3

pytestmark = pytest.mark.slow


def _config(model: Path, data: Path, store: str, staging: Path | None, **kw: Any) -> ExtractConfig:
    """The configuration of ``tests.extract.test_resume.ARGS`` (bfloat16, centroids,
    two sites, small pools and shards)."""
    options: dict[str, Any] = {
        "run": "r",
        "sites": "hidden.0,hidden.2",
        "batch_tokens": 96,
        "pool_batches": 3,
        "dtype": "bfloat16",
        "centroids": True,
        "device": "cpu",
        "quiet": True,
        "chunk_rows": 8,
        "shard_rows": 32,
    }
    options.update(kw)
    return ExtractConfig(
        model=str(model),
        data=str(data),
        store=store,
        staging=None if staging is None else str(staging),
        **options,
    )


def download(s3: S3, url: str, dest: Path) -> Path:
    """The objects of the store ``url``, copied into the folder ``dest``."""
    import pyarrow.fs as pafs

    pafs.copy_files(
        url.removeprefix("s3://"),
        str(dest),
        source_filesystem=s3.fs,
        destination_filesystem=pafs.LocalFileSystem(),
    )
    return dest


def keys(s3: S3, url: str) -> list[str]:
    import pyarrow.fs as pafs

    base = url.removeprefix("s3://")
    infos = s3.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    return sorted(i.path[len(base) + 1 :] for i in infos if i.type == pafs.FileType.File)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("s3w") / "c.jsonl")


@pytest.fixture(scope="module")
def local_run(
    tiny_model_dirs: dict[str, Path], data: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """What a local store holds for the run (one part)."""
    store = tmp_path_factory.mktemp("s3w") / "local.acts"
    extract(_config(tiny_model_dirs["bert"], data, str(store), None))
    return snapshot(store)


def _two_parts(model: Path, data: Path, store: Path) -> dict[str, Any]:
    for shard in (0, 1):
        extract(_config(model, data, str(store), None, num_shards=2, shard=shard))
    return snapshot(store)


@pytest.fixture(scope="module")
def local_run_2(
    tiny_model_dirs: dict[str, Path], data: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The same in two parts (``--num-shards 2``)."""
    return _two_parts(tiny_model_dirs["bert"], data, tmp_path_factory.mktemp("s3w") / "local2.acts")


@pytest.fixture(scope="module")
def local_run_2_one_thread(
    tiny_model_dirs: dict[str, Path], data: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The two parts with torch on one thread, as Ray tasks run them."""
    with one_torch_thread():
        store = tmp_path_factory.mktemp("s3w1") / "local2.acts"
        return _two_parts(tiny_model_dirs["bert"], data, store)


def test_extract_to_s3_equals_local(
    s3: S3,
    tiny_model_dirs: dict[str, Path],
    data: Path,
    local_run: dict[str, Any],
    tmp_path: Path,
) -> None:
    url = f"s3://{BUCKET}/w/one.acts"
    staging = tmp_path / "staging"
    result = extract(_config(tiny_model_dirs["bert"], data, url, staging))
    assert result.status == "committed"
    assert str(result.store) == url
    assert_same(snapshot(download(s3, url, tmp_path / "copy")), local_run)
    names = keys(s3, url)
    assert not [k for k in names if "/parts/" in k], "the bucket's staging was not deleted"
    assert json.loads((tmp_path / "copy/actstore.json").read_text())["runs"].keys() == {"r"}
    assert not (staging / "runs/r").exists(), "the local copy was not deleted"
    with actstore.open(url) as store:  # read in place
        got = store.sql("SELECT count(*) AS n FROM tokens WHERE run = 'r'").fetchall()
        assert got == [(local_run["counts"]["rows"],)]
    again = extract(_config(tiny_model_dirs["bert"], data, url, tmp_path / "elsewhere"))
    assert again.status == "already-committed"
    assert again.rows == result.rows
    assert keys(s3, url) == names  # nothing written again
    with pytest.raises(actstore.errors.RunExistsError, match="other") as exc:
        extract(_config(tiny_model_dirs["bert"], data, url, staging, centroids=False))
    assert "--overwrite to replace" not in str(exc.value)  # refused on s3://
    assert str(exc.value).endswith(
        "pick another --run (a run in object storage is not replaced: no --overwrite)"
    )


def test_parts_on_two_machines_commit_once(
    s3: S3,
    tiny_model_dirs: dict[str, Path],
    data: Path,
    local_run_2: dict[str, Any],
    tmp_path: Path,
) -> None:
    """Each shard on its own "machine" (its own staging folder): the last to finish
    fetches the other's staging from the bucket and commits."""
    url = f"s3://{BUCKET}/w/two.acts"
    model = tiny_model_dirs["bert"]
    first = extract(_config(model, data, url, tmp_path / "m1", num_shards=2, shard=1))
    assert first.status == "part-complete"
    assert "actstore.json" not in keys(s3, url)  # nothing visible yet
    assert not any("part-0000" in k for k in keys(s3, url))
    from actstore.cli import main

    assert main(["commit", url, "r", "--num-shards", "2", "--staging", str(tmp_path / "c")]) == 1
    second = extract(_config(model, data, url, tmp_path / "m0", num_shards=2, shard=0))
    assert second.status == "committed"
    assert_same(snapshot(download(s3, url, tmp_path / "copy")), local_run_2)
    assert not [k for k in keys(s3, url) if "/parts/" in k]
    # machine 1 runs its part again: the run is there
    third = extract(_config(model, data, url, tmp_path / "m1", num_shards=2, shard=1))
    assert third.status == "already-committed"


def _cli(
    model: Path, data: Path, url: str, staging: Path, crash: str | None, *extra: str
) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.pop("ACTSTORE_CRASH_AT", None)
    if crash is not None:
        env["ACTSTORE_CRASH_AT"] = crash
    cmd = [sys.executable, "-m", "actstore.cli", "extract", "--model", str(model)]
    cmd += ["--data", str(data), "--store", url, "--staging", str(staging), *ARGS, *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


#: The kill -9 chain: each job resumes what the one before left and is killed at the next
#: step (a numbered crash point counts every point; a name kills at its first pass).
CHAIN = [
    ("a", "4"),  # mid-run, after a few batches
    ("a", "publish.part"),  # the part uploaded (progress.json last), not committed
    ("b", "commit.manifest"),  # on another machine: the part fetched, committed locally
    ("b", "publish.run"),  # the run's files uploaded, the manifest not yet replaced
    ("b", "publish.manifest"),  # visible; the bucket's staging not yet deleted
    ("b", None),  # runs to the end
]


def test_killed_then_resumed_against_the_bucket(
    s3: S3,
    tiny_model_dirs: dict[str, Path],
    data: Path,
    local_run: dict[str, Any],
    tmp_path: Path,
) -> None:
    """A job killed at every step of writing and publishing, each time resumed (from the
    second machine's staging after the part was uploaded), ends in the store a local
    disk gets; the run is invisible until the manifest names it."""
    import signal

    url = f"s3://{BUCKET}/w/kill.acts"
    model = tiny_model_dirs["bert"]
    for machine, crash in CHAIN:
        proc = _cli(model, data, url, tmp_path / machine, crash)
        _, err = proc.communicate(timeout=300)
        if crash is None:
            assert proc.returncode == 0, err.decode()[-2000:]
            break
        assert proc.returncode == -signal.SIGKILL, f"{crash}: {err.decode()[-2000:]}"
        visible = "actstore.json" in keys(s3, url)
        assert visible == (crash == "publish.manifest"), crash
    assert_same(snapshot(download(s3, url, tmp_path / "copy")), local_run)
    assert not [k for k in keys(s3, url) if "/parts/" in k]
    assert not (tmp_path / "b/runs/r").exists()


def test_a_part_completed_by_a_dead_job_is_uploaded_by_the_committer(
    s3: S3,
    tiny_model_dirs: dict[str, Path],
    data: Path,
    local_run_2: dict[str, Any],
    tmp_path: Path,
) -> None:
    """Two shards share one staging folder; shard 0's job dies after its part is complete
    there but before its upload. Shard 1's job must not commit a run without part 0's
    arrays: it uploads part 0 itself (its lock is free) and then commits."""
    import signal

    url = f"s3://{BUCKET}/w/dead.acts"
    model = tiny_model_dirs["bert"]
    shared = tmp_path / "shared"
    proc = _cli(model, data, url, shared, "publish.start", "--num-shards", "2", "--shard", "0")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    assert not [k for k in keys(s3, url) if "part-0000" in k]  # nothing of it uploaded
    proc = _cli(model, data, url, shared, None, "--num-shards", "2", "--shard", "1")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert "committed" in (out + err).decode()
    assert_same(snapshot(download(s3, url, tmp_path / "copy")), local_run_2)


def test_crash_points_of_publishing_are_passed(
    s3: S3, tiny_model_dirs: dict[str, Path], data: Path, tmp_path: Path
) -> None:
    """The crash points the kill test names exist, in this order."""
    from actstore.store import _faults

    _faults.arm("never#1000000")
    try:
        extract(_config(tiny_model_dirs["bert"], data, f"s3://{BUCKET}/w/points.acts", tmp_path))
        names = [n for n in crash_point_names() if n.startswith(("publish.", "commit.manifest"))]
    finally:
        _faults.arm(None)
    assert names == [
        "publish.start",
        "publish.part",
        "commit.manifest",
        "publish.commit",
        "publish.run",
        "publish.manifest",
    ]


def test_racing_manifest_writers_lose_nothing(s3: S3) -> None:
    """A conditional PUT made from a stale manifest is refused and redone on the new one;
    writers racing in threads all land their runs, and every manifest read is whole."""
    url = f"s3://{BUCKET}/w/race.acts"
    bucket = Bucket(store_path(url))  # type: ignore[arg-type]
    entry = {"committed_at": "2026-12-02T00:00:00Z", "n_rows": 1, "n_docs": 1, "num_parts": 1}
    assert bucket.manifest() == (None, None)
    _stale, etag = bucket.manifest()
    assert bucket.update_manifest(lambda m: m["runs"].setdefault("a", entry) is entry)
    fresh: dict[str, Any] = {"format": "actstore", "version": 1, "runs": {"b": entry}}
    assert not bucket.put_manifest(fresh, etag)  # created meanwhile: refused
    m, etag = bucket.manifest()
    assert m is not None
    assert set(m["runs"]) == {"a"}
    assert bucket.put_manifest({**m, "runs": {**m["runs"], "b": entry}}, etag)
    assert not bucket.put_manifest({**m, "runs": {"c": entry}}, etag)  # stale ETag
    m, _ = bucket.manifest()
    assert m is not None
    assert set(m["runs"]) == {"a", "b"}

    names = [f"t{i}" for i in range(8)]
    seen: list[set[str]] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            got, _ = bucket.manifest()  # parsed and checked: a torn one raises
            assert got is not None
            seen.append(set(got["runs"]))

    def writer(name: str) -> None:
        bucket.update_manifest(lambda m: m["runs"].setdefault(name, entry) is entry)

    r = threading.Thread(target=reader)
    r.start()
    threads = [threading.Thread(target=writer, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    r.join()
    m, _ = bucket.manifest()
    assert m is not None
    assert set(m["runs"]) == {"a", "b", *names}
    assert all(s >= {"a", "b"} for s in seen)
    assert seen


def test_two_jobs_commit_the_same_run_once(
    s3: S3,
    tiny_model_dirs: dict[str, Path],
    data: Path,
    local_run: dict[str, Any],
    tmp_path: Path,
) -> None:
    """Two machines run the same one-part job at once: one commits, the other finds it
    committed; the store is the run, whole."""
    url = f"s3://{BUCKET}/w/same.acts"
    model = tiny_model_dirs["bert"]
    procs = [_cli(model, data, url, tmp_path / f"m{i}", None) for i in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-2000:]
    assert_same(snapshot(download(s3, url, tmp_path / "copy")), local_run)


def test_bad_options_and_bad_objects_are_one_line(
    s3: S3, tiny_model_dirs: dict[str, Path], data: Path, tmp_path: Path
) -> None:
    model = tiny_model_dirs["bert"]
    with pytest.raises(ConfigError, match="--overwrite: replacing a run in a store on object"):
        _config(model, data, f"s3://{BUCKET}/w/x.acts", tmp_path, overwrite=True)
    with pytest.raises(ConfigError, match="--staging: only used with a store on object"):
        _config(model, data, str(tmp_path / "x.acts"), tmp_path)
    # a part staged in the bucket with an object whose name leaves its folder
    url = f"s3://{BUCKET}/w/crafted.acts"
    base = "w/crafted.acts/runs/r/parts/part-0000"
    bucket = Bucket(store_path(url))  # type: ignore[arg-type]
    put = bucket.client.put_object
    put(Bucket=BUCKET, Key=f"{base}/progress.json", Body=b'{"complete": true}')
    put(Bucket=BUCKET, Key=f"{base}/tokens/../../../../../escape", Body=b"x")
    with pytest.raises(StoreError, match="would leave its folder"):
        extract(_config(model, data, url, tmp_path / "st"))
    assert not (tmp_path / "st" / "escape").exists()
    # a complete part whose checkpoint lists a file outside its folder
    url = f"s3://{BUCKET}/w/crafted2.acts"
    base = "w/crafted2.acts/runs/r/parts/part-0000"
    bad = {"complete": True, "token_files": ["../../../../../../etc/passwd"], "doc_files": []}
    put(Bucket=BUCKET, Key=f"{base}/progress.json", Body=json.dumps(bad).encode())
    with pytest.raises(StoreError, match=r"progress.json is damaged .*'../../../../../../etc/"):
        extract(_config(model, data, url, tmp_path / "st2"))


def test_ray_parts_into_a_bucket(
    s3: S3,
    tiny_model_dirs: dict[str, Path],
    data: Path,
    local_run_2_one_thread: dict[str, Any],
    tmp_path: Path,
) -> None:
    """``--engine ray`` into ``s3://``: two tasks on a real local Ray instance (started by
    the job: its workers inherit the AWS environment), committed once, equal to the two
    part jobs written to a local disk (on one thread each, as the tasks run)."""
    pytest.importorskip("ray")
    url = f"s3://{BUCKET}/w/ray.acts"
    cfg = _config(tiny_model_dirs["bert"], data, url, tmp_path / "staging", engine="ray", workers=2)
    result = extract(cfg)
    assert result.status == "committed"
    assert str(result.store) == url
    assert_same(snapshot(download(s3, url, tmp_path / "copy")), local_run_2_one_thread)
    assert not [k for k in keys(s3, url) if "/parts/" in k]


def test_no_bucket_or_no_server_is_one_line_before_the_model_loads(
    s3: S3, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model path does not exist: the bucket is checked first."""
    missing = tmp_path / "no-model"
    with pytest.raises(StoreError, match=r"cannot read actstore.json in s3://no-such-bucket/x"):
        extract(_config(missing, data, "s3://no-such-bucket/x", tmp_path / "a"))
    assert not (tmp_path / "a").exists()
    with pytest.raises(actstore.errors.ActstoreError, match="no-model"):
        extract(_config(missing, data, f"s3://{BUCKET}/w/no-model.acts", tmp_path / "c"))
    assert not (tmp_path / "c").exists(), "the job left an empty staging store"
    assert not keys(s3, f"s3://{BUCKET}/w/no-model.acts")
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    with pytest.raises(StoreError, match=rf"on http://127.0.0.1:{port} .*AWS_ENDPOINT_URL"):
        extract(_config(missing, data, f"s3://{BUCKET}/w/x.acts", tmp_path / "b"))
