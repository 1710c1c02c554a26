"""Store.token_columns reads the tokens Parquet files directly: it equals the SQL table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from actstore.errors import StoreCorruptError
from actstore.query.store import Store
from actstore.store.synthetic import write_synthetic_run


def test_token_columns_equal_the_sql_table_over_parts(tmp_path: Path) -> None:
    store = tmp_path / "s.acts"
    write_synthetic_run(store, "a", n_docs=30, tokens_per_doc=5, d=4, num_parts=3, docs_per_pool=4)
    write_synthetic_run(store, "b", n_docs=4, tokens_per_doc=3, d=4)
    cols = ("token_id", "doc_id", "special", "pos", "start", "end")
    with Store(store) as s:
        for run in ("a", "b"):
            got = s.token_columns(run, *cols)
            want = s.sql("SELECT * FROM tokens WHERE run = ? ORDER BY row", [run]).fetchnumpy()
            assert len(got["token_id"]) == len(want["row"])
            for c in cols:
                np.testing.assert_array_equal(got[c], np.asarray(want[c]), err_msg=c)
                assert got[c].dtype == np.asarray(want[c]).dtype, c


def test_a_truncated_tokens_file_is_one_line(tmp_path: Path) -> None:
    store = tmp_path / "s.acts"
    write_synthetic_run(store, "a", n_docs=6, tokens_per_doc=5, d=4)
    victim = sorted((store / "runs/a/tokens").glob("*.parquet"))[0]
    victim.write_bytes(victim.read_bytes()[:-20])
    with Store(store) as s, pytest.raises(StoreCorruptError, match=victim.name):
        s.token_columns("a", "token_id")
