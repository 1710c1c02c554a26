"""Benchmark: a templated corpus (most records repeat a text) against one of distinct texts.

Every record is kept in ``docs``, but a text is run through the model once per run. This
measures what that saves: ``extract()`` of the bundled MiniLM (all 7 hidden states,
float16) over

* ``templated``: ``--records`` records drawn from ``--distinct`` x records texts (1-6
  demo sentences each; every text at least once, the rest drawn at random), and
* ``distinct``: as many records, every text different (drawn the same way),

interleaved for ``--repeats`` rounds (medians reported; each into a fresh store, model
load included in both). Prints a markdown table and writes JSON.

    python benchmarks/repeats.py                        # 2,000 records, 20 % distinct
    python benchmarks/repeats.py --records 400 --repeats 1  # quick check
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
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

OUT = Path(__file__).parent / "out"


def texts(n: int, seed: int) -> list[str]:
    """``n`` distinct texts of 1-6 demo sentences; the same for a seed."""
    from actstore._demo import demo_corpus_path

    with demo_corpus_path().open(encoding="utf-8") as fh:
        sentences = [json.loads(line)["text"] for line in fh if line.strip()]
    rng = random.Random(seed)
    out: dict[str, None] = {}
    while len(out) < n:
        out[" ".join(rng.sample(sentences, rng.randint(1, 6)))] = None
    return list(out)


def write_jsonl(path: Path, records: list[str]) -> Path:
    with path.open("w", encoding="utf-8") as out:
        for i, text in enumerate(records):
            out.write(json.dumps({"text": text, "id": i}) + "\n")
    return path


def run_extract(model: str, data: Path, store: Path, device: str) -> dict[str, Any]:
    from actstore.extract.config import ExtractConfig
    from actstore.extract.runner import extract

    shutil.rmtree(store, ignore_errors=True)
    config = ExtractConfig(
        model=model, data=str(data), store=str(store), run="bench", dtype="float16",
        device=device, quiet=True,
    )  # fmt: skip
    t0 = time.perf_counter()
    result = extract(config)
    wall = time.perf_counter() - t0
    if result.run_json is None:
        raise RuntimeError(f"extract() did not commit the run: {result.status}")
    out = {
        "wall_s": wall,
        "forward_s": result.run_json["timings"].get("forward_s", float("nan")),
        "counts": dict(result.run_json["counts"]),
        "store_bytes": sum(f.stat().st_size for f in store.rglob("*") if f.is_file()),
    }
    shutil.rmtree(store, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=2000, help="records (default 2000)")
    p.add_argument("--distinct", type=float, default=0.2, help="share of distinct texts")
    p.add_argument("--device", default="auto", choices=["cpu", "cuda", "auto"])
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(OUT / "repeats.json"), help="JSON result file")
    args = p.parse_args(argv)

    from actstore._demo import minilm_path

    started = now_iso()
    tmp = Path(tempfile.mkdtemp(prefix="actstore-bench-repeats-"))
    try:
        n_distinct = max(1, round(args.records * args.distinct))
        pool = texts(n_distinct, args.seed)
        rng = random.Random(args.seed + 1)
        templated = pool + [rng.choice(pool) for _ in range(args.records - n_distinct)]
        rng.shuffle(templated)
        data = {
            "templated": write_jsonl(tmp / "templated.jsonl", templated),
            "distinct": write_jsonl(tmp / "distinct.jsonl", texts(args.records, args.seed)),
        }
        model = str(minilm_path())
        counter = iter(range(10**6))
        run_extract(model, data["templated"], tmp / "warm.acts", args.device)  # warm-up
        cases = {
            name: (
                lambda path=path, name=name: run_extract(
                    model, path, tmp / f"{name}-{next(counter)}.acts", args.device
                )
            )
            for name, path in data.items()
        }
        runs = interleave(cases, args.repeats)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def med(name: str, key: str) -> float:
        return median([r[key] for r in runs[name]])

    res: dict[str, Any] = {
        "benchmark": "repeats",
        "started": started,
        "command": command_line(),
        "machine": machine_info(),
        "records": args.records,
        "distinct_share": args.distinct,
        "cases": {
            name: {
                "wall_s": summary([r["wall_s"] for r in rs]),
                "forward_s": summary([r["forward_s"] for r in rs]),
                "counts": rs[0]["counts"],
                "store_bytes": rs[0]["store_bytes"],
            }
            for name, rs in runs.items()
        },
    }
    t, d = (res["cases"][k]["counts"] for k in ("templated", "distinct"))
    rows = [
        ["records (docs rows)", f"{t['docs']:,}", f"{d['docs']:,}", ""],
        ["texts run", f"{t['texts']:,}", f"{d['texts']:,}", f"{t['texts'] / d['texts']:.2f}"],
        ["tokens fed", f"{t['tokens']:,}", f"{d['tokens']:,}", f"{t['tokens'] / d['tokens']:.2f}"],
        ["token rows stored", f"{t['rows']:,}", f"{d['rows']:,}", f"{t['rows'] / d['rows']:.2f}"],
    ]
    for key in ("wall_s", "forward_s"):
        a, b = med("templated", key), med("distinct", key)
        rows.append([f"{key} (median)", f"{a:.2f}", f"{b:.2f}", f"{a / b:.2f}"])
    a, b = (res["cases"][k]["store_bytes"] for k in ("templated", "distinct"))
    rows.append(["store bytes", f"{a:,}", f"{b:,}", f"{a / b:.2f}"])
    table = markdown_table(["", "templated", "distinct", "templated ÷ distinct"], rows)
    print(table)
    res["table"] = table
    write_json(args.out, res)
    return res


if __name__ == "__main__":
    main()
