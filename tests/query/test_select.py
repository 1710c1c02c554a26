"""Token selection and cross-run alignment, on two hand-tokenized runs of the same docs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import actstore
from actstore.errors import ConfigError, TokenNotFoundError

# rows of run "words":  doc 0: 0 [CLS], 1 The, 2 " dogs", 3 " barked", 4 ".", 5 [SEP]
#                       doc 1: 6 [CLS], 7 Dog, 8 " dog", 9 " hotdog", 10 [SEP]
# rows of run "pieces": doc 0: 0 The, 1 " do", 2 gs, 3 " bark", 4 ed, 5 "."
#                       doc 1: 6 Dog, 7 " dog", 8 " hot", 9 dog


def test_rows_of_token(hand_store: Path) -> None:
    with actstore.open(hand_store) as s:
        assert s.rows_of_token("pieces", "dog").tolist() == [9]
        assert s.rows_of_token("pieces", "dog", match="stripped").tolist() == [7, 9]
        assert s.rows_of_token("pieces", " DOG ", match="casefold").tolist() == [6, 7, 9]
        assert s.rows_of_token("words", " dog").tolist() == [8]
        with pytest.raises(TokenNotFoundError, match="match='stripped'"):
            s.rows_of_token("words", "cat")
        with pytest.raises(ConfigError, match="unknown match"):
            s.rows_of_token("words", "dog", match="fuzzy")  # type: ignore[arg-type]


def test_rows_in_span(hand_store: Path) -> None:
    with actstore.open(hand_store) as s:
        assert s.rows_in_span("words", 0, 4, 7).tolist() == [2]
        assert s.rows_in_span("pieces", 0, 4, 7).tolist() == [1, 2]
        assert s.rows_in_span("pieces", 0, 6, 8).tolist() == [2]
        assert s.rows_in_span("pieces", 1, 0, 100).tolist() == [6, 7, 8, 9]
        assert s.rows_in_span("pieces", 0, 16, 20).tolist() == []


def test_rows_of_word(hand_store: Path) -> None:
    with actstore.open(hand_store) as s:
        df = s.rows_of_word("words", "dog")  # "Dog" differs in case, "hotdog" is no word
        assert df.row.tolist() == [8]
        assert (df.word_start[0], df.word_end[0]) == (4, 7)
        df = s.rows_of_word("pieces", "dog", case=False)
        assert df.row.tolist() == [6, 7]
        assert df.occurrence.tolist() == [0, 1]
        df = s.rows_of_word("pieces", "dogs")  # one word, two tokens
        assert df.row.tolist() == [1, 2]
        assert df.occurrence.tolist() == [0, 0]
        assert s.rows_of_word("pieces", "cat").empty
        assert list(s.rows_of_word("pieces", "cat").columns)[:3] == ["row", "doc_id", "occurrence"]
        x = s.vectors("pieces", "hidden.0", s.rows_of_word("pieces", "dogs").row)
        assert x[:, 0].tolist() == [1.0, 2.0]


def test_last_token_rows(hand_store: Path) -> None:
    with actstore.open(hand_store) as s:
        assert s.last_token_rows("words").tolist() == [4, 9]
        assert s.last_token_rows("words", skip_special=False).tolist() == [5, 10]
        assert s.last_token_rows("pieces").tolist() == [5, 9]


def test_align(hand_store: Path) -> None:
    with actstore.open(hand_store) as s:
        df = s.align("words", "pieces")
        pairs = list(zip(df.row_a.tolist(), df.row_b.tolist(), strict=True))
        assert pairs == [
            (1, 0),
            (2, 1),
            (2, 2),
            (3, 3),
            (3, 4),
            (4, 5),
            (7, 6),
            (8, 7),
            (9, 8),
            (9, 9),
        ]
        assert df.overlap.tolist() == [3, 3, 2, 5, 2, 1, 3, 4, 4, 3]
        assert set(df.columns) == {
            "row_a",
            "row_b",
            "doc_id",
            "start_a",
            "end_a",
            "start_b",
            "end_b",
            "overlap",
        }
        back = s.align("pieces", "words")
        assert back[back.row_a.isin([1, 2])].row_b.tolist() == [2, 2]
        sub = s.align("words", "pieces", rows_a=[9, 2, 0])  # [CLS] (row 0) maps to nothing
        assert sub.row_a.tolist() == [2, 2, 9, 9]
        assert s.align("words", "pieces", rows_a=[0]).empty


def test_align_last(hand_store: Path) -> None:
    with actstore.open(hand_store) as s:
        df = s.align_last("words", "pieces")
        assert df.row_a.tolist() == [1, 2, 3, 4, 7, 8, 9]
        assert df.row_b.tolist() == [0, 2, 4, 5, 6, 7, 9]
        xa = s.vectors("words", "hidden.0", df.row_a)
        xb = s.vectors("pieces", "hidden.0", df.row_b)
        assert xa.shape == xb.shape == (7, 4)


def test_align_matches_sql_join(syn_store: Path) -> None:
    """The vectorized alignment equals the plain SQL overlap join on synthetic runs."""
    with actstore.open(syn_store) as s:
        df = s.align("a", "b")
        q = (
            "SELECT a.row AS row_a, b.row AS row_b FROM tokens a JOIN tokens b "
            "ON a.doc_id = b.doc_id AND a.start < b.end AND b.start < a.end "
            "WHERE a.run = 'a' AND b.run = 'b' AND a.end > a.start AND b.end > b.start "
            "ORDER BY row_a, row_b"
        )
        want = s.sql(q).df()
        assert np.array_equal(df[["row_a", "row_b"]].to_numpy(), want.to_numpy())
