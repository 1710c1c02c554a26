"""Crash safety: a job killed anywhere and restarted ends with the same store; sharding."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

from actstore.extract.config import ExtractConfig
from actstore.extract.runner import extract
from actstore.store.info import store_info

from .test_extract import read_run, write_corpus


def make_corpus(path: Path, n: int = 160, seed: int = 0) -> Path:
    rng = random.Random(seed)
    words = [
        "dog",
        "cat",
        "cow",
        "barks",
        "meows",
        "moos",
        "aspirin",
        "headache",
        "insulin",
        "red",
        "blue",
        "sky",
        "the",
        "a",
        "of",
    ]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 40))) for _ in range(n)]
    texts[7] = ""
    return write_corpus(path, texts)


ARGS = [
    "--run",
    "r",
    "--sites",
    "hidden.0,hidden.2",
    "--batch-tokens",
    "96",
    "--pool-batches",
    "3",
    "--dtype",
    "bfloat16",
    "--centroids",
    "--device",
    "cpu",
    "--quiet",
    "--chunk-rows",
    "8",
    "--shard-rows",
    "32",
]


# the CLI, then the number of crash points it passed on stderr (counting needs a
# crash point that is never reached)
_COUNTING_MAIN = (
    "import atexit, sys\n"
    "from actstore.store._faults import crash_points_passed\n"
    "atexit.register(lambda: print(f'crash points: {crash_points_passed()}', file=sys.stderr))\n"
    "from actstore.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)
_NEVER = 10**9


def cli(
    model: Path,
    data: Path,
    store: Path,
    extra: list[str] | None = None,
    crash_at: int | None = None,
) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.pop("ACTSTORE_CRASH_AT", None)
    if crash_at is not None:
        env["ACTSTORE_CRASH_AT"] = str(crash_at)
    main = ["-c", _COUNTING_MAIN] if crash_at == _NEVER else ["-m", "actstore.cli"]
    cmd = [
        sys.executable,
        *main,
        "extract",
        "--model",
        str(model),
        "--data",
        str(data),
        "--store",
        str(store),
        *ARGS,
        *(extra or []),
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def killed(proc: subprocess.Popen[bytes], signal_now: bool = False) -> None:
    """Wait for ``proc`` (SIGKILLed now if ``signal_now``) and check it died by SIGKILL."""
    if signal_now:
        proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, (
        f"the job was not killed mid-run (exit {proc.returncode}): {err.decode()[-2000:]}"
    )


def assert_interrupted(store: Path, *, committed: bool = False, staged: bool = True) -> None:
    """The killed job left its staging to resume from (and published the run only if
    it was killed after the manifest update; the commit's last crash point follows the
    removal of the staging)."""
    manifest = json.loads((store / "actstore.json").read_text())
    assert ("r" in manifest["runs"]) == committed
    assert (store / "runs/r/parts/part-0000").is_dir() == staged


def wait_for(proc: subprocess.Popen[bytes], done: Callable[[], bool], what: str) -> float:
    """Poll until ``done()``; the time it became true. Fails if the job ends first."""
    deadline = time.monotonic() + 300
    while not done():
        assert proc.poll() is None, f"the job ended before {what}: {proc.communicate()[1]!r}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)
    return time.monotonic()


def newest_shard_ns(store: Path) -> int:
    """mtime of the newest shard file of part 0's site arrays (0 if none yet)."""
    times = [0]
    for f in store.glob("runs/r/arrays/part-0000/*/c/*/0"):
        with contextlib.suppress(FileNotFoundError):
            times.append(f.stat().st_mtime_ns)
    return max(times)


def snapshot(store: Path) -> dict[str, Any]:
    data = read_run(store)
    rj = data["run"]
    counts = dict(rj["counts"])
    group = data["group"]
    return {
        "tokens": data["tokens"],
        "sites": data["sites"],
        "counts": counts,
        "parts": rj["parts"],
        "centroids": {k: group[f"centroids/{k}"][:] for k in rj.get("centroids", [])},
        "count": group["centroids/count"][:] if rj.get("centroids") else None,
        "vocab": __import__("pyarrow.parquet")
        .parquet.read_table(store / "runs/r/vocab.parquet")
        .to_pandas(),
        "docs": __import__("pyarrow.parquet")
        .parquet.read_table(store / "docs")
        .to_pandas()
        .sort_values("doc_id")
        .reset_index(drop=True),
    }


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["tokens"].equals(b["tokens"])
    assert a["sites"].keys() == b["sites"].keys()
    for k in a["sites"]:
        np.testing.assert_array_equal(a["sites"][k], b["sites"][k])
    assert a["counts"] == b["counts"]
    assert a["parts"] == b["parts"]
    for k in a["centroids"]:
        np.testing.assert_array_equal(a["centroids"][k], b["centroids"][k])
    np.testing.assert_array_equal(a["count"], b["count"])
    assert a["vocab"].equals(b["vocab"])
    assert a["docs"].equals(b["docs"])


class Reference(NamedTuple):
    data: Path
    snapshot: dict[str, Any]
    crash_points: int
    """Crash points an uninterrupted job passes (the last one follows the commit)."""


@pytest.fixture(scope="module")
def reference(
    tiny_model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Reference:
    root = tmp_path_factory.mktemp("resume")
    data = make_corpus(root / "c.jsonl")
    store = root / "ref.acts"
    proc = cli(tiny_model_dirs["bert"], data, store, crash_at=_NEVER)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    found = re.search(r"crash points: (\d+)", err.decode())
    assert found, err.decode()
    return Reference(data, snapshot(store), int(found.group(1)))


@pytest.mark.slow
def test_killed_at_random_crash_points_then_resumed_is_identical(
    tiny_model_dirs: dict[str, Path], reference: Reference, tmp_path: Path
) -> None:
    model, data, ref, total = tiny_model_dirs["bert"], *reference
    assert total > 20  # one per batch, several per checkpoint, over four in the commit
    rng = random.Random(1234)
    # three anywhere, and one of the last four (they are in the commit)
    points = sorted([*rng.sample(range(1, total - 3), 3), rng.randint(total - 3, total)])
    for i, at in enumerate(points):
        store = tmp_path / f"s{i}.acts"
        killed(cli(model, data, store, crash_at=at))
        assert_interrupted(store, committed=at >= total - 1, staged=at < total)
        left = total - at  # the resumed job passes at least this many crash points
        if i % 2 == 0 and left >= 2:
            # a second crash during the resumed job, half-way through what was left
            killed(cli(model, data, store, crash_at=left // 2))
            assert_interrupted(store)
        proc = cli(model, data, store)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
        assert_same(snapshot(store), ref)


@pytest.mark.slow
def test_sigkill_at_random_time_then_resumed_is_identical(
    tiny_model_dirs: dict[str, Path], reference: Reference, tmp_path: Path
) -> None:
    model, data, ref = tiny_model_dirs["bert"], reference.data, reference.snapshot
    rng = random.Random(99)
    store = tmp_path / "s.acts"
    progress = store / "runs/r/parts/part-0000/progress.json"
    # the first job dies at a random moment of its second pool (the corpus has three)
    proc = cli(model, data, store)
    t_rows = wait_for(proc, lambda: newest_shard_ns(store) > 0, "writing rows")
    t_pool = wait_for(proc, progress.is_file, "its first checkpoint")
    pool_s = t_pool - t_rows
    time.sleep(rng.uniform(0, pool_s / 3))
    killed(proc, signal_now=True)
    assert_interrupted(store)
    # the resumed job dies at a random moment after it wrote rows again
    started = time.time_ns()
    proc = cli(model, data, store)
    wait_for(proc, lambda: newest_shard_ns(store) > started, "writing rows after resuming")
    time.sleep(rng.uniform(0, pool_s / 3))
    killed(proc, signal_now=True)
    assert_interrupted(store)
    proc = cli(model, data, store)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    assert_same(snapshot(store), ref)


def test_uncommitted_run_is_invisible(tiny_model_dirs: dict[str, Path], tmp_path: Path) -> None:
    data = make_corpus(tmp_path / "c.jsonl", n=60)
    store = tmp_path / "s.acts"
    kw: dict[str, Any] = {
        "model": str(tiny_model_dirs["gpt2"]),
        "data": str(data),
        "store": str(store),
        "run": "r",
        "sites": "hidden.1",
        "quiet": True,
        "device": "cpu",
        "num_shards": 2,
    }
    first = extract(ExtractConfig(shard=1, **kw))
    assert first.status == "part-complete"
    manifest = json.loads((store / "actstore.json").read_text())
    assert manifest["runs"] == {}
    info = store_info(store)
    assert info["runs"] == []
    assert info["pending"][0]["run"] == "r"
    assert info["pending"][0]["num_parts"] == 2
    second = extract(ExtractConfig(shard=0, **kw))
    assert second.status == "committed"
    sharded = read_run(store)
    assert [p["index"] for p in sharded["run"]["parts"]] == [0, 1]
    assert sharded["tokens"]["row"].tolist() == list(range(len(sharded["tokens"])))
    # each doc lives in the shard doc_id % 2 picks
    off = sharded["run"]["parts"][1]["row_offset"]
    part_of_row = (sharded["tokens"]["row"] >= off).astype(int)
    assert ((sharded["tokens"]["doc_id"] % 2) == part_of_row).all()
    # same tokens and (up to batching round-off) same vectors as one unsharded job
    single = tmp_path / "one.acts"
    extract(ExtractConfig(**{**kw, "store": str(single), "num_shards": 1}))
    one = read_run(single)
    key = ["doc_id", "pos"]
    a = sharded["tokens"].sort_values(key).reset_index(drop=True)
    b = one["tokens"].sort_values(key).reset_index(drop=True)
    assert a[[*key, "token_id", "start", "end", "special"]].equals(
        b[[*key, "token_id", "start", "end", "special"]]
    )
    np.testing.assert_allclose(
        sharded["sites"]["hidden.1"][a["row"]], one["sites"]["hidden.1"][b["row"]], atol=1e-2
    )
    # no leftover staging after the commit
    assert not (store / "runs/r/parts").exists()


@pytest.mark.slow
def test_killed_after_a_checkpoint_inside_the_first_pool_resumes_from_it(
    tiny_model_dirs: dict[str, Path], reference: Reference, tmp_path: Path
) -> None:
    model, data = tiny_model_dirs["bert"], reference.data
    one_pool = ["--pool-batches", "1000"]  # the whole corpus is one pool
    whole = tmp_path / "whole.acts"
    proc = cli(model, data, whole, one_pool)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    store = tmp_path / "s.acts"
    # a checkpoint after every batch; crash point 12 ends the second batch's checkpoint
    # (one per appended batch, then two site arrays, tokens, centroids, progress.json)
    killed(cli(model, data, store, [*one_pool, "--checkpoint-seconds", "0"], crash_at=12))
    assert_interrupted(store)
    progress = json.loads((store / "runs/r/parts/part-0000/progress.json").read_text())
    assert progress["pools"] == 0
    assert progress["batches"] == 2
    assert progress["rows"] > 0
    # resumed with the default cadence (not part of the run's identity)
    proc = cli(model, data, store, one_pool)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    assert_same(snapshot(store), snapshot(whole))
    timings = json.loads((store / "runs/r/run.json").read_text())["timings"]
    assert 0 < timings["forward_s"] <= timings["wall_s"]
    assert timings["tokenize_s"] + timings["write_s"] > 0
