"""Pick token rows by token string, character span, whole word or position, and align runs.

Every function reads through the store's SQL views (``tokens``, ``vocab``) or its files;
none loads a site's vectors. Row selections come back as sorted ``int64`` arrays of
global row ids, ready for :meth:`actstore.query.Store.vectors`; the functions that
need more context per row (:func:`rows_of_word`, :func:`align`) return DataFrames.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from actstore.errors import ConfigError, TokenNotFoundError
from actstore.query.sql import SQLEngine
from actstore.store.reader import RunReader

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "Match",
    "align",
    "align_last",
    "last_token_rows",
    "require_token_ids",
    "rows_in_span",
    "rows_of_token",
    "rows_of_word",
    "token_ids",
    "token_names",
]

Match = Literal["auto", "exact", "stripped", "casefold"]

_ROWS = "SELECT row FROM tokens WHERE run = ? AND {cond} ORDER BY row"


def _norm(match: Match) -> Any:
    if match == "exact":
        return lambda s: s
    if match == "stripped":
        return lambda s: s.strip()
    if match == "casefold":
        return lambda s: s.strip().casefold()
    raise ConfigError(f"unknown match {match!r}; expected one of auto, exact, stripped, casefold")


def token_ids(run: RunReader, token: str, match: Match = "exact") -> npt.NDArray[np.int32]:
    """Ids of the vocabulary entries of ``run`` whose decoded ``token`` matches ``token``.

    The one token lookup of actstore (centroids, nearest tokens, row selection all use it).
    ``exact`` compares the decoded strings as stored (``" dog"`` is not ``"dog"``);
    ``stripped`` ignores surrounding whitespace of both sides, as ``str.strip`` does
    (``" dog"``, ``"dog"`` and ``"\\tdog\\n"`` all match ``"dog"``); ``casefold`` also
    ignores case (``"Dog"`` matches too); ``auto`` is ``exact`` when anything matches
    exactly, else ``stripped``.

    Returns
    -------
    ndarray of shape (n_ids,), int32
        Sorted ids; empty when nothing matches.
    """
    if match == "auto":
        exact = token_ids(run, token, "exact")
        return exact if len(exact) else token_ids(run, token, "stripped")
    norm = _norm(match)
    table = run.vocab_table(["token_id", "token"])
    if table is None:
        return np.zeros(0, np.int32)
    ids = table.column("token_id").to_numpy()
    strings = table.column("token").to_pylist()
    want = norm(token)
    hit = [
        i for i, s in zip(ids.tolist(), strings, strict=True) if s is not None and norm(s) == want
    ]
    return np.asarray(sorted(hit), np.int32)


def token_names(run: RunReader) -> dict[int, str | None]:
    """``token_id`` -> decoded token string of every vocabulary entry of ``run`` (empty
    when the run has no vocabulary): how analyses name the ids in their tables."""
    table = run.vocab_table(["token_id", "token"])
    if table is None:
        return {}
    ids = table.column("token_id").to_numpy().tolist()
    return dict(zip(ids, table.column("token").to_pylist(), strict=True))


def require_token_ids(run: RunReader, token: str, match: Match = "auto") -> npt.NDArray[np.int32]:
    """:func:`token_ids`, raising when nothing matches.

    Raises
    ------
    TokenNotFoundError
        No vocabulary entry of ``run`` matches ``token``.
    """
    ids = token_ids(run, token, match)
    if not len(ids):
        raise TokenNotFoundError(
            f"token {token!r} is not in the vocabulary of run {run.name!r}"
            f"{_case_hint(run, token)}; "
            "look it up with SELECT * FROM vocab WHERE run = ? AND token ILIKE ?"
        )
    return ids


def _case_hint(run: RunReader, token: str) -> str:
    """`` (it has 'dog': the vocabulary is case-sensitive / uncased)`` when only the case
    differs."""
    table = run.vocab_table(["token"])
    if table is None:
        return ""
    want = token.strip().casefold()
    strings = table.column("token").to_pylist()
    near = sorted({t.strip() for t in strings if t is not None and t.strip().casefold() == want})
    if not near:
        return ""
    # special tokens ([CLS], <s>) aside, an uncased vocabulary has no capitals
    upper = sum(1 for t in strings if t and t != t.lower() and t[0] not in "[<")
    kind = "cased" if upper > 0.01 * len(strings) else "uncased (lowercase)"
    shown = ", ".join(repr(t) for t in near[:3])
    return f" (the {kind} vocabulary has {shown}: only the case differs)"


def _rows(engine: SQLEngine, cond: str, params: list[Any]) -> npt.NDArray[np.int64]:
    col = engine.sql(_ROWS.format(cond=cond), params).first_column()
    return np.asarray(col, np.int64)


def rows_of_token(
    engine: SQLEngine, run: RunReader, token: str, match: Match = "exact"
) -> npt.NDArray[np.int64]:
    """Rows of ``run`` whose token matches ``token`` (see :func:`token_ids` for ``match``).

    Returns
    -------
    ndarray of shape (n,), int64
        Sorted global row ids; empty when the token never occurs.

    Raises
    ------
    TokenNotFoundError
        No vocabulary entry matches ``token``.
    """
    ids = token_ids(run, token, match)
    if not len(ids):
        raise TokenNotFoundError(
            f"no token of run {run.name!r} matches {token!r} (match={match!r}); "
            "try match='stripped' or 'casefold', or look it up: "
            "SELECT * FROM vocab WHERE run = ? AND token ILIKE ?"
        )
    return _rows(engine, "list_contains(?::INTEGER[], token_id)", [run.name, ids.tolist()])


def rows_in_span(
    engine: SQLEngine, run: RunReader, doc_id: int, start: int, end: int
) -> npt.NDArray[np.int64]:
    """Rows of ``run`` in doc ``doc_id`` whose character span overlaps ``[start, end)``.

    A token ``[s, e)`` overlaps when ``s < end and e > start``; zero-length spans
    (special tokens such as ``[CLS]``) never overlap anything.

    Returns
    -------
    ndarray of shape (n,), int64
        Sorted global row ids.
    """
    return _rows(
        engine,
        'doc_id = ? AND start < ? AND "end" > ?',
        [run.name, int(doc_id), int(end), int(start)],
    )


def last_token_rows(
    engine: SQLEngine, run: RunReader, skip_special: bool = True
) -> npt.NDArray[np.int64]:
    """The last row of each doc of ``run`` (by position), skipping special tokens by default.

    Returns
    -------
    ndarray of shape (n_docs,), int64
        Sorted global row ids, one per doc that has a (non-special) token.
    """
    q = (
        "SELECT arg_max(row, pos) AS row FROM tokens WHERE run = ? AND (NOT ? OR NOT special) "
        "GROUP BY doc_id ORDER BY row"
    )
    return np.asarray(engine.sql(q, [run.name, bool(skip_special)]).first_column(), np.int64)


def _word_occurrences(
    run: RunReader, word: str, case: bool
) -> tuple[list[int], list[int], list[int]]:
    """``(doc_ids, starts, ends)`` of every whole-word occurrence of ``word`` in run's texts.

    A text repeated by several records is searched once (its records share its rows).
    """
    import pyarrow.compute as pc

    pattern = re.compile(rf"(?<!\w){re.escape(word)}(?!\w)", 0 if case else re.IGNORECASE)
    docs: list[int] = []
    starts: list[int] = []
    ends: list[int] = []
    searched: set[int] = set()
    for batch in run.doc_batches(["doc_id", "text"]):
        text = batch.column(1)
        hit = pc.match_substring(text, word, ignore_case=not case)
        picked = batch.filter(pc.fill_null(hit, False))
        for doc_id, t in zip(
            picked.column(0).to_pylist(), picked.column(1).to_pylist(), strict=True
        ):
            if doc_id in searched:
                continue
            searched.add(doc_id)
            for m in pattern.finditer(t):
                docs.append(doc_id)
                starts.append(m.start())
                ends.append(m.end())
    return docs, starts, ends


def rows_of_word(engine: SQLEngine, run: RunReader, word: str, case: bool = True) -> pd.DataFrame:
    """The tokens of ``run`` that overlap each whole-word occurrence of ``word`` in its docs.

    A word occurrence is a match of ``word`` not preceded or followed by a word character
    (Unicode ``\\w``); ``case=False`` ignores case. A word split into several tokens
    gives several rows for one occurrence.

    Returns
    -------
    DataFrame with columns row, doc_id, occurrence, start, end, word_start, word_end
        One line per (occurrence, token), sorted by row; ``occurrence`` numbers the
        occurrences (0..), ``start``/``end`` are the token's span, ``word_*`` the word's.
    """
    import pandas as pd

    docs, starts, ends = _word_occurrences(run, word, case)
    if not docs:
        return pd.DataFrame(
            {
                c: pd.Series(dtype="int64")
                for c in ("row", "doc_id", "occurrence", "start", "end", "word_start", "word_end")
            }
        )
    q = (
        "SELECT t.row, t.doc_id, o.occurrence, t.start, t.end, o.s AS word_start, "
        "o.e AS word_end FROM tokens t JOIN (SELECT unnest(?::BIGINT[]) AS doc_id, "
        "unnest(?::INTEGER[]) AS s, unnest(?::INTEGER[]) AS e, "
        "unnest(range(?::BIGINT)) AS occurrence) o "
        'ON t.doc_id = o.doc_id AND t.start < o.e AND t."end" > o.s '
        "WHERE t.run = ? ORDER BY t.row"
    )
    df = engine.sql(q, [docs, starts, ends, len(docs), run.name]).df()
    return df.astype(dict.fromkeys(df.columns, "int64"))


def _spans(
    engine: SQLEngine, run: str, *, rows: npt.NDArray[np.int64] | None, docs: Any = None
) -> dict[str, npt.NDArray[np.int64]]:
    """Tokens of ``run`` with a non-empty span: row, doc_id, start, end as int64 arrays."""
    q = 'SELECT row, doc_id, start, "end" FROM tokens WHERE run = ? AND "end" > start'
    params: list[Any] = [run]
    if rows is not None:
        q += " AND row IN (SELECT unnest(?::BIGINT[]))"
        params.append(rows.tolist())
    if docs is not None:
        q += " AND doc_id IN (SELECT unnest(?::BIGINT[]))"
        params.append(np.asarray(docs).tolist())
    cols = engine.sql(q + " ORDER BY row", params).fetchnumpy()
    return {k: np.asarray(v, np.int64) for k, v in cols.items()}


def align(
    engine: SQLEngine, run_a: RunReader, run_b: RunReader, rows_a: Any = None
) -> pd.DataFrame:
    """Map tokens of run A to the tokens of run B over the same doc whose spans overlap.

    Both runs tokenized the same docs (same ``doc_id``, same text), each its own way.
    For each A token with span ``[sa, ea)`` the result lists every B token of the same
    doc with span ``[sb, eb)`` such that ``sa < eb and sb < ea`` (they share at least
    one character). Tokens with an empty span (special tokens) match nothing, and an A
    token with no overlapping B token is absent.

    Parameters
    ----------
    engine : SQLEngine
        The store's SQL connection.
    run_a, run_b : RunReader
        The two runs.
    rows_a : array-like of int or None
        The A rows to map (any order); None maps every row of A.

    Returns
    -------
    DataFrame with columns row_a, row_b, doc_id, start_a, end_a, start_b, end_b, overlap
        Sorted by (row_a, row_b); ``overlap`` is the number of shared characters.
    """
    import pandas as pd

    sel = None if rows_a is None else np.unique(np.asarray(rows_a, np.int64))
    a = _spans(engine, run_a.name, rows=sel)
    b = _spans(
        engine, run_b.name, rows=None, docs=np.unique(a["doc_id"]) if sel is not None else None
    )
    names = ["row_a", "row_b", "doc_id", "start_a", "end_a", "start_b", "end_b", "overlap"]
    if not len(a["row"]) or not len(b["row"]):
        return pd.DataFrame({c: pd.Series(dtype="int64") for c in names})
    # key = (doc rank, char offset) packed in one int64, so one searchsorted serves all docs
    doc_keys, inv = np.unique(np.concatenate([a["doc_id"], b["doc_id"]]), return_inverse=True)
    del doc_keys
    m = int(max(a["end"].max(), b["end"].max())) + 1
    da, db = inv[: len(a["row"])], inv[len(a["row"]) :]
    order = np.lexsort((b["end"], b["start"], db))
    b = {k: v[order] for k, v in b.items()}
    db = db[order]
    b_start = db * m + b["start"]
    b_end_max = np.maximum.accumulate(db * m + b["end"])
    hi = np.searchsorted(b_start, da * m + a["end"], side="left")
    lo = np.searchsorted(b_end_max, da * m + a["start"], side="right")
    counts = np.maximum(hi - lo, 0)
    ia = np.repeat(np.arange(len(a["row"])), counts)
    offsets = np.repeat(np.cumsum(counts) - counts, counts)
    ib = np.repeat(lo, counts) + (np.arange(len(ia)) - offsets)
    keep = (b["end"][ib] > a["start"][ia]) & (b["start"][ib] < a["end"][ia])
    ia, ib = ia[keep], ib[keep]
    df = pd.DataFrame(
        {
            "row_a": a["row"][ia],
            "row_b": b["row"][ib],
            "doc_id": a["doc_id"][ia],
            "start_a": a["start"][ia],
            "end_a": a["end"][ia],
            "start_b": b["start"][ib],
            "end_b": b["end"][ib],
        }
    )
    df["overlap"] = np.minimum(df["end_a"], df["end_b"]) - np.maximum(df["start_a"], df["start_b"])
    return df.sort_values(["row_a", "row_b"], kind="stable").reset_index(drop=True)


def align_last(
    engine: SQLEngine, run_a: RunReader, run_b: RunReader, rows_a: Any = None
) -> pd.DataFrame:
    """One B row per A row: the last B token (highest row) overlapping the A token.

    The last overlapping B token is the first whose context covers the whole A token in
    a left-to-right model, which is what an A → B regression pairs up.

    Returns
    -------
    DataFrame with columns row_a, row_b
        Sorted by row_a; A rows without an overlapping B token are absent.
    """
    df = align(engine, run_a, run_b, rows_a)
    last = df.groupby("row_a", sort=True)["row_b"].max()
    return last.reset_index()
