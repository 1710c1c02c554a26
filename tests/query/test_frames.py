"""Vectors with their metadata: frames (pandas / Arrow) and the xarray view of a site."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import actstore
from actstore.errors import ConfigError, RowIndexError


def test_frame_rows_in_caller_order_with_metadata(hand_store: Path) -> None:
    with actstore.open(hand_store) as s:
        df = s.frame("words", "hidden.0", [3, 1, 3])
        assert df["row"].tolist() == [3, 1, 3]
        np.testing.assert_array_equal(
            np.stack(df["vector"]), s.vectors("words", "hidden.0", [3, 1, 3], dtype=np.float32)
        )
        tok = (
            s.sql(
                'SELECT t.row, v.token, t.start, t."end", t.doc_id FROM tokens t '
                "JOIN vocab v USING (run, token_id) WHERE t.run = 'words' AND t.row IN (1, 3)"
            )
            .df()
            .set_index("row")
        )
        for _, r in df.iterrows():
            assert r.token == tok.loc[r.row, "token"]
            assert (r.start, r.end, r.doc_id) == tuple(tok.loc[r.row, ["start", "end", "doc_id"]])
        t = s.frame("words", "hidden.0", "SELECT row FROM tokens WHERE NOT special", kind="arrow")
        assert t.column_names[-1] == "vector"
        assert t.num_rows == len(s.rows("words", "SELECT row FROM tokens WHERE NOT special"))
        assert len(s.frame("words", "hidden.0")) == 11  # every row
        with pytest.raises(RowIndexError):
            s.frame("words", "hidden.0", [99])
        with pytest.raises(ConfigError, match="kind must be"):
            s.frame("words", "hidden.0", [1], kind="polars")  # type: ignore[arg-type]


@pytest.mark.parametrize("run", ["a", "b"])  # float16 in 2 parts; bfloat16
def test_xarray_view_equals_the_store(syn_store: Path, run: str) -> None:
    with actstore.open(syn_store) as s:
        ds = s.to_xarray(run, "hidden.1")
        n = s.run_info(run)["counts"]["rows"]
        full = s.vectors(run, "hidden.1", np.arange(n))
        assert ds["hidden.1"].shape == full.shape
        assert ds["hidden.1"].dtype == full.dtype
        np.testing.assert_array_equal(
            np.asarray(ds["hidden.1"].values, np.float32), full.astype(np.float32)
        )
        cols = s.token_columns(run, "doc_id", "token_id")
        np.testing.assert_array_equal(ds["doc_id"].values, cols["doc_id"])
        np.testing.assert_array_equal(ds["token_id"].values, cols["token_id"])
        picked = ds["hidden.1"].isel(row=[5, 2]).values
        np.testing.assert_array_equal(picked, s.vectors(run, "hidden.1", [5, 2]))
