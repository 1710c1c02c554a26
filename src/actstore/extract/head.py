"""Export what turns a hidden state into logits offline: embedding, unembedding, final-norm
and final-projection parameters, and a JSON description of the head that is checked
against the model's own logits on a dummy batch."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from actstore.extract.check import dummy_batch, rel_diff, tolerance
from actstore.extract.model import LoadedModel
from actstore.extract.sites import forward_kwargs

__all__ = ["LOGIT_KEYS", "MLM_ACTS", "NormSpec", "head_info", "matrices", "mlm_act", "norm_spec"]

#: Logit transforms read from the model config, applied after ``unembed`` in this order:
#: ``z * logit_scale`` (Cohere), ``z / logits_scaling`` (Granite), then
#: ``c * tanh(z / c)`` with ``c = final_logit_softcapping`` (Gemma 2).
LOGIT_KEYS = ("logit_scale", "logits_scaling", "final_logit_softcapping")

_EPS_ATTRS = ("eps", "variance_epsilon", "epsilon", "layer_norm_eps")


def _np32(t: torch.Tensor) -> npt.NDArray[np.float32]:
    return np.array(t.detach().to(device="cpu", dtype=torch.float32).numpy(), copy=True)


def _module(lm: LoadedModel, path: str | None) -> Any:
    return lm.base.get_submodule(path) if path is not None else None


def _output_head(lm: LoadedModel) -> Any:
    return lm.model.get_output_embeddings() if lm.lm_head is not None else None


#: Activations of a masked LM head's transform the offline head can apply (found by
#: running the model: the one whose logits match is recorded as ``head.mlm_transform.act``).
MLM_ACTS = ("gelu", "gelu_tanh", "relu")


def mlm_act(name: str, x: torch.Tensor) -> torch.Tensor:
    """Apply one of :data:`MLM_ACTS` to ``x``."""
    if name == "gelu":
        return torch.nn.functional.gelu(x)
    if name == "gelu_tanh":
        return torch.nn.functional.gelu(x, approximate="tanh")
    return torch.relu(x)


def _mlm_modules(lm: LoadedModel) -> tuple[Any, Any] | None:
    """The MLM head's dense layer and LayerNorm, or None (no masked-LM head)."""
    paths = lm.adapter.mlm_transform
    if lm.lm_head != "masked" or paths is None:
        return None
    try:
        return lm.model.get_submodule(paths[0]), lm.model.get_submodule(paths[1])
    except AttributeError:
        return None


def _tensor(module: Any, name: str) -> torch.Tensor | None:
    value = getattr(module, name, None)
    return value if isinstance(value, torch.Tensor) else None


def matrices(lm: LoadedModel) -> dict[str, npt.NDArray[np.float32]]:
    """Per-vocabulary matrices and head parameters of the model, as float32 arrays.

    Returns
    -------
    dict of str to ndarray
        ``"embed"`` of shape (vocab, d_embed) (input embeddings); for models with an output
        head ``"unembed"`` of shape (vocab, d_out) (exported even when tied) and
        ``"unembed.bias"`` of shape (vocab,) if the head has a bias; with a final norm
        ``"final_norm.weight"`` / ``"final_norm.bias"`` of shape (d,) where present; with a
        projection after it (OPT-350m) ``"final_proj.weight"`` of shape (d_out, d) (and
        ``.bias``); with a projection of the embeddings before block 0 ``"embed_proj.weight"``
        of shape (d, d_embed) (and ``.bias``); for a masked LM with its head
        ``"mlm_transform.weight"`` (d, d), ``"mlm_transform.bias"`` and
        ``"mlm_norm.weight"`` / ``"mlm_norm.bias"`` (the head's dense layer and LayerNorm,
        applied before ``unembed``).
    """
    out = {"embed": _np32(lm.model.get_input_embeddings().weight)}
    head = _output_head(lm)
    if head is not None:
        out["unembed"] = _np32(head.weight)
        if (bias := _tensor(head, "bias")) is not None:
            out["unembed.bias"] = _np32(bias)
    mlm = _mlm_modules(lm)
    if mlm is not None:
        for prefix, module in zip(("mlm_transform", "mlm_norm"), mlm, strict=True):
            for pname in ("weight", "bias"):
                if (p := _tensor(module, pname)) is not None:
                    out[f"{prefix}.{pname}"] = _np32(p)
    for prefix, path in (
        ("final_norm", lm.adapter.final_norm),
        ("final_proj", lm.adapter.final_proj),
        ("embed_proj", lm.adapter.embed_proj),
    ):
        module = _module(lm, path)
        for pname in ("weight", "bias"):
            if (p := _tensor(module, pname)) is not None:
                out[f"{prefix}.{pname}"] = _np32(p)
    return out


# ------------------------------------------------------------------------- final norm


@dataclass(frozen=True)
class NormSpec:
    """The final norm as run.json's ``head.final_norm`` records it (docs/format.md)."""

    type: str
    """``"LayerNorm"`` or ``"RMSNorm"`` when the module computes one of them, else its
    class name (which the offline head refuses)."""
    cls: str
    """The module's class name (``"GemmaRMSNorm"``), for information only."""
    eps: float | None
    """The epsilon inside the square root."""
    weight_offset: float
    """The output is scaled by ``weight + weight_offset``: 0 for most models, 1 for the
    Gemma family (``x * (1 + w)``)."""

    @property
    def known(self) -> bool:
        """Whether the offline head can apply it."""
        return self.type in ("LayerNorm", "RMSNorm") and self.eps is not None

    def apply(
        self, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """The recorded formula on ``x`` (..., d), in ``x``'s dtype."""
        if self.type == "LayerNorm":
            x = x - x.mean(-1, keepdim=True)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + (self.eps or 0.0))
        if weight is not None:
            x = x * (weight.to(x.dtype) + self.weight_offset)
        if bias is not None:
            x = x + bias.to(x.dtype)
        return x

    def to_json(self, path: str | None) -> dict[str, object]:
        return {
            "type": self.type,
            "class": self.cls,
            "eps": self.eps,
            "weight_offset": self.weight_offset,
            "path": path,
        }


def _eps(norm: nn.Module, dtype: torch.dtype) -> float | None:
    for attr in _EPS_ATTRS:
        value = getattr(norm, attr, None)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    if isinstance(norm, nn.RMSNorm):  # eps=None means the input dtype's machine epsilon
        return float(torch.finfo(dtype).eps)
    return None


def norm_spec(lm: LoadedModel, norm: nn.Module) -> NormSpec:
    """Find what the final norm computes by running it.

    The module is applied to rows of several scales (so that ``eps`` matters) with non-zero
    means (so that LayerNorm and RMSNorm differ) and compared with each formula the offline
    head can apply: LayerNorm or RMSNorm, scaled by ``weight`` or by ``1 + weight`` (the
    Gemma family). The class name decides nothing.
    """
    cls = type(norm).__name__
    weight, bias = _tensor(norm, "weight"), _tensor(norm, "bias")
    dtype = weight.dtype if weight is not None else lm.compute_dtype
    device = weight.device if weight is not None else lm.device
    eps = _eps(norm, dtype)
    unknown = NormSpec(cls, cls, eps, 0.0)
    if eps is None:
        return unknown
    gen = torch.Generator().manual_seed(0)
    d = lm.d_model if weight is None else int(weight.shape[-1])
    rows = torch.randn(4, 8, d, generator=gen) + 3 * torch.randn(4, 8, 1, generator=gen)
    x = (rows * torch.tensor([1.0, 1e-2, 1e-3, 1e-4]).view(4, 1, 1)).reshape(32, d)
    x = x.to(device=device, dtype=dtype)
    with torch.inference_mode():
        y = norm(x).double()
    w = weight.double() if weight is not None else None
    b = bias.double() if bias is not None else None
    tol = tolerance(dtype)
    for kind in ("LayerNorm", "RMSNorm"):
        for offset in (0.0, 1.0) if w is not None else (0.0,):
            spec = NormSpec(kind, cls, eps, offset)
            ref = spec.apply(x.double(), w, b)
            if max(rel_diff(y[i], ref[i]) for i in range(len(x))) <= tol:
                return spec
    return unknown


# ------------------------------------------------------------------------------- head


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _offline_logits(z: torch.Tensor, transforms: dict[str, float]) -> torch.Tensor:
    if "logit_scale" in transforms:
        z = z * transforms["logit_scale"]
    if "logits_scaling" in transforms:
        z = z / transforms["logits_scaling"]
    if "final_logit_softcapping" in transforms:
        cap = transforms["final_logit_softcapping"]
        z = torch.tanh(z / cap) * cap
    return z


def _mlm_apply(x: torch.Tensor, mlm: tuple[Any, Any], act: str, spec: NormSpec) -> torch.Tensor:
    """The MLM head's transform on ``x`` in float64: LayerNorm(act(dense(x)))."""
    dense, norm = mlm
    x = x @ dense.weight.double().T
    if (b := _tensor(dense, "bias")) is not None:
        x = x + b.double()
    x = mlm_act(act, x)
    w, b = _tensor(norm, "weight"), _tensor(norm, "bias")
    return spec.apply(x, None if w is None else w.double(), None if b is None else b.double())


def _check(
    lm: LoadedModel,
    head: Any,
    spec: NormSpec | None,
    transforms: dict[str, float],
    mlm: tuple[Any, Any] | None = None,
    mlm_spec: NormSpec | None = None,
) -> dict[str, object]:
    """Compare the recorded head with the model on a dummy batch.

    Two checks: the model's logits against ``unembed(hidden.L)`` with the recorded logit
    transforms (what the logit lens does at ``hidden.L``), and ``hidden.L`` against the
    recorded final norm and projection applied to the raw output of the last block (what
    the lens does to every earlier layer).
    """
    ids, mask = dummy_batch(lm)
    blocks = lm.base.get_submodule(lm.adapter.layers)
    raw: list[Any] = []
    handle = blocks[-1].register_forward_hook(
        lambda _m, _a, out: raw.append(out[0] if isinstance(out, tuple | list) else out)
    )
    try:
        with torch.inference_mode():
            out = lm.model(
                input_ids=ids,
                attention_mask=mask,
                output_hidden_states=True,
                **forward_kwargs(lm.model),
            )
    finally:
        handle.remove()
    real = mask.bool()
    tol = tolerance(lm.compute_dtype)
    last = out.hidden_states[-1].double()
    result: dict[str, object] = {}

    def logits_of(x: torch.Tensor) -> torch.Tensor:
        z = x @ head.weight.double().T
        if (bias := _tensor(head, "bias")) is not None:
            z = z + bias.double()
        return _offline_logits(z, transforms)

    if mlm is None or mlm_spec is None:
        logits_diff = rel_diff(logits_of(last)[real], out.logits[real])
    else:  # the activation is the one whose logits match
        diffs = {
            act: rel_diff(logits_of(_mlm_apply(last, mlm, act, mlm_spec))[real], out.logits[real])
            for act in MLM_ACTS
        }
        act = min(diffs, key=lambda a: diffs[a] if math.isfinite(diffs[a]) else math.inf)
        logits_diff = diffs[act]
        result["mlm_transform"] = {
            "act": act,
            "norm": mlm_spec.to_json(
                lm.adapter.mlm_transform[1] if lm.adapter.mlm_transform else None
            ),
            "dense": lm.adapter.mlm_transform[0] if lm.adapter.mlm_transform else None,
        }
    if not logits_diff <= tol:
        steps = ", ".join(transforms) or "no logit transform"
        result["unsupported"] = (
            f"the model's logits differ from unembed(hidden.L) (with {steps}) by "
            f"{logits_diff:.2g} (relative) on a test batch: the model has an output step "
            "actstore does not know; compute logits with the model"
        )

    final_diff: float | None = None
    problem = ""
    if not raw or not isinstance(raw[0], torch.Tensor):
        problem = f"the last block {lm.adapter.layers}.{len(blocks) - 1} gave no tensor"
    elif spec is not None and not spec.known:
        problem = (
            f"the final norm {spec.cls} ({lm.adapter.final_norm}) computes neither LayerNorm "
            "nor RMSNorm (scaled by weight or 1 + weight)"
        )
    else:
        x = raw[0].double()
        x = x.reshape(*ids.shape, -1) if x.ndim == 2 else x
        if spec is not None:
            norm = _module(lm, lm.adapter.final_norm)
            w, b = _tensor(norm, "weight"), _tensor(norm, "bias")
            x = spec.apply(x, w, b)
        proj = _module(lm, lm.adapter.final_proj)
        if (pw := _tensor(proj, "weight")) is not None:
            x = x @ pw.double().T
            if (pb := _tensor(proj, "bias")) is not None:
                x = x + pb.double()
        if x.shape != last.shape:
            problem = (
                f"the recorded final norm and projection give shape {tuple(x.shape)}, "
                f"hidden.L has {tuple(last.shape)}"
            )
        elif not (final_diff := rel_diff(x[real], last[real])) <= tol:
            problem = (
                "the recorded final norm and projection applied to the last block's output "
                f"differ from hidden.L by {final_diff:.2g} (relative) on a test batch"
            )
    if problem:
        result["lens_unsupported"] = f"{problem}; only hidden.L can go through the head offline"
    result["check"] = {
        "logits": _finite(logits_diff),
        "final": None if final_diff is None else _finite(final_diff),
        "tolerance": tol,
    }
    return result


def head_info(lm: LoadedModel) -> dict[str, object]:
    """JSON-able description of the head that turns ``hidden.L`` into logits.

    Runs the model once on a dummy batch to check the description (``check`` below).

    Returns
    -------
    dict
        ``has_unembed``, ``has_unembed_bias``, ``tied`` (unembedding shares the input
        embedding weights), ``final_norm`` (``{"type", "class", "eps", "weight_offset",
        "path"}`` or ``None``: see :class:`NormSpec`), ``final_proj`` (``{"path", "shape"}``
        of a projection after the final norm, or ``None``), the config's ``logit_scale`` /
        ``logits_scaling`` / ``final_logit_softcapping`` when set, and for models with an
        output head ``check`` (relative differences on the dummy batch: ``logits``, model
        logits vs the offline head at ``hidden.L``; ``final``, ``hidden.L`` vs the final
        norm and projection applied to the last block's output; ``tolerance``), plus
        ``unsupported`` / ``lens_unsupported`` (one-line reasons) where a check failed;
        ``lm_head`` (``"causal"``, ``"masked"`` or None) and for a masked LM
        ``mlm_transform`` (``{"act", "norm", "dense"}``: the head's transform, applied
        before ``unembed`` at every site).
    """
    head = _output_head(lm)
    embed = lm.model.get_input_embeddings().weight
    info: dict[str, object] = {
        "has_unembed": head is not None,
        "has_unembed_bias": head is not None and _tensor(head, "bias") is not None,
        "tied": head is not None and head.weight.data_ptr() == embed.data_ptr(),
    }
    norm = _module(lm, lm.adapter.final_norm)
    spec = None if norm is None else norm_spec(lm, norm)
    info["final_norm"] = None if spec is None else spec.to_json(lm.adapter.final_norm)
    pw = _tensor(_module(lm, lm.adapter.final_proj), "weight")
    info["final_proj"] = (
        None if pw is None else {"path": lm.adapter.final_proj, "shape": list(pw.shape)}
    )
    transforms: dict[str, float] = {}
    for key in LOGIT_KEYS:
        value = getattr(lm.model.config, key, None)
        if isinstance(value, int | float) and not isinstance(value, bool):
            transforms[key] = float(value)
    info.update(transforms)
    mlm = _mlm_modules(lm)
    mlm_spec = None if mlm is None else norm_spec(lm, mlm[1])
    info["lm_head"] = lm.lm_head
    if head is not None:
        info.update(_check(lm, head, spec, transforms, mlm, mlm_spec))
    return info
