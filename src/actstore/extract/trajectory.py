"""The per-batch work of an optimisation run: Adam on the input embeddings of a batch of
prompts, the model frozen, and the embeddings at the stored steps (``traj.<step>``).

:class:`OptimizePass` replaces the output of the model's input embedding module (the
token embeddings *before* positions, scaling or projections, the space ``grad.embed``
is taken in) by a float32 leaf tensor ``x`` that ``torch.optim.Adam`` moves. The batch's
loss is the sum of its docs' losses, and Adam updates every element on its own, so each
doc's trajectory is its own whatever it is padded or batched with; special tokens and
padding get a zero gradient and never move. Each batch starts a fresh optimiser (and
GradScaler), so a resumed job recomputes exactly what the killed one would have.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from actstore.extract.batching import Segment
from actstore.extract.model import LoadedModel
from actstore.extract.objectives import Objective
from actstore.extract.optimize import OptimizeConfig
from actstore.extract.sites import Site, forward_kwargs

__all__ = ["OptimizePass", "draw_ellipsoid", "fit_ellipsoid", "precision", "trajectory_sites"]

F64 = npt.NDArray[np.float64]


def trajectory_sites(config: OptimizeConfig) -> list[Site]:
    """The run's sites: ``traj.<step>`` for every stored step."""
    return [Site(name=f"traj.{k}", kind="traj", index=k) for k in config.stored_steps()]


def precision(config: OptimizeConfig, device: torch.device) -> str:
    """The autocast dtype of the passes (``float32``: none), from ``compute_dtype``.

    Raises
    ------
    ConfigError
        Half precision off CUDA.
    """
    from actstore.errors import ConfigError

    want = config.compute_dtype
    if want == "auto":
        return "float16" if device.type == "cuda" else "float32"
    if want != "float32" and device.type != "cuda":
        raise ConfigError(
            f"--compute-dtype {want} is mixed precision on CUDA, and the device is "
            f"{device}; use --compute-dtype float32 (or auto) here"
        )
    return want


def fit_ellipsoid(E: npt.ArrayLike) -> tuple[F64, F64]:
    """Mean and a square-root factor ``L`` (``L @ L.T`` = covariance) of the rows of ``E``.

    Parameters
    ----------
    E : array_like of shape (vocab, d)

    Returns
    -------
    mean : ndarray of shape (d,)
    factor : ndarray of shape (d, d)
        From the eigendecomposition of the covariance (ddof 1), so that a singular
        covariance (d > vocab) still works.

    Examples
    --------
    >>> mean, L = fit_ellipsoid([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    >>> mean.tolist(), np.round(L @ L.T, 6).tolist()
    ([1.0, 1.0], [[1.333333, 0.0], [0.0, 1.333333]])
    """
    X = np.asarray(E, np.float64)
    mean = X.mean(0)
    cov = np.cov(X, rowvar=False).reshape(X.shape[1], X.shape[1])
    w, V = np.linalg.eigh(cov)
    return mean, V * np.sqrt(np.maximum(w, 0.0))[None, :]


def draw_ellipsoid(mean: F64, factor: F64, seed: int, doc_id: int, n: int) -> F64:
    """``n`` draws of ``N(mean, factor @ factor.T)`` for doc ``doc_id``: shape (n, d).

    The generator is seeded with ``(seed, doc_id)`` (``doc_id`` as unsigned 64 bits), so
    a doc's draws never depend on the batch or the job that makes them.
    """
    rng = np.random.default_rng([int(seed) & (2**64 - 1), int(doc_id) & (2**64 - 1)])
    z = rng.standard_normal((n, len(mean)))
    out: F64 = mean[None, :] + z @ factor.T
    return out


class OptimizePass:
    """Optimise one batch's input embeddings; the stored steps' embeddings and the losses.

    Parameters
    ----------
    lm : LoadedModel
        Loaded in float32 (the master copy; half precision only autocasts).
    objective : Objective
    config : OptimizeConfig
    embed : ndarray of shape (vocab, d)
        The input embedding matrix (for ``random-ellipsoid``).

    Use as a context manager around the batches (the embedding hook lives inside it).
    """

    def __init__(
        self,
        lm: LoadedModel,
        objective: Objective,
        config: OptimizeConfig,
        embed: npt.NDArray[Any],
    ) -> None:
        self.lm = lm
        self.objective = objective
        self.steps = config.steps
        self.lr = config.lr
        self.stored = config.stored_steps()
        self.init = config.init
        self.seed = config.seed
        self.precision = precision(config, lm.device)
        self.module = lm.model if objective.needs_logits else lm.base
        self.ellipsoid = fit_ellipsoid(embed) if config.init == "random-ellipsoid" else None
        self.on_step: Callable[[float], None] | None = None
        """Called with the fraction of the batch's steps done after each step (the
        progress bar's ticks inside a batch; set by the pipeline)."""
        self._x: torch.Tensor | None = None
        self._calls = 0
        self._handle: Any = None

    def to_json(self) -> dict[str, object]:
        """The optimiser's settings, as ``run.json`` records them (key ``optimize``)."""
        return {
            "optimizer": "torch.optim.Adam",
            "steps": self.steps,
            "lr": self.lr,
            "stored_steps": self.stored,
            "init": self.init,
            "seed": self.seed,
            "precision": self.precision,
            "grad_scaler": self.precision == "float16",
            "moved": "every real token that is not special (special tokens, padding: never)",
            "loss_steps": f"0..{self.steps} (the loss at the embeddings of each step)",
        }

    def _hook(self, _m: Any, _args: Any, out: torch.Tensor) -> torch.Tensor | None:
        if self._x is None:
            return None  # targets and start points: the model's own embeddings
        self._calls += 1
        return self._x

    def __enter__(self) -> OptimizePass:
        if self._handle is None:
            embed = self.lm.model.get_input_embeddings()
            self._handle = embed.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def begin_pool(self, pool: Any) -> None:
        """Check the pool's docs and compute their targets (the model's own embeddings)."""
        self.objective.begin_pool(pool)

    def start(
        self, input_ids: torch.Tensor, batch: list[Segment]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The start embeddings (batch, tokens, d), float32, and the mask of the tokens
        that move (batch, tokens)."""
        dev = self.lm.device
        with torch.no_grad():
            x0 = self.lm.model.get_input_embeddings()(input_ids.to(dev)).float()
        moving = np.zeros(tuple(input_ids.shape), bool)
        for b, seg in enumerate(batch):
            moving[b, seg.keep_start : seg.keep_end] = ~seg.special
        if self.ellipsoid is not None:
            mean, factor = self.ellipsoid
            for b, seg in enumerate(batch):
                where = np.flatnonzero(moving[b])
                draws = draw_ellipsoid(mean, factor, self.seed, seg.doc_id, len(where))
                x0[b, torch.from_numpy(where).to(dev)] = torch.from_numpy(draws).float().to(dev)
        return x0, torch.from_numpy(moving).to(dev)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "float32":
            return contextlib.nullcontext()
        dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}[self.precision]
        return torch.autocast(device_type=self.lm.device.type, dtype=dtype)

    def _losses(
        self, x: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, batch: list[Segment]
    ) -> torch.Tensor:
        self._x, self._calls = x, 0
        try:
            with self._autocast():
                out = self.module(input_ids=ids, attention_mask=mask, **forward_kwargs(self.module))
        finally:
            self._x = None
        if self._calls != 1:
            raise RuntimeError(f"the input embeddings ran {self._calls} times in one forward pass")
        return self.objective.losses(out, mask, batch)

    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, batch: list[Segment]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The embeddings at every stored step, ``traj.<step>`` of shape (batch, tokens, d),
        and the losses at every step 0..steps, shape (batch, steps + 1)."""
        if self._handle is None:
            with self:
                return self(input_ids, attention_mask, batch)
        dev = self.lm.device
        ids, mask = input_ids.to(dev), attention_mask.to(dev)
        x0, moving = self.start(ids, batch)
        keep = moving.unsqueeze(-1)
        x = x0.clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=self.lr)
        scaler = torch.amp.GradScaler("cuda") if self.precision == "float16" else None
        stored = set(self.stored)
        snaps: dict[str, torch.Tensor] = {}
        losses = []
        for step in range(self.steps + 1):
            if step in stored:
                snaps[f"traj.{step}"] = x.detach().clone()
            if step == self.steps:
                with torch.no_grad():
                    losses.append(self._losses(x, ids, mask, batch).detach())
                break
            if self.on_step is not None and step:
                self.on_step(step / self.steps)
            with torch.enable_grad():
                loss = self._losses(x, ids, mask, batch)
                losses.append(loss.detach())
                opt.zero_grad(set_to_none=True)
                total = loss.sum()  # a sum: each doc's gradient is its own
                scaled = scaler.scale(total) if scaler is not None else total
                scaled.backward()  # type: ignore[no-untyped-call]
            assert x.grad is not None
            # special tokens and padding never move (where, not a product: inf * 0 is nan)
            x.grad = torch.where(keep, x.grad, torch.zeros((), dtype=x.dtype, device=dev))
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
        return snaps, torch.stack(losses, 1)
