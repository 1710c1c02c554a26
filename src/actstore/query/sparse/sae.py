"""TopK sparse autoencoders (Gao et al. 2024) trained on rows streamed from a store.

``z = TopK(W_enc (x̃ - b_dec) + b_enc)``, ``x̂ = W_decᵀ z + b_dec`` with unit-norm decoder rows,
where ``x̃`` is ``x`` scaled so that the mean squared norm of the first block is ``d``. Dead
latents (no activation in the last ``dead_after`` rows) get the AuxK loss: the top ``aux_k``
dead latents reconstruct the residual. torch is needed; it is imported on first use.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from actstore.errors import ConfigError
from actstore.query._backend import torch_device
from actstore.query.rowstream import as_source, shuffled_batches

__all__ = ["SAEConfig", "TopKSAE"]


@dataclass(frozen=True)
class SAEConfig:
    """Options of TopK sparse autoencoder training."""

    n_latents: int
    """Width of the code."""
    k: int = 32
    """Active latents per row."""
    batch_size: int = 1024
    """Rows per optimiser step."""
    epochs: int = 1
    """Passes over the rows."""
    lr: float = 1e-3
    """Adam learning rate."""
    block_rows: int = 65536
    """Rows read from the store at a time (shuffled within)."""
    seed: int = 0
    """Seed of the weights and the batch order."""
    normalize: bool = True
    """Scale inputs so that E‖x‖² = d (factor from the first block)."""
    aux_k: int = 256
    """Dead latents used by the auxiliary loss (0: none)."""
    aux_coef: float = 1 / 32
    """Weight of the auxiliary loss."""
    dead_after: int = 100_000
    """A latent is dead after this many rows without activation."""
    device: str | None = None
    """torch device; None: cuda when available, else cpu."""
    checkpoint_dir: str | None = None
    """Folder for ``sae-step<N>.pt`` checkpoints (None: none)."""
    checkpoint_every: int = 1000
    """Steps between checkpoints."""
    progress: bool = False
    """Show a tqdm progress bar."""

    def __post_init__(self) -> None:
        if self.n_latents < 1 or not 1 <= self.k <= self.n_latents:
            raise ConfigError(
                f"need 1 <= k <= n_latents, got k={self.k}, n_latents={self.n_latents}; lower k"
            )
        if self.batch_size < 1 or self.epochs < 1 or not self.lr > 0:
            raise ConfigError(
                f"batch_size, epochs must be >= 1 and lr > 0, got {self.batch_size}, "
                f"{self.epochs}, {self.lr}"
            )


class TopKSAE:
    """A TopK sparse autoencoder.

    Attributes
    ----------
    W_enc_ : ndarray of shape (d, n_latents)
    b_enc_ : ndarray of shape (n_latents,)
    components_ : ndarray of shape (n_latents, d)
        Decoder rows (unit norm), the dictionary.
    b_dec_ : ndarray of shape (d,)
    scale_ : float
        Input scale factor (1.0 without normalisation).
    n_steps_ : int
    history_ : list of float
        Training loss (normalised MSE) per step.

    Examples
    --------
    >>> X = np.random.default_rng(0).standard_normal((256, 8)).astype(np.float32)
    >>> sae = TopKSAE(SAEConfig(n_latents=16, k=4, batch_size=64, aux_k=0)).fit(X)
    >>> sae.encode(X[:5]).shape, (sae.encode(X[:5]).toarray() != 0).sum(1).max() <= 4
    ((5, 16), np.True_)
    """

    def __init__(self, config: SAEConfig) -> None:
        self.config = config

    def _device(self) -> Any:
        return torch_device(self.config.device)

    def _init(self, d: int, first: npt.NDArray[np.float32]) -> dict[str, Any]:
        import torch

        cfg = self.config
        g = torch.Generator().manual_seed(cfg.seed)
        dev = self._device()
        scale = 1.0
        if cfg.normalize:
            scale = float(
                np.sqrt(d / max(float((first.astype(np.float64) ** 2).sum(1).mean()), 1e-12))
            )
        W_dec = torch.randn(cfg.n_latents, d, generator=g)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        p = {
            "W_enc": W_dec.T.clone(),
            "b_enc": torch.zeros(cfg.n_latents),
            "W_dec": W_dec,
            "b_dec": torch.as_tensor(first.mean(0) * scale, dtype=torch.float32),
        }
        self.scale_ = scale
        self.n_steps_ = 0
        self.history_: list[float] = []
        return {n: v.to(dev).requires_grad_(True) for n, v in p.items()}

    @staticmethod
    def _encode_t(p: dict[str, Any], x: Any, k: int) -> tuple[Any, Any, Any]:
        import torch

        pre = torch.relu((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"])
        vals, idx = pre.topk(k, dim=1, sorted=False)
        z = torch.zeros_like(pre).scatter(1, idx, vals)
        return z, pre, idx

    def fit(self, x: Any, init: str | Path | None = None) -> TopKSAE:
        """Train on an array (n_rows, d) or a row source; ``init`` resumes from a checkpoint."""
        import torch

        cfg = self.config
        source = as_source(x)
        first = source.read(np.arange(min(cfg.block_rows, source.n_rows), dtype=np.int64))
        p = self._init(source.d, first)
        opt = torch.optim.Adam(list(p.values()), lr=cfg.lr)
        since = torch.zeros(cfg.n_latents, dtype=torch.long, device=self._device())
        if init is not None:
            state = torch.load(init, map_location=self._device(), weights_only=False)
            with torch.no_grad():
                for n, v in p.items():
                    v.copy_(state["params"][n])
            opt.load_state_dict(state["opt"])
            self.scale_, self.n_steps_ = state["scale"], state["n_steps"]
            since = state["since"].to(self._device())
        torch.manual_seed(cfg.seed)
        n_batches = -(-source.n_rows // cfg.batch_size) * cfg.epochs
        bar = None
        if cfg.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_batches, unit="batch", desc="sae")
        batches = shuffled_batches(
            source, cfg.batch_size, block_rows=cfg.block_rows, seed=cfg.seed, epochs=cfg.epochs
        )
        for batch in batches:
            xb = torch.as_tensor(batch, device=self._device()) * self.scale_
            z, pre, idx = self._encode_t(p, xb, cfg.k)
            x_hat = z @ p["W_dec"] + p["b_dec"]
            var = ((xb - xb.mean(0)) ** 2).sum().clamp_min(1e-12)
            loss = ((xb - x_hat) ** 2).sum() / var
            fired = torch.zeros_like(since, dtype=torch.bool)
            fired[idx[z.gather(1, idx) > 0]] = True
            since = torch.where(fired, 0, since + len(xb))
            dead = since > cfg.dead_after
            total = loss
            n_dead = int(dead.sum())
            if cfg.aux_k > 0 and n_dead > 0:
                kk = min(cfg.aux_k, n_dead)
                masked = torch.where(dead, pre, torch.zeros_like(pre))
                vals, aidx = masked.topk(kk, dim=1, sorted=False)
                e_hat = torch.zeros_like(pre).scatter(1, aidx, vals) @ p["W_dec"]
                e = (xb - x_hat).detach()
                aux = ((e - e_hat) ** 2).sum() / ((e - e.mean(0)) ** 2).sum().clamp_min(1e-12)
                total = loss + cfg.aux_coef * aux
            opt.zero_grad()
            total.backward()
            opt.step()
            with torch.no_grad():
                p["W_dec"] /= p["W_dec"].norm(dim=1, keepdim=True).clamp_min(1e-12)
            self.n_steps_ += 1
            lv = float(loss.detach())
            self.history_.append(lv)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(fvu=f"{lv:.3f}", dead=n_dead)
            if cfg.checkpoint_dir and self.n_steps_ % cfg.checkpoint_every == 0:
                self._checkpoint(p, opt, since)
        if bar is not None:
            bar.close()
        self._params = p
        self._export(p)
        if cfg.checkpoint_dir:
            self._checkpoint(p, opt, since)
        return self

    def _checkpoint(self, p: dict[str, Any], opt: Any, since: Any) -> Path:
        import torch

        folder = Path(self.config.checkpoint_dir or ".")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"sae-step{self.n_steps_}.pt"
        state = {
            "params": {n: v.detach().cpu() for n, v in p.items()},
            "opt": opt.state_dict(),
            "scale": self.scale_,
            "n_steps": self.n_steps_,
            "since": since.cpu(),
            "config": asdict(self.config),
        }
        torch.save(state, path)
        return path

    def _export(self, p: dict[str, Any]) -> None:
        arr = {n: v.detach().cpu().numpy().astype(np.float32) for n, v in p.items()}
        self.W_enc_, self.b_enc_ = arr["W_enc"], arr["b_enc"]
        self.components_, self.b_dec_ = arr["W_dec"], arr["b_dec"]

    def encode(self, X: npt.ArrayLike) -> Any:
        """Sparse codes (n_rows, n_latents) of ``X`` (n_rows, d), in scaled units."""
        import scipy.sparse as sp

        x = np.asarray(X, np.float32) * self.scale_
        pre = np.maximum((x - self.b_dec_) @ self.W_enc_ + self.b_enc_, 0)
        idx = np.argpartition(-pre, self.config.k - 1, axis=1)[:, : self.config.k]
        z = np.zeros_like(pre)
        np.put_along_axis(z, idx, np.take_along_axis(pre, idx, 1), 1)
        out = sp.csr_array(z)
        out.eliminate_zeros()
        return out

    def decode(self, codes: Any) -> npt.NDArray[np.float32]:
        """Reconstructions (n_rows, d) in the input's units."""
        z = codes.toarray() if hasattr(codes, "toarray") else np.asarray(codes)
        return np.asarray((z @ self.components_ + self.b_dec_) / self.scale_, np.float32)
