"""Load a Hugging Face model, name its sites, and capture them with hooks in one forward pass.

:class:`SiteCapture` runs the *base* model (never the output head) and stops the forward
pass as soon as every requested site has been captured, so asking for ``hidden.2`` of a
32-layer model runs the embeddings and two blocks. :func:`matrices` and :func:`head_info`
export what turns a final hidden state into logits offline.
"""

from __future__ import annotations

import difflib
import hashlib
import inspect
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from actstore.errors import ConfigError, ModelLoadError, SiteError, SiteNotFoundError
from actstore.extract.adapters import Adapter, adapter_for, is_causal_config

__all__ = [
    "LoadedModel",
    "Site",
    "SiteCapture",
    "head_info",
    "list_modules",
    "load_model",
    "matrices",
    "parse_sites",
    "valid_sites",
]

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
_SITE_FORMS = (
    "'all', 'hidden.<i>' (0 <= i <= {L}), or 'module:<dotted.path>' "
    "(comma-separated, e.g. 'hidden.0,hidden.{L},module:{example}')"
)


@dataclass(frozen=True)
class Site:
    """One named per-token vector stream of a model."""

    name: str
    """``"hidden.3"`` or ``"module:encoder.layer.2.attention.output"``."""
    kind: Literal["hidden", "module"]
    """Hidden state (HF ``output_hidden_states`` index) or a module's output."""
    index: int | None = None
    """Hidden-state index, for ``kind == "hidden"``."""
    module_path: str | None = None
    """Dotted path relative to the base model, for ``kind == "module"``."""


@dataclass(eq=False)
class LoadedModel:
    """A model ready for extraction: eval mode, on its device, in its compute dtype."""

    model: Any
    """The full Hugging Face model (with its output head for causal LMs)."""
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

    Returns
    -------
    LoadedModel

    Raises
    ------
    ModelLoadError
        The folder is missing or not a model, the hub is unreachable, the model type has
        no adapter, or only a slow tokenizer exists.
    ConfigError
        ``device`` or ``compute_dtype`` is not valid.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    folder = _resolve_source(model)
    source = str(folder) if folder is not None else model
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
    auto_cls = AutoModelForCausalLM if causal else AutoModel
    kwargs: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # per-tensor bar
    try:
        hf_model = auto_cls.from_pretrained(source, dtype=dtype, **kwargs)
    except Exception as exc:
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
    hf_model = hf_model.to(dev)  # type: ignore[arg-type]  # transformers' stub wraps .to
    base: Any = hf_model.base_model
    if adapter is None:
        adapter = adapter_for(config, base)
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
    return LoadedModel(
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
    )


# ------------------------------------------------------------------------------ sites


def valid_sites(lm: LoadedModel) -> list[str]:
    """The hidden-state sites of the model: ``["hidden.0", ..., "hidden.L"]``."""
    return [f"hidden.{i}" for i in range(lm.n_layers + 1)]


def list_modules(lm: LoadedModel) -> list[str]:
    """Dotted names of every submodule of the base model (usable as ``module:<name>``)."""
    return [name for name, _ in lm.base.named_modules() if name]


def _base_prefixes(lm: LoadedModel) -> list[str]:
    """Prefixes a path relative to the full model may carry in front of the base model."""
    prefixes = [name for name, m in lm.model.named_modules() if m is lm.base and name]
    declared = getattr(lm.model, "base_model_prefix", "")
    if declared and declared not in prefixes:
        prefixes.append(declared)
    return prefixes


def _module_site(path: str, lm: LoadedModel, modules: dict[str, nn.Module]) -> Site:
    candidates = [path] + [
        path[len(p) + 1 :] for p in _base_prefixes(lm) if path.startswith(p + ".")
    ]
    for cand in candidates:
        if cand in modules:
            return Site(name=f"module:{cand}", kind="module", module_path=cand)
    full = {name for name, _ in lm.model.named_modules()}
    if path in full:
        raise SiteNotFoundError(
            f"site 'module:{path}': the module is outside the base model "
            f"{type(lm.base).__name__} that actstore runs (it never computes logits); the "
            "output head is exported as the 'unembed' matrix instead"
        )
    close = difflib.get_close_matches(candidates[-1], list(modules), n=5, cutoff=0.6)
    near = f"close matches: {', '.join(close)}; " if close else ""
    model_id = lm.info.get("id", "M")
    raise SiteNotFoundError(
        f"site 'module:{path}': no module {path!r} in {type(lm.base).__name__}; {near}"
        f"list all with `actstore extract --model {model_id} --list-modules`"
    )


def parse_sites(spec: str | Sequence[str], lm: LoadedModel) -> list[Site]:
    """Parse a site spec into validated sites.

    Parameters
    ----------
    spec : str or sequence of str
        ``"all"`` (every hidden state), ``"hidden.<i>"``, ``"module:<dotted.path>"``;
        comma-separated or as a sequence. Module paths are relative to the base model; a
        path relative to the full model (``"model.layers.0.mlp"``) is accepted too.
    lm : LoadedModel

    Returns
    -------
    list of Site
        Without duplicates: hidden sites by index, then module sites in the given order.

    Raises
    ------
    SiteError
        A malformed item, or ``hidden.<i>`` with ``i > L``.
    SiteNotFoundError
        A module path that is not in the base model (the message lists close matches).
    """
    items = [spec] if isinstance(spec, str) else list(spec)
    parts = [p.strip() for item in items for p in str(item).split(",") if p.strip()]
    n = lm.n_layers
    forms = _SITE_FORMS.format(L=n, example=f"{lm.adapter.layers}.0")
    if not parts:
        raise SiteError(f"no sites given; expected {forms}")
    hidden: set[int] = set()
    module_sites: dict[str, Site] = {}
    modules = dict(lm.base.named_modules())
    for part in parts:
        if part == "all":
            hidden.update(range(n + 1))
        elif m := re.fullmatch(r"hidden\.(\d+)", part):
            i = int(m.group(1))
            if i > n:
                raise SiteError(
                    f"site {part!r}: layer out of range: model has hidden.0..hidden.{n}; "
                    "pick one of them"
                )
            hidden.add(i)
        elif part.startswith("module:") and part[len("module:") :].strip(". "):
            site = _module_site(part[len("module:") :].strip(), lm, modules)
            module_sites.setdefault(site.name, site)
        else:
            raise SiteError(f"malformed site {part!r}: expected {forms}")
    return [Site(name=f"hidden.{i}", kind="hidden", index=i) for i in sorted(hidden)] + list(
        module_sites.values()
    )


# ---------------------------------------------------------------------------- capture


class _EarlyExit(BaseException):
    """Raised from a hook once every site is captured; a BaseException so that no
    ``except Exception`` inside model code swallows it."""


def _first_tensor(value: Any) -> Any:
    if isinstance(value, tuple | list) and value:
        return value[0]
    if hasattr(value, "to_tuple"):  # a transformers ModelOutput
        tup = value.to_tuple()
        return tup[0] if tup else value
    return value


class SiteCapture:
    """Capture sites of one forward pass of the base model with hooks, then stop early.

    Use as a context manager (hooks live only inside it); calling outside the context
    registers and removes the hooks around that one call.

    Parameters
    ----------
    lm : LoadedModel
    sites : sequence of Site
        From :func:`parse_sites`.
    """

    def __init__(self, lm: LoadedModel, sites: Sequence[Site]) -> None:
        if not sites:
            raise SiteError("no sites to capture; pass at least one site from parse_sites")
        self.lm = lm
        self.sites: tuple[Site, ...] = tuple(sites)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._out: dict[str, torch.Tensor] = {}
        self._bt: tuple[int, int] = (0, 0)
        params = inspect.signature(lm.base.forward).parameters
        self._extra: dict[str, Any] = {"use_cache": False} if "use_cache" in params else {}

    # -- hooks
    def _store(self, site: Site, value: Any) -> None:
        if site.name in self._out:
            if site.kind == "module":
                raise SiteError(
                    f"site {site.name!r}: module {site.module_path} ran more than once in one "
                    "forward pass (a shared module?); pick a module that runs once"
                )
            return
        t = _first_tensor(value)
        if site.kind == "module" and not (
            isinstance(t, torch.Tensor)
            and t.is_floating_point()
            and t.ndim == 3
            and tuple(t.shape[:2]) == self._bt
        ):
            got = (
                f"a {t.dtype} tensor of shape {tuple(t.shape)}"
                if isinstance(t, torch.Tensor)
                else f"a {type(t).__name__}"
            )
            raise SiteError(
                f"site {site.name!r}: module {site.module_path} gave {got}, expected a "
                f"floating tensor of shape [batch, tokens, d] = [{self._bt[0]}, {self._bt[1]}, d]"
                "; pick a module whose output is per token"
            )
        done = len(self._out) + 1 == len(self.sites)
        # Clone unless the pass stops right here: later layers may modify it in place.
        self._out[site.name] = t if done else t.clone()
        if done:
            raise _EarlyExit

    def _register(self) -> None:
        lm = self.lm
        blocks = lm.base.get_submodule(lm.adapter.layers)
        for site in self.sites:
            if site.kind == "module":
                assert site.module_path is not None
                target = lm.base.get_submodule(site.module_path)
            elif site.index == 0:

                def pre(_m: nn.Module, args: Any, kwargs: Any, site: Site = site) -> None:
                    value = args[0] if args else kwargs.get("hidden_states")
                    if value is None:
                        tensors = [
                            v
                            for v in kwargs.values()
                            if isinstance(v, torch.Tensor) and v.ndim == 3
                        ]
                        if not tensors:
                            raise SiteError(
                                f"site 'hidden.0': block 0 of {type(self.lm.base).__name__} got "
                                "no hidden-states input; the adapter does not fit this model"
                            )
                        value = tensors[0]
                    self._store(site, value)

                self._handles.append(blocks[0].register_forward_pre_hook(pre, with_kwargs=True))
                continue
            elif site.index == lm.n_layers and lm.adapter.final_norm is not None:
                target = lm.base.get_submodule(lm.adapter.final_norm)
            else:
                assert site.index is not None
                target = blocks[site.index - 1]

            def post(_m: nn.Module, _args: Any, output: Any, site: Site = site) -> None:
                self._store(site, output)

            self._handles.append(target.register_forward_hook(post))

    def _remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def __enter__(self) -> SiteCapture:
        if not self._handles:
            try:
                self._register()
            except BaseException:
                self._remove()
                raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._remove()

    # -- running
    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Run the base model on a right-padded batch and return every site.

        Parameters
        ----------
        input_ids : Tensor of shape (batch, tokens)
        attention_mask : Tensor of shape (batch, tokens)
            1 for real tokens, 0 for padding.

        Returns
        -------
        dict of str to Tensor of shape (batch, tokens, d)
            Site name to its values, on the model's device in its compute dtype.

        Raises
        ------
        SiteError
            A module site gave no per-token tensor, or a site was never computed.
        """
        if not self._handles:
            with self:
                return self(input_ids, attention_mask)
        self._out = {}
        self._bt = (int(input_ids.shape[0]), int(input_ids.shape[1]))
        try:
            with torch.inference_mode():
                self.lm.base(
                    input_ids=input_ids.to(self.lm.device),
                    attention_mask=attention_mask.to(self.lm.device),
                    **self._extra,
                )
        except _EarlyExit:
            pass
        finally:
            out, self._out = self._out, {}
        missing = [s.name for s in self.sites if s.name not in out]
        if missing:
            raise SiteError(
                f"sites {', '.join(missing)} were not computed by the forward pass of "
                f"{type(self.lm.base).__name__}; pick modules that run on every forward pass"
            )
        return {s.name: out[s.name] for s in self.sites}

    def probe(self) -> dict[str, int]:
        """Run a tiny dummy batch and return each site's feature size ``d``.

        Raises
        ------
        SiteError
            A module site gives no ``[batch, tokens, d]`` floating tensor.
        """
        n_tokens = max(1, min(4, self.lm.max_length))
        vocab = int(self.lm.model.get_input_embeddings().weight.shape[0])
        ids = (torch.arange(2 * n_tokens) % vocab).reshape(2, n_tokens)
        mask = torch.ones_like(ids)
        mask[1, -1] = 0
        out = self(ids, mask)
        return {name: int(t.shape[-1]) for name, t in out.items()}


# --------------------------------------------------------------------------- matrices


def _np32(t: torch.Tensor) -> npt.NDArray[np.float32]:
    return np.array(t.detach().to(device="cpu", dtype=torch.float32).numpy(), copy=True)


def _final_norm(lm: LoadedModel) -> nn.Module | None:
    path = lm.adapter.final_norm
    return lm.base.get_submodule(path) if path is not None else None


def _output_head(lm: LoadedModel) -> Any:
    return lm.model.get_output_embeddings() if lm.adapter.causal else None


def matrices(lm: LoadedModel) -> dict[str, npt.NDArray[np.float32]]:
    """Per-vocabulary matrices and head parameters of the model, as float32 arrays.

    Returns
    -------
    dict of str to ndarray
        ``"embed"`` of shape (vocab, d) (input embeddings); for models with an output head
        ``"unembed"`` of shape (vocab, d) (exported even when tied) and ``"unembed.bias"``
        of shape (vocab,) if the head has a bias; with a final norm
        ``"final_norm.weight"`` / ``"final_norm.bias"`` of shape (d,) where present.
    """
    out = {"embed": _np32(lm.model.get_input_embeddings().weight)}
    head = _output_head(lm)
    if head is not None:
        out["unembed"] = _np32(head.weight)
        if getattr(head, "bias", None) is not None:
            out["unembed.bias"] = _np32(head.bias)
    norm = _final_norm(lm)
    if norm is not None:
        for pname in ("weight", "bias"):
            p = getattr(norm, pname, None)
            if isinstance(p, torch.Tensor):
                out[f"final_norm.{pname}"] = _np32(p)
    return out


def head_info(lm: LoadedModel) -> dict[str, object]:
    """JSON-able description of the head that turns ``hidden.L`` into logits.

    Returns
    -------
    dict
        ``has_unembed``, ``tied`` (unembedding shares the input embedding weights),
        ``final_norm`` (``{"type", "class", "eps", "path"}`` or ``None``; ``None`` also means
        ``hidden.L`` already includes any final norm), plus ``logit_scale`` /
        ``final_logit_softcapping`` when the config sets them.
    """
    head = _output_head(lm)
    embed = lm.model.get_input_embeddings().weight
    info: dict[str, object] = {
        "has_unembed": head is not None,
        "has_unembed_bias": head is not None and getattr(head, "bias", None) is not None,
        "tied": head is not None and head.weight.data_ptr() == embed.data_ptr(),
    }
    norm = _final_norm(lm)
    if norm is None:
        info["final_norm"] = None
    else:
        cls = type(norm).__name__
        kind = (
            "LayerNorm"
            if isinstance(norm, nn.LayerNorm)
            else "RMSNorm"
            if "rmsnorm" in cls.lower() or isinstance(norm, nn.RMSNorm)
            else cls
        )
        eps = next(
            (getattr(norm, a) for a in ("eps", "variance_epsilon", "epsilon") if hasattr(norm, a)),
            None,
        )
        info["final_norm"] = {
            "type": kind,
            "class": cls,
            "eps": float(eps) if eps is not None else None,
            "path": lm.adapter.final_norm,
        }
    for key in ("logit_scale", "final_logit_softcapping"):
        value = getattr(lm.model.config, key, None)
        if isinstance(value, int | float) and not isinstance(value, bool):
            info[key] = float(value)
    return info
