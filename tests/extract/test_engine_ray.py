"""``extract --engine ray``: every part of a run as a task on a real local Ray cluster.

The store a Ray run writes equals the one its part jobs (``--shard k --num-shards N``)
write when run one after another in one process, byte for byte (apart from times), and
holds the same values as an unsharded run; a worker killed with SIGKILL mid-part is rerun
by Ray, resumes from its checkpoint, and the run still ends the same, committed once.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

from actstore.errors import ConfigError, EmptyCorpusError, EngineError
from actstore.extract.config import ExtractConfig
from actstore.extract.runner import ExtractResult, extract
from actstore.store.locks import held_parts
from actstore.store.manifest import store_lock
from tests.conftest import one_torch_thread

from .test_concurrency import assert_same_store, job_env, store_files
from .test_extract import read_run, write_corpus
from .test_resume import make_corpus

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 3


def options(model: Path, data: Path, store: Path, **extra: Any) -> dict[str, Any]:
    return {
        "model": str(model),
        "data": str(data),
        "store": str(store),
        "run": "r",
        "sites": "hidden.1,hidden.2",
        "dtype": "float32",
        "batch_tokens": 96,
        "pool_batches": 3,
        "centroids": True,
        "device": "cpu",
        "quiet": True,
        "chunk_rows": 8,
        "shard_rows": 32,
        "checkpoint_seconds": 0.0,
        **extra,
    }


def cli_argv(kw: dict[str, Any], *extra: str) -> list[str]:
    argv = ["extract"]
    for key, value in kw.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is not False:
            argv += [flag, str(value)]
    return [*argv, *extra]


class Reference(NamedTuple):
    data: Path
    parts: dict[str, Any]
    """store_files of the WORKERS part jobs run one after another in this process."""
    single: Path
    """An unsharded run of the same corpus."""


@pytest.fixture(scope="module")
def reference(
    tiny_model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Reference:
    root = tmp_path_factory.mktemp("ray-ref")
    data = make_corpus(root / "c.jsonl", n=240)
    model = tiny_model_dirs["bert"]
    with one_torch_thread():  # as in a Ray task with num_cpus=1
        for k in range(WORKERS):
            kw = options(model, data, root / "parts.acts", shard=k, num_shards=WORKERS)
            extract(ExtractConfig(**kw))
        extract(ExtractConfig(**options(model, data, root / "single.acts")))
    parts = store_files(root / "parts.acts")
    assert parts["leftovers"] == []
    return Reference(data, parts, root / "single.acts")


@pytest.fixture(scope="module")
def ray_cluster() -> Any:
    """A real local Ray instance of two CPUs, shared by this module's Python-API tests."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def assert_same_values(store: Path, single: Path) -> None:
    """The same token rows and (up to batching round-off) vectors as an unsharded run."""
    a, b = read_run(store), read_run(single)
    key = ["doc_id", "pos"]
    ta = a["tokens"].sort_values(key).reset_index(drop=True)
    tb = b["tokens"].sort_values(key).reset_index(drop=True)
    cols = [*key, "token_id", "start", "end", "special"]
    assert ta[cols].equals(tb[cols])
    for site in ("hidden.1", "hidden.2"):
        np.testing.assert_allclose(
            a["sites"][site][ta["row"]], b["sites"][site][tb["row"]], rtol=1e-5, atol=1e-5
        )
    same = ("rows", "docs", "texts", "tokens", "empty_docs", "duplicate_docs")
    assert [a["run"]["counts"].get(k) for k in same] == [b["run"]["counts"].get(k) for k in same]


def check_result(result: ExtractResult, store: Path) -> None:
    from actstore.extract.engine_ray import RayExtractResult

    assert isinstance(result, RayExtractResult)
    assert result.status == "committed"
    assert result.shard is None
    assert result.workers == WORKERS
    assert [p.shard for p in result.parts] == list(range(WORKERS))
    # committed exactly once: by one part's task; the others completed their part
    assert [p.status for p in result.parts].count("committed") == 1
    assert {p.status for p in result.parts} <= {"committed", "part-complete"}
    run_json = json.loads((store / "runs/r/run.json").read_text())
    assert result.rows == run_json["counts"]["rows"] == sum(p.rows for p in result.parts)
    manifest = json.loads((store / "actstore.json").read_text())
    assert manifest["runs"]["r"]["num_parts"] == WORKERS


@pytest.mark.slow
def test_cli_starts_a_local_cluster_and_prints_the_summary(
    tiny_model_dirs: dict[str, Path], reference: Reference, tmp_path: Path
) -> None:
    """Three workers write the store their three part jobs write one by one. No
    --address: the CLI starts (and stops) its own local Ray instance; one bar on stderr
    with tokens/s and parts done; the --json summary of a local run plus the engine's
    keys, every one documented in docs/outputs.md."""
    from tests.test_docs import _fields

    store = tmp_path / "s.acts"
    kw = options(tiny_model_dirs["bert"], reference.data, store, quiet=False)
    argv = cli_argv(kw, "--engine", "ray", "--workers", str(WORKERS), "--json")
    env = job_env()
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "actstore.cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "parts done" in proc.stderr, proc.stderr[-3000:]
    assert "tok/s" in proc.stderr, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["status"] == "committed"
    assert summary["shard"] is None
    assert summary["engine"] == "ray"
    assert summary["workers"] == WORKERS
    assert [p["shard"] for p in summary["parts"]] == list(range(WORKERS))
    assert summary["rows"] == sum(p["rows"] for p in summary["parts"])
    assert [p["attempts"] for p in summary["parts"]] == [1] * WORKERS
    assert [p["status"] for p in summary["parts"]].count("committed") == 1
    want = copy.deepcopy(reference.parts)
    want["runs/r/run.json"]["config"]["quiet"] = False  # recorded as given
    assert_same_store(store, want)
    assert_same_values(store, reference.single)
    text = (ROOT / "docs" / "outputs.md").read_text()
    assert sorted(f for f in _fields(summary) if f"`{f}`" not in text) == []


def _live(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def run_in_thread(config: ExtractConfig) -> tuple[threading.Thread, dict[str, Any]]:
    """``extract(config)`` in a thread; its result (or error) lands in the dict."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = extract(config)
        except BaseException as e:
            out["error"] = e

    driver = threading.Thread(target=run)
    driver.start()
    return driver, out


def kill_writer_mid_part(store: Path, part: int, driver: threading.Thread) -> None:
    """SIGKILL the worker process writing ``part`` once the part has a checkpoint with
    rows (the pid from the part's lock file, which names its holder)."""
    progress = store / f"runs/r/parts/part-{part:04d}/progress.json"
    lock = store / f".locks/r/part-{part:04d}.lock"
    deadline = time.monotonic() + 300
    while True:
        assert driver.is_alive(), "the run ended before the kill"
        assert time.monotonic() < deadline, f"part {part} never checkpointed"
        try:
            state = json.loads(progress.read_text())
            holder = json.loads(lock.read_text())
        except (FileNotFoundError, ValueError):
            time.sleep(0.005)
            continue
        if state["rows"] > 0 and not state["complete"] and _live(holder["pid"]):
            break
        time.sleep(0.005)
    assert holder["pid"] != os.getpid()
    os.kill(holder["pid"], signal.SIGKILL)
    state = json.loads(progress.read_text())
    assert not state["complete"], f"part {part} ended before its worker was killed"


@pytest.mark.slow
def test_a_worker_killed_mid_part_is_rerun_and_the_store_is_the_same(
    ray_cluster: Any, tiny_model_dirs: dict[str, Path], reference: Reference, tmp_path: Path
) -> None:
    store = tmp_path / "s.acts"
    config = ExtractConfig(
        **options(tiny_model_dirs["bert"], reference.data, store),
        engine="ray",
        workers=WORKERS,
    )
    driver, out = run_in_thread(config)
    kill_writer_mid_part(store, 1, driver)
    driver.join(timeout=600)
    assert "error" not in out, out
    result = out["result"]
    check_result(result, store)
    assert [p.attempts for p in result.parts] == [1, 2, 1]
    assert_same_store(store, reference.parts)
    assert_same_values(store, reference.single)
    # the same command again: nothing to do, every part finds the run committed
    again = extract(config)
    assert again.status == "already-committed"
    assert {p.status for p in again.parts} == {"already-committed"}
    assert_same_store(store, reference.parts)


@pytest.mark.slow
def test_no_retries_left_is_one_error_and_the_same_command_resumes(
    ray_cluster: Any, tiny_model_dirs: dict[str, Path], reference: Reference, tmp_path: Path
) -> None:
    store = tmp_path / "s.acts"
    kw = options(tiny_model_dirs["bert"], reference.data, store)
    config = ExtractConfig(**kw, engine="ray", workers=WORKERS, max_retries=0)
    driver, out = run_in_thread(config)
    kill_writer_mid_part(store, 2, driver)
    driver.join(timeout=600)
    error = out.get("error")
    assert isinstance(error, EngineError), out
    assert str(error) == (
        "part 2 of run 'r': its Ray worker died 1 time, more than --max-retries 0 allows; "
        "its last checkpoint is kept: run the same command again to resume"
    )
    assert json.loads((store / "actstore.json").read_text())["runs"] == {}
    with store_lock(store):  # the other parts' tasks were cancelled and have ended
        assert list(held_parts(store, "r")) == []
    assert json.loads((store / "runs/r/parts/part-0002/progress.json").read_text())["rows"] > 0
    result = extract(dataclasses.replace(config, max_retries=3))
    assert result.status == "committed"
    assert_same_store(store, reference.parts)


@pytest.mark.slow
def test_an_error_in_a_part_is_the_part_s_own_error(
    ray_cluster: Any, tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """A part with no text (two records, three parts) fails as its local job would."""
    data = write_corpus(tmp_path / "c.jsonl", ["the dog barks", "a cat"])
    kw = options(tiny_model_dirs["bert"], data, tmp_path / "s.acts")
    with pytest.raises(EmptyCorpusError, match=r"^no document with text in .* for shard \d/3"):
        extract(ExtractConfig(**kw, engine="ray", workers=WORKERS))


def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    env = job_env()
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )


def test_local_engine_does_not_import_ray(tiny_model_dirs: dict[str, Path], tmp_path: Path) -> None:
    data = make_corpus(tmp_path / "c.jsonl", n=12)
    kw = options(tiny_model_dirs["bert"], data, tmp_path / "s.acts")
    code = (
        "import sys\nfrom actstore.cli import main\n"
        f"assert main({cli_argv(kw)!r}) == 0\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
    )
    proc = _run_python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("committed:"), proc.stdout


def test_missing_ray_is_one_line_naming_the_extra(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    data = make_corpus(tmp_path / "c.jsonl", n=12)
    kw = options(tiny_model_dirs["bert"], data, tmp_path / "s.acts")
    code = (
        "import sys\nsys.modules['ray'] = None  # as if not installed\n"
        "from actstore.cli import main\n"
        f"sys.exit(main({cli_argv(kw, '--engine', 'ray', '--workers', '2')!r}))\n"
    )
    proc = _run_python(code)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [
        "actstore: error: --engine ray needs Ray, which is not installed: "
        "pip install 'actstore[ray]'"
    ]
    assert not (tmp_path / "s.acts").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"workers": 3}, r"^--workers: only used with --engine ray"),
        ({"address": "auto", "gpus_per_worker": 1}, r"^--address, --gpus-per-worker: only used"),
        ({"engine": "ray", "workers": 3, "num_shards": 2}, r"--workers 3 and --num-shards 2"),
        ({"engine": "ray", "workers": 2, "shard": 1, "num_shards": 2}, r"drop --shard"),
        ({"engine": "ray", "workers": 0}, r"workers must be >= 1"),
        ({"engine": "ray", "max_retries": -1}, r"max_retries must be >= 0"),
        ({"engine": "spark"}, r"engine must be local or ray"),
    ],
)
def test_bad_engine_options_are_refused(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ExtractConfig(model="m", data="d", store="s", run="r", **extra)


def test_engine_options_do_not_change_the_run_identity() -> None:
    base = ExtractConfig(model="m", data="d", store="s", run="r", num_shards=3)
    ray = ExtractConfig(
        model="m", data="d", store="s", run="r", engine="ray", workers=3, max_retries=5
    )
    assert ray.num_shards == 3
    assert ray.identity() == base.identity()
    sharded = ExtractConfig(model="m", data="d", store="s", run="r", engine="ray", num_shards=2)
    assert sharded.workers == 2
    assert ExtractConfig(model="m", data="d", store="s", run="r", engine="ray").workers == 1


def test_an_address_nobody_listens_on_is_one_line_quickly(tmp_path: Path) -> None:
    import socket
    import time

    from actstore.errors import EngineError
    from actstore.extract.engine_ray import _check_reachable

    with socket.socket() as sock:  # a port that was free a moment ago
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(EngineError, match=f"cannot reach a Ray cluster at 127.0.0.1:{port}"):
        _check_reachable(f"127.0.0.1:{port}")
    assert time.monotonic() - t0 < 10
    with socket.socket() as server:  # something listening: left to ray.init
        server.bind(("127.0.0.1", 0))
        server.listen()
        _check_reachable(f"127.0.0.1:{server.getsockname()[1]}")
    _check_reachable("auto")
