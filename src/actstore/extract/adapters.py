"""Per-architecture facts the extractor needs: where the blocks are, the final norm, the head.

One small :class:`Adapter` per family of Hugging Face ``model_type`` values, looked up by
:func:`adapter_for`; a model type not in the registry gets an adapter inferred from the
module tree (the largest ``nn.ModuleList`` is taken as the blocks). Registered or inferred,
:func:`actstore.extract.sites.check_hidden_sites` compares the adapter's sites with Hugging
Face's ``hidden_states`` when the model is loaded and refuses a model where they differ.
This module imports neither torch nor transformers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from actstore.errors import ModelLoadError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["ADAPTERS", "Adapter", "adapter_for", "is_causal_config", "is_masked_lm_config"]


@dataclass(frozen=True)
class Adapter:
    """Where one architecture keeps its blocks and final norm, and what its sites mean.

    All paths are dotted module paths relative to the *base* model
    (``model.base_model``: ``GPT2Model``, ``LlamaModel``, ``BertModel``, ...).
    """

    name: str
    """Short name of the family (``"llama"``)."""
    model_types: tuple[str, ...]
    """The ``config.model_type`` values this adapter serves."""
    layers: str
    """Path of the ``nn.ModuleList`` of transformer blocks (``"h"``, ``"layers"``)."""
    final_norm: str | None
    """Path of the norm after the last block, which Hugging Face folds into
    ``hidden_states[-1]``; ``None`` when ``hidden_states[-1]`` is the raw last block output.
    A path whose module is absent in a checkpoint (OPT-350m has no final norm) is dropped
    by :meth:`resolve`."""
    causal: bool
    """Load with ``AutoModelForCausalLM`` (the model has an output head) instead of
    ``AutoModel``."""
    hidden0: str
    """What site ``hidden.0`` holds for this architecture, in one sentence."""
    hidden_last: str
    """What site ``hidden.L`` holds (whether the final norm is applied), in one sentence."""
    position_offset: int = 0
    """Position-embedding rows that are not usable positions (RoBERTa reserves
    ``padding_idx + 1``), subtracted from ``max_position_embeddings``."""
    final_proj: str | None = None
    """Path of a linear projection applied after the final norm (OPT-350m's
    ``decoder.project_out``), also folded into ``hidden_states[-1]``; exported as the
    ``final_proj.*`` matrices so that the offline head can apply it to earlier layers."""
    embed_proj: str | None = None
    """Path of a linear projection of the token embeddings before block 0 (OPT-350m's
    ``decoder.project_in``); exported as the ``embed_proj.*`` matrices."""
    mlm_transform: tuple[str, str] | None = None
    """Paths, relative to the *full* masked-LM model, of its MLM head's dense layer and
    LayerNorm (``dense -> activation -> LayerNorm``, then the decoder), exported as the
    ``mlm_transform.*`` / ``mlm_norm.*`` matrices when a checkpoint has the head."""

    def resolve(self, base: nn.Module) -> Adapter:
        """This adapter with the optional modules (``final_norm``, ``final_proj``,
        ``embed_proj``) that ``base`` does not have set to ``None``."""

        def present(path: str | None) -> str | None:
            if path is None:
                return None
            try:
                base.get_submodule(path)
            except AttributeError:  # absent, or None in this checkpoint
                return None
            return path

        return replace(
            self,
            final_norm=present(self.final_norm),
            final_proj=present(self.final_proj),
            embed_proj=present(self.embed_proj),
        )


_DECODER_HIDDEN0 = "token embeddings{extra}: the input of block 0 (Hugging Face hidden_states[0])"
_FINAL_NORM_LAST = (
    "output of the last block passed through the final {norm} ({path}), as Hugging Face "
    "returns in hidden_states[-1]; the raw output of the last block is not a hidden site "
    "(capture it with module:{layers}.<L-1>)"
)


def _decoder(
    *, name: str, model_types: tuple[str, ...], layers: str, norm_path: str, norm: str, extra: str
) -> Adapter:
    return Adapter(
        name=name,
        model_types=model_types,
        layers=layers,
        final_norm=norm_path,
        causal=True,
        hidden0=_DECODER_HIDDEN0.format(extra=extra),
        hidden_last=_FINAL_NORM_LAST.format(norm=norm, path=norm_path, layers=layers),
    )


_OPT_LAST = (
    "last_hidden_state, as Hugging Face returns in hidden_states[-1]: the output of the last "
    "block, then the final LayerNorm (decoder.final_layer_norm; absent in post-LN "
    "checkpoints such as OPT-350m), then the projection decoder.project_out to "
    "word_embed_proj_dim where that differs from hidden_size (OPT-350m: 512 of 1024)"
)
_GEMMA_HIDDEN0 = (
    "token embeddings multiplied by sqrt(hidden_size) (the stored embed matrix is the "
    "unscaled weight; no position embeddings: RoPE): the input of block 0 (Hugging Face "
    "hidden_states[0])"
)
_GEMMA_LAST = (
    "output of the last block passed through the final norm (norm: RMSNorm scaled by "
    "1 + weight, recorded as weight_offset 1.0), as Hugging Face returns in "
    "hidden_states[-1]; the raw output of the last block is not a hidden site (capture it "
    "with module:layers.<L-1>)"
)

_BERT_LAST = (
    "output of the last encoder layer (post-LN: each layer ends in its own LayerNorm; "
    "there is no separate final norm and no pooler), as Hugging Face hidden_states[-1]"
)

#: Every registered adapter; :func:`adapter_for` looks ``config.model_type`` up here.
ADAPTERS: tuple[Adapter, ...] = (
    Adapter(
        name="bert",
        model_types=("bert",),
        layers="encoder.layer",
        final_norm=None,
        causal=False,
        hidden0="output of the embeddings module (word + position + token-type embeddings, "
        "then LayerNorm): the input of encoder layer 0",
        hidden_last=_BERT_LAST,
        mlm_transform=("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm"),
    ),
    Adapter(
        name="roberta",
        model_types=("roberta", "xlm-roberta", "camembert"),
        layers="encoder.layer",
        final_norm=None,
        causal=False,
        hidden0="output of the embeddings module (word + position + token-type embeddings, "
        "then LayerNorm): the input of encoder layer 0",
        hidden_last=_BERT_LAST,
        position_offset=2,
        mlm_transform=("lm_head.dense", "lm_head.layer_norm"),
    ),
    Adapter(
        name="distilbert",
        model_types=("distilbert",),
        layers="transformer.layer",
        final_norm=None,
        causal=False,
        hidden0="output of the embeddings module (word + position embeddings, then "
        "LayerNorm): the input of transformer layer 0",
        hidden_last=_BERT_LAST,
        mlm_transform=("vocab_transform", "vocab_layer_norm"),
    ),
    _decoder(
        name="gpt2",
        model_types=("gpt2",),
        layers="h",
        norm_path="ln_f",
        norm="LayerNorm",
        extra=" + learned position embeddings",
    ),
    _decoder(
        name="gpt_neo",
        model_types=("gpt_neo",),
        layers="h",
        norm_path="ln_f",
        norm="LayerNorm",
        extra=" + learned position embeddings",
    ),
    _decoder(
        name="llama",
        model_types=("llama",),
        layers="layers",
        norm_path="norm",
        norm="RMSNorm",
        extra=" (no position embeddings: RoPE)",
    ),
    _decoder(
        name="mistral",
        model_types=("mistral",),
        layers="layers",
        norm_path="norm",
        norm="RMSNorm",
        extra=" (no position embeddings: RoPE)",
    ),
    _decoder(
        name="cohere",
        model_types=("cohere",),
        layers="layers",
        norm_path="norm",
        norm="LayerNorm without bias",
        extra=" (no position embeddings: RoPE)",
    ),
    Adapter(
        name="gemma",
        model_types=("gemma", "gemma2"),
        layers="layers",
        final_norm="norm",
        causal=True,
        hidden0=_GEMMA_HIDDEN0,
        hidden_last=_GEMMA_LAST,
    ),
    Adapter(
        name="opt",
        model_types=("opt",),
        layers="decoder.layers",
        final_norm="decoder.final_layer_norm",
        causal=True,
        hidden0="token embeddings (projected to hidden_size by decoder.project_in where "
        "word_embed_proj_dim differs, as in OPT-350m) + learned position embeddings: the "
        "input of block 0 (Hugging Face hidden_states[0])",
        hidden_last=_OPT_LAST,
        final_proj="decoder.project_out",
        embed_proj="decoder.project_in",
    ),
    _decoder(
        name="qwen2",
        model_types=("qwen2", "qwen3"),
        layers="layers",
        norm_path="norm",
        norm="RMSNorm",
        extra=" (no position embeddings: RoPE)",
    ),
)

_BY_TYPE: dict[str, Adapter] = {t: a for a in ADAPTERS for t in a.model_types}

_NORM_NAMES = ("norm", "ln_f", "final_layernorm", "final_layer_norm", "final_norm", "ln_final")


def is_causal_config(config: Any) -> bool:
    """Whether ``config.architectures`` names a causal LM (a model with an output head)."""
    archs = getattr(config, "architectures", None) or []
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)


def is_masked_lm_config(config: Any) -> bool:
    """Whether ``config.architectures`` names a masked LM (a checkpoint saved with its MLM
    head, e.g. ``BertForMaskedLM``); such models are loaded with their head."""
    archs = getattr(config, "architectures", None) or []
    return any(str(a).endswith("ForMaskedLM") for a in archs)


def _infer(config: Any, base: nn.Module) -> Adapter | None:
    """Guess an adapter from the module tree: the biggest ModuleList and a norm after it."""
    from torch import nn

    best: tuple[int, str] | None = None
    for path, module in base.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(m) for m in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if best is None or size > best[0]:
            best = (size, path)
    if best is None:
        return None
    layers = best[1]
    parent = layers.rpartition(".")[0]
    scope = base.get_submodule(parent) if parent else base
    norm: str | None = None
    for child_name, child in scope.named_children():
        looks_like_norm = "norm" in type(child).__name__.lower()
        if child_name in _NORM_NAMES and looks_like_norm:
            norm = f"{parent}.{child_name}" if parent else child_name
            break
    model_type = str(getattr(config, "model_type", "unknown"))
    last = (
        "last_hidden_state, as Hugging Face returns in hidden_states[-1] (checked at load; "
        "inferred adapter): the output of the last block, then the final norm "
        f"({norm if norm else 'none found'}) and whatever else the model applies there"
    )
    return Adapter(
        name=f"inferred:{model_type}",
        model_types=(model_type,),
        layers=layers,
        final_norm=norm,
        causal=is_causal_config(config),
        hidden0="input of block 0, as Hugging Face hidden_states[0] (checked at load; "
        "inferred adapter)",
        hidden_last=last,
    )


def adapter_for(config: Any, base: nn.Module | None = None) -> Adapter:
    """Return the adapter for a model configuration.

    Parameters
    ----------
    config : transformers.PretrainedConfig
        The model's configuration; ``config.model_type`` selects the adapter.
    base : torch.nn.Module, optional
        The loaded base model. When the model type is not registered, the adapter is
        inferred from this module tree (largest ``nn.ModuleList`` = blocks; a child named
        like ``norm`` / ``ln_f`` next to it = final norm).

    Returns
    -------
    Adapter

    Raises
    ------
    ModelLoadError
        If the model type is not registered and no adapter can be inferred.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> adapter_for(SimpleNamespace(model_type="gpt2")).final_norm
    'ln_f'
    """
    model_type = str(getattr(config, "model_type", ""))
    if model_type in _BY_TYPE:
        return _BY_TYPE[model_type]
    inferred = _infer(config, base) if base is not None else None
    if inferred is None:
        known = ", ".join(sorted(_BY_TYPE))
        raise ModelLoadError(
            f"model type {model_type!r} is not supported: no adapter is registered for it "
            f"(known: {known}) and no list of transformer blocks was found in the model; "
            "add an Adapter to actstore/extract/adapters.py"
        )
    return inferred
