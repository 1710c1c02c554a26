"""The one output head: what turns a stored hidden state into logits, offline.

A run stores its head as matrices (``unembed``, optional ``unembed.bias``,
``final_norm.weight`` / ``final_norm.bias``, ``final_proj.weight`` / ``.bias``) plus
``run.json``'s ``head`` (the final norm's type, eps and weight offset; logit scale and
softcapping). :class:`Head` applies them in NumPy (:meth:`Head.logits`,
:meth:`Head.log_probs`) or in torch (:meth:`Head.torch_log_probs`), with one definition of
each step; the logit lens, the mapping metrics and the KL maps all use it.
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
_MLM_ACTS = ("gelu", "gelu_tanh", "relu")


def _erf(x: F64) -> F64:
    """Elementwise erf (float64), by ``math.erf``: exact GELU without SciPy."""
    from math import erf

    return np.asarray(np.vectorize(erf, otypes=[np.float64])(x), np.float64)


def _check_norm(kind: str | None) -> None:
    if kind is not None and kind not in NORMS:
        raise ConfigError(
            f"final norm type {kind!r} is not supported offline (expected LayerNorm or "
            "RMSNorm); apply the head yourself with store.matrix(...)"
        )


@dataclass(frozen=True)
class Head:
    """A run's output head, offline: an optional final norm and projection, then
    ``unembed`` (+ bias), then the logit transforms.

    ``hidden.L`` is stored after the final norm and projection (see docs/format.md), so
    they are only for earlier layers (a logit lens); :meth:`from_store` decides it per
    site. The logit transforms apply to every site.

    Parameters
    ----------
    unembed : ndarray of shape (vocab, d_out)
    bias : ndarray of shape (vocab,), optional
        Bias of the output projection.
    norm_type : {"LayerNorm", "RMSNorm"} or None
        The final norm applied first; None applies none.
    norm_weight, norm_bias : ndarray of shape (d,), optional
        The final norm's affine parameters; the output is scaled by
        ``norm_weight + weight_offset``.
    eps : float
        The final norm's epsilon.
    weight_offset : float
        1.0 for the Gemma family (``x * (1 + w)``), else 0.
    proj : ndarray of shape (d_out, d), optional
        A projection after the final norm (OPT-350m's ``project_out``).
    proj_bias : ndarray of shape (d_out,), optional
    logit_scale : float
        Logits are multiplied by it (Cohere's ``logit_scale``, Granite's
        ``1 / logits_scaling``).
    softcap : float, optional
        Logits become ``softcap * tanh(logits / softcap)`` (Gemma 2's
        ``final_logit_softcapping``), after the scale.
    mlm : dict, optional
        A masked LM head's transform, applied at every site right before ``unembed``:
        ``{"weight": (d, d), "bias": (d,), "act": "gelu" | "gelu_tanh" | "relu",
        "norm_weight": (d,), "norm_bias": (d,), "eps": float}`` (LayerNorm(act(dense x))).

    Examples
    --------
    >>> h = Head(np.eye(2, dtype=np.float32), norm_type="LayerNorm", eps=0.0)
    >>> h.logits([[1.0, 3.0]]).tolist()
    [[-1.0, 1.0]]
    >>> Head(np.eye(2, dtype=np.float32), softcap=1.0).logits([[0.0, 100.0]]).tolist()
    [[0.0, 1.0]]
    """

    unembed: F32
    bias: F32 | None = None
    norm_type: str | None = None
    norm_weight: F32 | None = None
    norm_bias: F32 | None = None
    eps: float = 1e-5
    weight_offset: float = 0.0
    proj: F32 | None = None
    proj_bias: F32 | None = None
    logit_scale: float = 1.0
    softcap: float | None = None
    mlm: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        _check_norm(self.norm_type)
        if self.mlm is not None and self.mlm.get("act") not in _MLM_ACTS:
            raise ConfigError(
                f"MLM head activation {self.mlm.get('act')!r} is not supported offline "
                f"(expected one of {', '.join(_MLM_ACTS)})"
            )

    def _mlm_np(self, X: F64) -> F64:
        """The MLM transform (if any) on float64 rows."""
        m = self.mlm
        if m is None:
            return X
        X = X @ np.asarray(m["weight"], np.float64).T
        if m.get("bias") is not None:
            X = X + np.asarray(m["bias"], np.float64)
        if m["act"] == "gelu":
            from math import sqrt

            X = 0.5 * X * (1.0 + _erf(X / sqrt(2.0)))
        elif m["act"] == "gelu_tanh":
            X = 0.5 * X * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (X + 0.044715 * X**3)))
        else:
            X = np.maximum(X, 0.0)
        X = X - X.mean(1, keepdims=True)
        X = X / np.sqrt((X * X).mean(1, keepdims=True) + float(m.get("eps") or 1e-12))
        if m.get("norm_weight") is not None:
            X = X * np.asarray(m["norm_weight"], np.float64)
        if m.get("norm_bias") is not None:
            X = X + np.asarray(m["norm_bias"], np.float64)
        return np.asarray(X, np.float64)

    @property
    def width(self) -> int:
        """Width ``d`` of the vectors the head takes."""
        w = self.proj if self.proj is not None else self.unembed
        return int(np.shape(w)[1])

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
            Apply the stored final norm and projection first (for vectors taken before
            them, i.e. before ``hidden.L``).
        site : str, optional
            Decide ``norm`` from the site instead: every site but the last ``hidden.L``
            (which already includes the final norm) gets the norm.

        Raises
        ------
        MatrixNotFoundError
            The run stored no ``unembed`` (e.g. an encoder without an LM head).
        ConfigError
            The run's head cannot be applied offline: the model's logits are not what
            ``unembed`` and the recorded transforms give (``head.unsupported``), or, for
            vectors before ``hidden.L``, the final norm or projection is not one the head
            can apply (``head.lens_unsupported``).
        """
        info = store.run_info(run)
        mats = dict(info.get("matrices") or {})
        if "unembed" not in mats:
            raise MatrixNotFoundError(
                f"run {run!r} has no 'unembed' matrix (has {', '.join(sorted(mats)) or 'none'}); "
                "the logit lens and head metrics need a model with an output head"
            )
        head = info.get("head") or {}
        if head.get("unsupported"):
            raise ConfigError(
                f"run {run!r}: its output head cannot be applied offline: {head['unsupported']}"
            )
        if site is not None:
            norm = site != f"hidden.{_n_layers(store, run)}"
        if norm and head.get("lens_unsupported"):
            raise ConfigError(
                f"run {run!r}: vectors before hidden.{_n_layers(store, run)} cannot go through "
                f"its head offline: {head['lens_unsupported']}"
            )

        def opt(name: str) -> F32 | None:
            return store.matrix(run, name) if norm and name in mats else None

        scale = float(head.get("logit_scale", 1.0)) / float(head.get("logits_scaling", 1.0))
        mlm: dict[str, Any] | None = None
        if (spec := head.get("mlm_transform")) is not None:

            def mat(name: str) -> F32 | None:
                return store.matrix(run, name) if name in mats else None

            mlm = {
                "weight": mat("mlm_transform.weight"),
                "bias": mat("mlm_transform.bias"),
                "act": spec.get("act"),
                "norm_weight": mat("mlm_norm.weight"),
                "norm_bias": mat("mlm_norm.bias"),
                "eps": float((spec.get("norm") or {}).get("eps") or 1e-12),
            }
        cap = head.get("final_logit_softcapping")
        fn = (head.get("final_norm") or {}) if norm else {}
        return cls(
            store.matrix(run, "unembed"),
            store.matrix(run, "unembed.bias") if "unembed.bias" in mats else None,
            fn.get("type"),
            opt("final_norm.weight") if fn else None,
            opt("final_norm.bias") if fn else None,
            float(fn.get("eps") or 1e-5),
            float(fn.get("weight_offset") or 0.0),
            opt("final_proj.weight"),
            opt("final_proj.bias"),
            scale,
            None if cap is None else float(cap),
            mlm,
        )

    def normed(self, H: npt.ArrayLike) -> F64:
        """``H`` (n, d) after the final norm and projection (if any), in float64."""
        X = np.atleast_2d(np.asarray(H, np.float64))
        if self.norm_type is not None:
            if self.norm_type == "LayerNorm":
                X = X - X.mean(1, keepdims=True)
            X = X / np.sqrt((X * X).mean(1, keepdims=True) + self.eps)
            if self.norm_weight is not None:
                X = X * (np.asarray(self.norm_weight, np.float64) + self.weight_offset)
            if self.norm_bias is not None:
                X = X + np.asarray(self.norm_bias, np.float64)
        if self.proj is not None:
            X = X @ np.asarray(self.proj, np.float64).T
            if self.proj_bias is not None:
                X = X + np.asarray(self.proj_bias, np.float64)
        return np.asarray(X, np.float64)

    def _transform(self, z: npt.NDArray[Any]) -> npt.NDArray[Any]:
        if self.logit_scale != 1.0:
            z = z * z.dtype.type(self.logit_scale)
        if self.softcap is not None:
            cap = z.dtype.type(self.softcap)
            z = np.tanh(z / cap) * cap
        return z

    def logits(self, H: npt.ArrayLike) -> F32:
        """Logits of hidden states ``H`` (n, d): shape (n, vocab), float32."""
        X = self._mlm_np(self.normed(H)).astype(np.float32)
        z = X @ np.asarray(self.unembed, np.float32).T
        if self.bias is not None:
            z = z + np.asarray(self.bias, np.float32)
        return np.asarray(self._transform(z), np.float32)

    def log_probs(self, H: npt.ArrayLike) -> F64:
        """Log-softmax of the logits of ``H`` (n, d), computed in float64: (n, vocab)."""
        z = self._mlm_np(self.normed(H)) @ np.asarray(self.unembed, np.float64).T
        if self.bias is not None:
            z = z + np.asarray(self.bias, np.float64)
        z = self._transform(z)
        z = z - z.max(1, keepdims=True)
        return np.asarray(z - np.log(np.exp(z).sum(1, keepdims=True)))

    def torch_params(self, device: Any) -> dict[str, torch.Tensor]:
        """The head's arrays as float32 tensors on ``device`` (for :meth:`torch_log_probs`)."""
        import torch

        names = ("unembed", "bias", "norm_weight", "norm_bias", "proj", "proj_bias")
        out = {
            k: torch.as_tensor(np.asarray(v, np.float32), device=device)
            for k in names
            if (v := getattr(self, k)) is not None
        }
        for k, v in (self.mlm or {}).items():
            if k in ("weight", "bias", "norm_weight", "norm_bias") and v is not None:
                out[f"mlm_{k}"] = torch.as_tensor(np.asarray(v, np.float32), device=device)
        return out

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
                h = h * (params["norm_weight"] + self.weight_offset)
            if "norm_bias" in params:
                h = h + params["norm_bias"]
        if "proj" in params:
            h = h @ params["proj"].T
            if "proj_bias" in params:
                h = h + params["proj_bias"]
        if self.mlm is not None:
            h = h @ params["mlm_weight"].T
            if "mlm_bias" in params:
                h = h + params["mlm_bias"]
            act = self.mlm["act"]
            h = (
                torch.relu(h)
                if act == "relu"
                else torch.nn.functional.gelu(
                    h, approximate="tanh" if act == "gelu_tanh" else "none"
                )
            )
            h = torch.nn.functional.layer_norm(
                h,
                h.shape[-1:],
                params.get("mlm_norm_weight"),
                params.get("mlm_norm_bias"),
                float(self.mlm.get("eps") or 1e-12),
            )
        z = h @ params["unembed"].T
        if "bias" in params:
            z = z + params["bias"]
        if self.logit_scale != 1.0:
            z = z * self.logit_scale
        if self.softcap is not None:
            z = torch.tanh(z / self.softcap) * self.softcap
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
    proj: npt.ArrayLike | None = None,
    proj_bias: npt.ArrayLike | None = None,
    logit_scale: float = 1.0,
    softcap: float | None = None,
) -> F32:
    """Logits of hidden states through a final norm and an unembedding (a :class:`Head`).

    Parameters
    ----------
    H : array_like of shape (n, d)
    unembed : array_like of shape (vocab, d_out)
    norm : dict or None
        ``{"type": "LayerNorm" | "RMSNorm", "eps": float, "weight_offset": float}``
        (run.json ``head.final_norm``; ``weight_offset`` defaults to 0); None applies no
        norm.
    weight, bias : array_like of shape (d,), optional
        Final norm parameters.
    unembed_bias : array_like of shape (vocab,), optional
    proj, proj_bias : array_like of shape (d_out, d) and (d_out,), optional
        A projection after the final norm (run.json ``head.final_proj``).
    logit_scale : float
        Multiplies the logits.
    softcap : float, optional
        Logits become ``softcap * tanh(logits / softcap)``.

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
        float((norm or {}).get("weight_offset") or 0.0),
        f32(proj),
        f32(proj_bias),
        float(logit_scale),
        softcap,
    )
    return head.logits(H)
