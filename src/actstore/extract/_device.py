"""Per-batch device work of an extraction: forward with hooks, drop padding, cast to the
storage dtype (detecting float16 overflow), sum centroids, and start the host copy.

Everything here stays on the device until the final non-blocking copy into pinned host
memory; the writer thread waits on the batch's CUDA event before touching the rows.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from actstore.errors import FloatOverflowError
from actstore.extract.batching import Segment
from actstore.extract.config import ExtractConfig
from actstore.store.dtypes import FLOAT16_MAX

__all__ = ["DeviceLoop"]


class DeviceLoop:
    """Per-batch device work: forward, drop padding, cast, centroid sums, host copy."""

    def __init__(
        self,
        lm: Any,
        capture: Any,
        sites: list[str],
        config: ExtractConfig,
        vocab_size: int,
        dims: dict[str, int],
        grad: Any = None,
    ) -> None:
        import torch

        self.torch = torch
        self.lm = lm
        self.capture = capture
        self.grad = grad  # a GradientPass for runs with grad.* sites
        self.sites = sites
        self.device = lm.device
        self.cuda = lm.device.type == "cuda"
        self.dtype = config.dtype
        self.store_dtype = {
            "float32": torch.float32,
            "float16": torch.float16,
            "bfloat16": torch.bfloat16,
        }[config.dtype]
        self.clip = config.on_overflow == "clip"
        self.pad_id = int(lm.tokenizer.pad_token_id or 0)
        self.overflow = {s: torch.zeros((), dtype=torch.int64, device=self.device) for s in sites}
        self.overflow_max = {
            s: torch.zeros((), dtype=torch.float32, device=self.device) for s in sites
        }
        self.centroids = config.centroids
        if self.centroids:
            self.count = torch.zeros(vocab_size, dtype=torch.int64, device=self.device)
            self.sums = {
                s: torch.zeros((vocab_size, dims[s]), dtype=torch.float64, device=self.device)
                for s in sites
            }

    def begin_pool(self, pool: Any) -> None:
        """Prepare a pool's batches (a gradient run checks its docs and computes targets)."""
        if self.grad is not None:
            self.grad.begin_pool(pool)

    def run_batch(
        self, batch: list[Segment], counts: Counter[str]
    ) -> tuple[Any, Any, Any, dict[str, Any] | None]:
        torch = self.torch
        width = max(len(s.ids) for s in batch)
        ids = np.full((len(batch), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        keep: list[Any] = []
        for b, seg in enumerate(batch):
            ids[b, : len(seg.ids)] = seg.ids
            mask[b, : len(seg.ids)] = 1
            keep.append(b * width + np.arange(seg.keep_start, seg.keep_end))
        flat = np.concatenate(keep)
        counts["tokens"] += int(mask.sum())
        counts["pad_tokens"] += int(mask.size - mask.sum())
        counts["sequences"] += len(batch)
        counts["batches"] += 1
        ids_t = torch.from_numpy(ids)
        mask_t = torch.from_numpy(mask)
        flat_t = torch.from_numpy(flat)
        if self.cuda:
            ids_t, mask_t, flat_t = (
                t.pin_memory().to(self.device, non_blocking=True) for t in (ids_t, mask_t, flat_t)
            )
        losses = None
        if self.grad is not None:
            outs, loss_t = self.grad(ids_t, mask_t, batch)
            docs = np.array([s.doc_id for s in batch], np.int64)
            values = loss_t.double().cpu().numpy()
            if values.ndim == 1:
                losses = {"doc_id": docs, "loss": values}
            else:  # an optimisation: the loss of every doc at every step
                n = values.shape[1]
                losses = {
                    "doc_id": np.repeat(docs, n),
                    "step": np.tile(np.arange(n, dtype=np.int32), len(batch)),
                    "loss": values.reshape(-1),
                }
        else:
            outs = self.capture(ids_t, mask_t)
        host = {}
        token_ids = ids_t.reshape(-1).index_select(0, flat_t)
        if self.centroids:
            self.count.index_add_(0, token_ids, torch.ones_like(token_ids))
        for site in self.sites:
            x = outs[site]
            if x.device != self.device:  # a device map: computed on another device
                x = x.to(self.device)
            x = x.reshape(-1, x.shape[-1]).index_select(0, flat_t)
            if self.centroids:
                self.sums[site].index_add_(0, token_ids, x.to(torch.float64))
            if self.dtype == "float16":
                # one reduction per batch, no device sync: the pool-end check reads the max
                if x.numel():
                    lo, hi = torch.aminmax(x)  # no |x| temporary
                    amax = torch.maximum(-lo, hi).float()
                else:
                    amax = self.overflow_max[site]
                self.overflow_max[site] = torch.maximum(self.overflow_max[site], amax)
                if self.clip:
                    self.overflow[site] += (x.abs() > FLOAT16_MAX).sum()
                    x = x.clamp(-FLOAT16_MAX, FLOAT16_MAX)
            y = x.to(self.store_dtype)
            if self.store_dtype == torch.bfloat16:
                y = y.view(torch.int16)
            if self.cuda:
                h = torch.empty(y.shape, dtype=y.dtype, pin_memory=True)
                h.copy_(y, non_blocking=True)
            else:
                h = y.contiguous()
            host[site] = h
        event = None
        if self.cuda:
            event = torch.cuda.Event()
            event.record()
        tokens = _token_columns(batch)
        return event, host, tokens, losses

    def check_overflow(self, counts: Counter[str]) -> None:
        if self.dtype != "float16":
            return
        for site in self.sites:
            amax = float(self.overflow_max[site].item())
            if not amax > FLOAT16_MAX:  # also true for NaN
                continue
            if self.clip:
                counts[f"clipped_values:{site}"] += int(self.overflow[site].item())
                self.overflow[site].zero_()
            else:
                raise FloatOverflowError(
                    f"site {site} has values beyond the float16 range (max |x| = {amax:.4g} "
                    "> 65504); re-run with --dtype bfloat16 or float32 (and --overwrite), "
                    "or --on-overflow clip"
                )

    def load_centroids(self, state: dict[str, Any]) -> None:
        """Continue the running sums from a checkpoint (see :meth:`centroid_state`)."""
        torch = self.torch
        ids = torch.from_numpy(state["ids"]).to(self.device)
        self.count[ids] = torch.from_numpy(state["count"]).to(self.device)
        for site, total in self.sums.items():
            total[ids] = torch.from_numpy(state[f"sum:{site}"]).to(self.device)

    def centroid_state(self) -> dict[str, Any] | None:
        if not self.centroids:
            return None
        ids = self.torch.nonzero(self.count).reshape(-1)
        state = {"ids": ids.cpu().numpy(), "count": self.count[ids].cpu().numpy()}
        for site, total in self.sums.items():
            state[f"sum:{site}"] = total.index_select(0, ids).cpu().numpy()
        return state


def _token_columns(batch: list[Segment]) -> dict[str, Any]:
    n = [s.n_keep for s in batch]
    return {
        "doc_id": np.repeat(np.array([s.doc_id for s in batch], np.int64), n),
        "pos": np.concatenate(
            [np.arange(s.pos0, s.pos0 + s.n_keep, dtype=np.int32) for s in batch]
        ),
        "token_id": np.concatenate(
            [s.ids[s.keep_start : s.keep_end].astype(np.int32) for s in batch]
        ),
        "start": np.concatenate([s.starts for s in batch]),
        "end": np.concatenate([s.ends for s in batch]),
        "special": np.concatenate([s.special for s in batch]),
    }
