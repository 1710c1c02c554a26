"""Importing actstore stays cheap: torch and transformers load only when a model is (and
Ray only when a run uses it)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["actstore", "actstore.extract", "actstore.extract.adapters"])
def test_import_does_not_load_torch(module: str) -> None:
    code = (
        f"import sys, {module}; "
        "heavy = sorted({'torch', 'transformers', 'ml_dtypes', 'sklearn', 'scipy', 'matplotlib',"
        " 'ray'}"
        " & set(sys.modules)); "
        "assert not heavy, heavy"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_query_namespace_resolves_every_public_name() -> None:
    import actstore.query as q

    assert set(q.__all__) == {"Store", "open_store", *q._LAZY}
    for name in q.__all__:
        assert getattr(q, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        q.nope  # noqa: B018


def test_public_namespace_is_what_it_says() -> None:
    import actstore

    public = [n for n in dir(actstore) if not n.startswith("_")]
    assert "Path" not in public
    assert "annotations" not in public
    assert set(actstore.__all__) <= set(dir(actstore))


def test_bfloat16_still_reads_as_bfloat16() -> None:
    import numpy as np

    from actstore.store.dtypes import logical_numpy_dtype, to_logical

    assert str(logical_numpy_dtype("bfloat16")) == "bfloat16"
    got = to_logical(np.array([16256], np.uint16), "bfloat16").astype(np.float32)
    assert got.tolist() == [1.0]
