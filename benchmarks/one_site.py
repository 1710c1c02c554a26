"""Benchmark caching ONE site of a tiny random GPT-2 against a SAELens-style activation cache.

A tiny GPT-2 (``--layers`` 4, ``--d`` 256, 4 heads, random weights, a byte-level BPE
tokenizer trained here on the bundled demo corpus) is built and saved once. Over a corpus
of ``--docs`` docs (the seeded demo recombination of ``extract.py``) both sides cache the
residual stream after block 1, i.e. ``hidden.2`` (SAELens: ``blocks.1.hook_resid_post``):

* **SAELens-style** (:func:`saelens_cache`, modelled on SAELens's ``CacheActivationsRunner``
  and ``ActivationsStore``: ``run_with_cache(..., names_filter=[hook], stop_at_layer=hook_layer
  + 1)``, ``context_size`` 128, ``store_batch_size_prompts`` 32, ``dtype`` float32): tokenize
  every doc, concatenate the tokens into one stream and cut it into windows of ``--context``
  tokens (no padding, no attention mask; the last partial window is dropped, as SAELens
  does), run batches of ``--batch`` windows through the GPT-2 body under ``inference_mode``
  with a forward hook on block 1 that keeps its output and raises to stop the forward
  there, and ``np.save`` each batch's ``[batch * context, d]`` float32 rows.
* **actstore**: ``extract()`` of ``hidden.2`` as float32 with its defaults (per-doc
  sequences, length-sorted padded batches of 16,384 tokens, the forward stopped after the
  deepest requested layer, token metadata to Parquet, vocabulary matrices), minus model load;
  and again with ``batch_tokens`` = ``--context`` x ``--batch`` (4,096: the tokens the
  SAELens side runs a forward), which takes the batch size out of the comparison.

Both include tokenizing; ``extract()``'s model load is subtracted. The SAELens side runs in
a fresh interpreter each round (its start and model load not timed): ``extract()`` once set
glibc's mmap threshold to 1 MiB for the rest of its process, which slowed any loop run after
it; the same loop run in this process is reported beside it (now level). The fresh process
runs with torch's defaults (what a user's script gets) and again with
``THP_MEM_ALLOC_ENABLE=1``, the huge pages ``actstore extract`` asks torch for (this process
sets it before importing torch, as the command does). Rounds are
interleaved (``--repeats``), medians. The headline is seconds **per token** (actstore's real
tokens; SAELens's windowed tokens), actstore ÷ SAELens-style (target ≤ 1.0). What differs:
SAELens packs docs into fixed windows that span doc boundaries (it also puts a BOS between
docs; here the tokens are packed as they are, so that both sides see the same tokens), so it
has no padding and no attention mask, and it keeps the last partial window's tokens out;
actstore runs each doc on its own (positions from 0, padding masked), keeps every token, and
also writes per-token metadata. SAELens writes each buffer of 20 batches as an Arrow shard
through ``datasets``; one ``np.save`` per batch here is the leaner of the two. With
``--long`` docs are 80-160 sentences and actstore cuts them into windows of ``--context``
tokens with no overlap (``long_docs="window"``, ``window_overlap=0``): nearly the same
sequences as SAELens's.

    python benchmarks/one_site.py                 # 4,000 short docs, 3 rounds
    python benchmarks/one_site.py --long --docs 60
    python benchmarks/one_site.py --docs 200 --repeats 1   # quick check
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    command_line,
    interleave,
    machine_info,
    markdown_table,
    median,
    now_iso,
    summary,
    write_json,
)

from actstore.extract._memory import prefer_huge_pages
from extract import run_extract, write_corpus

OUT = Path(__file__).parent / "out"
SITE = "hidden.2"
TARGET = 1.0


def build_gpt2(
    folder: Path, *, n_layer: int, n_embd: int, n_positions: int, vocab: int, seed: int
) -> Path:
    """Save a random GPT-2 and a byte-level BPE tokenizer trained on the demo sentences."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from actstore._demo import demo_corpus_path

    with demo_corpus_path().open(encoding="utf-8") as fh:
        sentences = [json.loads(line)["text"] for line in fh if line.strip()]
    eos = "<|endoftext|>"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=[eos],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(sentences, trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast: Any = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=eos, eos_token=eos)
    eos_id = fast.eos_token_id
    config = GPT2Config(
        vocab_size=len(fast),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=4,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config).eval()
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


class _Stop(Exception):
    """Raised by the hook to end the forward right after the hooked block."""


def saelens_cache(
    model: Any,
    tok: Any,
    texts: list[str],
    layer: int,
    context: int,
    batch: int,
    out_dir: Path,
) -> dict[str, float]:
    """SAELens-style cache of ``hidden.<layer>`` (the output of block ``layer - 1``):
    packed windows of ``context`` tokens, ``batch`` windows a forward, stopped after the
    hooked block, float32 rows ``np.save``-d per batch. Wall and CPU seconds, tokens."""
    import numpy as np
    import torch

    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    t0, c0 = time.perf_counter(), time.process_time()
    ids = tok(texts)["input_ids"]
    stream = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64)
    n_windows = len(stream) // context
    windows = torch.from_numpy(stream[: n_windows * context].reshape(n_windows, context))
    captured: list[Any] = []

    def hook(_module: Any, _args: Any, output: Any) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output)
        raise _Stop

    handle = model.transformer.h[layer - 1].register_forward_hook(hook)
    try:
        with torch.inference_mode():
            for b, start in enumerate(range(0, n_windows, batch)):
                with contextlib.suppress(_Stop):
                    model.transformer(input_ids=windows[start : start + batch], use_cache=False)
                acts = captured.pop()
                rows = acts.reshape(-1, acts.shape[-1]).to(torch.float32).numpy()
                np.save(out_dir / f"{b:05d}.npy", rows)
    finally:
        handle.remove()
    res = {
        "wall_s": time.perf_counter() - t0,
        "cpu_s": time.process_time() - c0,
        "tokens": n_windows * context,
        "tokens_dropped": len(stream) - n_windows * context,
    }
    shutil.rmtree(out_dir, ignore_errors=True)
    return res


def saelens_child(argv: list[str], context: int, batch: int) -> None:
    """``--saelens-child FOLDER DATA OUT``: load the model, warm up, run
    :func:`saelens_cache` once in this fresh process and print its result as JSON."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    folder, data, out = argv
    texts = [json.loads(line)["text"] for line in Path(data).read_text().splitlines()]
    model = GPT2LMHeadModel.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    layer = int(SITE.split(".")[1])
    saelens_cache(model, tok, texts[:64], layer, context, batch, Path(out))
    print(json.dumps(saelens_cache(model, tok, texts, layer, context, batch, Path(out))))


def run_saelens_child(
    folder: Path, data: Path, out: Path, context: int, batch: int, *, huge_pages: bool = False
) -> Any:
    """:func:`saelens_child` in a new interpreter (its start and model load not timed); with
    torch's defaults (4 KiB pages), or ``huge_pages``: ``THP_MEM_ALLOC_ENABLE=1`` as
    ``extract()`` sets it."""
    cmd = [sys.executable, __file__, "--saelens-child", str(folder), str(data), str(out)]
    cmd += ["--context", str(context), "--batch", str(batch)]
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if huge_pages:
        env["THP_MEM_ALLOC_ENABLE"] = "1"
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"saelens child failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(res: dict[str, Any]) -> str:
    """The markdown tables of a result dict."""
    r, m = res["ratios"], res["medians_s"]
    c = res["corpus"]
    ok = "yes" if r["per_token"] <= TARGET else "**no**"
    main = [
        [
            f"actstore extract({SITE}), defaults (batch_tokens=16,384) ÷ SAELens-style "
            "cache, seconds per token",
            f"{r['per_token']:.3f} (rounds: {r['per_token_paired_median']:.3f})",
            f"≤ {TARGET}",
            ok,
        ],
        ["same, process CPU time per token", f"{r['per_token_cpu']:.3f}", "", ""],
        [
            "same, actstore device loop only (run.json forward_s)",
            f"{r['per_token_forward_s']:.3f}",
            "",
            "",
        ],
        [
            f"actstore with batch_tokens={c['context'] * c['batch']:,} (SAELens's tokens a "
            "forward) ÷ SAELens-style, per token",
            f"{r['budget_per_token']:.3f} (rounds: {r['budget_per_token_paired_median']:.3f})",
            f"≤ {TARGET}",
            "yes" if r["budget_per_token"] <= TARGET else "**no**",
        ],
        ["same, process CPU time per token", f"{r['budget_per_token_cpu']:.3f}", "", ""],
        [
            "same, actstore device loop only (run.json forward_s)",
            f"{r['budget_per_token_forward_s']:.3f}",
            "",
            "",
        ],
        [
            "actstore defaults ÷ SAELens-style in a fresh process with THP_MEM_ALLOC_ENABLE=1 "
            "(the huge pages `actstore extract` asks for)",
            f"{r['per_token_vs_huge_pages']:.3f}",
            "",
            "",
        ],
        [
            "actstore defaults ÷ the SAELens-style loop run in the benchmark's own process "
            "(after extract())",
            f"{r['per_token_vs_same_process']:.3f}",
            "",
            "",
        ],
        ["tokens/s, actstore minus model load", f"{res['throughput']['actstore']:,.0f}", "", ""],
        [
            "tokens/s, actstore, same token budget",
            f"{res['throughput']['actstore_budget']:,.0f}",
            "",
            "",
        ],
        ["tokens/s, SAELens-style", f"{res['throughput']['saelens']:,.0f}", "", ""],
    ]
    times = [[k, f"{v:.2f}", ", ".join(f"{x:.2f}" for x in res["raw_s"][k])] for k, v in m.items()]
    return "\n".join(
        [
            f"tiny random GPT-2 ({res['model']['n_layer']} layers, d={res['model']['n_embd']}, "
            f"vocab {res['model']['vocab']:,}), site {SITE}; {res['docs']:,} "
            f"{'long ' if res['long'] else ''}docs: actstore {c['actstore_tokens']:,} real "
            f"tokens + {c['actstore_pad_tokens']:,} padding in {c['actstore_batches']} "
            f"batches ({c['actstore_budget_pad_tokens']:,} padding in "
            f"{c['actstore_budget_batches']} at the same budget), SAELens-style "
            f"{c['saelens_tokens']:,} tokens in {c['context']}-token windows "
            f"({c['saelens_tokens_dropped']} dropped), {c['batch']} windows a batch; "
            f"{res['repeats']} interleaved rounds, medians; float32 on both sides.",
            "",
            markdown_table(["metric", "value", "target", "met"], main),
            "",
            markdown_table(["timing (s)", "median", "rounds"], times),
        ]
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=4000, help="docs in the corpus (default 4000)")
    p.add_argument("--long", action="store_true", help="80-160 sentences a doc, windowed")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--context", type=int, default=128, help="window tokens (default 128)")
    p.add_argument("--batch", type=int, default=32, help="windows a forward (default 32)")
    p.add_argument("--layers", type=int, default=4, help="GPT-2 blocks (default 4)")
    p.add_argument("--d", type=int, default=256, help="GPT-2 width (default 256)")
    p.add_argument("--vocab", type=int, default=4096, help="BPE vocabulary (default 4096)")
    p.add_argument("--seed", type=int, default=0, help="corpus and weights seed (default 0)")
    p.add_argument("--out", default=None, help="JSON result (default out/one_site[-long].json)")
    p.add_argument("--saelens-child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.saelens_child:
        saelens_child(args.saelens_child, args.context, args.batch)
        return {}
    # `actstore extract` asks torch for huge pages before importing it; extract() measured
    # here stands for that command, so this process asks too, before it imports torch
    prefer_huge_pages()

    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    started, t_all = now_iso(), time.perf_counter()
    layer = int(SITE.split(".")[1])
    tmp = Path(tempfile.mkdtemp(prefix="actstore-bench-one-site-"))
    try:
        folder = build_gpt2(
            tmp / "gpt2",
            n_layer=args.layers,
            n_embd=args.d,
            n_positions=1024,
            vocab=args.vocab,
            seed=args.seed,
        )
        per_doc = (80, 160) if args.long else (1, 6)
        data = write_corpus(tmp / "corpus.jsonl", args.docs, args.seed, per_doc)
        texts = [json.loads(line)["text"] for line in data.read_text().splitlines()]
        model = GPT2LMHeadModel.from_pretrained(folder).eval()
        tok = AutoTokenizer.from_pretrained(folder)
        common = {
            "model": str(folder),
            "data": str(data),
            "dtype": "float32",
            "device": "cpu",
            "quiet": True,
            **(
                {"long_docs": "window", "max_length": args.context, "window_overlap": 0}
                if args.long
                else {}
            ),
        }
        # warm-up: kernels and the writer side's lazy imports
        saelens_cache(model, tok, texts[:64], layer, args.context, args.batch, tmp / "warm-s")
        warm = write_corpus(tmp / "warm.jsonl", 32, args.seed + 1)
        run_extract({**common, "data": str(warm)}, SITE, tmp / "warm.acts")
        counter = itertools.count()
        same_budget = {**common, "batch_tokens": args.context * args.batch}

        def actstore(name: str, kwargs: dict[str, Any]) -> Any:
            def go() -> dict[str, Any]:
                out = run_extract(kwargs, SITE, tmp / f"a-{next(counter)}.acts")
                print(f"  {name}: {out['wall_minus_load_s']:.2f} s", flush=True)
                return out

            return go

        def saelens(name: str, huge_pages: bool) -> Any:
            def go() -> dict[str, Any]:
                out = run_saelens_child(
                    folder, data, tmp / "s", args.context, args.batch, huge_pages=huge_pages
                )
                print(f"  {name}: {out['wall_s']:.2f} s", flush=True)
                return out

            return go

        def saelens_same() -> dict[str, Any]:
            out = saelens_cache(model, tok, texts, layer, args.context, args.batch, tmp / "s")
            print(f"  saelens_same_process: {out['wall_s']:.2f} s", flush=True)
            return out

        runs = interleave(
            {
                "actstore": actstore("actstore", common),
                "actstore_budget": actstore("actstore_budget", same_budget),
                "saelens": saelens("saelens", huge_pages=False),
                "saelens_huge_pages": saelens("saelens_huge_pages", huge_pages=True),
                "saelens_same_process": saelens_same,
            },
            args.repeats,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    a_tok = runs["actstore"][0]["counts"]["tokens"]
    s_tok = runs["saelens"][0]["tokens"]
    raw = {
        "actstore.wall_minus_load": [r["wall_minus_load_s"] for r in runs["actstore"]],
        "actstore.cpu_minus_load": [r["cpu_minus_load_s"] for r in runs["actstore"]],
        "actstore.forward_s": [r["runjson_timings"]["forward_s"] for r in runs["actstore"]],
        "actstore.setup": [r["setup_s"] for r in runs["actstore"]],
        "actstore.drain_commit": [r["drain_commit_s"] for r in runs["actstore"]],
        "actstore_budget.wall_minus_load": [
            r["wall_minus_load_s"] for r in runs["actstore_budget"]
        ],
        "actstore_budget.cpu_minus_load": [r["cpu_minus_load_s"] for r in runs["actstore_budget"]],
        "actstore_budget.forward_s": [
            r["runjson_timings"]["forward_s"] for r in runs["actstore_budget"]
        ],
        "saelens": [r["wall_s"] for r in runs["saelens"]],
        "saelens.cpu": [r["cpu_s"] for r in runs["saelens"]],
        "saelens_huge_pages": [r["wall_s"] for r in runs["saelens_huge_pages"]],
        "saelens_same_process": [r["wall_s"] for r in runs["saelens_same_process"]],
    }
    med = {k: median(v) for k, v in raw.items()}

    def per_token(a: float, s: float) -> float:
        return (a / a_tok) / (s / s_tok)

    res: dict[str, Any] = {
        "benchmark": "one_site",
        "command": command_line(),
        "started": started,
        "machine": machine_info(),
        "torch": torch.__version__,
        "model": {"n_layer": args.layers, "n_embd": args.d, "vocab": len(tok), "site": SITE},
        "docs": args.docs,
        "long": args.long,
        "repeats": args.repeats,
        "seed": args.seed,
        "corpus": {
            "actstore_tokens": a_tok,
            "actstore_pad_tokens": runs["actstore"][0]["counts"]["pad_tokens"],
            "actstore_batches": runs["actstore"][0]["counts"]["batches"],
            "actstore_budget_pad_tokens": runs["actstore_budget"][0]["counts"]["pad_tokens"],
            "actstore_budget_batches": runs["actstore_budget"][0]["counts"]["batches"],
            "saelens_tokens": s_tok,
            "saelens_tokens_dropped": runs["saelens"][0]["tokens_dropped"],
            "context": args.context,
            "batch": args.batch,
        },
        "ratios": {
            "per_token": per_token(med["actstore.wall_minus_load"], med["saelens"]),
            "per_token_paired_median": median(
                [
                    per_token(a, s)
                    for a, s in zip(raw["actstore.wall_minus_load"], raw["saelens"], strict=True)
                ]
            ),
            "per_token_cpu": per_token(med["actstore.cpu_minus_load"], med["saelens.cpu"]),
            "per_token_forward_s": per_token(med["actstore.forward_s"], med["saelens"]),
            "per_token_vs_huge_pages": per_token(
                med["actstore.wall_minus_load"], med["saelens_huge_pages"]
            ),
            "per_token_vs_same_process": per_token(
                med["actstore.wall_minus_load"], med["saelens_same_process"]
            ),
            "budget_per_token": per_token(med["actstore_budget.wall_minus_load"], med["saelens"]),
            "budget_per_token_paired_median": median(
                [
                    per_token(a, s)
                    for a, s in zip(
                        raw["actstore_budget.wall_minus_load"], raw["saelens"], strict=True
                    )
                ]
            ),
            "budget_per_token_cpu": per_token(
                med["actstore_budget.cpu_minus_load"], med["saelens.cpu"]
            ),
            "budget_per_token_forward_s": per_token(
                med["actstore_budget.forward_s"], med["saelens"]
            ),
        },
        "throughput": {
            "actstore": a_tok / med["actstore.wall_minus_load"],
            "actstore_budget": a_tok / med["actstore_budget.wall_minus_load"],
            "saelens": s_tok / med["saelens"],
        },
        "medians_s": med,
        "raw_s": raw,
        "summaries_s": {k: summary(v) for k, v in raw.items()},
        "actstore_runs": runs["actstore"],
        "actstore_budget_runs": runs["actstore_budget"],
        "target": TARGET,
    }
    table = report(res)
    res["table_markdown"] = table
    res["seconds_total"] = time.perf_counter() - t_all
    print()
    print(table)
    out = args.out or OUT / f"one_site{'-long' if args.long else ''}.json"
    print(f"\nwrote {write_json(out, res)} ({res['seconds_total']:.0f} s in all)")
    return res


if __name__ == "__main__":
    main()
