"""Extraction: run a Hugging Face model over a corpus and write a store.

The only subpackage that imports torch or transformers, and only when a model is loaded:
importing it is cheap.
"""

from __future__ import annotations

from actstore.extract.config import ExtractConfig
from actstore.extract.corpus import Corpus, Doc, open_corpus
from actstore.extract.optimize import OptimizeConfig, optimize
from actstore.extract.progress import ExtractProgress, ProgressBar
from actstore.extract.runner import ExtractResult, extract

__all__ = [
    "Corpus",
    "Doc",
    "ExtractConfig",
    "ExtractProgress",
    "ExtractResult",
    "OptimizeConfig",
    "ProgressBar",
    "extract",
    "open_corpus",
    "optimize",
]
