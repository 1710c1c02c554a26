"""Several `actstore extract` jobs on one run at once (a double-submitted job, a retried
array task, every shard of a new store started together): exactly one commits, the run
equals a clean single job's, and every other job either is refused with one line naming
the writer it waits for (exit 1) or finds the run already committed (exit 0)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from .test_resume import make_corpus

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="jobs are forked")

ARGS = [
    "--run",
    "r",
    "--sites",
    "hidden.1,hidden.3",
    "--batch-tokens",
    "96",
    "--pool-batches",
    "2",
    "--centroids",
    "--device",
    "cpu",
    "--quiet",
    "--chunk-rows",
    "8",
    "--shard-rows",
    "32",
]

#: Runs trials of CLI jobs: the jobs of a trial are forked from one process that has
#: imported torch, transformers and actstore once (a fresh interpreter per job spends
#: seconds on imports alone), and released together. Each job runs `actstore.cli.main`
#: in its own process, as `python -m actstore.cli` would.
LAUNCHER = r"""
import json, os, sys, traceback
spec = json.loads(open(sys.argv[1]).read())
import torch, transformers
import transformers.models.bert.modeling_bert
from actstore.cli import main
import actstore.extract.runner, actstore.extract.model, actstore.extract.sites
import actstore.extract.head, actstore.extract._device, actstore.extract._pipeline
codes = []
for trial in spec["trials"]:
    go_r, go_w = os.pipe()
    pids = []
    for job in trial:
        sys.stdout.flush(); sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(go_w)
            for fd, name in ((1, job["out"]), (2, job["err"])):
                os.dup2(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
            os.read(go_r, 1)
            try:
                code = main(job["argv"])
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:
                traceback.print_exc()
                code = 70
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code)
        pids.append(pid)
    os.close(go_r); os.close(go_w)
    codes.append([os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids])
print(json.dumps(codes))
"""


class Job:
    """One CLI job of a trial: its command line and where its output goes."""

    def __init__(self, folder: Path, name: str, argv: list[str]) -> None:
        self.argv = argv
        self.out = folder / f"{name}.out"
        self.err = folder / f"{name}.err"
        self.code: int | None = None
        self.store = Path(argv[argv.index("--store") + 1])

    @property
    def stdout(self) -> str:
        return self.out.read_text()

    @property
    def stderr(self) -> str:
        return self.err.read_text()

    def describe(self) -> str:
        return f"exit {self.code}, stdout {self.stdout!r}, stderr {self.stderr[-3000:]!r}"


def job_env() -> dict[str, str]:
    """The jobs' environment: one torch thread each (several jobs share the cores; with
    more threads than cores, torch's spinning threads make each op ~10x slower)."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    env.pop("ACTSTORE_CRASH_AT", None)
    return env


def argv(model: Path, data: Path, store: Path, *extra: str) -> list[str]:
    return [
        "extract",
        "--model",
        str(model),
        "--data",
        str(data),
        "--store",
        str(store),
        *ARGS,
        *extra,
    ]


def run_trials(trials: list[list[Job]], folder: Path) -> None:
    """Run each trial's jobs at once (the trials one after another); set each job's code."""
    spec = folder / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "trials": [
                    [{"argv": j.argv, "out": str(j.out), "err": str(j.err)} for j in trial]
                    for trial in trials
                ]
            }
        )
    )
    env = job_env()
    proc = subprocess.run(
        [sys.executable, "-c", LAUNCHER, str(spec)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    codes = json.loads(proc.stdout.strip().splitlines()[-1])
    for trial, trial_codes in zip(trials, codes, strict=True):
        for job, code in zip(trial, trial_codes, strict=True):
            job.code = code


def run_cli_at_once(jobs: list[Job]) -> None:
    """Start each job as its own `python -m actstore.cli` process, all at once."""
    env = job_env()
    procs = []
    for job in jobs:
        with open(job.out, "wb") as out, open(job.err, "wb") as err:
            cmd = [sys.executable, "-m", "actstore.cli", *job.argv]
            procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=err))
    for job, proc in zip(jobs, procs, strict=True):
        job.code = proc.wait(timeout=600)


def check_outcome(jobs: list[Job], *, shards: int = 1) -> None:
    """Exactly one job committed; the others were refused in one line or found the run
    done (or, sharded, completed their part for another job to commit)."""
    committed = [j for j in jobs if j.code == 0 and j.stdout.startswith("committed:")]
    assert len(committed) == 1, [j.describe() for j in jobs]
    ok_status = ("committed:", "already-committed:", "part-complete:")
    for job in jobs:
        if job.code == 0:
            assert job.stdout.startswith(ok_status[: 3 if shards > 1 else 2]), job.describe()
            assert job.stderr == "", job.describe()
        else:
            assert job.code == 1, job.describe()
            lines = job.stderr.splitlines()
            assert len(lines) == 1, job.describe()
            assert lines[0].startswith("actstore: error: part "), job.describe()
            assert " is being written by process " in lines[0], job.describe()
            assert "wait for that job to end" in lines[0], job.describe()
            assert job.stdout == "", job.describe()


def store_files(store: Path) -> dict[str, Any]:
    """Every file of ``store`` that holds data (bytes; JSON without times), and a list of
    the bookkeeping left (staging, temp files, trash)."""
    files: dict[str, Any] = {}
    leftovers = []
    for p in sorted(store.rglob("*")):
        rel = p.relative_to(store).as_posix()
        if rel.startswith((".locks", ".actstore.lock")) or p.is_dir():
            continue
        if "/parts/" in rel or ".tmp" in p.name or rel.startswith(".trash"):
            leftovers.append(rel)
        elif p.name == "run.json":
            rj = json.loads(p.read_text())
            for key in ("committed_at", "created_at", "timings"):
                rj.pop(key)
            for key in ("store", "overwrite"):
                rj["config"].pop(key)
            files[rel] = rj
        elif p.name == "actstore.json":
            manifest = json.loads(p.read_text())
            for entry in manifest["runs"].values():
                entry.pop("committed_at")
            files[rel] = manifest
        else:
            files[rel] = p.read_bytes()
    files["leftovers"] = leftovers
    return files


def assert_same_store(got: Path, want: dict[str, Any]) -> None:
    files = store_files(got)
    assert files.keys() == want.keys(), (got, sorted(files.keys() ^ want.keys()))
    for name, content in want.items():
        assert files[name] == content, f"{got}: {name} differs from the clean run's"


class Trials(NamedTuple):
    """The jobs of every trial, run, and the stores of clean runs to compare with."""

    two: list[list[Job]]
    four: list[list[Job]]
    sharded: list[list[Job]]
    overwrite: list[list[Job]]
    want: dict[str, Any]
    want_sharded: dict[str, Any]


@pytest.fixture(scope="module")
def trials(tiny_model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Trials:
    """Clean runs (one job; both shards one after the other), then ten trials of two jobs
    and ten of four on one run of a new store, four trials of both shards of a new store
    submitted twice each, and three of both shards replacing a committed run with
    --overwrite, all in one launcher (about 45 s of CPU)."""
    root = tmp_path_factory.mktemp("concurrency")
    corpus = make_corpus(root / "c.jsonl", n=24)
    model = tiny_model_dirs["bert"]

    def job(name: str, store: str, *extra: str) -> Job:
        return Job(root, name, argv(model, corpus, root / f"{store}.acts", *extra))

    ref = [job("ref", "ref")]
    ref_sharded = [[job(f"refs{k}", "refs", *shard(k))] for k in (1, 0)]
    two = [[job(f"n2-t{t}-{i}", f"n2-t{t}") for i in range(2)] for t in range(10)]
    four = [[job(f"n4-t{t}-{i}", f"n4-t{t}") for i in range(4)] for t in range(10)]
    sharded = [
        [job(f"sh-t{t}-{k}-{i}", f"sh-t{t}", *shard(k)) for k in (0, 1) for i in range(2)]
        for t in range(4)
    ]
    # a run committed with other sites, then both shards started with --overwrite
    replaced = [[job(f"ow-t{t}-base", f"ow-t{t}", "--sites", "hidden.2")] for t in range(3)]
    overwrite = [
        [job(f"ow-t{t}-{k}", f"ow-t{t}", *shard(k), "--overwrite") for k in (0, 1)]
        for t in range(3)
    ]
    run_trials([ref, *ref_sharded, *two, *four, *sharded, *replaced, *overwrite], root)
    for base in replaced:
        assert base[0].code == 0, base[0].describe()
    for only in (ref[0], *(t[0] for t in ref_sharded)):
        assert only.code == 0, only.describe()
    want = store_files(ref[0].store)
    want_sharded = store_files(ref_sharded[0][0].store)
    assert want["leftovers"] == want_sharded["leftovers"] == []
    return Trials(two, four, sharded, overwrite, want, want_sharded)


def test_two_jobs_on_one_run_of_a_new_store(trials: Trials) -> None:
    for jobs in trials.two:
        check_outcome(jobs)
        assert_same_store(jobs[0].store, trials.want)


def test_four_jobs_on_one_run_of_a_new_store(trials: Trials) -> None:
    for jobs in trials.four:
        check_outcome(jobs)
        assert_same_store(jobs[0].store, trials.want)


def test_both_shards_of_a_new_store_each_submitted_twice(trials: Trials) -> None:
    for jobs in trials.sharded:
        check_outcome(jobs, shards=2)
        for k in (0, 1):  # each part was written by one of its two jobs
            assert any(j.code == 0 for j in jobs[2 * k : 2 * k + 2]), [j.describe() for j in jobs]
        assert_same_store(jobs[0].store, trials.want_sharded)


def shard(k: int) -> list[str]:
    return ["--shard", str(k), "--num-shards", "2"]


def test_both_shards_replacing_a_committed_run_at_once(trials: Trials) -> None:
    """A sharded --overwrite started together: the first shard to check the run drops
    it, the other finds it gone; neither refuses the other."""
    for jobs in trials.overwrite:
        assert all(j.code == 0 for j in jobs), [j.describe() for j in jobs]
        check_outcome(jobs, shards=2)
        assert_same_store(jobs[0].store, trials.want_sharded)


@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 4])
def test_cli_processes_started_together_on_one_run_of_a_new_store(
    n: int, tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """Trials of ``n`` jobs as above, each job its own `python -m actstore.cli` process
    (three trials: a fresh interpreter spends seconds importing torch and transformers;
    the forked trials above run ten of each)."""
    model = tiny_model_dirs["bert"]
    corpus = make_corpus(tmp_path / "c.jsonl", n=24)
    ref = Job(tmp_path, "ref", argv(model, corpus, tmp_path / "ref.acts"))
    run_cli_at_once([ref])
    assert ref.code == 0, ref.describe()
    want = store_files(tmp_path / "ref.acts")
    for t in range(3):
        store = tmp_path / f"t{t}.acts"
        jobs = [Job(tmp_path, f"t{t}-{i}", argv(model, corpus, store)) for i in range(n)]
        run_cli_at_once(jobs)
        check_outcome(jobs)
        assert_same_store(store, want)
