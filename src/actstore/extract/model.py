"""Load a Hugging Face model and tokenizer for extraction, and describe them as JSON.

Sites and their capture live in :mod:`actstore.extract.sites`, the offline head in
:mod:`actstore.extract.head`.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from actstore.errors import ConfigError, ModelLoadError
from actstore.extract.adapters import Adapter, adapter_for, is_causal_config, is_masked_lm_config

__all__ = ["LoadedModel", "load_model"]

ComputeDType = Literal["auto", "float32", "float16", "bfloat16"]

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
#: Longest sequence used when neither tokenizer nor config gives a sane limit, and the
#: cap on what they give (attention memory grows with the square of the length).
_DEFAULT_MAX_LENGTH = 512
_MAX_LENGTH_CAP = 8192
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
_MIB = 1 << 20


@dataclass(eq=False)
class LoadedModel:
    """A model ready for extraction: eval mode, on its device, in its compute dtype."""

    model: Any
    """The full Hugging Face model (with its output head for causal LMs, and for masked
    LMs whose checkpoint was saved with its MLM head)."""
    base: Any
    """``model.base_model``: what the forward pass runs on (no logits)."""
    tokenizer: Any
    """A fast tokenizer (character offsets), right padding, with a pad token."""
    adapter: Adapter
    """Architecture facts (blocks, final norm, meaning of ``hidden.0`` / ``hidden.L``)."""
    n_layers: int
    """Number of blocks ``L``; hidden sites are ``hidden.0`` .. ``hidden.L``."""
    d_model: int
    """Width of the hidden states."""
    device: torch.device
    """Where the model runs."""
    compute_dtype: torch.dtype
    """dtype of the weights and of every captured tensor."""
    max_length: int
    """Longest token sequence the model can take."""
    info: dict[str, object] = field(default_factory=dict)
    """JSON-able model identity: id, path, revision, weights_hash, class, config, ..."""
    tokenizer_info: dict[str, object] = field(default_factory=dict)
    """JSON-able tokenizer description: class, vocab_size, special tokens, padding."""
    lm_head: Literal["causal", "masked"] | None = None
    """The output head the model was loaded with: a causal LM's, a masked LM's (BERT-style
    ``*ForMaskedLM`` checkpoints), or None (an encoder without a head, e.g. MiniLM)."""
    padding_mask: bool = True
    """Whether extraction passes the padding mask; False for a causal family whose real
    tokens are the same without it (:func:`actstore.extract.check.padding_mask_needed`)."""


# ---------------------------------------------------------------------------- loading


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _looks_like_path(model: str) -> bool:
    return (
        model.startswith(("/", "./", "../", "~", ".\\")) or model.count("/") > 1 or ("\\" in model)
    )


def _resolve_source(model: str) -> Path | None:
    """The local folder for ``model``, ``None`` for a hub id; errors for a bad folder."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(
                f"cannot load model {model!r}: it is a file, not a model folder; "
                "pass the folder holding config.json and the weights, or a hub id"
            )
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"cannot load model {model!r}: the folder has no config.json, so it is not a "
                "Hugging Face model folder; pass the folder that save_pretrained wrote"
            )
        return path.resolve()
    if _looks_like_path(model):
        raise ModelLoadError(
            f"cannot load model {model!r}: no such folder; check the path, or pass a hub id "
            "like 'gpt2'"
        )
    return None


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(
            f"device {device!r} is not a torch device ({_first_line(exc)}); "
            "use 'auto', 'cpu', 'cuda' or 'cuda:<n>'"
        ) from exc


def _resolve_dtype(compute_dtype: str, device: torch.device, config: Any) -> torch.dtype:
    if compute_dtype != "auto":
        if compute_dtype not in _DTYPES:
            raise ConfigError(
                f"compute dtype {compute_dtype!r} is not one of auto, float32, float16, bfloat16"
            )
        return _DTYPES[compute_dtype]
    if device.type == "cpu":
        return torch.float32
    saved = getattr(config, "dtype", None)
    if isinstance(saved, str):
        saved = _DTYPES.get(saved.removeprefix("torch."))
    return saved if saved in (torch.float16, torch.bfloat16) else torch.float32


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_safe(v) for v in value]
    return str(value).removeprefix("torch.")


def _weights_hash(folder: Path | None, model: nn.Module) -> str:
    """Fingerprint of the weight files: name, size and sha256 of the first and last MiB.

    Fast for any size of checkpoint. Without files (an in-memory model) the parameters'
    names, shapes and first values are hashed instead.
    """
    digest = hashlib.sha256()
    files = (
        sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES))
        if folder is not None
        else []
    )
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.name}\0{size}\0".encode())
        with path.open("rb") as fh:
            digest.update(hashlib.sha256(fh.read(_MIB)).digest())
            fh.seek(max(0, size - _MIB))
            digest.update(hashlib.sha256(fh.read(_MIB)).digest())
    if files:
        return "sha256:" + digest.hexdigest()
    for name, param in model.state_dict().items():
        flat = param.detach().reshape(-1)[:4096].float().cpu().numpy()
        digest.update(f"{name}\0{tuple(param.shape)}\0{param.dtype}\0".encode())
        digest.update(flat.tobytes())
    return "params-sha256:" + digest.hexdigest()


def _snapshot_dir(model: str, revision: str | None) -> Path | None:
    """Local cache folder of a hub model (it was just loaded, so it is cached)."""
    try:
        from transformers.utils.hub import cached_file

        found = cached_file(model, "config.json", revision=revision)
    except Exception:  # a best-effort lookup for provenance only
        return None
    return Path(found).parent if found else None


def _max_length(tokenizer: Any, config: Any, adapter: Adapter) -> int:
    limits: list[int] = []
    tml = getattr(tokenizer, "model_max_length", None)
    if isinstance(tml, int) and 0 < tml <= 1_000_000:
        limits.append(tml)
    mpe = getattr(config, "max_position_embeddings", None)
    if isinstance(mpe, int) and mpe - adapter.position_offset > 0:
        limits.append(mpe - adapter.position_offset)
    return min(min(limits) if limits else _DEFAULT_MAX_LENGTH, _MAX_LENGTH_CAP)


def _tokenizer_info(tokenizer: Any) -> dict[str, object]:
    special = {
        k: v
        for k in (
            "bos_token",
            "eos_token",
            "unk_token",
            "sep_token",
            "pad_token",
            "cls_token",
            "mask_token",
        )
        if (v := getattr(tokenizer, k, None)) is not None
    }
    return {
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "special_tokens": _json_safe({k: str(v) for k, v in special.items()}),
        "special_token_ids": sorted(int(i) for i in tokenizer.all_special_ids),
        "padding_side": str(tokenizer.padding_side),
        "pad_token_id": int(tokenizer.pad_token_id),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def load_model(
    model: str,
    *,
    revision: str | None = None,
    device: str = "auto",
    compute_dtype: ComputeDType = "auto",
    trust_remote_code: bool = False,
    device_map: str | None = None,
    max_memory: str | None = None,
) -> LoadedModel:
    """Load a model and its fast tokenizer for extraction.

    Parameters
    ----------
    model : str
        A local folder written by ``save_pretrained`` or a Hugging Face hub id.
    revision : str, optional
        Hub revision (branch, tag or commit).
    device : str, default "auto"
        ``"auto"`` is CUDA when available, else CPU; any torch device string otherwise.
    compute_dtype : {"auto", "float32", "float16", "bfloat16"}, default "auto"
        ``"auto"`` is float32 on CPU; on CUDA the checkpoint's dtype if it is float16 or
        bfloat16, else float32.
    trust_remote_code : bool, default False
        Passed to transformers (runs code from the model repository).
    device_map, max_memory : str, optional
        Place the model over several devices with accelerate (see
        :func:`actstore.extract._devicemap.parse_device_map`); ``device`` must then be
        ``"auto"``, and the batch goes to the device of the input embeddings.

    Returns
    -------
    LoadedModel

    Raises
    ------
    ModelLoadError
        The folder is missing or not a model, the hub is unreachable, the model type has
        no adapter, the adapter's hidden sites differ from Hugging Face's
        ``hidden_states`` on a dummy batch, or only a slow tokenizer exists.
    ConfigError
        ``device`` or ``compute_dtype`` is not valid.
    """
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
        AutoTokenizer,
    )

    folder = _resolve_source(model)
    source = str(folder) if folder is not None else model
    placement: dict[str, Any] = {}
    if device_map is not None:
        from actstore.extract._devicemap import load_kwargs

        placement = load_kwargs(device_map, max_memory)
    dev = _resolve_device(device)
    hint = (
        "check the folder or id and the revision; offline, download the model first and "
        "pass its local folder"
    )
    try:
        config = AutoConfig.from_pretrained(
            source, revision=revision, trust_remote_code=trust_remote_code
        )
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load the config of model {model!r}: {_first_line(exc)}; {hint}"
        ) from exc
    dtype = _resolve_dtype(compute_dtype, dev, config)
    try:
        adapter: Adapter | None = adapter_for(config)
    except ModelLoadError:
        adapter = None  # infer it from the loaded module tree below
    causal = adapter.causal if adapter is not None else is_causal_config(config)
    masked = not causal and is_masked_lm_config(config)
    auto_cls = AutoModelForCausalLM if causal else AutoModelForMaskedLM if masked else AutoModel
    kwargs: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # per-tensor bar
    try:
        hf_model = auto_cls.from_pretrained(source, dtype=dtype, **kwargs, **placement)
    except Exception as exc:
        if placement:
            shutil.rmtree(placement["offload_folder"], ignore_errors=True)
        raise ModelLoadError(
            f"cannot load the weights of model {model!r}: {_first_line(exc)}; {hint}"
        ) from exc
    finally:
        if bars:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load the tokenizer of model {model!r}: {_first_line(exc)}; "
            "the folder needs tokenizer.json (or files a fast tokenizer can be built from)"
        ) from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(
            f"model {model!r} has only a slow tokenizer ({type(tokenizer).__name__}); "
            "actstore needs a fast one for character offsets: save a tokenizer.json with it"
        )
    if tokenizer.pad_token is None:
        # Padding is never stored; any id works, eos is the usual choice.
        tokenizer.pad_token = (
            tokenizer.eos_token
            if tokenizer.eos_token is not None
            else tokenizer.convert_ids_to_tokens(0)
        )
    tokenizer.padding_side = "right"

    hf_model.eval()
    hf_model.requires_grad_(False)
    if placement:  # accelerate placed every module; the batch goes where the embeddings are
        from actstore.extract._devicemap import input_device, remove_with

        remove_with(hf_model, placement["offload_folder"])
        dev = input_device(hf_model)
    else:
        hf_model = hf_model.to(dev)  # type: ignore[arg-type]  # transformers' stub wraps .to
    base: Any = hf_model.base_model
    if adapter is None:
        adapter = adapter_for(config, base)
    adapter = adapter.resolve(base)
    try:
        blocks = base.get_submodule(adapter.layers)
    except AttributeError as exc:
        raise ModelLoadError(
            f"model {model!r} ({type(hf_model).__name__}) has no block list at "
            f"{adapter.layers!r} as adapter {adapter.name!r} expects; fix the adapter"
        ) from exc
    n_layers = len(blocks)
    embed: Any = hf_model.get_input_embeddings()
    d_model = int(getattr(config, "hidden_size", None) or embed.embedding_dim)
    folder_or_cache = _snapshot_dir(model, revision) if folder is None else folder
    info: dict[str, object] = {
        "id": model,
        "path": str(folder_or_cache) if folder_or_cache is not None else None,
        "revision": revision,
        "weights_hash": _weights_hash(folder_or_cache, hf_model),
        "class": type(hf_model).__name__,
        "model_type": str(getattr(config, "model_type", "")),
        "adapter": adapter.name,
        "n_layers": n_layers,
        "d_model": d_model,
        "vocab_size": int(embed.weight.shape[0]),
        "config": _json_safe(hf_model.config.to_dict()),
    }
    lm = LoadedModel(
        model=hf_model,
        base=base,
        tokenizer=tokenizer,
        adapter=adapter,
        n_layers=n_layers,
        d_model=d_model,
        device=dev,
        compute_dtype=dtype,
        max_length=_max_length(tokenizer, config, adapter),
        info=info,
        tokenizer_info=_tokenizer_info(tokenizer),
        lm_head="causal" if causal else "masked" if masked else None,
    )
    from actstore.extract.check import check_hidden_sites, padding_mask_needed

    lm.padding_mask = padding_mask_needed(lm)
    check_hidden_sites(lm)  # the sites as extraction computes them, with or without the mask
    return lm
