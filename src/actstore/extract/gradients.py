"""The forward and backward pass of a gradient run: sites, ``grad.*`` sites and losses.

:class:`GradientPass` runs the model with gradients enabled (never under
``torch.inference_mode``, never stopping early: the objective needs the output), with the
input embedding module's output marked ``requires_grad`` (``grad.embed`` is the gradient
with respect to the token embeddings *before* positions, scaling or projections are
applied) and the hidden states of ``grad.hidden.<i>`` captured by reference. The model's
parameters are frozen (``load_model`` sets ``requires_grad_(False)``), so memory stays
near one forward and backward of the activations. The batch's loss is the sum of its
docs' losses, so each doc's gradient is its own whatever it is padded or batched with.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from actstore.extract.batching import Segment
from actstore.extract.model import LoadedModel
from actstore.extract.objectives import Objective
from actstore.extract.sites import Site, SiteCapture

__all__ = ["GradientPass", "grad_dims"]


def grad_dims(lm: LoadedModel, sites: Sequence[Site], dims: dict[str, int]) -> dict[str, int]:
    """Widths of the ``grad.*`` sites: the embedding width, or ``hidden.<i>``'s width
    (from ``dims``, which must hold every hidden site a gradient is taken at)."""
    out = {}
    for s in sites:
        if s.kind != "grad":
            continue
        if s.index is None:
            out[s.name] = int(lm.model.get_input_embeddings().weight.shape[1])
        else:
            out[s.name] = dims[f"hidden.{s.index}"]
    return out


class GradientPass:
    """Run one batch forward and backward and return every stored site and the losses.

    Parameters
    ----------
    lm : LoadedModel
    sites : sequence of Site
        Every site of the run (forward and ``grad.*``), from ``parse_sites``.
    objective : Objective

    Use as a context manager around the batches (hooks live inside it), like
    :class:`~actstore.extract.sites.SiteCapture`.
    """

    def __init__(self, lm: LoadedModel, sites: Sequence[Site], objective: Objective) -> None:
        self.lm = lm
        self.objective = objective
        self.forward = [s for s in sites if s.kind != "grad"]
        self.grads = [s for s in sites if s.kind == "grad"]
        extra = [
            Site(name=f"hidden.{s.index}", kind="hidden", index=s.index)
            for s in self.grads
            if s.index is not None and f"hidden.{s.index}" not in {f.name for f in self.forward}
        ]
        self.capture = SiteCapture(lm, [*self.forward, *extra], stop_early=False)
        self._embed: list[torch.Tensor] = []
        self._handle: Any = None

    def _hook(self, _m: Any, _args: Any, out: torch.Tensor) -> None:
        if self.capture.paused:
            return
        out.requires_grad_(True)  # a leaf: the embedding weights are frozen
        self._embed.append(out)

    def __enter__(self) -> GradientPass:
        self.capture.__enter__()
        if self._handle is None:
            embed = self.lm.model.get_input_embeddings()
            self._handle = embed.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self.capture.__exit__(*exc)

    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, batch: list[Segment]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Sites (detached; ``grad.*`` included) of shape (batch, tokens, d), and the
        losses of shape (batch,)."""
        if self._handle is None:
            with self:
                return self(input_ids, attention_mask, batch)
        module = self.lm.model if self.objective.needs_logits else self.lm.base
        self._embed = []
        with torch.enable_grad():
            output, outs = self.capture.run(module, input_ids, attention_mask)
            if len(self._embed) != 1:
                raise RuntimeError(
                    f"the input embeddings ran {len(self._embed)} times in one forward pass"
                )
            losses = self.objective.losses(output, attention_mask.to(self.lm.device), batch)
            wrt = [
                self._embed[0] if s.index is None else outs[f"hidden.{s.index}"] for s in self.grads
            ]
            grads = torch.autograd.grad(losses.sum(), wrt)
        self._embed = []
        result = {s.name: outs[s.name].detach() for s in self.forward}
        for s, g in zip(self.grads, grads, strict=True):
            result[s.name] = g.reshape(*input_ids.shape, -1)
        return result, losses.detach()

    def begin_pool(self, pool: Any) -> None:
        """Check the pool's docs and compute their targets (hooks paused meanwhile)."""
        self.capture.paused = True
        try:
            self.objective.begin_pool(pool)
        finally:
            self.capture.paused = False
