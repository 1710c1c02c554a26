"""Fit, evaluate, save and apply linear maps between two stored representations of the
same tokens (embedding → layer, layer → layer, run A → run B), streamed from a store."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from actstore.errors import ConfigError, MappingError
from actstore.query._backend import Backend
from actstore.query.head import Head
from actstore.query.mapping.linmaps import LinearMap, identity_map, procrustes_map, reduced_rank_map
from actstore.query.mapping.metrics import MetricsAccumulator, identity_metrics
from actstore.query.mapping.ridge import RidgeStats, check_alphas
from actstore.query.mapping.ridgecv import RidgeMap
from actstore.query.mapping.split import balanced_split, doc_split, type_split
from actstore.query.store import Store

__all__ = [
    "FittedMap",
    "MapConfig",
    "PairRows",
    "PairSpec",
    "evaluate_map",
    "fit_map",
    "iter_pairs",
    "pair_rows",
]

Method = Literal["ridge", "procrustes", "rrr", "residual", "identity", "kl"]
METHODS: tuple[str, ...] = ("ridge", "procrustes", "rrr", "residual", "identity", "kl")
I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]
EMBED = "embed"


@dataclass(frozen=True)
class PairSpec:
    """Which pairs ``(x_row → y_row)`` to map."""

    run: str
    """Run of X (and of Y unless ``y_run``)."""
    x: str
    """X site (``hidden.3``, ``module:...``) or ``embed``: the input embedding of each
    row's token id."""
    y: str
    """Y site (or ``embed``)."""
    y_run: str | None = None
    """Another run for Y; rows are aligned by character span (last overlapping B token)."""
    rows: str | None = None
    """SQL whose first column is the X rows; default: all non-special tokens of ``run``."""
    y_rows: str | None = None
    """SQL for the Y rows of ``y_run`` or ``run`` (same length as ``rows``); default: the
    X rows themselves (same run) or the aligned rows (``y_run``)."""

    @property
    def run_y(self) -> str:
        """The run Y is read from."""
        return self.y_run or self.run


@dataclass(frozen=True)
class MapConfig:
    """How to fit a map and split its rows."""

    method: Method = "ridge"
    """ridge, procrustes, rrr (reduced rank), residual (Y = X + XUVᵀ + b), identity, or kl
    (ridge, then fine-tuned by KL of next-token distributions through Y's run's head)."""
    alphas: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
    """Ridge penalties to choose from (ridge; the first one for rrr/residual)."""
    cv: Literal["gcv", "loo"] | int | None = "gcv"
    """Alpha choice: gcv, loo, k folds (int) or None (one alpha)."""
    per_target: bool = False
    """Choose one alpha per output dimension."""
    rank: int = 16
    """Rank of rrr / residual maps."""
    lam_off: float = 1.0
    """Identity map: penalty on off-diagonal weights."""
    lam_diag: float = 1.0
    """Identity map: penalty on (diagonal - 1)."""
    center: bool = True
    """Procrustes: center X and Y."""
    scale: bool = False
    """Procrustes: fit one scalar scale too."""
    fit_intercept: bool = True
    """Fit an intercept (ridge, rrr, residual, identity)."""
    split: Literal["auto", "type", "token", "doc", "none"] = "auto"
    """Validation split: type (whole token types held out: no type in both sets), token
    (each type's occurrences divided, balanced per type: validation inputs of a per-type
    X such as embed are then also training inputs), doc (whole documents), none, or auto
    (type when X is embed, else token)."""
    k: int | None = None
    """Type / token split: at most k training examples per token id."""
    val_fraction: float = 0.2
    """Share of each token's (or of the docs') examples in validation."""
    seed: int = 0
    """Seed of the split and of k-fold assignment."""
    backend: Backend = "numpy"
    """numpy or torch (GPU when present) for the XᵀX accumulation."""
    batch_rows: int = 65536
    """Rows per streamed block."""
    head_norm: bool = False
    """kl / head metrics: apply the stored final norm to Y-space vectors (not for hidden.L)."""
    kl_epochs: int = 1
    """kl: passes over the training rows."""
    kl_lr: float = 1e-3
    """kl: Adam learning rate."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        check_alphas(self.alphas)
        if self.split not in ("auto", "type", "token", "doc", "none"):
            raise ConfigError(f"split must be auto, type, token, doc or none, got {self.split!r}")
        if self.batch_rows < 1:
            raise ConfigError(f"batch_rows must be >= 1, got {self.batch_rows}")


@dataclass(frozen=True)
class PairRows:
    """Resolved pairs: X rows, Y rows, and the X rows' token and doc ids (all shape (n,))."""

    x: I64
    y: I64
    token_id: I64
    doc_id: I64

    def take(self, idx: I64) -> PairRows:
        """The pairs at positions ``idx``."""
        return PairRows(self.x[idx], self.y[idx], self.token_id[idx], self.doc_id[idx])


@dataclass(frozen=True)
class FittedMap:
    """A fitted map with what it was fitted on and how well it did."""

    map: LinearMap
    spec: PairSpec
    config: MapConfig
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    arrays: dict[str, npt.NDArray[Any]] = field(default_factory=dict)

    def predict(self, X: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """``X W + b``, shape (n, m)."""
        return self.map.predict(X)


def _token_table(store: Store, run: str) -> tuple[I64, I64, npt.NDArray[np.bool_]]:
    t = store.token_columns(run, "token_id", "doc_id", "special")
    return (
        np.asarray(t["token_id"], np.int64),
        np.asarray(t["doc_id"], np.int64),
        np.asarray(t["special"], bool),
    )


def pair_rows(store: Store, spec: PairSpec) -> PairRows:
    """Resolve ``spec`` to row pairs.

    Raises
    ------
    RunNotFoundError, QueryError
        Unknown run, bad SQL.
    MappingError
        Empty selection, or X and Y selections of different lengths.
    """
    for run in {spec.run, spec.run_y}:
        store.run_info(run)
    tok, doc, special = _token_table(store, spec.run)
    x = (
        np.flatnonzero(~special).astype(np.int64)
        if spec.rows is None
        else store.rows(spec.run, spec.rows)
    )
    if spec.y_rows is not None:
        y = store.rows(spec.run_y, spec.y_rows)
    elif spec.y_run is not None:
        al = store.align_last(spec.run, spec.y_run, x)
        x, y = np.asarray(al["row_a"], np.int64), np.asarray(al["row_b"], np.int64)
    else:
        y = x
    if len(x) != len(y):
        raise MappingError(
            f"X and Y row selections differ in length: {len(x)} vs {len(y)}; "
            "select the same number of rows in both"
        )
    if not len(x):
        raise MappingError("no rows to map: the selection is empty; check the rows SQL")
    if x.min() < 0 or x.max() >= len(tok):
        raise MappingError(f"X rows must be in 0..{len(tok) - 1} of run {spec.run!r}")
    return PairRows(x, y, tok[x], doc[x])


def _site_blocks(store: Store, run: str, site: str, rows: I64, batch_rows: int) -> Iterator[F32]:
    if site == EMBED:
        emb = store.matrix(run, EMBED)
        tok, _, _ = _token_table(store, run)
        for a in range(0, len(rows), batch_rows):
            yield emb[tok[rows[a : a + batch_rows]]]
        return
    n_rows = int(store.run_info(run)["counts"]["rows"])
    whole = len(rows) == n_rows and bool(np.array_equal(rows, np.arange(n_rows)))
    sel = None if whole else rows
    for _, x in store.iter_vectors(run, site, sel, batch_rows=batch_rows, dtype=np.float32):
        yield x


def iter_pairs(
    store: Store, spec: PairSpec, rows: PairRows, batch_rows: int = 65536
) -> Iterator[tuple[F32, F32]]:
    """Stream ``(X_block, Y_block)`` float32 pairs for ``rows``, in order."""
    xs = _site_blocks(store, spec.run, spec.x, rows.x, batch_rows)
    ys = _site_blocks(store, spec.run_y, spec.y, rows.y, batch_rows)
    yield from zip(xs, ys, strict=True)


def resolved_split(spec: PairSpec, cfg: MapConfig) -> str:
    """The split ``cfg.split`` means for ``spec``: ``auto`` is ``type`` for X = embed (one
    vector per token type), else ``token``."""
    if cfg.split != "auto":
        return cfg.split
    return "type" if spec.x == EMBED else "token"


def _split(rows: PairRows, cfg: MapConfig, split: str) -> tuple[I64, I64]:
    frac, seed = cfg.val_fraction, cfg.seed
    if split == "type":
        return type_split(rows.token_id, k=cfg.k, val_fraction=frac, seed=seed)
    if split == "token":
        return balanced_split(rows.token_id, k=cfg.k, val_fraction=frac, seed=seed)
    if split == "doc":
        return doc_split(rows.doc_id, val_fraction=frac, seed=seed)
    return np.arange(len(rows.x), dtype=np.int64), np.zeros(0, np.int64)


def fit_map(
    store: Store,
    spec: PairSpec,
    config: MapConfig | None = None,
    *,
    save: str | None = None,
    overwrite: bool = False,
) -> FittedMap:
    """Fit a map on the training split of ``spec``'s rows and score it on train and val;
    with ``save=NAME`` also save it as result ``NAME`` (see :func:`save_map`).

    Returns
    -------
    FittedMap
        ``metrics["train"]`` / ``metrics["val"]`` (MSE, R², cosine, ...),
        ``metrics["map"]`` (‖W-I‖_F, diagonal, alpha, ...).

    Raises
    ------
    MappingError, ConfigError, RunNotFoundError, SiteNotFoundError, MatrixNotFoundError
    """
    cfg = config or MapConfig()
    if save is not None:
        from actstore.query.results import check_can_save

        check_can_save(store.path, save, overwrite=overwrite)
    rows = pair_rows(store, spec)
    split = resolved_split(spec, cfg)
    tr_idx, va_idx = _split(rows, cfg, split)
    if not len(tr_idx):
        raise MappingError("the training split is empty; lower val_fraction or select more rows")
    train = rows.take(tr_idx)

    def blocks() -> Iterator[tuple[F32, F32]]:
        return iter_pairs(store, spec, train, cfg.batch_rows)

    arrays: dict[str, npt.NDArray[Any]] = {}
    if cfg.method in ("ridge", "kl"):
        rm = RidgeMap(
            cfg.alphas, cfg.cv, cfg.per_target, cfg.fit_intercept, cfg.backend, cfg.seed
        ).fit_blocks(blocks)
        lm = LinearMap(rm.coef_, rm.intercept_, {"alpha": float(np.mean(rm.alpha_))})
        arrays["alpha"] = np.atleast_1d(rm.alpha_)
        arrays["alphas"] = np.asarray(cfg.alphas, np.float64)
        if rm.cv_errors_ is not None:
            arrays["cv_errors"] = rm.cv_errors_
        if cfg.method == "kl":
            from actstore.query.mapping.klmap import fit_kl_map

            head = Head.from_store(store, spec.run_y, norm=cfg.head_norm)
            lm = fit_kl_map(
                blocks, head, init=lm, epochs=cfg.kl_epochs, lr=cfg.kl_lr, seed=cfg.seed
            )
    else:
        st = RidgeStats.from_blocks(blocks(), backend=cfg.backend)
        if cfg.method == "procrustes":
            lm = procrustes_map(st, center=cfg.center, scale=cfg.scale)
        elif cfg.method == "identity":
            lm = identity_map(st, cfg.lam_off, cfg.lam_diag, fit_intercept=cfg.fit_intercept)
        else:
            lm = reduced_rank_map(
                st,
                cfg.rank,
                alpha=cfg.alphas[0],
                residual=cfg.method == "residual",
                fit_intercept=cfg.fit_intercept,
            )
    fitted = FittedMap(lm, spec, cfg, arrays=arrays)
    hd = cfg.method == "kl"
    metrics: dict[str, dict[str, Any]] = {
        "map": {**lm.info, **identity_metrics(lm.coef), "split_mode": split},
        "train": evaluate_map(store, fitted, rows=train, head=hd, head_norm=cfg.head_norm),
    }
    if len(va_idx):
        val = rows.take(va_idx)
        metrics["val"] = evaluate_map(
            store, fitted, rows=val, per_dim=True, head=hd, head_norm=cfg.head_norm
        )
        arrays["r2_per_dim_val"] = np.asarray(metrics["val"].pop("r2_per_dim"))
    fitted = replace(fitted, metrics=metrics)
    if save is not None:
        from actstore.query.mapping.saved import save_map

        save_map(store.path, save, fitted, overwrite=overwrite)
    return fitted


def evaluate_map(
    store: Store,
    fitted: FittedMap,
    *,
    spec: PairSpec | None = None,
    rows: PairRows | None = None,
    head: bool = False,
    head_norm: bool = False,
    per_dim: bool = False,
) -> dict[str, Any]:
    """Score ``fitted`` on ``rows`` (default: all rows of ``spec`` or of the map's spec).

    Parameters
    ----------
    head : bool
        Also report top-1 agreement and KL of next-token distributions through the head
        of Y's run (Y must be ``hidden.L`` or, with ``head_norm``, an earlier layer).
    per_dim : bool
        Include ``r2_per_dim``.
    """
    spec = spec or fitted.spec
    rows = rows if rows is not None else pair_rows(store, spec)
    hd = Head.from_store(store, spec.run_y, norm=head_norm) if head else None
    acc = MetricsAccumulator()
    bs = fitted.config.batch_rows
    for x, y in iter_pairs(store, spec, rows, bs):
        if x.shape[1] != fitted.map.coef.shape[0] or y.shape[1] != fitted.map.coef.shape[1]:
            raise MappingError(
                f"the map is {fitted.map.coef.shape[0]} -> {fitted.map.coef.shape[1]}, the rows "
                f"are {x.shape[1]} -> {y.shape[1]}; evaluate on the sites it was fitted on"
            )
        yh = fitted.predict(x)
        acc.update(y, yh)
        if hd is not None:
            for a in range(0, len(y), 1024):
                acc.update_head(hd, y[a : a + 1024], yh[a : a + 1024])
    return acc.result(per_dim)
