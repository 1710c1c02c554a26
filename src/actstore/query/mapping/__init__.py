"""Linear maps between representation spaces: streamed ridge (GCV / LOO / k-fold), reduced
rank, Procrustes, identity-regularised and head-aware KL maps, balanced splits, metrics.

``on_store`` pairs rows of a store, fits, scores and saves maps; the other modules are
arrays in, arrays out.
"""

from __future__ import annotations

from actstore.query.mapping.linmaps import (
    LinearMap,
    identity_map,
    procrustes_map,
    reduced_rank_map,
)
from actstore.query.mapping.on_store import (
    FittedMap,
    MapConfig,
    PairSpec,
    evaluate_map,
    fit_map,
)
from actstore.query.mapping.ridgecv import RidgeMap
from actstore.query.mapping.saved import apply_map, load_map, save_map
from actstore.query.mapping.split import balanced_split, doc_split

__all__ = [
    "FittedMap",
    "LinearMap",
    "MapConfig",
    "PairSpec",
    "RidgeMap",
    "apply_map",
    "balanced_split",
    "doc_split",
    "evaluate_map",
    "fit_map",
    "identity_map",
    "load_map",
    "procrustes_map",
    "reduced_rank_map",
    "save_map",
]
