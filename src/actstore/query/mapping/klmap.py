"""Head-aware maps: fine-tune ``W, b`` so that next-token distributions through a run's stored
head match, minimising ``KL(p(y) || p(x W + b))`` with minibatched Adam in torch."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from actstore.errors import ConfigError, MappingError
from actstore.query._backend import torch_device
from actstore.query.head import Head
from actstore.query.mapping.linmaps import LinearMap

if TYPE_CHECKING:
    import torch

__all__ = ["fit_kl_map"]

Blocks = Callable[[], Iterable[tuple[npt.NDArray[Any], npt.NDArray[Any]]]]


def fit_kl_map(
    blocks: Blocks,
    head: Head,
    *,
    init: LinearMap | None = None,
    epochs: int = 1,
    lr: float = 1e-3,
    batch_rows: int = 256,
    mse_weight: float = 0.0,
    seed: int = 0,
    device: str | None = None,
) -> LinearMap:
    """Fit ``Y ≈ X W + b`` by the mean KL of next-token distributions through ``head``.

    Parameters
    ----------
    blocks : callable
        ``blocks()`` yields ``(X_block (n, d), Y_block (n, m))``; called once per epoch.
    head : Head
        Turns Y-space vectors (m,) into logits over the vocabulary.
    init : LinearMap, optional
        Start (e.g. the ridge map); default ``W = 0``, ``b = 0``.
    epochs, lr, batch_rows : int, float, int
        Adam over shuffled minibatches of each block.
    mse_weight : float
        Adds ``mse_weight · MSE`` to the loss.
    device : str, optional
        torch device; default CUDA when available.

    Returns
    -------
    LinearMap
        ``info`` holds ``kl_start`` / ``kl_end`` (mean KL of the first / last epoch).

    Raises
    ------
    ConfigError
        Bad epochs, lr or batch size.
    MappingError
        No rows, or Y width differs from the head's.
    """
    import torch

    if epochs < 1 or batch_rows < 1 or not lr > 0 or mse_weight < 0:
        raise ConfigError(
            f"need epochs >= 1, batch_rows >= 1, lr > 0, mse_weight >= 0; got {epochs}, "
            f"{batch_rows}, {lr}, {mse_weight}"
        )
    dev = torch_device(device)
    gen = torch.Generator().manual_seed(seed)
    params = head.torch_params(dev)
    m = head.width
    w: torch.Tensor | None = None
    b: torch.Tensor | None = None
    per_epoch: list[float] = []
    for _ in range(epochs):
        total, count = 0.0, 0
        for xb, yb in blocks():
            x = torch.as_tensor(np.asarray(xb, np.float32), device=dev)
            y = torch.as_tensor(np.asarray(yb, np.float32), device=dev)
            if y.shape[1] != m:
                raise MappingError(f"Y has width {y.shape[1]}, the head expects {m}")
            if w is None or b is None:
                w0 = init.coef if init is not None else np.zeros((x.shape[1], m))
                b0 = init.intercept if init is not None else np.zeros(m)
                w = torch.tensor(np.asarray(w0, np.float32), device=dev, requires_grad=True)
                b = torch.tensor(np.asarray(b0, np.float32), device=dev, requires_grad=True)
                opt = torch.optim.Adam([w, b], lr=lr)
            perm = torch.randperm(len(x), generator=gen)
            for a in range(0, len(x), batch_rows):
                idx = perm[a : a + batch_rows]
                xi, yi = x[idx.to(dev)], y[idx.to(dev)]
                pred = xi @ w + b
                with torch.no_grad():
                    lt = head.torch_log_probs(yi, params)
                lp = head.torch_log_probs(pred, params)
                kl = (lt.exp() * (lt - lp)).sum(-1).mean()
                loss = kl + mse_weight * (pred - yi).pow(2).mean() if mse_weight else kl
                opt.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
                total += float(kl.detach()) * len(idx)
                count += len(idx)
        if not count:
            raise MappingError("no rows to fit: the selection is empty; check the rows SQL")
        per_epoch.append(total / count)
    if w is None or b is None:
        raise MappingError("no rows to fit: the selection is empty; check the rows SQL")
    return LinearMap(
        w.detach().cpu().double().numpy(),
        b.detach().cpu().double().numpy(),
        {"kl_start": per_epoch[0], "kl_end": per_epoch[-1], "epochs": epochs, "lr": lr},
    )
