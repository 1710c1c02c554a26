"""Extraction: run a Hugging Face model over a corpus and write a store.

The only subpackage that imports torch or transformers, and only inside functions.
"""

from __future__ import annotations
