"""Length-sorted batching under a token budget: padding stays small, nothing is lost."""

from __future__ import annotations

import numpy as np
import pytest

from actstore.extract.batching import Pooler, Segment


class _Tok:
    all_special_ids: list[int] = []  # noqa: RUF012

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [5] * len(text.split())}


def segs(lengths: list[int]) -> list[Segment]:
    return [
        Segment(
            i,
            np.zeros(n, np.int64),
            0,
            n,
            0,
            np.zeros(n, np.int32),
            np.zeros(n, np.int32),
            np.zeros(n, bool),
        )
        for i, n in enumerate(lengths)
    ]


@pytest.mark.parametrize("tol", [0.0, 0.05, 0.2])
def test_batches_respect_budget_and_padding_tolerance(tol: float) -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, 2000).tolist()
    pooler = Pooler(
        _Tok(),
        max_length=512,
        long_docs="truncate",
        window_overlap=0,
        batch_tokens=4096,
        pool_batches=8,
        pad_tolerance=tol,
    )
    batches = pooler.batches(segs(lengths))
    assert sorted(s.doc_id for b in batches for s in b) == list(range(2000))
    real = pad = 0
    for b in batches:
        width = max(len(s.ids) for s in b)
        assert len(b) == 1 or len(b) * width <= 4096
        assert all(len(s.ids) >= (1 - tol) * width for s in b)
        real += sum(len(s.ids) for s in b)
        pad += sum(width - len(s.ids) for s in b)
    assert pad / real <= tol + 1e-9
    again = pooler.batches(segs(lengths))
    assert [[s.doc_id for s in b] for b in again] == [[s.doc_id for s in b] for b in batches]
