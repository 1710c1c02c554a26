"""Streaming readers for the corpus an extraction runs over."""

from __future__ import annotations

from actstore.extract.corpus._core import (
    DEMO_CORPUS,
    Corpus,
    CorpusFormat,
    Doc,
    doc_id_for,
    open_corpus,
)

__all__ = [
    "DEMO_CORPUS",
    "Corpus",
    "CorpusFormat",
    "Doc",
    "doc_id_for",
    "open_corpus",
]
