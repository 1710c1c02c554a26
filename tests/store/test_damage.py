"""Damaged stores: every damaged file is a one-line error naming it, never numbers.

Each case copies a small committed store, damages one file the way a disk, a copy or a
person does (a flipped byte, a flipped bit, a deleted or truncated file, a record
missing keys), then reads it through the Python API and the command line.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import zarr
from zarr.storage import LocalStore

import actstore
from actstore.cli.main import main
from actstore.errors import ActstoreError, StoreCorruptError
from actstore.store.arrays import Layout
from actstore.store.reader import StoreReader
from actstore.store.synthetic import write_synthetic_run

RUN, SITE, D = "r", "hidden.0", 8
# 40 docs x 10 tokens = 400 rows in two parts; chunks of 4 rows, shard files of 32
LAYOUT = {"none": Layout(chunk_rows=4, shard_rows=32), "zstd": Layout(4, 32, "zstd")}


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Intact stores, one per codec (the direct shard reader, and zarr-python's)."""
    out = {}
    for codec, layout in LAYOUT.items():
        path = tmp_path_factory.mktemp(codec) / "s.acts"
        write_synthetic_run(
            path, RUN, n_docs=40, tokens_per_doc=10, d=D, num_parts=2, layout=layout
        )
        out[codec] = path
    return out


def shard(store: Path, n: int = 1) -> Path:
    return store / f"runs/{RUN}/arrays/part-0000/{SITE}/c/{n}/0"


def flip(path: Path, at: int, mask: int) -> Path:
    data = bytearray(path.read_bytes())
    data[at] ^= mask
    path.write_bytes(bytes(data))
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def flip_data_byte(store: Path) -> Path:
    return flip(shard(store), 37, 0x40)  # inside the first chunk's rows


def flip_index_bit(store: Path) -> Path:
    return flip(shard(store), -4 - 16 * 8 + 3, 0x01)  # an offset in the shard index


def delete_shard(store: Path) -> Path:
    shard(store).unlink()
    return shard(store)


def delete_last_shard_of_part(store: Path) -> Path:
    last = max(shard(store).parent.parent.iterdir(), key=lambda p: int(p.name)) / "0"
    last.unlink()
    return last


def truncate_tokens(store: Path) -> Path:
    return truncate(sorted((store / f"runs/{RUN}/tokens").glob("*.parquet"))[-1], 0.7)


def truncate_run_json(store: Path) -> Path:
    return truncate(store / f"runs/{RUN}/run.json")


def drop_run_json_key(store: Path) -> Path:
    path = store / f"runs/{RUN}/run.json"
    meta = json.loads(path.read_text())
    del meta["parts"]
    path.write_text(json.dumps(meta))
    return path


def corrupt_zarr_json(store: Path) -> Path:
    path = store / f"runs/{RUN}/arrays/part-0000/{SITE}/zarr.json"
    path.write_bytes(b"\x89\x00 not json" + path.read_bytes()[40:])
    return path


def drop_manifest_key(store: Path) -> Path:
    path = store / "actstore.json"
    manifest = json.loads(path.read_text())
    del manifest["runs"][RUN]["n_docs"]
    path.write_text(json.dumps(manifest))
    return path


def truncate_manifest(store: Path) -> Path:
    return truncate(store / "actstore.json")


ARRAY_DAMAGE = [flip_data_byte, flip_index_bit, delete_shard, delete_last_shard_of_part]
WHOLE_STORE_DAMAGE = [
    truncate_run_json,
    drop_run_json_key,
    drop_manifest_key,
    truncate_manifest,
]
CASES = [
    *[(f, codec) for f in ARRAY_DAMAGE for codec in LAYOUT],
    (corrupt_zarr_json, "none"),
    (truncate_tokens, "none"),
    *[(f, "none") for f in WHOLE_STORE_DAMAGE],
]

# Python calls, each expected to fail for the damage kinds listed with it
ALL_ROWS = np.arange(400)
API: dict[str, tuple[Callable[[Path], Any], set[Callable[[Path], Path]]]] = {
    "vectors": (
        lambda p: actstore.open(p).vectors(RUN, SITE, ALL_ROWS),
        {*ARRAY_DAMAGE, corrupt_zarr_json, *WHOLE_STORE_DAMAGE},
    ),
    "vectors(sql)": (
        lambda p: actstore.open(p).vectors(RUN, SITE, "SELECT row FROM tokens"),
        {*ARRAY_DAMAGE, corrupt_zarr_json, truncate_tokens, *WHOLE_STORE_DAMAGE},
    ),
    "iter_vectors": (
        lambda p: [x for _, x in actstore.open(p).iter_vectors(RUN, SITE, batch_rows=50)],
        {*ARRAY_DAMAGE, corrupt_zarr_json, *WHOLE_STORE_DAMAGE},
    ),
    "sql": (
        lambda p: actstore.open(p).sql("SELECT count(*), sum(token_id) FROM tokens").fetchall(),
        {truncate_tokens, *WHOLE_STORE_DAMAGE},
    ),
    "open": (lambda p: actstore.open(p).runs, {truncate_manifest, drop_manifest_key}),
}
# command lines ({store} and {out} filled in), expected to fail likewise
EXPORT = ["export", "{store}", "--run", RUN, "--site", SITE, "--out", "{out}"]
CLI: dict[str, tuple[list[str], set[Callable[[Path], Path]]]] = {
    "export": (
        EXPORT,
        {*ARRAY_DAMAGE, corrupt_zarr_json, *WHOLE_STORE_DAMAGE},
    ),
    "export --rows": (
        [*EXPORT, "--rows", "SELECT row FROM tokens WHERE pos > 2"],
        {*ARRAY_DAMAGE, corrupt_zarr_json, truncate_tokens, *WHOLE_STORE_DAMAGE},
    ),
    "sql": (
        ["sql", "{store}", "SELECT token_id, count(*) FROM tokens GROUP BY ALL"],
        {truncate_tokens, *WHOLE_STORE_DAMAGE},
    ),
}


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(("damage", "codec"), CASES, ids=[f"{f.__name__}-{c}" for f, c in CASES])
def test_damage_is_one_line_naming_the_file(
    stores: dict[str, Path], tmp_path: Path, damage: Callable[[Path], Path], codec: str
) -> None:
    store = tmp_path / "s.acts"
    shutil.copytree(stores[codec], store)
    intact = {name: call(store) for name, (call, _) in API.items()}  # all work before
    bad = damage(store)
    for name, (call, breaks) in API.items():
        if damage not in breaks:
            got = call(store)  # untouched by this damage: still the right answer
            if name == "vectors":
                np.testing.assert_array_equal(got, intact[name])
            continue
        with pytest.raises(StoreCorruptError) as info:
            call(store)
        message = str(info.value)
        assert str(bad) in message, (name, message)
        assert "\n" not in message
        assert "damaged" in message
        assert isinstance(info.value, ActstoreError | OSError)
    for name, (argv, breaks) in CLI.items():
        out = tmp_path / f"{name.replace(' ', '')}.npy"
        args = [a.format(store=store, out=out) for a in argv]
        code, stdout, stderr = run_cli(args)
        if damage not in breaks:
            assert code == 0, (name, stderr)
            continue
        assert code == 1, (name, stdout, stderr)
        assert len(stderr.splitlines()) == 1, (name, stderr)
        assert stderr.startswith("actstore: error: ")
        assert str(bad) in stderr
        assert not stdout
        assert not out.exists()  # a failed export leaves no file that looks like output
        assert not list(tmp_path.glob(".*.part-*"))


def test_a_damaged_tokens_file_leaves_the_other_views_working(
    stores: dict[str, Path], tmp_path: Path
) -> None:
    store = tmp_path / "s.acts"
    shutil.copytree(stores["none"], store)
    write_synthetic_run(store, "other", n_docs=3, tokens_per_doc=4, d=D)
    bad = truncate_tokens(store)
    with actstore.open(store) as s:
        assert s.sql("SELECT run, n_rows FROM runs ORDER BY run").fetchall() == [
            ("other", 12),
            (RUN, 400),
        ]
        assert s.sql("SELECT count(*) FROM tokens WHERE run = 'other'").fetchall() == [(12,)]
        assert len(s.rows("other", "SELECT row FROM tokens")) == 12
        assert s.sql("SELECT count(*) FROM vocab").fetchall() == [(2000,)]
        for query in (
            "SELECT count(*) FROM tokens",
            "SELECT * FROM tokens WHERE token_id = 5",
            "SELECT run, count(*) FROM tokens GROUP BY run",
        ):
            with pytest.raises(StoreCorruptError, match=str(bad)):
                s.sql(query).fetchall()
        with pytest.raises(StoreCorruptError, match=str(bad)):
            s.rows(RUN, "SELECT row FROM tokens")


def test_damaged_docs_vocab_and_result_files(stores: dict[str, Path], tmp_path: Path) -> None:
    from actstore.store.results import write_result

    store = tmp_path / "s.acts"
    shutil.copytree(stores["none"], store)
    write_result(store, "res", pa.table({"x": [1, 2, 3]}), meta={"analysis": "test"})
    docs = truncate(sorted((store / "docs").glob("*.parquet"))[0])
    vocab = truncate(store / f"runs/{RUN}/vocab.parquet", 0.9)
    result = truncate(store / "results/res/result.parquet", 0.9)
    with actstore.open(store) as s:
        assert s.sql("SELECT count(*) FROM tokens").fetchall() == [(400,)]
        for query, bad in (
            ("SELECT text FROM docs WHERE doc_id = 3", docs),
            ("SELECT count(*) FROM vocab", vocab),
            ("SELECT t.row FROM tokens t JOIN vocab v USING (token_id)", vocab),
            ("SELECT x FROM res", result),
            ("SELECT * FROM res", result),
        ):
            with pytest.raises(StoreCorruptError, match=str(bad)):
                s.sql(query).fetchall()


def test_plain_zarr_reads_the_checksummed_arrays_and_sees_damage(
    stores: dict[str, Path], tmp_path: Path
) -> None:
    store = tmp_path / "s.acts"
    shutil.copytree(stores["none"], store)
    root = LocalStore(store / f"runs/{RUN}/arrays", read_only=True)
    arr = zarr.open_array(store=root, path=f"part-0000/{SITE}", mode="r")
    with actstore.open(store) as s:
        np.testing.assert_array_equal(arr[:], s.vectors(RUN, SITE, np.arange(arr.shape[0])))
    flip_data_byte(store)
    with pytest.raises(ValueError, match="checksum"):
        zarr.open_array(store=root, path=f"part-0000/{SITE}", mode="r")[:]


def test_a_damaged_matrix_chunk_is_an_error(stores: dict[str, Path], tmp_path: Path) -> None:
    store = tmp_path / "s.acts"
    shutil.copytree(stores["none"], store)
    chunk = store / f"runs/{RUN}/arrays/embed/c/0/0"
    with actstore.open(store) as s:
        assert s.matrix(RUN, "embed").shape == (1000, D)
    flip(chunk, 100, 0x10)
    with actstore.open(store) as s, pytest.raises(StoreCorruptError, match=str(chunk)):
        s.matrix(RUN, "embed")
    chunk.unlink()
    with actstore.open(store) as s, pytest.raises(StoreCorruptError, match="missing"):
        s.matrix(RUN, "embed")


def test_each_chunk_is_checked_once_per_opened_map(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from actstore.store import _shard

    store = tmp_path / "s.acts"
    write_synthetic_run(store, RUN, n_docs=40, tokens_per_doc=10, d=6, layout=LAYOUT["none"])
    chunk_bytes = 4 * 6 * 4  # 4 rows of 6 float32 (an index of 8 entries is 128 bytes)
    checked: list[int] = []
    real = _shard.crc32c

    def counting(data: Any) -> int:
        if len(data) == chunk_bytes:
            checked.append(1)
        return real(data)

    monkeypatch.setattr(_shard, "crc32c", counting)
    reader = StoreReader(store)
    run = reader.run(RUN)
    rows = np.array([0, 1, 2, 5, 9, 40, 41, 250])
    run.gather(SITE, rows)
    assert len(checked) == 5  # chunks 0, 1, 2 (rows 0..11), 10 (rows 40..43), 62
    run.gather(SITE, rows)
    run.gather(SITE, rows[::-1])
    assert len(checked) == 5  # checked already: no second pass over the same bytes
    run.site_array(SITE).read(0, 32)  # the rest of shard 0: chunks 3..7
    assert len(checked) == 10
    run.site_array(SITE).read(0, 400)  # every other chunk of the part, once
    assert len(checked) == 100
    reader.maps.clear()  # a map opened again is checked again
    run.gather(SITE, rows[:1])
    assert len(checked) == 101


def test_centroid_arrays_are_checksummed(tmp_path: Path) -> None:
    from actstore.store.arrays import checksummed, open_array

    store = tmp_path / "s.acts"
    write_synthetic_run(
        store, RUN, n_docs=8, tokens_per_doc=5, d=D, vocab_size=50, num_parts=2, centroids=True
    )
    root = store / f"runs/{RUN}/arrays"
    reader = StoreReader(store)
    sums, counts = reader.run(RUN).centroid_sums(SITE)
    assert sums.shape == (50, D)
    assert counts.sum() == 40
    for name in (SITE, "count"):
        assert checksummed(open_array(root, f"centroids/{name}")), name
    chunk = root / f"centroids/{SITE}/c/0/0"
    flip(chunk, len(chunk.read_bytes()) // 2, 0x10)
    with pytest.raises(StoreCorruptError, match=str(chunk)):
        StoreReader(store).run(RUN).centroid_sums(SITE)
    chunk.unlink()
    with pytest.raises(StoreCorruptError, match="missing"):
        StoreReader(store).run(RUN).centroid_sums(SITE)


def test_damaged_parquet_read_outside_sql_is_one_line(
    stores: dict[str, Path], tmp_path: Path
) -> None:
    """The store's Parquet files that actstore reads with pyarrow (the vocabulary for a token
    lookup, the docs for a word search and `info`, a saved result) fail like SQL does."""
    from actstore.store.info import store_info
    from actstore.store.results import read_result, write_result

    store = tmp_path / "s.acts"
    shutil.copytree(stores["none"], store)
    write_result(store, "res", pa.table({"x": [1, 2, 3]}), meta={"analysis": "test"})
    with actstore.open(store) as s:
        assert list(s.token_ids(RUN, "t5")) == [5]
        assert len(s.rows_of_word(RUN, "doc")) > 0
    assert store_info(store)["docs"] == 40
    assert read_result(store, "res")[0].num_rows == 3

    vocab = truncate(store / f"runs/{RUN}/vocab.parquet", 0.9)
    docs = truncate(sorted((store / "docs").glob("*.parquet"))[0], 0.8)
    result = truncate(store / "results/res/result.parquet", 0.9)
    for call, bad in (
        (lambda: actstore.open(store).token_ids(RUN, "t5"), vocab),
        (lambda: actstore.open(store).rows_of_word(RUN, "doc"), docs),
        (lambda: store_info(store), docs),
        (lambda: read_result(store, "res"), result.resolve()),  # the version read
    ):
        with pytest.raises(StoreCorruptError) as info:
            call()
        message = str(info.value)
        assert str(bad) in message
        assert "damaged" in message
        assert "\n" not in message
    meta = store / "results/res/meta.json"
    result.unlink()
    shutil.copy(stores["none"] / f"runs/{RUN}/vocab.parquet", result)  # a whole Parquet again
    meta.write_text("{ not json")
    with pytest.raises(StoreCorruptError, match=str(meta.resolve())):
        read_result(store, "res")


@pytest.mark.parametrize(
    "listed",
    [
        {"token_files": ["../../../../../../etc/passwd"]},
        {"doc_files": ["/abs/docs/000000.parquet"]},
        {"centroid_file": "centroids/../../x.npz"},
        {"complete": "yes"},
    ],
)
def test_a_checkpoint_listing_foreign_names_is_refused(
    tmp_path: Path, listed: dict[str, Any]
) -> None:
    """A part's progress.json (a staged part, e.g. one fetched from a bucket) names files
    of its own folder only: anything else is a one-line error, never a file opened."""
    from actstore.store.part import load_progress

    folder = tmp_path / "s.acts/runs/r/parts/part-0000"
    folder.mkdir(parents=True)
    good = {
        "complete": True,
        "token_files": ["tokens/000000.parquet", "tokens/000001-000003.parquet"],
    }
    good |= {"doc_files": ["docs/000000.parquet"], "centroid_file": "centroids/000002.npz"}
    (folder / "progress.json").write_text(json.dumps(good))
    assert load_progress(tmp_path / "s.acts", "r", 0) == good
    (folder / "progress.json").write_text(json.dumps(good | listed))
    with pytest.raises(StoreCorruptError, match=r"progress.json is damaged or was not written"):
        load_progress(tmp_path / "s.acts", "r", 0)
