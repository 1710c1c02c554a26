"""How good a map is: streamed regression metrics, distance from the identity, and
agreement of next-token distributions through a run's stored head."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from actstore.errors import MappingError

if TYPE_CHECKING:
    from actstore.query.head import Head

__all__ = ["MetricsAccumulator", "identity_metrics", "regression_metrics"]

F64 = npt.NDArray[np.float64]


class MetricsAccumulator:
    """Streamed MSE, R² (overall and per output dim), Pearson r per output dim (averaged)
    and mean cosine of predictions.

    Examples
    --------
    >>> import numpy as np
    >>> acc = MetricsAccumulator()
    >>> acc.update(np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([[1.0, 0.0], [0.0, 1.0]]))
    >>> acc.result()["mse"], acc.result()["cosine"]
    (0.25, 1.0)
    """

    def __init__(self) -> None:
        self.n = 0
        self.sse: F64 | None = None
        self.sy: F64 | None = None
        self.syy: F64 | None = None
        self.sp: F64 | None = None
        self.spp: F64 | None = None
        self.syp: F64 | None = None
        self.ymin: F64 | None = None
        self.ymax: F64 | None = None
        self.cos = 0.0
        self.head_agree = 0
        self.head_kl = 0.0

    def update(self, Y: npt.ArrayLike, Yhat: npt.ArrayLike) -> None:
        """Add true ``Y`` and predicted ``Yhat``, both of shape (n, m)."""
        y, yh = np.asarray(Y, np.float64), np.asarray(Yhat, np.float64)
        if y.shape != yh.shape:
            raise MappingError(f"Y and Yhat shapes differ: {y.shape} vs {yh.shape}")
        if (
            self.sse is None
            or self.sy is None
            or self.syy is None
            or self.sp is None
            or self.spp is None
            or self.syp is None
        ):
            self.sse, self.sy, self.syy, self.sp, self.spp, self.syp = (
                np.zeros(y.shape[1]) for _ in range(6)
            )
        if self.ymin is None or self.ymax is None:
            self.ymin = np.full(y.shape[1], np.inf)
            self.ymax = np.full(y.shape[1], -np.inf)
        if len(y):
            self.ymin = np.minimum(self.ymin, y.min(0))
            self.ymax = np.maximum(self.ymax, y.max(0))
        self.n += len(y)
        self.sse += ((y - yh) ** 2).sum(0)
        self.sy += y.sum(0)
        self.syy += (y**2).sum(0)
        self.sp += yh.sum(0)
        self.spp += (yh**2).sum(0)
        self.syp += (y * yh).sum(0)
        norms = np.linalg.norm(y, axis=1) * np.linalg.norm(yh, axis=1)
        dots = np.einsum("ij,ij->i", y, yh)
        self.cos += float(np.sum(np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)))

    def update_head(self, head: Head, Y: npt.ArrayLike, Yhat: npt.ArrayLike) -> None:
        """Add top-1 agreement and KL(p_true || p_pred) of the next-token distributions."""
        lt, lp = head.log_probs(Y), head.log_probs(Yhat)
        self.head_agree += int(np.sum(lt.argmax(1) == lp.argmax(1)))
        self.head_kl += float(np.sum(np.exp(lt) * (lt - lp)))

    def result(self, per_dim: bool = False) -> dict[str, Any]:
        """``mse``, ``r2`` (mean over dims, as sklearn's ``r2_score``), ``r2_weighted``
        (variance-weighted, as ``r2_score(multioutput="variance_weighted")``), ``corr``
        (Pearson r of prediction and target per dim, averaged; 0 for a constant one), ``cosine``,
        ``n``; ``r2_per_dim`` when asked; ``top1_agreement``
        and ``kl`` when head updates were made."""
        if self.sse is None or self.sy is None or self.syy is None or self.n == 0:
            raise MappingError("no rows to evaluate: the selection is empty; check the rows SQL")
        # a constant column (min == max, tracked exactly) has no variance to explain: as
        # scikit-learn's r2_score, it scores 1 when predicted exactly, else 0
        constant = np.asarray(self.ymin == self.ymax)
        sst = np.where(constant, 0.0, np.maximum(self.syy - self.sy**2 / self.n, 0.0))
        ratio = np.divide(self.sse, sst, out=np.zeros_like(sst), where=sst > 0)
        r2 = np.where(sst > 0, 1 - ratio, np.where(self.sse == 0, 1.0, 0.0))
        if sst.sum() > 0:
            r2_weighted = float(1 - self.sse[sst > 0].sum() / sst.sum())
        else:
            r2_weighted = 1.0 if self.sse.sum() == 0 else 0.0
        out: dict[str, Any] = {
            "n": self.n,
            "corr": _corr(self.n, self.sy, self.sp, self.spp, self.syp, sst),
            "mse": float(self.sse.sum() / (self.n * len(self.sse))),
            "r2": float(r2.mean()),
            "r2_weighted": r2_weighted,
            "cosine": self.cos / self.n,
        }
        if per_dim:
            out["r2_per_dim"] = r2.tolist()
        if self.head_agree or self.head_kl:
            out["top1_agreement"] = self.head_agree / self.n
            out["kl"] = self.head_kl / self.n
        return out


def _corr(n: int, sy: F64, sp: F64 | None, spp: F64 | None, syp: F64 | None, sst: F64) -> float:
    """Mean Pearson r over dims from streamed sums (0 for a constant target or prediction)."""
    if sp is None or spp is None or syp is None:
        return 0.0
    cov = syp - sy * sp / n
    den = np.sqrt(sst * np.maximum(spp - sp**2 / n, 0.0))
    return float(np.divide(cov, den, out=np.zeros_like(cov), where=den > 0).mean())


def regression_metrics(
    Y: npt.ArrayLike, Yhat: npt.ArrayLike, per_dim: bool = False
) -> dict[str, Any]:
    """Metrics of :class:`MetricsAccumulator` on in-memory arrays of shape (n, m)."""
    acc = MetricsAccumulator()
    acc.update(Y, Yhat)
    return acc.result(per_dim)


def identity_metrics(W: npt.ArrayLike) -> dict[str, float]:
    """How far a square map ``W`` (d, d) is from the identity.

    Returns ``w_minus_i_fro`` (‖W - I‖_F), ``diag_mean``, ``diag_std`` and
    ``offdiag_energy`` (share of ``Σ W_ij²`` off the diagonal); empty for non-square W.

    Examples
    --------
    >>> identity_metrics([[1.0, 0.0], [0.0, 1.0]])["w_minus_i_fro"]
    0.0
    """
    w = np.asarray(W, np.float64)
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        return {}
    dg = np.diag(w)
    total = float((w**2).sum())
    return {
        "w_minus_i_fro": float(np.linalg.norm(w - np.eye(len(w)))),
        "diag_mean": float(dg.mean()),
        "diag_std": float(dg.std()),
        "offdiag_energy": float((total - (dg**2).sum()) / total) if total > 0 else 0.0,
    }
