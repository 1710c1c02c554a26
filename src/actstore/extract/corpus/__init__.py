"""Streaming readers for the corpus an extraction runs over.

:func:`open_corpus` resolves a path (txt, jsonl, csv, parquet, a folder of parquet files
or a saved Hugging Face dataset; txt/jsonl/csv may be gzip-compressed) into a
:class:`Corpus` that yields one :class:`Doc` per record without loading the whole corpus.
Each format has its own small reader (``_txt``, ``_jsonl``, ``_csv``, ``_parquet``,
``_hf``), registered by name in ``_core.READERS``.
"""

from __future__ import annotations

from actstore.extract.corpus._base import CorpusFormat, Doc, doc_id_for
from actstore.extract.corpus._base import EncodingErrors as EncodingErrors
from actstore.extract.corpus._core import DEMO_CORPUS, Corpus, open_corpus

__all__ = [
    "DEMO_CORPUS",
    "Corpus",
    "CorpusFormat",
    "Doc",
    "doc_id_for",
    "open_corpus",
]
