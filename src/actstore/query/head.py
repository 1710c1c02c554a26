"""The one output head: what turns a stored hidden state into logits, offline.

A run stores its head as matrices (``unembed``, optional ``unembed.bias``,
``final_norm.weight`` / ``final_norm.bias``) plus ``run.json``'s ``head.final_norm``
(type and eps). :class:`Head` applies them in NumPy (:meth:`Head.logits`,
:meth:`Head.log_probs`) or in torch (:meth:`Head.torch_log_probs`), with one definition of
each norm; the logit lens, the mapping metrics and the KL maps all use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from actstore.errors import ConfigError, MatrixNotFoundError

if TYPE_CHECKING:
    import torch

    from actstore.query.store import Store

__all__ = ["NORMS", "Head", "apply_head"]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

#: final norm types the head can apply offline (run.json ``head.final_norm.type``)
NORMS = ("LayerNorm", "RMSNorm")


def _check_norm(kind: str | None) -> None:
    if kind is not None and kind not in NORMS:
        raise ConfigError(
            f"final norm type {kind!r} is not supported offline (expected LayerNorm or "
            "RMSNorm); apply the head yourself with store.matrix(...)"
        )


@dataclass(frozen=True)
class Head:
    """A run's output head, offline: an optional final norm, then ``unembed`` (+ bias).

    ``hidden.L`` is stored after the final norm (see docs/format.md), so a norm is only
    for earlier layers (a logit lens); :meth:`from_store` decides it per site.

    Parameters
    ----------
    unembed : ndarray of shape (vocab, d)
    bias : ndarray of shape (vocab,), optional
        Bias of the output projection.
    norm_type : {"LayerNorm", "RMSNorm"} or None
        The final norm applied before ``unembed``; None applies none.
    norm_weight, norm_bias : ndarray of shape (d,), optional
        The final norm's affine parameters.
    eps : float
        The final norm's epsilon.

    Examples
    --------
    >>> h = Head(np.eye(2, dtype=np.float32), norm_type="LayerNorm", eps=0.0)
    >>> h.logits([[1.0, 3.0]]).tolist()
    [[-1.0, 1.0]]
    """

    unembed: F32
    bias: F32 | None = None
    norm_type: str | None = None
    norm_weight: F32 | None = None
    norm_bias: F32 | None = None
    eps: float = 1e-5

    def __post_init__(self) -> None:
        _check_norm(self.norm_type)

    @classmethod
    def from_store(
        cls, store: Store, run: str, *, norm: bool = False, site: str | None = None
    ) -> Head:
        """The head of ``run``.

        Parameters
        ----------
        store : Store
        run : str
        norm : bool
            Apply the stored final norm first (for vectors taken before it).
        site : str, optional
            Decide ``norm`` from the site instead: every site but the last ``hidden.L``
            (which already includes the final norm) gets the norm.

        Raises
        ------
        MatrixNotFoundError
            The run stored no ``unembed`` (e.g. an encoder without an LM head).
        ConfigError
            The run's final norm is of a type the head cannot apply offline.
        """
        info = store.run_info(run)
        mats = dict(info.get("matrices") or {})
        if "unembed" not in mats:
            raise MatrixNotFoundError(
                f"run {run!r} has no 'unembed' matrix (has {', '.join(sorted(mats)) or 'none'}); "
                "the logit lens and head metrics need a model with an output head"
            )
        if site is not None:
            norm = site != f"hidden.{_n_layers(store, run)}"

        def opt(name: str) -> F32 | None:
            return store.matrix(run, name) if name in mats else None

        fn = (info.get("head") or {}).get("final_norm") if norm else None
        unembed, bias = store.matrix(run, "unembed"), opt("unembed.bias")
        if not fn:
            return cls(unembed, bias)
        return cls(
            unembed,
            bias,
            fn.get("type"),
            opt("final_norm.weight"),
            opt("final_norm.bias"),
            float(fn.get("eps") or 1e-5),
        )

    def normed(self, H: npt.ArrayLike) -> F64:
        """``H`` (n, d) after the final norm (if any), in float64."""
        X = np.atleast_2d(np.asarray(H, np.float64))
        if self.norm_type is None:
            return X
        if self.norm_type == "LayerNorm":
            X = X - X.mean(1, keepdims=True)
        X = X / np.sqrt((X * X).mean(1, keepdims=True) + self.eps)
        if self.norm_weight is not None:
            X = X * np.asarray(self.norm_weight, np.float64)
        if self.norm_bias is not None:
            X = X + np.asarray(self.norm_bias, np.float64)
        return np.asarray(X, np.float64)

    def logits(self, H: npt.ArrayLike) -> F32:
        """Logits of hidden states ``H`` (n, d): shape (n, vocab), float32."""
        X = self.normed(H).astype(np.float32)
        z = X @ np.asarray(self.unembed, np.float32).T
        if self.bias is not None:
            z = z + np.asarray(self.bias, np.float32)
        return np.asarray(z, np.float32)

    def log_probs(self, H: npt.ArrayLike) -> F64:
        """Log-softmax of the logits of ``H`` (n, d), computed in float64: (n, vocab)."""
        z = self.normed(H) @ np.asarray(self.unembed, np.float64).T
        if self.bias is not None:
            z = z + np.asarray(self.bias, np.float64)
        z = z - z.max(1, keepdims=True)
        return np.asarray(z - np.log(np.exp(z).sum(1, keepdims=True)))

    def torch_params(self, device: Any) -> dict[str, torch.Tensor]:
        """The head's arrays as float32 tensors on ``device`` (for :meth:`torch_log_probs`)."""
        import torch

        names = ("unembed", "bias", "norm_weight", "norm_bias")
        return {
            k: torch.as_tensor(np.asarray(v, np.float32), device=device)
            for k in names
            if (v := getattr(self, k)) is not None
        }

    def torch_log_probs(self, h: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Differentiable log-softmax of ``h`` (n, d) through the head, in torch.

        ``params`` is :meth:`torch_params` (kept by the caller so tensors move once).
        """
        import torch

        if self.norm_type == "LayerNorm":
            h = h - h.mean(-1, keepdim=True)
        if self.norm_type is not None:
            h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        if "norm_weight" in params:
            h = h * params["norm_weight"]
        if "norm_bias" in params:
            h = h + params["norm_bias"]
        z = h @ params["unembed"].T
        if "bias" in params:
            z = z + params["bias"]
        return torch.log_softmax(z, -1)


def _n_layers(store: Store, run: str) -> int:
    hidden = [int(s.split(".")[1]) for s in store.sites(run) if s.startswith("hidden.")]
    model = store.run_info(run).get("model") or {}
    return int(model.get("n_layers", max(hidden, default=-1)))


def apply_head(
    H: npt.ArrayLike,
    unembed: npt.ArrayLike,
    *,
    norm: dict[str, Any] | None = None,
    weight: npt.ArrayLike | None = None,
    bias: npt.ArrayLike | None = None,
    unembed_bias: npt.ArrayLike | None = None,
) -> F32:
    """Logits of hidden states through a final norm and an unembedding (a :class:`Head`).

    Parameters
    ----------
    H : array_like of shape (n, d)
    unembed : array_like of shape (vocab, d)
    norm : dict or None
        ``{"type": "LayerNorm" | "RMSNorm", "eps": float}`` (run.json ``head.final_norm``);
        None applies no norm.
    weight, bias : array_like of shape (d,), optional
        Final norm parameters.
    unembed_bias : array_like of shape (vocab,), optional

    Returns
    -------
    ndarray of shape (n, vocab), float32

    Raises
    ------
    ConfigError
        A norm type other than LayerNorm / RMSNorm.

    Examples
    --------
    >>> apply_head([[1.0, 3.0]], np.eye(2), norm={"type": "LayerNorm", "eps": 0.0}).tolist()
    [[-1.0, 1.0]]
    """

    def f32(a: npt.ArrayLike | None) -> F32 | None:
        return None if a is None else np.asarray(a, np.float32)

    head = Head(
        np.asarray(unembed, np.float32),
        f32(unembed_bias),
        None if norm is None else norm.get("type"),
        f32(weight) if norm is not None else None,
        f32(bias) if norm is not None else None,
        float((norm or {}).get("eps") or 0.0),
    )
    return head.logits(H)
