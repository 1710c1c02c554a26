"""Fit, evaluate, save and apply linear maps between two stored representations of the
same tokens (embedding → layer, layer → layer, run A → run B), streamed from a store."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from actstore.errors import ConfigError, MappingError
from actstore.query._backend import Backend
from actstore.query.head import Head
from actstore.query.mapping.linmaps import LinearMap, identity_map, procrustes_map, reduced_rank_map
from actstore.query.mapping.metrics import MetricsAccumulator, identity_metrics
from actstore.query.mapping.pairs import (
    EMBED,
    Blocks,
    PairRows,
    PairSpec,
    blocks_at,
    iter_pairs,
    pair_rows,
    read_pairs,
)
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


@dataclass(frozen=True)
class MapConfig:
    """How to fit a map and split its rows."""

    method: Method = "ridge"
    """ridge, procrustes, rrr (reduced rank), residual (Y = X + XUVᵀ + b), identity, or kl
    (ridge, then fine-tuned by KL of next-token distributions through Y's run's head)."""
    alphas: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
    """Ridge penalties to choose from (ridge; the first one for rrr/residual)."""
    cv: Literal["auto", "gcv", "loo"] | int | None = "auto"
    """Alpha choice: k folds (int) grouped by cv_groups, gcv or loo (both leave out single
    rows: cv_groups row), None (one alpha), or auto (cv_folds grouped folds; gcv when
    cv_groups is row)."""
    cv_groups: Literal["auto", "doc", "type", "row"] = "auto"
    """What the alpha's CV holds out together: doc (whole documents), type (whole token
    types), row (single rows), or auto (row for cv gcv/loo; else the split's grouping when
    it is type or doc; else type when X is embed, else doc)."""
    cv_folds: int = 5
    """Folds of cv auto when the CV is grouped (at most one per group)."""
    cv_scoring: Literal["mse", "r2", "corr"] = "mse"
    """What the alpha's CV optimises: MSE pooled over held-out rows, or R² or Pearson r per
    target averaged over folds (corr needs k-fold)."""
    alpha_rule: Literal["best", "1se", "1sd"] = "best"
    """Alpha from the CV scores: best, or the largest alpha within one standard error (1se)
    or one standard deviation (1sd, himalaya's conservative) over folds of the best."""
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
    """Validation split: doc (whole documents held out), type (whole token types: no type in
    both sets), token (each type's occurrences divided, balanced per type: tokens of one
    document, and for a per-type X such as embed the same inputs, in both sets), none, or
    auto (type when X is embed, else doc)."""
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
    memory_mb: float = 1024.0
    """Read the pairs once into memory when X and Y take at most this many MiB (float32),
    else stream them from the store in blocks (at least once per pass)."""
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
        if self.cv_groups not in ("auto", "doc", "type", "row"):
            raise ConfigError(f"cv_groups must be auto, doc, type or row, got {self.cv_groups!r}")
        if self.cv in ("gcv", "loo") and self.cv_groups in ("doc", "type"):
            raise ConfigError(
                f"cv={self.cv} leaves out single rows, cv_groups={self.cv_groups} whole "
                "groups: exact LOO and GCV are per row; use --cv auto or --cv K (grouped "
                "k-fold) or --cv-groups row"
            )
        if self.cv_folds < 2:
            raise ConfigError(f"cv_folds must be >= 2, got {self.cv_folds}")
        if self.batch_rows < 1:
            raise ConfigError(f"batch_rows must be >= 1, got {self.batch_rows}")


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


def resolved_split(spec: PairSpec, cfg: MapConfig) -> str:
    """The split ``cfg.split`` means for ``spec``: ``auto`` is ``type`` for X = embed (one
    vector per token type), else ``doc`` (tokens of one document are correlated)."""
    if cfg.split != "auto":
        return cfg.split
    return "type" if spec.x == EMBED else "doc"


def resolved_cv_groups(spec: PairSpec, cfg: MapConfig) -> str:
    """What ``cfg.cv_groups`` means for ``spec``: ``auto`` is ``row`` for cv gcv / loo /
    None, else the split's grouping when it is ``type`` or ``doc``, else ``type`` for X =
    embed and ``doc`` otherwise."""
    if cfg.cv_groups != "auto":
        return cfg.cv_groups
    if cfg.cv in ("gcv", "loo", None):
        return "row"
    split = resolved_split(spec, cfg)
    if split in ("type", "doc"):
        return split
    return "type" if spec.x == EMBED else "doc"


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

    The rows are read once when they fit ``config.memory_mb``, else streamed per pass.

    Returns
    -------
    FittedMap
        ``metrics["train"]`` / ``metrics["val"]`` (MSE, R², Pearson r, cosine, ...; val
        also names its ``split_mode``), ``metrics["map"]`` (‖W-I‖_F, diagonal, alpha and
        how it was chosen: ``cv``, ``cv_groups``, ``cv_folds``, ``cv_scoring``,
        ``alpha_rule``, ``cv_score``, ...).

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
    data = read_pairs(store, spec, rows, cfg.memory_mb)
    blocks = blocks_at(store, spec, rows, tr_idx, data, cfg.batch_rows)

    arrays: dict[str, npt.NDArray[Any]] = {}
    info: dict[str, Any] = {}
    if cfg.method in ("ridge", "kl"):
        lm, info = _fit_ridge(spec, cfg, train, blocks, arrays)
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
    hd = Head.from_store(store, spec.run_y, norm=cfg.head_norm) if cfg.method == "kl" else None
    metrics: dict[str, dict[str, Any]] = {
        "map": {**lm.info, **info, **identity_metrics(lm.coef), "split_mode": split},
        "train": _score(fitted, blocks(), hd),
    }
    if len(va_idx):
        val_blocks = blocks_at(store, spec, rows, va_idx, data, cfg.batch_rows)
        metrics["val"] = {**_score(fitted, val_blocks(), hd, per_dim=True), "split_mode": split}
        arrays["r2_per_dim_val"] = np.asarray(metrics["val"].pop("r2_per_dim"))
    fitted = replace(fitted, metrics=metrics)
    if save is not None:
        from actstore.query.mapping.saved import save_map

        save_map(store.path, save, fitted, overwrite=overwrite)
    return fitted


def _fit_ridge(
    spec: PairSpec,
    cfg: MapConfig,
    train: PairRows,
    blocks: Blocks,
    arrays: dict[str, npt.NDArray[Any]],
) -> tuple[LinearMap, dict[str, Any]]:
    """Ridge with alpha chosen by CV grouped as ``cfg.cv_groups`` says; fills ``arrays``
    and returns the map and how its alpha was chosen."""
    groups_kind = resolved_cv_groups(spec, cfg)
    groups = {"doc": train.doc_id, "type": train.token_id}.get(groups_kind)
    cv = cfg.cv
    if cv == "auto" and groups is None:
        cv = "gcv"
    rm = RidgeMap(
        cfg.alphas,
        cv,
        cfg.per_target,
        cfg.fit_intercept,
        cfg.backend,
        cfg.seed,
        scoring=cfg.cv_scoring,
        alpha_rule=cfg.alpha_rule,
        n_folds=cfg.cv_folds,
    ).fit_blocks(blocks, groups=groups if cv is not None else None)
    lm = LinearMap(rm.coef_, rm.intercept_, {"alpha": float(np.mean(rm.alpha_))})
    arrays["alpha"] = np.atleast_1d(rm.alpha_)
    arrays["alphas"] = np.asarray(cfg.alphas, np.float64)
    if rm.cv_errors_ is not None:
        arrays["cv_errors"] = rm.cv_errors_
    if rm.cv_scores_ is not None and cfg.cv_scoring != "mse":
        arrays["cv_scores"] = rm.cv_scores_
    if rm.cv_fold_scores_ is not None:
        arrays["cv_fold_scores"] = rm.cv_fold_scores_
    info = {
        "cv": rm.cv_,
        "cv_groups": groups_kind if rm.cv_ != "none" else None,
        "cv_folds": rm.n_folds_,
        "cv_scoring": cfg.cv_scoring,
        "alpha_rule": cfg.alpha_rule,
        "cv_score": rm.cv_score_,
    }
    return lm, info


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
    return _score(fitted, iter_pairs(store, spec, rows, fitted.config.batch_rows), hd, per_dim)


def _score(
    fitted: FittedMap,
    blocks: Iterable[tuple[F32, F32]],
    hd: Head | None,
    per_dim: bool = False,
) -> dict[str, Any]:
    acc = MetricsAccumulator()
    for x, y in blocks:
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
