"""Sparse coding: basis pursuit (OMP, Lasso) against a fixed dictionary, mini-batch
dictionary learning, TopK sparse autoencoders, their metrics and atom inspection.

``on_store`` streams rows from a store and saves results; the other modules are arrays
in, arrays out.
"""

from __future__ import annotations

from actstore.query.sparse.dictlearn import DictionaryLearner, DictLearnConfig
from actstore.query.sparse.metrics import explained_variance, fvu, sparse_metrics
from actstore.query.sparse.on_store import encode_store, learn_store, sae_store
from actstore.query.sparse.pursuit import lasso, omp
from actstore.query.sparse.sae import SAEConfig, TopKSAE

__all__ = [
    "DictLearnConfig",
    "DictionaryLearner",
    "SAEConfig",
    "TopKSAE",
    "encode_store",
    "explained_variance",
    "fvu",
    "lasso",
    "learn_store",
    "omp",
    "sae_store",
    "sparse_metrics",
]
