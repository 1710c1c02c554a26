"""Every part of a run as a Ray task: ``extract --engine ray --workers N``.

Each task runs exactly the local part job ``--shard k --num-shards N`` (one
:func:`~actstore.extract.runner.extract` call), so the part protocol is unchanged: the
part's writer lock, its checkpoints, and the commit by whichever part finishes last. Ray
schedules the tasks and reruns one whose worker process died (``max_retries``); the
rerun resumes the part from its last checkpoint. The store does not know which engine
wrote it: it equals the one the N part jobs write when run one after another.

Workers report their progress to a small actor that the driver reads for its one bar.
Ray is imported only when a run uses this engine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from actstore.errors import ActstoreError, ConfigError, EngineError
from actstore.extract.config import ExtractConfig
from actstore.extract.progress import ExtractProgress
from actstore.extract.runner import ExtractResult, extract
from actstore.store._objects import store_path

__all__ = ["PartOutcome", "RayExtractResult", "extract_ray"]

_REPORT_SECONDS = 0.5  # a worker reports at most this often (and after its last batch)
_POLL_SECONDS = 0.5  # the driver's bar refreshes this often
_CANCEL_WAIT_SECONDS = 120.0  # for cancelled tasks to end (a part stops at its next batch)


@dataclass(frozen=True)
class PartOutcome:
    """How one part of a Ray run ended."""

    shard: int
    status: str
    """As :attr:`ExtractResult.status` of the part's (last) task."""
    rows: int
    """Rows of the part."""
    attempts: int
    """Tasks that ran the part (1, or more when Ray reran it after its worker died)."""


@dataclass(frozen=True)
class RayExtractResult(ExtractResult):
    """What a Ray run did: the run's result (``shard`` is None: every part ran), and
    each part's outcome."""

    workers: int
    """Parts of the run, one Ray task each."""
    parts: tuple[PartOutcome, ...]


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--engine ray needs Ray, which is not installed: pip install 'actstore[ray]'"
        ) from None
    return ray


class _Board:
    """A Ray actor holding each part's last progress report (for the driver's bar)."""

    def __init__(self, parts: int) -> None:
        self.reports: dict[int, dict[str, Any]] = {}
        self.attempts = [0] * parts
        self.tokens_before = [0] * parts  # tokens of the part's earlier, dead attempts

    def started(self, shard: int) -> int:
        """A task starts part ``shard``; its attempt number (1, 2, ...)."""
        if self.attempts[shard]:
            self.tokens_before[shard] += self.reports.get(shard, {}).get("tokens", 0)
        self.attempts[shard] += 1
        self.reports.pop(shard, None)
        return self.attempts[shard]

    def report(self, shard: int, attempt: int, p: dict[str, Any]) -> None:
        if attempt == self.attempts[shard]:  # a late report of a dead attempt is ignored
            self.reports[shard] = p

    def snapshot(self) -> dict[str, Any]:
        tokens = sum(self.tokens_before) + sum(r["tokens"] for r in self.reports.values())
        return {
            "reports": dict(self.reports),
            "attempts": list(self.attempts),
            "tokens": tokens,
        }


class _Reporter:
    """A worker's progress callback: sends its part's progress to the board, throttled."""

    def __init__(self, board: Any, shard: int, attempt: int) -> None:
        self.board, self.shard, self.attempt = board, shard, attempt
        self.last = 0.0
        self.unsent: ExtractProgress | None = None

    def __call__(self, p: ExtractProgress) -> None:
        self.unsent = p
        if time.monotonic() - self.last >= _REPORT_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Send the last progress not sent yet (the part's last batch, at its end)."""
        if self.unsent is not None:
            self.board.report.remote(self.shard, self.attempt, dataclasses.asdict(self.unsent))
            self.unsent, self.last = None, time.monotonic()


def _run_part(config: ExtractConfig, shard: int, cwd: str, board: Any) -> tuple[ExtractResult, int]:
    """One Ray task: the local part job ``shard`` of ``config``; its result and attempt."""
    import ray

    attempt: int = ray.get(board.started.remote(shard))
    local = dataclasses.replace(
        config,
        engine="local",
        shard=shard,
        address=None,
        workers=None,
        gpus_per_worker=None,
        max_retries=ExtractConfig.max_retries,
    )
    # relative paths mean what they mean to the driver, as in a local job
    where = contextlib.chdir(cwd) if os.path.isdir(cwd) else contextlib.nullcontext()
    reporter = _Reporter(board, shard, attempt)
    with where:
        result = extract(local, progress=reporter)
    reporter.flush()
    return result, attempt


def _summed(
    snap: dict[str, Any], done: dict[int, int], parts: int, elapsed: float
) -> ExtractProgress | None:
    """The run's progress: records averaged over the parts (each reads the whole corpus;
    a done part counts as at the end), tokens and rows summed; None before any report."""
    reports: dict[int, dict[str, Any]] = snap["reports"]
    if not reports:
        return None
    total = next(iter(reports.values()))["total_records"]
    records = rows = durable = 0.0
    for k in range(parts):
        if k in done:
            records += total or reports.get(k, {}).get("records", 0.0)
            rows += done[k]
            durable += done[k]
        elif k in reports:
            records += reports[k]["records"]
            rows += reports[k]["rows"]
            durable += reports[k]["durable_rows"]
    return ExtractProgress(records / parts, total, snap["tokens"], int(rows), int(durable), elapsed)


class _RunBar:
    """The driver's one bar: corpus records (averaged over the parts), the run's tokens/s
    (every part's tokens over the time since the first part's first batch), parts done,
    restarts."""

    def __init__(self, desc: str, parts: int, *, disable: bool) -> None:
        self.desc, self.parts, self.disable = desc, parts, disable
        self.bar: Any = None

    def update(self, p: ExtractProgress, done: int, restarts: int) -> None:
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=p.total_records,
                unit="rec",
                disable=self.disable,
                dynamic_ncols=True,
                desc=self.desc,
                bar_format="{l_bar}{bar}| {n:,.0f}/{total_fmt} [{elapsed}<{remaining}{postfix}]",
            )
        self.bar.set_postfix_str(
            f"{p.tokens_per_s:,.0f} tok/s, {done}/{self.parts} parts done, "
            f"{p.durable_rows:,}/{p.rows:,} rows saved"
            + (f", {restarts} part restart(s)" if restarts else ""),
            refresh=False,
        )
        self.bar.update(p.records - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def extract_ray(
    config: ExtractConfig, progress: Callable[[ExtractProgress], None] | None = None
) -> RayExtractResult:
    """Run every part of ``config``'s run as a Ray task; the run is committed by the last.

    Parameters
    ----------
    config : ExtractConfig
        With ``engine="ray"``: ``workers`` parts, each the local job ``--shard k
        --num-shards workers``. ``address`` names a running cluster; without it a local
        Ray instance is started with this machine's CPUs (and stopped afterwards). When
        this process is already connected to Ray (``ray.init`` was called), that
        connection is used.
    progress : callable or None
        Called with the run's progress summed over the parts (records averaged: each
        part reads the whole corpus). None: one tqdm bar on stderr with tokens/s and the
        parts done (none with ``config.quiet``).

    Returns
    -------
    RayExtractResult

    Raises
    ------
    ConfigError
        Ray is not installed.
    ActstoreError
        What a part's job raised (the other parts are cancelled; done parts stay).
    EngineError
        A part's worker died more than ``max_retries`` times, or the cluster failed.
    """
    ray = _import_ray()
    t0 = time.perf_counter()
    parts = config.num_shards
    with _connected(ray, config):
        gpus = config.gpus_per_worker
        if gpus is None:
            has_gpu = ray.cluster_resources().get("GPU", 0) > 0
            gpus = 1.0 if has_gpu and not config.device.startswith("cpu") else 0.0
        board = ray.remote(num_cpus=0)(_Board).remote(parts)
        task = ray.remote(_run_part).options(
            num_cpus=1, num_gpus=gpus, max_retries=config.max_retries, retry_exceptions=False
        )
        cwd = os.getcwd()
        pending = {task.remote(config, k, cwd, board): k for k in range(parts)}
        results: dict[int, tuple[ExtractResult, int]] = {}
        with _progress(config, parts, progress) as show:
            try:
                while pending:
                    ready, _ = ray.wait(list(pending), num_returns=1, timeout=_POLL_SECONDS)
                    for ref in ready:
                        k = pending.pop(ref)
                        results[k] = _result(ray, ref, k, config)
                    done = {k: r.rows for k, (r, _) in results.items()}
                    show(ray.get(board.snapshot.remote()), done)
            except BaseException:
                _cancel(ray, list(pending))
                raise
    return _summary(config, results, time.perf_counter() - t0)


def _cancel(ray: Any, refs: list[Any]) -> None:
    """Cancel the tasks and wait for them to end (cancelling is asynchronous): a task
    still running would hold its part's lock, and the same command run again at once
    would find its part locked."""
    for ref in refs:
        ray.cancel(ref)
    with contextlib.suppress(Exception):
        ray.wait(refs, num_returns=len(refs), timeout=_CANCEL_WAIT_SECONDS)


@contextlib.contextmanager
def _connected(ray: Any, config: ExtractConfig) -> Iterator[None]:
    """Connected to the cluster of ``config.address`` (a new local one by default); a
    connection this call opened is closed afterwards (stopping a local instance)."""
    if ray.is_initialized():
        yield
        return
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    if config.address is None:
        kwargs |= {"address": "local", "num_cpus": _machine_cpus(), "include_dashboard": False}
    else:
        _check_reachable(config.address)
        kwargs["address"] = config.address
    try:
        ray.init(**kwargs)
    except (ConnectionError, ValueError, RuntimeError) as e:
        where = config.address or "a local Ray instance"
        raise EngineError(f"cannot start or reach {where}: {e}".splitlines()[0]) from e
    try:
        yield
    finally:
        ray.shutdown()


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """Refuse a ``HOST:PORT`` nothing listens on within ``timeout`` seconds (``ray.init``
    would retry for minutes and ignore SIGTERM). ``auto`` and ``ray://`` are Ray's to find."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return
    import socket

    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise EngineError(
            f"cannot reach a Ray cluster at {address} ({e.strerror or e}); start one with "
            "ray start --head, or check the address (ray status prints it)"
        ) from e


def _machine_cpus() -> int:
    with contextlib.suppress(AttributeError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@contextlib.contextmanager
def _progress(
    config: ExtractConfig, parts: int, progress: Callable[[ExtractProgress], None] | None
) -> Iterator[Callable[[dict[str, Any], dict[int, int]], None]]:
    """A function of (board snapshot, rows of each done part) that shows the progress."""
    bar = _RunBar(f"extract {config.run} [ray x{parts}]", parts, disable=config.quiet)
    first: list[float] = []  # when the first report came (tokens/s counts from there)

    def show(snap: dict[str, Any], done: dict[int, int]) -> None:
        if not snap["reports"]:
            return
        first[:] = first or [time.monotonic()]
        p = _summed(snap, done, parts, time.monotonic() - first[0])
        if p is None:
            return
        if progress is not None:
            progress(p)
        else:
            bar.update(p, len(done), sum(a - 1 for a in snap["attempts"] if a > 1))

    try:
        yield show
    finally:
        bar.close()


def _result(ray: Any, ref: Any, shard: int, config: ExtractConfig) -> tuple[ExtractResult, int]:
    """The finished task's result, or the part's own error (without Ray's wrapping)."""
    try:
        out: tuple[ExtractResult, int] = ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = e.cause
        if isinstance(cause, ActstoreError):
            raise cause from None
        raise EngineError(
            f"part {shard} of run {config.run!r} failed in its Ray task: "
            f"{type(cause).__name__}: {cause}".splitlines()[0]
        ) from e
    except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as e:
        died = config.max_retries + 1
        raise EngineError(
            f"part {shard} of run {config.run!r}: its Ray worker died {died} "
            f"time{'s' if died > 1 else ''}, more than --max-retries {config.max_retries} "
            "allows; its last checkpoint is kept: run the same command again to resume"
        ) from e
    except ray.exceptions.RayError as e:
        raise EngineError(
            f"part {shard} of run {config.run!r}: Ray failed: {e}".splitlines()[0]
        ) from e
    return out


def _summary(
    config: ExtractConfig, results: dict[int, tuple[ExtractResult, int]], seconds: float
) -> RayExtractResult:
    # a part may find the run committed because the task that committed it died after
    before = all(r.status == "already-committed" for r, _ in results.values())
    status = "already-committed" if before else "committed"
    run_json = next((r.run_json for r, _ in results.values() if r.run_json is not None), None)
    if run_json is None:
        raise EngineError(
            f"every part of run {config.run!r} finished but none committed it; "
            f"run `actstore commit {config.store} {config.run} --num-shards {config.num_shards}`"
        )
    rows = {p["index"]: p["n_rows"] for p in run_json["parts"]}
    outcomes = tuple(
        PartOutcome(k, r.status, rows.get(k, r.rows), attempt)
        for k, (r, attempt) in sorted(results.items())
    )
    return RayExtractResult(
        store=store_path(config.store),
        run=config.run,
        shard=None,
        status=status,
        rows=run_json["counts"]["rows"],
        counts=dict(run_json["counts"]),
        seconds=seconds,
        run_json=run_json,
        workers=config.num_shards,
        parts=outcomes,
    )
