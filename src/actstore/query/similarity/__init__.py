"""Similarity and geometry: pairwise cosine statistics, anisotropy, centroids and semantic
sinks, back-projection to the vocabulary (nearest tokens, logit lens), CKA / RSA / Procrustes,
input-space gradients and optimisation trajectories.

Each module is arrays in, arrays out; the ``*_store`` style entry points take a
:class:`~actstore.query.Store` and save their result through :mod:`actstore.query.results`.
"""

from __future__ import annotations

from actstore.query.similarity.anisotropy import anisotropy, anisotropy_by_layer
from actstore.query.similarity.centroids import (
    centroid_similarity,
    cosine_matrix,
    sink_pairs,
    sink_scan,
    token_centroids,
)
from actstore.query.similarity.cka import (
    compare_runs,
    compare_sites,
    linear_cka,
    procrustes_cosine,
)
from actstore.query.similarity.gradients import gradient_directions, gradient_histograms
from actstore.query.similarity.nearest import logit_lens, nearest, nearest_tokens
from actstore.query.similarity.pairwise import (
    PairwiseStats,
    mean_vector_stats,
    pairwise_cosine_stats,
)
from actstore.query.similarity.rsa import rsa
from actstore.query.similarity.trajectory import (
    displacement_histogram,
    distances_travelled,
    heading_tokens,
    pair_distances,
)

__all__ = [
    "PairwiseStats",
    "anisotropy",
    "anisotropy_by_layer",
    "centroid_similarity",
    "compare_runs",
    "compare_sites",
    "cosine_matrix",
    "displacement_histogram",
    "distances_travelled",
    "gradient_directions",
    "gradient_histograms",
    "heading_tokens",
    "linear_cka",
    "logit_lens",
    "mean_vector_stats",
    "nearest",
    "nearest_tokens",
    "pair_distances",
    "pairwise_cosine_stats",
    "procrustes_cosine",
    "rsa",
    "sink_pairs",
    "sink_scan",
    "token_centroids",
]
