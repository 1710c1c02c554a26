"""Crash safety: a job killed anywhere and restarted ends with the same store; sharding."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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
    cmd = [
        sys.executable,
        "-m",
        "actstore.cli",
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


@pytest.fixture(scope="module")
def reference(
    tiny_model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("resume")
    data = make_corpus(root / "c.jsonl")
    store = root / "ref.acts"
    proc = cli(tiny_model_dirs["bert"], data, store)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    return data, store, snapshot(store)


@pytest.mark.slow
def test_killed_at_random_crash_points_then_resumed_is_identical(
    tiny_model_dirs: dict[str, Path],
    reference: tuple[Path, Path, dict[str, Any]],
    tmp_path: Path,
) -> None:
    data, _, ref = reference
    rng = random.Random(1234)
    # about one crash point per batch plus ~6 per checkpoint and 5 in the commit
    n_points = ref["counts"]["batches"] + 6 * (ref["counts"]["batches"] // 3 + 2) + 5
    points = sorted(rng.sample(range(1, n_points), 4))
    for i, at in enumerate(points):
        store = tmp_path / f"s{i}.acts"
        proc = cli(tiny_model_dirs["bert"], data, store, crash_at=at)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode in (-signal.SIGKILL, 0), err.decode()
        if proc.returncode == -signal.SIGKILL and i % 2 == 0:
            # a second crash during the resumed job, later on
            proc = cli(tiny_model_dirs["bert"], data, store, crash_at=max(1, at // 2))
            proc.communicate(timeout=300)
        proc = cli(tiny_model_dirs["bert"], data, store)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
        assert_same(snapshot(store), ref)


@pytest.mark.slow
def test_sigkill_at_random_time_then_resumed_is_identical(
    tiny_model_dirs: dict[str, Path],
    reference: tuple[Path, Path, dict[str, Any]],
    tmp_path: Path,
) -> None:
    data, _, ref = reference
    rng = random.Random(99)
    store = tmp_path / "s.acts"
    for _ in range(2):
        proc = cli(tiny_model_dirs["bert"], data, store)
        time.sleep(rng.uniform(3.0, 7.0))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    proc = cli(tiny_model_dirs["bert"], data, store)
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
