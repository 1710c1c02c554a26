"""Importing actstore stays cheap: torch and transformers load only when a model is."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["actstore", "actstore.extract", "actstore.extract.adapters"])
def test_import_does_not_load_torch(module: str) -> None:
    code = (
        f"import sys, {module}; "
        "heavy = sorted({'torch', 'transformers'} & set(sys.modules)); "
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
