"""What checkpointing inside a pool costs: extract ÷ bare forward at several cadences.

Same corpus, model and bare loop as ``benchmarks/extract.py`` (all 7 MiniLM hidden states,
float16). ``--checkpoint-seconds inf`` is the old cadence (a checkpoint at every pool end
only); 30 is the default; small values checkpoint far more often than anyone would.
Cadences are interleaved for ``--repeats`` rounds; medians of extract() minus model load
over the bare loop are reported.

    python benchmarks/checkpoints.py --docs 600 --repeats 2   # about 3 min on 2 cores
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from _common import command_line, interleave, machine_info, markdown_table, median, write_json

from extract import RUN, SITES_ALL, bare_loop, collate, run_extract, write_corpus

OUT = Path(__file__).parent / "out"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=600, help="docs in the corpus (default 600)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved rounds (default 2)")
    p.add_argument("--device", default="auto", choices=["cpu", "cuda", "auto"])
    p.add_argument(
        "--cadences", default="inf,30,1,0.25", help="checkpoint_seconds values, comma-separated"
    )
    p.add_argument("--out", default=str(OUT / "checkpoints.json"), help="JSON result file")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from actstore._demo import minilm_path
    from actstore.extract.config import ExtractConfig
    from actstore.extract.corpus import open_corpus
    from actstore.extract.model import load_model
    from actstore.extract.runner import iter_batches

    cadences = [float(c) for c in args.cadences.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="actstore-bench-ckpt-"))
    try:
        data = write_corpus(tmp / "corpus.jsonl", args.docs, 0)
        model = str(minilm_path())
        lm = load_model(model, device=args.device)
        common = {"model": model, "data": str(data), "dtype": "float16", "device": args.device}
        config = ExtractConfig(**common, store=str(tmp / "unused"), run=RUN, sites=SITES_ALL)
        batches = list(iter_batches(config, lm, open_corpus(data)))
        tensors = collate(batches, int(lm.tokenizer.pad_token_id or 0), lm.device)
        bare_loop(lm, tensors[-2:])  # warm-up
        run_extract({**common, "quiet": True}, SITES_ALL, tmp / "warm.acts")

        def case(seconds: float) -> Any:
            def go() -> float:
                kw = {**common, "quiet": True, "checkpoint_seconds": seconds}
                out = run_extract(kw, SITES_ALL, tmp / "s.acts")
                print(f"  checkpoint_seconds={seconds:g}: {out['wall_s']:.2f} s", flush=True)
                return float(out["wall_minus_load_s"])

            return go

        cases = {f"{c:g}": case(c) for c in cadences}
        cases["bare"] = lambda: float(bare_loop(lm, tensors)["wall_s"])
        runs = interleave(cases, args.repeats)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    bare = median(runs.pop("bare"))
    ratios = {name: median(v) / bare for name, v in runs.items()}
    rows = [
        [name, f"{median(runs[name]):.2f}", f"{r:.3f}", f"{r - ratios['inf']:+.3f}"]
        for name, r in ratios.items()
    ]
    header = ["checkpoint_seconds", "extract s (minus load)", "÷ bare", "vs inf"]
    print(f"bare forward: {bare:.2f} s; {len(batches)} batches")
    print(markdown_table(header, rows))
    result = {
        "command": command_line(),
        "machine": machine_info(),
        "docs": args.docs,
        "batches": len(batches),
        "bare_s": bare,
        "runs": runs,
        "ratios": ratios,
    }
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
