"""Export what turns a final hidden state into logits offline: embedding, unembedding
and final-norm parameters, and a JSON description of the head."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from actstore.extract.model import LoadedModel

__all__ = ["head_info", "matrices"]


def _np32(t: torch.Tensor) -> npt.NDArray[np.float32]:
    return np.array(t.detach().to(device="cpu", dtype=torch.float32).numpy(), copy=True)


def _final_norm(lm: LoadedModel) -> nn.Module | None:
    path = lm.adapter.final_norm
    return lm.base.get_submodule(path) if path is not None else None


def _output_head(lm: LoadedModel) -> Any:
    return lm.model.get_output_embeddings() if lm.adapter.causal else None


def matrices(lm: LoadedModel) -> dict[str, npt.NDArray[np.float32]]:
    """Per-vocabulary matrices and head parameters of the model, as float32 arrays.

    Returns
    -------
    dict of str to ndarray
        ``"embed"`` of shape (vocab, d) (input embeddings); for models with an output head
        ``"unembed"`` of shape (vocab, d) (exported even when tied) and ``"unembed.bias"``
        of shape (vocab,) if the head has a bias; with a final norm
        ``"final_norm.weight"`` / ``"final_norm.bias"`` of shape (d,) where present.
    """
    out = {"embed": _np32(lm.model.get_input_embeddings().weight)}
    head = _output_head(lm)
    if head is not None:
        out["unembed"] = _np32(head.weight)
        if getattr(head, "bias", None) is not None:
            out["unembed.bias"] = _np32(head.bias)
    norm = _final_norm(lm)
    if norm is not None:
        for pname in ("weight", "bias"):
            p = getattr(norm, pname, None)
            if isinstance(p, torch.Tensor):
                out[f"final_norm.{pname}"] = _np32(p)
    return out


def head_info(lm: LoadedModel) -> dict[str, object]:
    """JSON-able description of the head that turns ``hidden.L`` into logits.

    Returns
    -------
    dict
        ``has_unembed``, ``tied`` (unembedding shares the input embedding weights),
        ``final_norm`` (``{"type", "class", "eps", "path"}`` or ``None``; ``None`` also means
        ``hidden.L`` already includes any final norm), plus ``logit_scale`` /
        ``final_logit_softcapping`` when the config sets them.
    """
    head = _output_head(lm)
    embed = lm.model.get_input_embeddings().weight
    info: dict[str, object] = {
        "has_unembed": head is not None,
        "has_unembed_bias": head is not None and getattr(head, "bias", None) is not None,
        "tied": head is not None and head.weight.data_ptr() == embed.data_ptr(),
    }
    norm = _final_norm(lm)
    if norm is None:
        info["final_norm"] = None
    else:
        cls = type(norm).__name__
        kind = (
            "LayerNorm"
            if isinstance(norm, nn.LayerNorm)
            else "RMSNorm"
            if "rmsnorm" in cls.lower() or isinstance(norm, nn.RMSNorm)
            else cls
        )
        eps = next(
            (getattr(norm, a) for a in ("eps", "variance_epsilon", "epsilon") if hasattr(norm, a)),
            None,
        )
        info["final_norm"] = {
            "type": kind,
            "class": cls,
            "eps": float(eps) if eps is not None else None,
            "path": lm.adapter.final_norm,
        }
    for key in ("logit_scale", "final_logit_softcapping"):
        value = getattr(lm.model.config, key, None)
        if isinstance(value, int | float) and not isinstance(value, bool):
            info[key] = float(value)
    return info
