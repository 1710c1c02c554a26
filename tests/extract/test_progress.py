"""Progress after every batch, checkpoints inside a pool, the resume check, failed jobs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from actstore.cli import main
from actstore.errors import ModelLoadError, RunExistsError
from actstore.extract.progress import ExtractProgress

from .test_extract import read_run, run
from .test_resume import make_corpus

ONE_POOL = {"sites": "hidden.1", "batch_tokens": 96, "pool_batches": 1000}


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_corpus(tmp_path / "c.jsonl", n=60)


def test_progress_is_reported_after_every_batch(
    tiny_model_dirs: dict[str, Path], data: Path, tmp_path: Path
) -> None:
    events: list[ExtractProgress] = []
    res = run(
        tiny_model_dirs["gpt2"], data, tmp_path / "s.acts", progress=events.append, **ONE_POOL
    )
    # once before the first batch, after each batch, and at the end of the one pool
    assert len(events) == res.counts["batches"] + 2
    records = [e.records for e in events]
    assert records == sorted(records)
    assert records[0] == 0
    assert records[-1] == events[-1].total_records == 60
    assert len(set(records[1:-1])) > 3  # moves inside the pool
    assert events[-1].tokens == res.counts["tokens"]  # padding not counted
    assert events[-1].rows == res.rows == events[-1].durable_rows


def test_checkpoints_inside_a_pool_store_the_same_run(
    tiny_model_dirs: dict[str, Path], data: Path, tmp_path: Path
) -> None:
    events: list[ExtractProgress] = []
    every = tmp_path / "every.acts"
    run(
        tiny_model_dirs["gpt2"],
        data,
        every,
        checkpoint_seconds=0,
        centroids=True,
        progress=events.append,
        **ONE_POOL,
    )
    durable = [e.durable_rows for e in events]
    assert 0 < durable[2] < durable[-2]  # rows made durable batch by batch in the one pool
    pools = tmp_path / "pools.acts"
    run(tiny_model_dirs["gpt2"], data, pools, checkpoint_seconds=1e9, centroids=True, **ONE_POOL)
    a, b = read_run(every), read_run(pools)
    assert a["tokens"].equals(b["tokens"])
    np.testing.assert_array_equal(a["sites"]["hidden.1"], b["sites"]["hidden.1"])
    assert a["run"]["counts"] == b["run"]["counts"]
    for k in ("centroids/hidden.1", "centroids/count"):
        np.testing.assert_array_equal(a["group"][k][:], b["group"][k][:])
    t = a["run"]["timings"]
    assert 0 < t["forward_s"] <= t["wall_s"]


def test_cli_shows_progress_on_stderr_unless_quiet(
    tiny_model_dirs: dict[str, Path], data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["extract", "--model", str(tiny_model_dirs["gpt2"]), "--data", str(data)]
    args += ["--run", "r", "--sites", "hidden.1", "--device", "cpu", "--batch-tokens", "96"]
    assert main([*args, "--store", str(tmp_path / "a.acts")]) == 0
    out = capsys.readouterr()
    assert "tok/s" in out.err
    assert "60/60" in out.err
    assert "tok/s" not in out.out
    assert main([*args, "--store", str(tmp_path / "b.acts"), "--quiet"]) == 0
    assert "tok/s" not in capsys.readouterr().err


def test_same_corpus_by_another_path_and_default_flags_is_the_same_run(
    tiny_model_dirs: dict[str, Path], data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(data.parent)
    store = tmp_path / "s.acts"
    first = run(tiny_model_dirs["gpt2"], Path(data.name), store, sites="hidden.1")
    assert first.status == "committed"
    again = run(
        tiny_model_dirs["gpt2"],
        data.resolve(),
        store,
        sites="hidden.1",
        text_field="text",
        data_format="jsonl",
        checkpoint_seconds=5,
    )
    assert again.status == "already-committed"


def test_other_arguments_are_refused_with_the_fields_that_differ(
    tiny_model_dirs: dict[str, Path], data: Path, tmp_path: Path
) -> None:
    store = tmp_path / "s.acts"
    run(tiny_model_dirs["gpt2"], data, store, sites="hidden.1", max_length=16)
    with pytest.raises(
        RunExistsError,
        match=r"^run 'r' exists with other arguments: max_length 16 != 24; "
        r"pass --overwrite to replace it or pick another --run$",
    ):
        run(tiny_model_dirs["gpt2"], data, store, sites="hidden.1", max_length=24)
    data.write_text(data.read_text() + json.dumps({"text": "one more"}) + "\n")
    with pytest.raises(RunExistsError, match=r"other arguments: corpus\.mtime_ns \d+ != \d+"):
        run(tiny_model_dirs["gpt2"], data, store, sites="hidden.1", max_length=16)


def test_failed_job_removes_the_store_it_created(data: Path, tmp_path: Path) -> None:
    store = tmp_path / "new.acts"
    with pytest.raises(ModelLoadError):
        run(tmp_path / "no-such-model", data, store)
    assert not store.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    with pytest.raises(ModelLoadError):
        run(tmp_path / "no-such-model", data, kept)
    assert kept.is_dir()  # not created by the job: left in place
