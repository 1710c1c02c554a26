"""One extraction part into a store on object storage (``--store s3://bucket/prefix``).

The job writes its part into a local *staging store* (an ordinary store: part lock,
checkpoints, resume after kill -9 as on disk), then publishes through
:class:`~actstore.store._bucket.Bucket`:

1. before the model loads, what the bucket already has is made known to the staging: a
   run committed there (its ``run.json``, so the usual identity check answers "already
   committed" or refuses other options) and this part, when a job elsewhere completed
   it (its staging files, so this job goes straight to the commit);
2. once the part is complete it uploads its own objects (arrays, then its staging with
   ``progress.json`` last);
3. if every part is complete in the bucket, it fetches the other parts' staging (small:
   tokens, docs, progress; never their arrays), commits the run in the staging store as
   any local job would, uploads the run's files and adds the run to the bucket's manifest
   by a conditional PUT (see :mod:`actstore.store._bucket`), then deletes the bucket's
   staging and the local copy.

Every step is redone unchanged by a job run again after a kill anywhere: uploads and
downloads replace whole objects, the local commit finishes a half-done commit, and the
manifest update adds the run only if it is not there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from actstore.errors import ActstoreError, RunExistsError, StoreCorruptError
from actstore.extract.config import ExtractConfig
from actstore.extract.progress import ExtractProgress
from actstore.extract.runner import ExtractResult, extract_local
from actstore.store._bucket import Bucket
from actstore.store._faults import crash_point
from actstore.store._objects import ObjectPath, store_path
from actstore.store.claim import OVERWRITE_HINT, drop_run
from actstore.store.commit import try_commit
from actstore.store.format import (
    ARRAYS_DIR,
    DOCS_DIR,
    PART_META_NAME,
    PARTS_DIR,
    PROGRESS_NAME,
    RUNS_DIR,
    ManifestJSON,
    RunJSON,
    docs_file_part,
    part_name,
    run_dir,
    run_json_path,
)
from actstore.store.locks import try_lock_part
from actstore.store.manifest import (
    atomic_write_json,
    create_store,
    read_manifest,
    read_run_json,
    remove_store_if_unused,
    update_manifest,
)
from actstore.store.part import Progress, load_progress, read_part_meta

__all__ = ["commit_remote", "default_staging", "extract_remote"]


def default_staging(url: ObjectPath, staging: str | None = None) -> Path:
    """Where a job writes the parts of the store ``url`` before uploading them:
    ``staging`` if given, else ``$ACTSTORE_STAGING/BUCKET/PREFIX``, else
    ``~/.cache/actstore/staging/BUCKET/PREFIX`` (under ``$XDG_CACHE_HOME`` when set)."""
    if staging:
        return Path(staging)
    base = os.environ.get("ACTSTORE_STAGING")
    if not base:
        cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        base = str(Path(cache) / "actstore" / "staging")
    return Path(base) / url.key


def extract_remote(
    config: ExtractConfig, progress: Callable[[ExtractProgress], None] | None = None
) -> ExtractResult:
    """:func:`~actstore.extract.runner.extract` of part ``config.shard`` into the object
    store ``config.store`` (see the module docstring); the result names the URL."""
    url = store_path(config.store)
    assert isinstance(url, ObjectPath)
    bucket = Bucket(url)
    staging = default_staging(url, config.staging)
    committed, _ = bucket.manifest()  # no bucket, no server: one line before anything
    create_store(staging)
    try:
        return _extract_remote(config, progress, bucket, staging, committed)
    except BaseException:
        remove_store_if_unused(staging)  # a job refused before it staged anything
        raise


def _extract_remote(
    config: ExtractConfig,
    progress: Callable[[ExtractProgress], None] | None,
    bucket: Bucket,
    staging: Path,
    committed: ManifestJSON | None,
) -> ExtractResult:
    url, run = bucket.root, config.run
    local = dataclasses.replace(config, store=str(staging), staging=None)
    if committed is not None and run in committed["runs"]:
        _mirror_committed(bucket, staging, run, committed)
        bucket.delete(f"{RUNS_DIR}/{run}/{PARTS_DIR}")  # left by a job killed after the PUT
    else:
        _fetch_part(bucket, staging, run, config.shard)

    def publish(cfg: ExtractConfig, prog: Progress, seconds: float) -> ExtractResult:
        crash_point("publish.start")
        if _committed(bucket, run):
            # committed meanwhile by jobs elsewhere: never upload over a committed run
            run_json = _bucket_run_json(bucket, run)
            _check_identity(bucket, staging, run, cfg.shard, run_json, "the committed run")
            status = "already-committed"
        else:
            theirs, _ = bucket.get_json(_part_rel(run, cfg.shard, PART_META_NAME))
            _check_identity(bucket, staging, run, cfg.shard, theirs, "its part in the bucket")
            _upload_part(bucket, staging, run, cfg.shard)
            crash_point("publish.part")
            status, run_json = _commit(bucket, staging, run, cfg.num_shards, own=cfg.shard)
        return ExtractResult(
            url, run, cfg.shard, status, prog["rows"], prog["counts"], seconds, run_json
        )

    try:
        result = extract_local(local, progress, publish)
    except RunExistsError as e:  # the staging store's message, but --overwrite is refused here
        hint = "pick another --run (a run in object storage is not replaced: no --overwrite)"
        raise RunExistsError(str(e).replace(OVERWRITE_HINT, hint)) from None
    # the staging store said "committed" before the model ran, and the bucket lacks the run:
    # committed there by a job killed before it published the run
    if result.store != url and not _committed(bucket, run):
        status, run_json = _publish_run(bucket, staging, run)
        result = dataclasses.replace(result, status=status, run_json=run_json or result.run_json)
    if result.status != "part-complete":
        _forget(staging, run)
    return dataclasses.replace(result, store=url)


def commit_remote(
    url: ObjectPath, run: str, num_parts: int, staging: str | None = None
) -> RunJSON | None:
    """``actstore commit`` of a run in the object store ``url``: commit it if all
    ``num_parts`` parts are complete in the bucket (None if not)."""
    bucket = Bucket(url)
    local = default_staging(url, staging)
    create_store(local)
    status, run_json = _commit(bucket, local, run, num_parts)
    if status != "part-complete":
        _forget(local, run)
    return run_json


def _forget(staging: Path, run: str) -> None:
    """Delete the staging store's copy of ``run`` (committed in the bucket), unless a local
    job holds one of its parts (then a later job deletes it)."""
    with contextlib.suppress(ActstoreError):
        drop_run(staging, run)


def _committed(bucket: Bucket, run: str) -> bool:
    """Whether the bucket's manifest names ``run``."""
    manifest, _ = bucket.manifest()
    return manifest is not None and run in manifest["runs"]


def _complete_here(staging: Path, run: str, index: int) -> bool:
    """Whether part ``index`` is complete in the staging store."""
    progress = load_progress(staging, run, index)
    return progress is not None and progress["complete"]


def _complete_in_bucket(bucket: Bucket, run: str, index: int) -> bool:
    """Whether part ``index``'s ``progress.json`` in the bucket says it is complete."""
    remote, _ = bucket.get_json(_part_rel(run, index, PROGRESS_NAME))
    return isinstance(remote, dict) and remote.get("complete") is True


# ---------------------------------------------------------------------- before the job


def _mirror_committed(bucket: Bucket, staging: Path, run: str, manifest: ManifestJSON) -> None:
    """Make the run that the bucket has committed known to the staging store (its
    ``run.json`` and manifest entry), unless the staging has committed it itself."""
    if run in read_manifest(staging)["runs"]:
        return
    run_json, _ = bucket.get_json(f"{RUNS_DIR}/{run}/run.json")
    if not isinstance(run_json, dict) or run_json.get("run") != run:
        raise StoreCorruptError(
            f"{bucket.root}: the manifest lists run {run!r} but its run.json is missing or "
            "names another run; the store is damaged"
        )
    atomic_write_json(run_json_path(staging, run), run_json)
    entry = manifest["runs"][run]
    update_manifest(staging, lambda m: m["runs"].__setitem__(run, entry))


def _fetch_part(bucket: Bucket, staging: Path, run: str, shard: int) -> None:
    """Copy part ``shard``'s staging from the bucket when it is complete there and not in
    the staging store (a job elsewhere finished it); no-op while a local job writes it."""
    if run in read_manifest(staging)["runs"]:
        return  # committed here, not yet published: the job publishes it
    if _complete_here(staging, run, shard) or not _complete_in_bucket(bucket, run, shard):
        return
    lock = try_lock_part(staging, run, shard, purpose="fetch")
    if lock is None:
        return  # the local writer's job reports it
    with lock:
        _download_part(bucket, staging, run, shard)


def _download_part(bucket: Bucket, staging: Path, run: str, index: int) -> None:
    """Replace the staging of part ``index`` by the bucket's (complete) one; the part's
    arrays stay in the bucket, and arrays a killed local job left are deleted (they must
    never be uploaded over the bucket's). The caller holds the part's lock."""
    shutil.rmtree(run_dir(staging, run) / ARRAYS_DIR / part_name(index), ignore_errors=True)
    dest = run_dir(staging, run) / PARTS_DIR / part_name(index)
    shutil.rmtree(dest, ignore_errors=True)  # no file of an earlier attempt stays beside it
    bucket.download(_part_rel(run, index), dest, last=PROGRESS_NAME)


def _part_rel(run: str, index: int, name: str = "") -> str:
    rel = f"{RUNS_DIR}/{run}/{PARTS_DIR}/{part_name(index)}"
    return f"{rel}/{name}" if name else rel


# ---------------------------------------------------------------------- after the part


def _files(folder: Path, rel: str) -> Iterator[tuple[Path, str]]:
    """``(file, store-relative name)`` of every file under ``folder`` (``rel`` names it),
    leaving out hidden and temporary files."""
    if not folder.is_dir():
        return
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not any(p.startswith(".") for p in path.relative_to(folder).parts):
            yield path, f"{rel}/{path.relative_to(folder).as_posix()}"


def _upload_part(bucket: Bucket, staging: Path, run: str, shard: int) -> None:
    """Upload part ``shard``'s objects: its arrays (and part 0 the run's matrices), its
    staging files, and its ``progress.json`` last."""
    rdir = run_dir(staging, run)
    arrays = rdir / ARRAYS_DIR
    rel_arrays = f"{RUNS_DIR}/{run}/{ARRAYS_DIR}"
    files = list(_files(arrays / part_name(shard), f"{rel_arrays}/{part_name(shard)}"))
    if shard == 0 and arrays.is_dir():
        for entry in arrays.iterdir():
            if entry.is_dir() and not entry.name.startswith(("part-", ".")):
                files.extend(_files(entry, f"{rel_arrays}/{entry.name}"))  # the matrices
    part = rdir / PARTS_DIR / part_name(shard)
    staged = [f for f in _files(part, _part_rel(run, shard)) if f[0].name != PROGRESS_NAME]
    bucket.upload(
        [*files, *staged], last=[(part / PROGRESS_NAME, _part_rel(run, shard, PROGRESS_NAME))]
    )


def _check_identity(
    bucket: Bucket, staging: Path, run: str, shard: int, theirs: Any, what: str
) -> None:
    """Raise :class:`~actstore.errors.RunExistsError` if ``theirs`` (a ``run.json`` or a
    part's ``meta.json`` from the bucket, or None) was written with other options than
    this job's part."""
    meta = read_part_meta(staging, run, shard)
    if not isinstance(theirs, dict) or meta is None:
        return
    if theirs.get("identity") != meta["identity"]:
        raise RunExistsError(
            f"run {run!r} in {bucket.root}: {what} was written with other options than this "
            f"job's part {shard} (a job elsewhere, meanwhile); nothing was uploaded. Re-run "
            "with the same arguments, or pick another --run name"
        )


def _commit(
    bucket: Bucket, staging: Path, run: str, num_parts: int, own: int | None = None
) -> tuple[str, RunJSON | None]:
    """Commit the run in the bucket if every part is complete there (see the module
    docstring); the status as :func:`~actstore.store.commit.try_commit` says it.

    ``own`` is the part this job holds the lock of and has just uploaded. A part complete
    in the staging store but not in the bucket (its job died before its upload, or is
    uploading now) is uploaded here if its lock is free, else the run waits for it.
    """
    if _committed(bucket, run):
        return "already-committed", _bucket_run_json(bucket, run)
    for k in range(num_parts):
        in_bucket = _complete_in_bucket(bucket, run, k)
        if in_bucket and (k == own or _complete_here(staging, run, k)):
            continue
        if k == own:
            return _waiting(bucket, run)  # its staging was deleted by a committer meanwhile
        lock = try_lock_part(staging, run, k, purpose="publish")
        if lock is None:
            return "part-complete", None  # a local job is writing part k: it commits
        with lock:
            if not in_bucket and _complete_here(staging, run, k):
                _upload_part(bucket, staging, run, k)  # its job died before uploading it
            elif in_bucket:
                _download_part(bucket, staging, run, k)
            else:
                return _waiting(bucket, run)
    status, _ = try_commit(staging, run, num_parts)
    if status == "part-complete":
        return _waiting(bucket, run)
    crash_point("publish.commit")
    return _publish_run(bucket, staging, run)


def _waiting(bucket: Bucket, run: str) -> tuple[str, RunJSON | None]:
    """``part-complete``, unless another job committed the run meanwhile (and deleted
    the staging this job was looking for)."""
    if _committed(bucket, run):
        return "already-committed", _bucket_run_json(bucket, run)
    return "part-complete", None


def _publish_run(bucket: Bucket, staging: Path, run: str) -> tuple[str, RunJSON | None]:
    """Upload the files of ``run``, committed in the staging store, that no part
    uploaded, and add the run to the bucket's manifest; then delete the bucket's staging."""
    run_json = read_run_json(staging, run)
    entry = read_manifest(staging)["runs"][run]
    rdir = run_dir(staging, run)
    skip = {f"{ARRAYS_DIR}/{name}" for name in run_json["matrices"]}  # part 0 uploaded them
    files: list[tuple[Path, str]] = []
    for entry_path in sorted(rdir.iterdir()):
        name = entry_path.name
        if name == PARTS_DIR or name.startswith("."):
            continue
        rel = f"{RUNS_DIR}/{run}/{name}"
        if name == ARRAYS_DIR:
            for sub in sorted(entry_path.iterdir()):
                if sub.name.startswith("part-") or f"{ARRAYS_DIR}/{sub.name}" in skip:
                    continue
                files.extend(
                    _files(sub, f"{rel}/{sub.name}")
                    if sub.is_dir()
                    else [(sub, f"{rel}/{sub.name}")]
                )
        elif entry_path.is_dir():
            files.extend(_files(entry_path, rel))
        else:
            files.append((entry_path, rel))
    for doc in sorted((staging / DOCS_DIR).glob(f"{run}.part-*.parquet")):
        if docs_file_part(run, doc.name) is not None:
            files.append((doc, f"{DOCS_DIR}/{doc.name}"))
    bucket.upload(files)
    crash_point("publish.run")

    mine = False

    def add(manifest: ManifestJSON) -> bool:
        nonlocal mine
        if run in manifest["runs"]:
            # another job committed it (from the same parts), or this job's PUT landed
            # and only its answer was lost (then the entry is this one)
            mine = manifest["runs"][run] == entry
            return False
        manifest["runs"][run] = entry
        return True

    status = "committed" if bucket.update_manifest(add) or mine else "already-committed"
    crash_point("publish.manifest")
    bucket.delete(f"{RUNS_DIR}/{run}/{PARTS_DIR}")
    return status, run_json if status == "committed" else _bucket_run_json(bucket, run)


def _bucket_run_json(bucket: Bucket, run: str) -> RunJSON | None:
    data, _ = bucket.get_json(f"{RUNS_DIR}/{run}/run.json")
    return data if isinstance(data, dict) else None  # type: ignore[return-value]
