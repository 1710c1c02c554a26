"""The scalar objectives whose gradients ``grad.*`` sites store, one loss per doc.

Every objective is a loss to minimise, computed per sequence (one doc: gradient runs
refuse ``--long-docs window``) so that the batch's total is a sum over docs and each
doc's gradient is its own, whatever it is batched with:

* ``kl-to-prompt``: ``sum_k KL(p_target || p_model(. | doc, position k))`` over the doc's
  marked positions, where ``p_target`` is the model's distribution for the target prompt at
  its first marked position;
* ``target-tokens``: ``sum_k -log p_model(t_k | doc, position k)``, the target text's
  tokens ``t_1..t_m`` (no special tokens) read at the doc's ``m`` marked positions in order;
* ``cosine-to-text``: ``1 - cos(mean(h_L(doc)), mean(h_L(target)))``, mean-pooled over the
  real tokens (special tokens included, as sentence-transformers pools), for encoders
  without an LM head such as the bundled MiniLM.

Marked positions: ``mask`` = every mask token (``[MASK]``) of the sequence, ``last`` = its
last token (what a causal LM predicts next); ``auto`` is ``mask`` for masked LMs and
``last`` for causal LMs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from actstore.errors import ConfigError, CorpusError
from actstore.extract.batching import Pool, Segment
from actstore.extract.config import ExtractConfig
from actstore.extract.model import LoadedModel

__all__ = ["Objective", "check_target_field"]

_NEEDS_HEAD = ("kl-to-prompt", "target-tokens")
_TARGET_BATCH = 16


def check_target_field(config: ExtractConfig, first: Any) -> None:
    """Refuse a ``--objective-target-field`` that the corpus's first record lacks.

    ``first`` is the first :class:`~actstore.extract.corpus.Doc` (or None for an empty
    corpus); called before the store is touched.
    """
    field = config.objective_target_field
    if field is None or first is None or field in first.extra:
        return
    have = ", ".join(sorted(first.extra)) or "none"
    raise CorpusError(
        f"objective target field {field!r} is not in the corpus {config.data} (record "
        f"{first.index} has fields: {have}); pass --objective-target-field with one of them "
        "or --objective-target TEXT"
    )


class Objective:
    """One declared objective over a loaded model: targets, marked positions, losses.

    Parameters
    ----------
    lm : LoadedModel
    config : ExtractConfig
        ``objective``, ``objective_target`` / ``objective_target_field``,
        ``objective_position``, ``max_length`` and ``add_special_tokens``.

    Raises
    ------
    ConfigError
        An objective that needs an output head on a model without one, or mask positions
        with a tokenizer that has no mask token.
    """

    def __init__(self, lm: LoadedModel, config: ExtractConfig) -> None:
        assert config.objective is not None  # ExtractConfig checks it with the grad sites
        self.lm = lm
        self.name = config.objective
        self.fixed = config.objective_target
        self.field = config.objective_target_field
        self.max_length = config.max_length or lm.max_length
        self.add_special = config.add_special_tokens
        if self.name in _NEEDS_HEAD and lm.lm_head is None:
            raise ConfigError(
                f"objective {self.name} needs the model's output head, and "
                f"{lm.info.get('id')} ({lm.info.get('class')}) has none; use --objective "
                "cosine-to-text, or a checkpoint saved with its LM or MLM head"
            )
        position = config.objective_position
        if position == "auto":
            position = "mask" if lm.lm_head == "masked" else "last"
        self.position = position
        self.mask_id = lm.tokenizer.mask_token_id
        if self.name in _NEEDS_HEAD and position == "mask" and self.mask_id is None:
            raise ConfigError(
                f"objective {self.name} reads predictions at mask tokens, and the tokenizer of "
                f"{lm.info.get('id')} has no mask token; use --objective-position last"
            )
        self.needs_logits = self.name in _NEEDS_HEAD
        self._targets: dict[str, torch.Tensor] = {}  # target text -> what the loss needs
        self._doc_target: dict[int, str] = {}
        self._positions: dict[int, npt.NDArray[np.int64]] = {}

    def to_json(self, lm: LoadedModel) -> dict[str, object]:
        """The resolved objective, as ``run.json`` records it."""
        return {
            "name": self.name,
            "target": self.fixed,
            "target_field": self.field,
            "position": self.position if self.needs_logits else None,
            "mask_token": lm.tokenizer.mask_token if self.position == "mask" else None,
            "loss": {
                "kl-to-prompt": "sum over marked positions of KL(p_target || p_model)",
                "target-tokens": "sum over marked positions of -log p_model(target token)",
                "cosine-to-text": "1 - cos(mean-pooled hidden.L of doc, of target)",
            }[self.name],
        }

    # -------------------------------------------------------------- per pool checks

    def _marked(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        if self.position == "last":
            return np.array([len(ids) - 1], np.int64)
        return np.flatnonzero(ids == self.mask_id).astype(np.int64)

    def begin_pool(self, pool: Pool) -> None:
        """Check every doc of ``pool`` before any of its batches runs, and compute the
        targets it needs (no gradients).

        Raises
        ------
        CorpusError
            A doc without its target field or without a marked position (a mask token), a
            target-tokens target whose token count is not the doc's number of marked
            positions.
        """
        # the segments are the pool's new texts; each is its first record's
        first = {
            d.doc_id: d
            for d, rep in zip(pool.docs, pool.repeat_of, strict=True)
            if d.text and rep is None
        }
        self._doc_target = {}
        self._positions = {}
        if self.field is not None:
            self._targets = {}  # per-doc targets are kept for one pool only
        for batch in pool.batches:
            for seg in batch:
                doc = first.get(seg.doc_id)
                where = f"record {doc.index}" if doc is not None else f"doc_id {seg.doc_id}"
                target = self.fixed
                if self.field is not None:
                    value = None if doc is None else doc.extra.get(self.field)
                    if value is None or value == "":
                        raise CorpusError(
                            f"{where} has no objective target (field {self.field!r} missing "
                            "or empty); give every record a target, or use "
                            "--objective-target TEXT"
                        )
                    target = str(value)
                assert target is not None
                self._doc_target[seg.doc_id] = target
                if not self.needs_logits:
                    continue
                marked = self._marked(seg.ids)
                if len(marked) == 0:
                    raise CorpusError(
                        f"{where} has no {self.lm.tokenizer.mask_token} token (after "
                        f"truncation to {self.max_length} tokens), and objective {self.name} "
                        "reads predictions there; mark every doc, or use "
                        "--objective-position last"
                    )
                self._positions[seg.doc_id] = marked
                if self.name == "target-tokens":
                    n = len(self._target_ids(target))
                    if n != len(marked):
                        raise CorpusError(
                            f"{where}: objective target {target!r} has {n} tokens, the doc "
                            f"has {len(marked)} marked positions ({self.position}); give one "
                            "target token per marked position"
                        )
        self._compute_targets(sorted(set(self._doc_target.values()) - set(self._targets)))

    def _target_ids(self, text: str) -> list[int]:
        return list(self.lm.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _compute_targets(self, texts: Sequence[str]) -> None:
        lm = self.lm
        if self.name == "target-tokens":
            for text in texts:
                self._targets[text] = torch.tensor(self._target_ids(text), device=lm.device)
            return
        for i in range(0, len(texts), _TARGET_BATCH):
            chunk = list(texts[i : i + _TARGET_BATCH])
            enc = lm.tokenizer(
                chunk,
                add_special_tokens=self.add_special,
                truncation=True,
                max_length=self.max_length,
                padding=True,
                return_tensors="pt",
            )
            ids = enc["input_ids"].to(lm.device)
            mask = enc["attention_mask"].to(lm.device)
            with torch.inference_mode():
                if self.name == "cosine-to-text":
                    h = lm.base(input_ids=ids, attention_mask=mask).last_hidden_state
                    pooled = _mean_pool(h.double(), mask)
                    for j, text in enumerate(chunk):
                        self._targets[text] = pooled[j].clone()
                    continue
                logits = lm.model(input_ids=ids, attention_mask=mask).logits
            for j, text in enumerate(chunk):
                real = enc["input_ids"][j][enc["attention_mask"][j].bool()].numpy()
                marked = self._marked(real)
                if len(marked) == 0:
                    raise CorpusError(
                        f"objective target prompt {text!r} has no "
                        f"{lm.tokenizer.mask_token} token; mark the position whose "
                        "prediction the docs are pushed toward"
                    )
                self._targets[text] = torch.log_softmax(logits[j, int(marked[0])].double(), -1)

    # ------------------------------------------------------------------------ losses

    def losses(self, output: Any, mask: torch.Tensor, batch: list[Segment]) -> torch.Tensor:
        """The loss of every sequence of ``batch``: shape (batch,), float64, differentiable
        (the head's softmax and the cosine are computed in float64).

        ``output`` is the full model's output (``logits``) for objectives that need the
        head, else the base model's (``last_hidden_state``).
        """
        if self.name == "cosine-to-text":
            h = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
            pooled = _mean_pool(h.double(), mask)
            target = torch.stack([self._targets[self._doc_target[s.doc_id]] for s in batch])
            cos = torch.nn.functional.cosine_similarity(pooled, target.to(pooled.device), dim=-1)
            return 1.0 - cos
        logits = output.logits
        rows, cols = [], []
        for b, seg in enumerate(batch):
            marked = self._positions[seg.doc_id]
            rows += [b] * len(marked)
            cols += marked.tolist()
        dev = logits.device
        picked = logits[torch.tensor(rows, device=dev), torch.tensor(cols, device=dev)]
        # float64: near-equal distributions make p - q (the gradient) cancel in float32
        logq = torch.log_softmax(picked.double(), -1)  # (positions, vocab)
        if self.name == "kl-to-prompt":
            logp = torch.stack([self._targets[self._doc_target[batch[b].doc_id]] for b in rows]).to(
                dev
            )
            per_pos = (logp.exp() * (logp - logq)).sum(-1)
        else:
            ids = torch.cat([self._targets[self._doc_target[s.doc_id]] for s in batch]).to(dev)
            per_pos = -logq.gather(1, ids.view(-1, 1)).view(-1)
        owner = torch.tensor(rows, device=dev)
        return torch.zeros(len(batch), device=dev, dtype=per_pos.dtype).index_add(0, owner, per_pos)


def _mean_pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``h`` (b, n, d) over the real tokens of ``mask`` (b, n)."""
    m = mask.to(h.dtype).unsqueeze(-1)
    return (h * m).sum(1) / m.sum(1)
