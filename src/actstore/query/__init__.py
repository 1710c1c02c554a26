"""Reading a store: SQL through DuckDB, vector gathers, analyses (no model needed).

The analyses are importable from here (``from actstore.query import linear_cka``); each
is loaded on first use, so ``import actstore`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from actstore.query.store import Store, open_store

#: public name -> the module (under actstore.query) that defines it
_LAZY: dict[str, str] = {
    **dict.fromkeys(
        ["PairwiseStats", "mean_vector_stats", "pairwise_cosine_stats"], "similarity.pairwise"
    ),
    **dict.fromkeys(["anisotropy", "anisotropy_by_layer"], "similarity.anisotropy"),
    **dict.fromkeys(
        ["centroid_similarity", "cosine_matrix", "sink_pairs", "sink_scan", "token_centroids"],
        "similarity.centroids",
    ),
    **dict.fromkeys(["logit_lens", "nearest", "nearest_tokens"], "similarity.nearest"),
    **dict.fromkeys(["gradient_directions", "gradient_histograms"], "similarity.gradients"),
    **dict.fromkeys(["Head", "apply_head"], "head"),
    **dict.fromkeys(
        ["compare_runs", "compare_sites", "linear_cka", "procrustes_cosine"], "similarity.cka"
    ),
    "rsa": "similarity.rsa",
    **dict.fromkeys(["MapConfig", "PairSpec", "evaluate_map", "fit_map"], "mapping.on_store"),
    **dict.fromkeys(["apply_map", "load_map", "save_map"], "mapping.saved"),
    "RidgeMap": "mapping.ridgecv",
    **dict.fromkeys(["identity_map", "procrustes_map", "reduced_rank_map"], "mapping.linmaps"),
    **dict.fromkeys(["balanced_split", "doc_split"], "mapping.split"),
    **dict.fromkeys(["lasso", "omp"], "sparse.pursuit"),
    **dict.fromkeys(["explained_variance", "fvu", "sparse_metrics"], "sparse.metrics"),
    **dict.fromkeys(["DictLearnConfig", "DictionaryLearner"], "sparse.dictlearn"),
    **dict.fromkeys(["SAEConfig", "TopKSAE"], "sparse.sae"),
    **dict.fromkeys(["encode_store", "learn_store", "sae_store"], "sparse.on_store"),
    **dict.fromkeys(["AnalysisResult", "list_results", "read_result", "write_result"], "results"),
}

__all__ = [
    "AnalysisResult",
    "DictLearnConfig",
    "DictionaryLearner",
    "Head",
    "MapConfig",
    "PairSpec",
    "PairwiseStats",
    "RidgeMap",
    "SAEConfig",
    "Store",
    "TopKSAE",
    "anisotropy",
    "anisotropy_by_layer",
    "apply_head",
    "apply_map",
    "balanced_split",
    "centroid_similarity",
    "compare_runs",
    "compare_sites",
    "cosine_matrix",
    "doc_split",
    "encode_store",
    "evaluate_map",
    "explained_variance",
    "fit_map",
    "fvu",
    "gradient_directions",
    "gradient_histograms",
    "identity_map",
    "lasso",
    "learn_store",
    "linear_cka",
    "list_results",
    "load_map",
    "logit_lens",
    "mean_vector_stats",
    "nearest",
    "nearest_tokens",
    "omp",
    "open_store",
    "pairwise_cosine_stats",
    "procrustes_cosine",
    "procrustes_map",
    "read_result",
    "reduced_rank_map",
    "rsa",
    "sae_store",
    "save_map",
    "sink_pairs",
    "sink_scan",
    "sparse_metrics",
    "token_centroids",
    "write_result",
]


def __getattr__(name: str) -> Any:
    """Import the analysis that defines ``name`` on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'actstore.query' has no attribute {name!r}")
    return getattr(importlib.import_module(f"actstore.query.{module}"), name)


def __dir__() -> list[str]:
    """The public names, lazy ones included."""
    return sorted(__all__)
