"""Name a model's sites and capture them with hooks in one forward pass.

:class:`SiteCapture` runs the *base* model (never the output head) and stops the forward
pass as soon as every requested site has been captured, so asking for ``hidden.2`` of a
32-layer model runs the embeddings and two blocks.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import torch
from torch import nn

from actstore.errors import SiteError, SiteNotFoundError
from actstore.extract.model import LoadedModel

__all__ = ["Site", "SiteCapture", "forward_kwargs", "list_modules", "parse_sites", "valid_sites"]

_SITE_FORMS = (
    "'all', 'hidden.<i>' (0 <= i <= {L}), 'module:<dotted.path>', or with an objective "
    "'grad.embed' and 'grad.hidden.<i>' "
    "(comma-separated, e.g. 'hidden.0,hidden.{L},module:{example}')"
)


@dataclass(frozen=True)
class Site:
    """One named per-token vector stream of a model."""

    name: str
    """``"hidden.3"`` or ``"module:encoder.layer.2.attention.output"``."""
    kind: Literal["hidden", "module", "grad", "traj"]
    """Hidden state (HF ``output_hidden_states`` index), a module's output, the
    gradient of the run's objective (``grad.embed``, ``grad.hidden.<i>``), or the input
    embeddings of an optimisation run at one step (``traj.<step>``)."""
    index: int | None = None
    """Hidden-state index, for ``kind == "hidden"`` and for ``grad.hidden.<i>``; the step
    of a ``traj.<step>`` site."""
    module_path: str | None = None
    """Dotted path relative to the base model, for ``kind == "module"``."""


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
        Without duplicates: hidden sites by index, then module sites in the given order,
        then ``grad.embed`` and the ``grad.hidden.<i>`` by index.

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
    grad_hidden: set[int] = set()
    grad_embed = False
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
        elif part == "grad.embed":
            grad_embed = True
        elif m := re.fullmatch(r"grad\.hidden\.(\d+)", part):
            i = int(m.group(1))
            if i > n:
                raise SiteError(
                    f"site {part!r}: layer out of range: model has hidden.0..hidden.{n}; "
                    "pick one of them"
                )
            grad_hidden.add(i)
        elif part.startswith("module:") and part[len("module:") :].strip(". "):
            site = _module_site(part[len("module:") :].strip(), lm, modules)
            module_sites.setdefault(site.name, site)
        else:
            raise SiteError(f"malformed site {part!r}: expected {forms}")
    grads = [Site(name="grad.embed", kind="grad")] if grad_embed else []
    grads += [Site(name=f"grad.hidden.{i}", kind="grad", index=i) for i in sorted(grad_hidden)]
    return (
        [Site(name=f"hidden.{i}", kind="hidden", index=i) for i in sorted(hidden)]
        + list(module_sites.values())
        + grads
    )


# ---------------------------------------------------------------------------- capture


def forward_kwargs(module: Any) -> dict[str, Any]:
    """``use_cache=False`` where ``module.forward`` takes it (no cache is built)."""
    params = inspect.signature(module.forward).parameters
    return {"use_cache": False} if "use_cache" in params else {}


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
        From :func:`parse_sites` (``grad.*`` sites are not captured here; see
        :mod:`actstore.extract.gradients`).
    stop_early : bool
        Stop the forward pass once every site is captured (False for gradient runs, whose
        objective needs the model's output).
    """

    def __init__(self, lm: LoadedModel, sites: Sequence[Site], *, stop_early: bool = True) -> None:
        sites = [s for s in sites if s.kind != "grad"]
        if not sites and stop_early:
            raise SiteError("no sites to capture; pass at least one site from parse_sites")
        self.lm = lm
        self.stop_early = stop_early
        self.sites: tuple[Site, ...] = tuple(sites)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._out: dict[str, torch.Tensor] = {}
        self._bt: tuple[int, int] = (0, 0)
        self.paused = False
        self._active = False
        """While true the hooks capture nothing (forward passes that are not the batch's)."""

    # -- hooks
    def _store(self, site: Site, value: Any) -> None:
        if self.paused:
            return
        if site.name in self._out:
            if site.kind == "module":
                raise SiteError(
                    f"site {site.name!r}: module {site.module_path} ran more than once in one "
                    "forward pass (a shared module?); pick a module that runs once"
                )
            return
        t = _first_tensor(value)
        b, n = self._bt
        if (
            site.kind == "module"
            and isinstance(t, torch.Tensor)
            and t.ndim == 2
            and t.shape[0] == b * n
        ):
            # Some blocks run their MLP on the tokens flattened to [batch * tokens, d] (OPT's
            # fc1, fc2 and final_layer_norm); the flattening is row-major, so undo it.
            t = t.reshape(b, n, t.shape[1])
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
                f"floating tensor of shape [batch, tokens, d] = [{b}, {n}, d] (or its "
                f"flattened [batch * tokens, d] = [{b * n}, d]); pick a module whose output "
                "is per token"
            )
        done = len(self._out) + 1 == len(self.sites)
        # Hidden states are kept by reference, exactly as HF's output_hidden_states keeps
        # them; any other module's output is cloned (unless the pass stops right here),
        # since later code may modify it in place.
        keep = done or site.kind == "hidden"
        self._out[site.name] = t if keep else t.clone()
        if done and self.stop_early:
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
            elif site.index == lm.n_layers:
                # Hugging Face's hidden_states[L] is the base model's last_hidden_state: after
                # the final norm and anything after it (OPT-350m's project_out).
                target = lm.base
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
        if not self._active:
            try:
                self._register()
            except BaseException:
                self._remove()
                raise
            self._active = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._remove()
        self._active = False

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
        if not self._active:
            with self:
                return self(input_ids, attention_mask)
        with torch.inference_mode():
            _, out = self.run(self.lm.base, input_ids, attention_mask)
        return out

    def run(
        self, module: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[Any, dict[str, torch.Tensor]]:
        """Run ``module`` (the base model, or the full model for its logits) on a batch with
        the hooks installed, in the caller's grad mode.

        Returns
        -------
        output, sites
            The module's output (None when the pass stopped early) and every site.
        """
        if not self._active:
            with self:
                return self.run(module, input_ids, attention_mask)
        self._out = {}
        self._bt = (int(input_ids.shape[0]), int(input_ids.shape[1]))
        result = None
        try:
            result = module(
                input_ids=input_ids.to(self.lm.device),
                # right padding in a causal model: the mask changes no real token
                attention_mask=attention_mask.to(self.lm.device) if self.lm.padding_mask else None,
                **forward_kwargs(module),
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
        return result, {s.name: out[s.name] for s in self.sites}

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
