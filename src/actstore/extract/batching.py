"""Turn a stream of docs into length-sorted batches under a token budget.

Docs are tokenized in the caller's thread (the extractor runs this in a background
thread), cut to ``max_length`` by truncation or overlapping windows, gathered into
*pools* of about ``pool_batches * batch_tokens`` tokens, sorted by length inside each
pool and cut into batches. Pool boundaries depend only on the corpus and the options,
so a resumed job replays exactly the batches an uninterrupted one would have run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from actstore.errors import ConfigError
from actstore.extract.corpus import Doc

__all__ = ["Pool", "Pooler", "Segment", "special_affixes"]

_TOKENIZE_DOCS = 64  # records per tokenizer call: batched calls run in the Rust tokenizer
_POOL_RECORDS = 65536  # a pool of repeated or empty records is cut here (its docs table)


@dataclass(frozen=True)
class Segment:
    """One model input sequence cut from a doc, and which of its tokens are stored.

    Tokens ``keep_start:keep_end`` are stored, at doc positions ``pos0, pos0 + 1, ...``.
    """

    doc_id: int
    ids: npt.NDArray[np.int64]
    keep_start: int
    keep_end: int
    pos0: int
    starts: npt.NDArray[np.int32]
    ends: npt.NDArray[np.int32]
    special: npt.NDArray[np.bool_]

    @property
    def n_keep(self) -> int:
        """Number of stored tokens."""
        return self.keep_end - self.keep_start


@dataclass
class Pool:
    """A run of consecutive records, ready as batches; the unit of checkpointing."""

    seq: int
    """Index of the pool in the job (0-based)."""
    consumed: int
    """Source records read once this pool is done (where a resumed job continues)."""
    batches: list[list[Segment]]
    """The segments of the pool's new texts, length-sorted into batches."""
    docs: list[Doc]
    """Every record of this shard in the pool, in corpus order (empty and repeated ones too)."""
    repeat_of: list[int | None]
    """For each of :attr:`docs`: the first record with the same non-empty text, or None."""
    counts: Counter[str] = field(default_factory=Counter)


def special_affixes(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special token ids the tokenizer puts before and after one plain sequence.

    Found by encoding a probe text with and without special tokens, so it works for any
    fast tokenizer (BERT adds ``[CLS] .. [SEP]``, Llama ``<s> ..``, GPT-2 nothing).
    """
    probe = "hello world"
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return full[:i], full[i + len(plain) :]
    return [], []


class Pooler:
    """Cut docs into segments and segments into pools of length-sorted batches.

    Parameters
    ----------
    tokenizer : transformers.PreTrainedTokenizerFast
        Must return offsets (a fast tokenizer).
    max_length : int
        Longest model input in tokens, special tokens included.
    long_docs : {"truncate", "window"}
        How docs longer than ``max_length`` are handled.
    window_overlap : int
        Left-context tokens each later window repeats (``window`` only).
    batch_tokens : int
        Budget of one batch: batch size times the longest sequence in it.
    pool_batches : int
        A pool holds about this many full batches of tokens.
    pad_tolerance : float
        Start a new batch where a sequence is this fraction shorter than the batch's first
        (longest) one, so padding stays below about this fraction.
    add_special_tokens : bool
        Put the tokenizer's special tokens around each segment.
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        max_length: int,
        long_docs: Literal["truncate", "window"],
        window_overlap: int,
        batch_tokens: int,
        pool_batches: int,
        pad_tolerance: float = 0.05,
        add_special_tokens: bool = True,
    ) -> None:
        self.tokenizer = tokenizer
        self.special_ids = np.asarray(sorted(tokenizer.all_special_ids), dtype=np.int64)
        self.prefix, self.suffix = special_affixes(tokenizer) if add_special_tokens else ([], [])
        self.width = max_length - len(self.prefix) - len(self.suffix)
        if self.width < 1:
            raise ConfigError(
                f"max_length={max_length} leaves no room for text next to "
                f"{len(self.prefix) + len(self.suffix)} special tokens; raise --max-length"
            )
        if long_docs == "window" and window_overlap >= self.width:
            raise ConfigError(
                f"window_overlap={window_overlap} must be smaller than the {self.width} text "
                "tokens of a window; lower --window-overlap or raise --max-length"
            )
        self.long_docs = long_docs
        self.overlap = window_overlap
        self.batch_tokens = batch_tokens
        self.pad_tolerance = pad_tolerance
        self.pool_tokens = batch_tokens * pool_batches

    def segments(
        self, doc_id: int, ids: Sequence[int], offsets: Sequence[tuple[int, int]], text_len: int
    ) -> tuple[list[Segment], bool]:
        """Segments of one tokenized doc, and whether text was dropped by truncation."""
        n = len(ids)
        p, s = len(self.prefix), len(self.suffix)
        content = np.asarray(ids, dtype=np.int64)
        offs = np.asarray(offsets, dtype=np.int32).reshape(n, 2)
        if self.long_docs == "truncate" or n <= self.width:
            windows = [(0, min(n, self.width))]
        else:
            step = self.width - self.overlap
            windows = []
            start = 0
            while True:
                end = min(start + self.width, n)
                windows.append((start, end))
                if end == n:
                    break
                start += step
        truncated = self.long_docs == "truncate" and n > self.width
        out = []
        pre = np.asarray(self.prefix, dtype=np.int64)
        suf = np.asarray(self.suffix, dtype=np.int64)
        for w, (a, b) in enumerate(windows):
            first, last = w == 0, w == len(windows) - 1
            seq_ids = np.concatenate([pre, content[a:b], suf])
            # stored: prefix specials of the first window, text tokens not already stored by
            # the previous window, suffix specials of the last window
            keep_start = 0 if first else p + self.overlap
            keep_end = p + (b - a) + (s if last else 0)
            text_from = a if first else a + self.overlap
            starts = np.concatenate(
                [
                    np.zeros(p if first else 0, np.int32),
                    offs[text_from:b, 0],
                    np.full(s if last else 0, text_len, np.int32),
                ]
            )
            ends = np.concatenate(
                [
                    np.zeros(p if first else 0, np.int32),
                    offs[text_from:b, 1],
                    np.full(s if last else 0, text_len, np.int32),
                ]
            )
            pos0 = 0 if first else p + text_from
            special = np.isin(seq_ids[keep_start:keep_end], self.special_ids)
            out.append(Segment(doc_id, seq_ids, keep_start, keep_end, pos0, starts, ends, special))
        return out, truncated

    def batches(self, segments: list[Segment]) -> list[list[Segment]]:
        """Sort by length (longest first, stable) and cut under the token budget."""
        order = sorted(range(len(segments)), key=lambda i: -len(segments[i].ids))
        batches: list[list[Segment]] = []
        current: list[Segment] = []
        for i in order:
            seg = segments[i]
            width = len(current[0].ids) if current else len(seg.ids)
            too_short = len(seg.ids) < (1.0 - self.pad_tolerance) * width
            if current and ((len(current) + 1) * width > self.batch_tokens or too_short):
                batches.append(current)
                current = []
            current.append(seg)
        if current:
            batches.append(current)
        return batches

    def pools(
        self,
        docs: Iterable[Doc],
        *,
        start_seq: int,
        seen: dict[int, int],
        shard: int,
        num_shards: int,
    ) -> Iterator[Pool]:
        """Pools of the records of shard ``shard``; each distinct non-empty text runs once.

        Every record of the shard goes into a pool's :attr:`Pool.docs`; only the first
        record of each text is tokenized (empty records and repeats are counted, and keep
        their row in the docs table). Records go to shard ``doc_id % num_shards``, so all
        records of one text are in one shard. ``seen`` maps the ``doc_id`` of every text
        stored already to its first record (a resumed job passes those of its earlier
        pools) and is updated in place.

        Pool boundaries depend only on the records and the options: after every
        ``_TOKENIZE_DOCS`` records of the shard the pending texts are tokenized, and the
        pool is cut there once it holds ``pool_tokens`` tokens or ``_POOL_RECORDS`` records.
        """
        seq = start_seq
        segments: list[Segment] = []
        pool_docs: list[Doc] = []
        repeat_of: list[int | None] = []
        counts: Counter[str] = Counter()
        pending: list[Doc] = []
        n_tokens = 0
        consumed = 0

        def flush_pending() -> None:
            nonlocal n_tokens
            if not pending:
                return
            enc = self.tokenizer(
                [d.text for d in pending],
                add_special_tokens=False,
                return_offsets_mapping=True,
                return_attention_mask=False,
                return_token_type_ids=False,
            )
            for doc, ids, offs in zip(
                pending, enc["input_ids"], enc["offset_mapping"], strict=True
            ):
                segs, truncated = self.segments(doc.doc_id, ids, offs, len(doc.text))
                counts["truncated_docs"] += truncated
                counts["windows"] += len(segs)
                n_tokens += sum(len(sg.ids) for sg in segs)
                segments.extend(segs)
            pending.clear()

        for doc in docs:
            consumed = doc.index + 1
            if doc.doc_id % num_shards != shard:
                continue
            first = seen.get(doc.doc_id) if doc.text else None
            pool_docs.append(doc)
            repeat_of.append(first)
            if not doc.text:
                counts["empty_docs"] += 1
            elif first is not None:
                counts["duplicate_docs"] += 1
            else:
                seen[doc.doc_id] = doc.index
                counts["texts"] += 1
                pending.append(doc)
            if len(pool_docs) % _TOKENIZE_DOCS == 0:
                flush_pending()
                if n_tokens >= self.pool_tokens or len(pool_docs) >= _POOL_RECORDS:
                    counts["docs"] += len(pool_docs)
                    yield Pool(seq, consumed, self.batches(segments), pool_docs, repeat_of, counts)
                    seq += 1
                    segments, pool_docs, repeat_of, counts, n_tokens = [], [], [], Counter(), 0
        flush_pending()
        counts["docs"] += len(pool_docs)
        # never a pool without records: a job resumed after its last pool reads nothing,
        # and such a pool would record ``consumed`` as 0 (a job killed after it then read
        # the whole corpus again, every text a repeat: docs counted twice)
        if pool_docs:
            yield Pool(seq, consumed, self.batches(segments), pool_docs, repeat_of, counts)
