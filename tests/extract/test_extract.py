"""End-to-end extraction: stored vectors equal a direct forward pass, for every architecture."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import ml_dtypes
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import zarr

from actstore.extract.config import ExtractConfig
from actstore.extract.runner import extract

ARCHS = ["gpt2", "gpt_neo", "llama", "qwen2", "bert"]

SENTENCES = [
    "The dog barks at the cat.",
    "A cow moos in the field while the farmer sleeps under a tree.",
    "Aspirin treats a headache.",
    "",
    "Insulin is used for diabetes; penicillin cures an infection, and the dog barks again.",
    "Red and blue make purple.",
    "The dog barks at the cat.",
    "Cats meow. Dogs bark. Cows moo. Birds sing in the morning when the sun comes up.",
]


def write_corpus(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t, "n": i}) + "\n" for i, t in enumerate(texts)))
    return path


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus.jsonl", SENTENCES)


def run(model: Path | str, data: Path, store: Path, **kw: Any) -> Any:
    kw.setdefault("run", "r")
    kw.setdefault("quiet", True)
    kw.setdefault("device", "cpu")
    progress = kw.pop("progress", None)
    config = ExtractConfig(model=str(model), data=str(data), store=str(store), **kw)
    return extract(config, progress=progress)


def read_run(store: Path, run: str = "r") -> dict[str, Any]:
    """Everything stored for a run, read with plain zarr + pyarrow (no actstore reader)."""
    rj = json.loads((store / "runs" / run / "run.json").read_text())
    tokens = pq.read_table(store / "runs" / run / "tokens").to_pandas().sort_values("row")
    group = zarr.open_group(store / "runs" / run / "arrays", mode="r")
    sites = {}
    for s in rj["sites"]:
        parts = [group[f"part-{p['index']:04d}/{s['name']}"][:] for p in rj["parts"]]
        x = np.concatenate(parts)
        if s["dtype"] == "bfloat16":
            x = x.view(ml_dtypes.bfloat16)
        sites[s["name"]] = x.astype(np.float32)
    return {"run": rj, "tokens": tokens.reset_index(drop=True), "sites": sites, "group": group}


def direct_hidden_states(model_dir: Path, tokens: Any) -> dict[int, dict[int, np.ndarray]]:
    """doc_id -> {layer: [n_tokens, d]} from a plain HF forward pass, one doc at a time."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_dir).eval()
    out: dict[int, dict[int, np.ndarray]] = {}
    for doc_id, grp in tokens.groupby("doc_id"):
        ids = torch.tensor(grp.sort_values("pos")["token_id"].to_numpy()[None].astype(np.int64))
        with torch.no_grad():
            hs = model(input_ids=ids, output_hidden_states=True).hidden_states
        out[int(doc_id)] = {i: h[0].numpy() for i, h in enumerate(hs)}
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_stored_vectors_equal_direct_forward(
    arch: str, tiny_model_dirs: dict[str, Path], corpus: Path, tmp_path: Path
) -> None:
    store = tmp_path / "s.acts"
    res = run(tiny_model_dirs[arch], corpus, store, dtype="float32", batch_tokens=64)
    assert res.status == "committed"
    data = read_run(store)
    tokens = data["tokens"]
    rj = data["run"]
    n_layers = rj["model"]["n_layers"]
    assert sorted(data["sites"]) == sorted(f"hidden.{i}" for i in range(n_layers + 1))
    # rows dense and aligned with the tokens table; no padding rows
    assert tokens["row"].tolist() == list(range(len(tokens)))
    for x in data["sites"].values():
        assert x.shape[0] == len(tokens)
    assert rj["counts"]["rows"] == len(tokens)
    assert rj["counts"]["tokens"] == len(tokens)  # truncate mode: every fed token is stored
    # every record is a doc; the empty one has no tokens, the repeated text is run once
    assert rj["counts"]["docs"] == 8
    assert rj["counts"]["texts"] == 6
    assert rj["counts"]["empty_docs"] == 1
    assert rj["counts"]["duplicate_docs"] == 1
    assert tokens["doc_id"].nunique() == 6
    direct = direct_hidden_states(tiny_model_dirs[arch], tokens)
    for doc_id, unsorted in tokens.groupby("doc_id"):
        grp = unsorted.sort_values("pos")
        assert grp["pos"].tolist() == list(range(len(grp)))
        for i in range(n_layers + 1):
            stored = data["sites"][f"hidden.{i}"][grp["row"].to_numpy()]
            np.testing.assert_allclose(stored, direct[int(doc_id)][i], atol=1e-5, rtol=1e-5)


def test_minilm_fp16_bf16_within_rounding(minilm_dir: Path, corpus: Path, tmp_path: Path) -> None:
    ref = None
    for dtype, rtol in (("float32", 0.0), ("float16", 2**-10), ("bfloat16", 2**-7)):
        store = tmp_path / f"{dtype}.acts"
        run(minilm_dir, corpus, store, dtype=dtype, sites="hidden.0,hidden.3,hidden.6")
        data = read_run(store)
        if ref is None:
            ref = data
            tokens = data["tokens"]
            direct = direct_hidden_states(minilm_dir, tokens)
            for doc_id, grp in tokens.groupby("doc_id"):
                rows = grp.sort_values("pos")["row"].to_numpy()
                for i in (0, 3, 6):
                    np.testing.assert_allclose(
                        data["sites"][f"hidden.{i}"][rows], direct[int(doc_id)][i], atol=1e-5
                    )
            continue
        pd_equal = data["tokens"].equals(ref["tokens"])
        assert pd_equal
        for site, x in data["sites"].items():
            exact = ref["sites"][site]
            assert np.all(np.abs(x - exact) <= rtol * np.abs(exact) + 1e-30 + 2**-24)
        grp = data["group"]["part-0000/hidden.3"]
        assert grp.attrs["actstore_dtype"] == dtype


def test_special_tokens_flagged_and_spans(minilm_dir: Path, corpus: Path, tmp_path: Path) -> None:
    store = tmp_path / "s.acts"
    run(minilm_dir, corpus, store, sites="hidden.1")
    tokens = read_run(store)["tokens"]
    docs = pq.read_table(store / "docs").to_pandas().drop_duplicates("doc_id").set_index("doc_id")
    vocab = pq.read_table(store / "runs/r/vocab.parquet").to_pandas()
    cls_id, sep_id = 101, 102
    for doc_id, unsorted in tokens.groupby("doc_id"):
        grp = unsorted.sort_values("pos")
        assert grp["token_id"].iloc[0] == cls_id
        assert grp["token_id"].iloc[-1] == sep_id
        assert grp["special"].tolist() == [True] + [False] * (len(grp) - 2) + [True]
        text = docs.loc[doc_id, "text"]
        for tid, a, b in grp[~grp["special"]][["token_id", "start", "end"]].itertuples(index=False):
            piece = vocab.loc[tid, "piece"].removeprefix("##")
            assert text[a:b].lower() == piece
    # vocab counts equal the tokens table
    counts = tokens["token_id"].value_counts()
    assert (vocab.set_index("token_id").loc[counts.index, "count"] == counts).all()
    assert vocab["count"].sum() == len(tokens)
    assert "n" in docs.columns  # other corpus columns kept


def test_windows_store_each_token_once(minilm_dir: Path, tmp_path: Path) -> None:
    long_text = " ".join(f"word{i % 17} is number {i}." for i in range(60))
    corpus = write_corpus(tmp_path / "c.jsonl", [long_text, "short doc"])
    store_w = tmp_path / "w.acts"
    res = run(
        minilm_dir,
        corpus,
        store_w,
        sites="hidden.2",
        max_length=32,
        long_docs="window",
        window_overlap=8,
        dtype="float32",
    )
    tokens = read_run(store_w)["tokens"]
    full = read_run(store_w)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir)
    expected = tok(long_text)["input_ids"]
    long_id = tokens.groupby("doc_id").size().idxmax()
    grp = tokens[tokens["doc_id"] == long_id].sort_values("pos")
    assert grp["pos"].tolist() == list(range(len(expected)))
    assert grp["token_id"].tolist() == expected
    assert res.counts["windows"] > 2
    # the first window's vectors equal a direct forward over the first 32 tokens
    from transformers import AutoModel

    model = AutoModel.from_pretrained(minilm_dir).eval()
    first = [*expected[:31], 102]
    with torch.no_grad():
        hs = model(input_ids=torch.tensor([first]), output_hidden_states=True).hidden_states
    rows = grp["row"].to_numpy()[:31]
    np.testing.assert_allclose(full["sites"]["hidden.2"][rows], hs[2][0, :31].numpy(), atol=1e-5)
    # truncation keeps max_length tokens and counts the doc
    store_t = tmp_path / "t.acts"
    res_t = run(minilm_dir, corpus, store_t, sites="hidden.2", max_length=32)
    tt = read_run(store_t)["tokens"]
    assert tt.groupby("doc_id").size().max() == 32
    assert res_t.counts["truncated_docs"] == 1


def test_centroids_equal_numpy(minilm_dir: Path, corpus: Path, tmp_path: Path) -> None:
    store = tmp_path / "s.acts"
    run(minilm_dir, corpus, store, sites="hidden.0,hidden.4", dtype="float32", centroids=True)
    data = read_run(store)
    tokens = data["tokens"]
    assert data["run"]["centroids"] == ["hidden.0", "hidden.4"]
    count = data["group"]["centroids/count"][:]
    np.testing.assert_array_equal(count, np.bincount(tokens["token_id"], minlength=len(count)))
    for site in ("hidden.0", "hidden.4"):
        sums = data["group"][f"centroids/{site}"][:]
        expect = np.zeros_like(sums)
        np.add.at(expect, tokens["token_id"].to_numpy(), data["sites"][site].astype(np.float64))
        np.testing.assert_allclose(sums, expect, atol=1e-4)


def test_plain_tools_read_the_store(minilm_dir: Path, corpus: Path, tmp_path: Path) -> None:
    store = tmp_path / "s.acts"
    run(minilm_dir, corpus, store, sites="hidden.6", dtype="float16")
    n = duckdb.sql(f"SELECT count(*) FROM read_parquet('{store}/runs/r/tokens/*.parquet')")
    n_rows = n.fetchall()[0][0]
    arr = zarr.open(str(store / "runs/r/arrays/part-0000/hidden.6"), mode="r")
    assert arr.shape == (n_rows, 384)
    assert arr.dtype == np.float16
    embed = zarr.open(str(store / "runs/r/arrays/embed"), mode="r")
    assert embed.shape == (30522, 384)
    manifest = json.loads((store / "actstore.json").read_text())
    assert manifest["runs"]["r"]["n_rows"] == n_rows
    docs = duckdb.sql(f"SELECT count(*) FROM read_parquet('{store}/docs/*.parquet')").fetchall()
    assert docs == [(len(SENTENCES),)]


def test_head_matrices_for_causal_model(
    tiny_model_dirs: dict[str, Path], corpus: Path, tmp_path: Path
) -> None:
    store = tmp_path / "s.acts"
    run(tiny_model_dirs["llama"], corpus, store, sites="hidden.1")
    data = read_run(store)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"])
    g = data["group"]
    np.testing.assert_array_equal(g["embed"][:], model.get_input_embeddings().weight.detach())
    np.testing.assert_array_equal(g["unembed"][:], model.get_output_embeddings().weight.detach())
    np.testing.assert_array_equal(g["final_norm.weight"][:], model.model.norm.weight.detach())
    assert data["run"]["head"]["has_unembed"]


def test_only_requested_sites_and_modules(
    tiny_model_dirs: dict[str, Path], corpus: Path, tmp_path: Path
) -> None:
    store = tmp_path / "s.acts"
    run(tiny_model_dirs["gpt2"], corpus, store, sites="hidden.1,module:h.0.mlp", dtype="float32")
    data = read_run(store)
    assert sorted(data["sites"]) == ["hidden.1", "module:h.0.mlp"]
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_model_dirs["gpt2"]).eval()
    captured: list[torch.Tensor] = []
    handle = model.h[0].mlp.register_forward_hook(lambda m, i, o: captured.append(o))
    tokens = data["tokens"]
    doc_id = tokens["doc_id"].iloc[0]
    grp = tokens[tokens["doc_id"] == doc_id].sort_values("pos")
    with torch.no_grad():
        model(input_ids=torch.from_numpy(grp["token_id"].to_numpy().astype(np.int64)[None]))
    handle.remove()
    np.testing.assert_allclose(
        data["sites"]["module:h.0.mlp"][grp["row"].to_numpy()], captured[0][0].numpy(), atol=1e-5
    )


@pytest.fixture
def huge_model(tiny_model_dirs: dict[str, Path], tmp_path: Path) -> Path:
    """The tiny GPT-2 with embeddings scaled so hidden.0 overflows float16."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = tiny_model_dirs["gpt2"]
    model = AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():
        model.transformer.wte.weight.mul_(1e6)
    out = tmp_path / "huge"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


def test_float16_overflow_is_reported_never_inf(
    huge_model: Path, corpus: Path, tmp_path: Path
) -> None:
    from actstore.errors import FloatOverflowError

    store = tmp_path / "s.acts"
    with pytest.raises(
        FloatOverflowError, match=r"hidden\.0 has values beyond the float16 range \(max"
    ):
        run(huge_model, corpus, store, sites="hidden.0", dtype="float16")
    assert not store.exists()  # created by the failed job, which left nothing durable
    res = run(
        huge_model,
        corpus,
        store,
        sites="hidden.0",
        dtype="float16",
        on_overflow="clip",
        run="clipped",
    )
    x = zarr.open(str(store / "runs/clipped/arrays/part-0000/hidden.0"), mode="r")[:]
    assert np.isfinite(x).all()
    assert np.abs(x).max() == np.float16(65504)
    assert res.counts["clipped_values:hidden.0"] == int((np.abs(x) == np.float16(65504)).sum())
    run(huge_model, corpus, store, sites="hidden.0", dtype="bfloat16", run="bf16")
    y = read_run(store, "bf16")["sites"]["hidden.0"]
    assert np.isfinite(y).all()
    assert np.abs(y).max() > 65504


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("compute_dtype", ["float32", "float16", "bfloat16"])
def test_cuda_extraction_matches_cpu(
    minilm_dir: Path, corpus: Path, tmp_path: Path, compute_dtype: str
) -> None:
    cpu = tmp_path / "cpu.acts"
    gpu = tmp_path / "gpu.acts"
    run(minilm_dir, corpus, cpu, dtype="float32", centroids=True)
    run(
        minilm_dir,
        corpus,
        gpu,
        dtype="float32",
        centroids=True,
        device="cuda",
        compute_dtype=compute_dtype,
    )
    a, b = read_run(cpu), read_run(gpu)
    assert a["tokens"].equals(b["tokens"])
    tol = {"float32": 1e-4, "float16": 3e-2, "bfloat16": 2e-1}[compute_dtype]
    for site, x in a["sites"].items():
        np.testing.assert_allclose(b["sites"][site], x, atol=tol * max(1.0, np.abs(x).max()))
    np.testing.assert_array_equal(
        a["group"]["centroids/count"][:], b["group"]["centroids/count"][:]
    )


def test_no_matrices_stores_the_run_without_them(
    tiny_model_dirs: dict[str, Path], corpus: Path, tmp_path: Path
) -> None:
    """``--no-matrices``: the same rows, no per-vocabulary matrices (run.json says so), a
    one-line error from what needs them, and a resume with matrices is another run."""
    import actstore
    from actstore.errors import MatrixNotFoundError, RunExistsError

    model = tiny_model_dirs["gpt2"]
    full = run(model, corpus, tmp_path / "a.acts", sites="hidden.1")
    bare = run(model, corpus, tmp_path / "b.acts", sites="hidden.1", matrices=False)
    a, b = read_run(tmp_path / "a.acts"), read_run(tmp_path / "b.acts")
    assert a["tokens"].equals(b["tokens"])
    np.testing.assert_array_equal(a["sites"]["hidden.1"], b["sites"]["hidden.1"])
    assert set(a["run"]["matrices"]) >= {"embed", "unembed"}
    assert b["run"]["matrices"] == {}
    assert not (tmp_path / "b.acts/runs/r/arrays/embed").exists()
    assert full.counts == bare.counts
    with actstore.open(tmp_path / "b.acts") as s:
        with pytest.raises(MatrixNotFoundError, match="--no-matrices"):
            s.matrix("r", "embed")
        assert len(s.vectors("r", "hidden.1", np.arange(3))) == 3
    with pytest.raises(RunExistsError):
        run(model, corpus, tmp_path / "b.acts", sites="hidden.1")
    # runs stored before the option existed keep their identity: it is there only if set
    plain = ExtractConfig(model="m", data="d", store="s", run="r")
    assert "matrices" not in plain.identity()
    assert (
        ExtractConfig(model="m", data="d", store="s", run="r", matrices=False).identity()[
            "matrices"
        ]
        is False
    )


_ALLOCATOR_CHECK = """
import ctypes, sys
from actstore.extract import _memory, runner
from actstore.extract.config import ExtractConfig

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def mmapped(nbytes):
    before = libc.mallinfo2().hblks
    block = libc.malloc(nbytes)
    grew = libc.mallinfo2().hblks > before
    libc.free(block)
    return grew

with _memory.flat_memory():
    during = mmapped(16 << 20)
model, data, store = sys.argv[1:4]
runner.extract(ExtractConfig(model=model, data=data, store=store, run="r",
                             sites="hidden.1", device="cpu", quiet=True))
print(during, mmapped(16 << 20))
"""


def test_large_allocations_leave_mmap_after_the_job(
    tiny_model_dirs: dict[str, Path], corpus: Path, tmp_path: Path
) -> None:
    """During the pools glibc serves large blocks by mmap (flat peak RSS); after the job a
    16 MiB block comes from the heap again, so code run after ``extract()`` is not slowed
    by fresh zero-filled mappings. In a fresh process: a heap that earlier tests left
    with large free chunks would serve the blocks whatever the threshold."""
    import subprocess
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    argv = [str(tiny_model_dirs["gpt2"]), str(corpus), str(tmp_path / "s.acts")]
    done = subprocess.run(
        [sys.executable, "-c", _ALLOCATOR_CHECK, *argv],
        check=False,
        capture_output=True,
        text=True,
    )
    if "mallinfo2" in done.stderr:
        pytest.skip("no glibc mallinfo2")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "False"]  # mmapped during the job, not after


_HUGE_PAGES_CHECK = """
import os, sys
model, data, store, how = sys.argv[1:5]
if how == "torch-first":
    import torch
if how == "library":
    from actstore.extract import runner
    from actstore.extract.config import ExtractConfig

    runner.extract(ExtractConfig(model=model, data=data, store=store, run="r",
                                 sites="hidden.1", device="cpu", quiet=True))
else:
    from actstore.cli.main import main

    assert main(["extract", "--model", model, "--data", data, "--store", store, "--run",
                 "r", "--sites", "hidden.1", "--device", "cpu", "--quiet"]) == 0
import torch
block = torch.empty(64 << 20, dtype=torch.uint8)
address = block.data_ptr()
flags = None
with open("/proc/self/smaps") as fh:
    inside = False
    for line in fh:
        head = line.split()[0]
        if "-" in head and ":" not in head:
            start, end = (int(x, 16) for x in head.split("-"))
            inside = start <= address < end
        elif inside and line.startswith("VmFlags:"):
            flags = line.split()[1:]
print(os.environ.get("THP_MEM_ALLOC_ENABLE", "unset"), "hg" in flags)
"""


@pytest.mark.parametrize(
    ("how", "setting", "expected"),
    [
        ("cli", None, ["1", "True"]),  # large blocks advised MADV_HUGEPAGE
        ("cli", "0", ["0", "False"]),  # the user's opt-out is kept
        ("torch-first", None, ["unset", "False"]),  # torch already in use: left alone
        ("library", None, ["unset", "False"]),  # extract() leaves the process as it was
    ],
)
def test_huge_pages_are_asked_for_by_the_command_line_before_torch_is_used(
    tiny_model_dirs: dict[str, Path],
    corpus: Path,
    tmp_path: Path,
    how: str,
    setting: str | None,
    expected: list[str],
) -> None:
    """``actstore extract`` sets torch's ``THP_MEM_ALLOC_ENABLE`` when torch is not imported
    yet and the user has not set it; torch then advises huge pages on its large CPU blocks
    (the ``hg`` flag of the block's mapping in ``/proc/self/smaps``). The library's
    ``extract()`` never sets it: the advice would stay for the rest of a user's process.
    In a fresh process each."""
    import os
    import subprocess
    import sys

    if not Path("/sys/kernel/mm/transparent_hugepage/enabled").exists():
        pytest.skip("no transparent huge pages in this kernel")
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if setting is not None:
        env["THP_MEM_ALLOC_ENABLE"] = setting
    argv = [str(tiny_model_dirs["gpt2"]), str(corpus), str(tmp_path / "s.acts"), how]
    done = subprocess.run(
        [sys.executable, "-c", _HUGE_PAGES_CHECK, *argv],
        check=False,
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == expected
