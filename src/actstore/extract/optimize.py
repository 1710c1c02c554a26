"""The options of an optimisation job (``actstore optimize``) and its entry point.

An optimisation run is an extraction job whose per-batch work is an optimiser loop: the
input embeddings of each prompt are moved by ``torch.optim.Adam`` to minimise one of the
gradient objectives (:mod:`actstore.extract.objectives`), the model frozen, and the
embeddings at every ``every``-th step are stored as the sites ``traj.<step>``. Everything
else (corpus, pools, part writer, checkpoints, resume, commit, writer lock, same-arguments
check) is the extraction job of :mod:`actstore.extract.runner`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from actstore.errors import ConfigError
from actstore.extract.config import OBJECTIVES, ExtractConfig, Objective
from actstore.extract.progress import ExtractProgress
from actstore.extract.runner import ExtractResult, extract
from actstore.store.format import StorageDType

__all__ = ["OPTIMIZE_ONLY_EXTRACT", "OptimizeConfig", "optimize"]

#: Extraction options an optimisation job does not take (the CLI leaves them out).
OPTIMIZE_ONLY_EXTRACT = frozenset(
    {
        "sites",
        "long_docs",
        "window_overlap",
        "centroids",
        "matrices",
        "on_overflow",
        "device_map",
        "max_memory",
        "engine",
        "address",
        "workers",
        "gpus_per_worker",
        "max_retries",
    }
)


@dataclass(frozen=True)
class OptimizeConfig(ExtractConfig):
    """Everything an optimisation job needs: the extraction options that apply, the
    objective (required) and the optimiser's; the resolved form is saved in ``run.json``."""

    objective: Objective | None = None
    """The loss per doc that the input embeddings are moved to minimise (required):
    kl-to-prompt, target-tokens or cosine-to-text (docs/format.md, gradient runs); its
    value per doc and step goes to the losses table."""
    steps: int = 100
    """Adam steps per prompt."""
    lr: float = 0.01
    """Adam's learning rate."""
    every: int = 10
    """Store the embeddings every this many steps (step 0 and the last step always)."""
    init: Literal["tokens", "random-ellipsoid"] = "tokens"
    """Start point: tokens (the prompt's own input embeddings, before positions), or
    random-ellipsoid (a draw from the Gaussian fitted to the vocabulary's embeddings,
    per doc from seed and doc_id; special tokens keep their own)."""
    seed: int = 0
    """Seed of random-ellipsoid (each doc draws from (seed, doc_id): batching never
    changes a draw)."""
    dtype: StorageDType = "float32"
    """Storage dtype of the trajectory: float32, float16 or bfloat16."""
    batch_tokens: int = 2048
    """Token budget of one batch of prompts optimised together (batch size x padded
    length)."""
    pool_batches: int = 8
    """Batches per length-sorted pool (every pool end is also a checkpoint)."""
    compute_dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """Precision of the forward and backward passes (weights and embeddings stay float32):
    auto is float16 mixed precision with a GradScaler on CUDA, float32 on CPU; bfloat16
    autocasts without a scaler. Half precision needs CUDA."""

    def _check_objective(self) -> None:
        if self.objective is None:
            raise ConfigError(
                f"optimize needs --objective {'|'.join(OBJECTIVES)}: the loss the input "
                "embeddings are moved to minimise (see docs/format.md, optimisation runs)"
            )
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective {self.objective!r} is not one of {', '.join(OBJECTIVES)}")
        if (self.objective_target is None) == (self.objective_target_field is None):
            raise ConfigError(
                f"--objective {self.objective} needs exactly one target: --objective-target "
                "TEXT (the same for every doc) or --objective-target-field FIELD (per doc)"
            )
        given = [
            f"--{name.replace('_', '-')}"
            for name in ("long_docs", "centroids", "device_map", "engine")
            if getattr(self, name) != getattr(ExtractConfig, name)
        ]
        if given:
            raise ConfigError(
                f"{', '.join(given)}: not used by optimize (one prompt per sequence, on one "
                "device, in this process); drop them"
            )
        if not self.matrices:
            raise ConfigError(
                "--no-matrices: an optimisation run keeps the embedding matrix (the trajectory "
                "analyses measure distances and headings against it); drop it"
            )
        if self.steps < 1 or self.every < 1:
            raise ConfigError(f"steps and every must be >= 1, got {self.steps} and {self.every}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if self.init not in ("tokens", "random-ellipsoid"):
            raise ConfigError(f"init must be tokens or random-ellipsoid, got {self.init!r}")

    def stored_steps(self) -> list[int]:
        """The steps whose embeddings are stored: 0, every, 2 every, ..., and ``steps``.

        >>> OptimizeConfig("m", "d.jsonl", "s", "r", objective="cosine-to-text",
        ...     objective_target="x", steps=25, every=10).stored_steps()
        [0, 10, 20, 25]
        """
        return sorted({*range(0, self.steps + 1, self.every), self.steps})


def optimize(
    config: OptimizeConfig, progress: Callable[[ExtractProgress], None] | None = None
) -> ExtractResult:
    """Optimise the input embeddings of every prompt of ``config.data`` and store the
    trajectories as run ``config.run`` (see :class:`OptimizeConfig` and docs/format.md).

    A job killed and restarted with the same arguments resumes at its last checkpoint (a
    batch boundary) and ends with the same store.

    Parameters
    ----------
    config : OptimizeConfig
    progress : callable or None
        As for :func:`~actstore.extract.runner.extract`.

    Returns
    -------
    ExtractResult

    Raises
    ------
    ActstoreError
        Bad input (an objective that needs a head the model lacks, a doc without its
        marker or target); nothing stored before is changed.
    """
    if not isinstance(config, OptimizeConfig):
        raise ConfigError("optimize takes an OptimizeConfig; use extract for an ExtractConfig")
    return extract(config, progress)
