"""Checks, on a dummy batch when a model is loaded, that what actstore stores is what
Hugging Face computes: every hidden site equals ``hidden_states[i]``
(:func:`check_hidden_sites`), and whether the forward pass needs the padding mask at all
(:func:`padding_mask_needed`); the head's own check is in :mod:`actstore.extract.head`."""

from __future__ import annotations

import torch

from actstore.errors import ModelLoadError
from actstore.extract.model import LoadedModel
from actstore.extract.sites import SiteCapture, forward_kwargs, parse_sites

__all__ = ["check_hidden_sites", "dummy_batch", "padding_mask_needed", "rel_diff", "tolerance"]


def dummy_batch(lm: LoadedModel, n_tokens: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Two right-padded rows of random token ids (seeded), on the model's device.

    Returns
    -------
    input_ids, attention_mask : Tensor of shape (2, n) each
        The second row ends in padding when ``n >= 3``.
    """
    n = max(1, min(n_tokens, lm.max_length))
    vocab = int(lm.model.get_input_embeddings().weight.shape[0])
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (2, n), generator=gen)
    mask = torch.ones_like(ids)
    if n >= 3:
        mask[1, -2:] = 0
    return ids.to(lm.device), mask.to(lm.device)


def rel_diff(got: torch.Tensor, ref: torch.Tensor) -> float:
    """``max |got - ref| / max |ref|``, in float32 (0 when both are all zero)."""
    a, b = got.detach().float(), ref.detach().float()
    scale = float(b.abs().max()) if b.numel() else 0.0
    diff = float((a - b).abs().max()) if b.numel() else 0.0
    return diff / scale if scale > 0 else diff


def tolerance(dtype: torch.dtype) -> float:
    """Relative difference :func:`rel_diff` allows for a model computing in ``dtype``:
    float32 recomputations agree to about 1e-6; float16 and bfloat16 round to 3 digits."""
    return 1e-4 if dtype in (torch.float32, torch.float64) else 2e-2


def _hf_hidden_states(
    lm: LoadedModel, ids: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, ...] | None:
    """Hugging Face's ``hidden_states`` of the base model on a batch (None if it returns
    none); ``mask`` None runs the batch without an attention mask."""
    with torch.inference_mode():
        out = lm.base(
            input_ids=ids,
            attention_mask=mask,
            output_hidden_states=True,
            **forward_kwargs(lm.base),
        )
    return getattr(out, "hidden_states", None)


def check_hidden_sites(lm: LoadedModel) -> None:
    """Refuse a model whose hidden sites differ from Hugging Face's ``hidden_states``.

    Runs a small dummy batch once through :class:`SiteCapture` (every ``hidden.<i>``) and
    once through the base model with ``output_hidden_states=True``, and compares them at
    the real (non-padding) tokens.

    Raises
    ------
    ModelLoadError
        A site has another shape or other values than ``hidden_states[i]``, the model
        returns another number of hidden states, or (for an inferred adapter only) the
        model returns no ``hidden_states`` to check against.
    """
    ids, mask = dummy_batch(lm)
    inferred = lm.adapter.name.startswith("inferred:")
    model_type = lm.info.get("model_type", "?")
    what = (
        f"model type {model_type!r} has no registered adapter, and the one inferred from its "
        f"modules (blocks at {lm.adapter.layers!r})"
        if inferred
        else f"adapter {lm.adapter.name!r} (model type {model_type!r})"
    )
    fix = (
        "add an Adapter to actstore/extract/adapters.py"
        if inferred
        else "the adapter does not fit this checkpoint; fix it in actstore/extract/adapters.py"
    )
    ref = _hf_hidden_states(lm, ids, mask)
    if ref is None:
        if inferred:
            raise ModelLoadError(
                f"{what} cannot be checked: {type(lm.base).__name__} returns no "
                f"hidden_states; {fix}"
            )
        return
    if len(ref) != lm.n_layers + 1:
        raise ModelLoadError(
            f"{what} does not reproduce Hugging Face's hidden states: it has hidden.0.."
            f"hidden.{lm.n_layers}, the model returns {len(ref)} hidden states; {fix}"
        )
    got = SiteCapture(lm, parse_sites("all", lm))(ids, mask)
    real = mask.bool()
    tol = tolerance(lm.compute_dtype)
    for i, h in enumerate(ref):
        mine = got[f"hidden.{i}"]
        if mine.shape != h.shape:
            problem = (
                f"hidden.{i} has shape {tuple(mine.shape)}, Hugging Face's hidden_states[{i}] "
                f"{tuple(h.shape)}"
            )
        elif (diff := rel_diff(mine[real], h[real])) > tol:
            problem = f"hidden.{i} differs from hidden_states[{i}] by {diff:.2g} (relative)"
        else:
            continue
        raise ModelLoadError(
            f"{what} does not reproduce Hugging Face's hidden states: {problem}; {fix}"
        )


def padding_mask_needed(lm: LoadedModel) -> bool:
    """Whether forward passes must get the padding mask; False for a registered causal
    family whose real tokens come out the same without it.

    Batches are right-padded, and in a causal model a real token attends only to the
    tokens before it, never to the padding after it; positions count from 0 either way. So
    the mask changes nothing a site keeps, and without it attention takes the causal fast
    path (``is_causal``: no mask tensor, and flash kernels on a GPU) instead of an explicit
    mask. This is checked, not assumed: the dummy batch runs with and without the mask and
    every hidden state must agree at the real tokens (:func:`tolerance`); an inferred
    adapter, an encoder, or any difference keeps the mask.
    """
    if not lm.adapter.causal or lm.adapter.name.startswith("inferred:"):
        return True
    ids, mask = dummy_batch(lm)
    if bool(mask.all()):
        return True  # too short a model to pad the dummy batch: nothing to compare
    masked, free = _hf_hidden_states(lm, ids, mask), _hf_hidden_states(lm, ids, None)
    if masked is None or free is None or len(masked) != len(free):
        return True
    real = mask.bool()
    tol = tolerance(lm.compute_dtype)
    return any(
        a.shape != b.shape or rel_diff(b[real], a[real]) > tol
        for a, b in zip(masked, free, strict=True)
    )
