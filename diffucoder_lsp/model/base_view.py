"""The autoregressive base inside an adapted model: its passes with the adaptation taken off, without a second
copy of the weights.

Why: ranking one-line fills (:mod:`diffucoder_lsp.engine.ranking`) needs a good left-to-right model, and at the
bundled model's CPU scale the adaptation to masked diffusion made its causal self a worse one than the base it
started from (HumanEval-Infilling single-line, every fifth task, greedy from the prefix: base 23.7 %, with the
whole trained change 15.0 %; the bundled model ships half of that change, and the view gives the base either
way). The merged model holds ``W' = W + B A`` for each adapted matrix, so the base's ``W`` is ``W' - B A``:
holding ``W`` too would cost the layers' size again (~425 MB for the bundled model); the shipped factors cost
27 MB (bf16) and, while the view is on, one low-rank product per linear layer.

:class:`BaseView` is built from an adaptation (:mod:`.adaptation`: factors, changed vectors, replaced rows)
and checked against the loaded model before anything is swapped. :meth:`BaseView.active` puts each adapted
linear layer behind a :class:`_BaseLinear` that subtracts its factors' product, and the changed vectors (norms,
biases, the lookahead's biases) back to their base values, and restores everything on the way out. The replaced
embedding rows (the mask token's) are left: the base never reads them. The model must not run elsewhere (another
thread) while the view is on; the engine's callers run the model from one thread.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError

log = logging.getLogger(__name__)


class _BaseLinear(nn.Module):
    """``layer(x) - (x A^T) B^T``: an adapted linear layer as its base computed it (factors kept in bf16)."""

    def __init__(self, layer: nn.Module, a: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.layer, self.a, self.b = layer, a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.a.to(x.dtype), self.b.to(x.dtype)
        return self.layer(x) - (x @ a.t()) @ b.t()


class BaseView:
    """The base of an adapted model, as a context in which its passes are the base's (see the module)."""

    def __init__(self, model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
        modules = dict(model.named_modules())
        params = dict(model.named_parameters())
        device = next(model.parameters()).device
        self._linears: list[tuple[nn.Module, str, torch.Tensor, torch.Tensor]] = []
        self._vectors: list[tuple[nn.Parameter, torch.Tensor]] = []
        for key in sorted(tensors):
            if key.endswith(".delta_a"):
                name = key[: -len(".delta_a")]
                a, b = tensors[key], tensors.get(name + ".delta_b")
                owner, _, attr = name.removesuffix(".weight").rpartition(".")
                layer = modules.get(name.removesuffix(".weight"))
                weight = params.get(name)
                if b is None or not isinstance(layer, nn.Linear) or weight is None or owner not in modules:
                    raise CheckpointError(
                        f"the adaptation changes {name!r}, which this model has no matrix for"
                    )
                if tuple(b.shape) != (weight.shape[0], a.shape[0]) or a.shape[1] != weight.shape[1]:
                    raise CheckpointError(f"{name}: factors {tuple(b.shape)} x {tuple(a.shape)} do not fit")
                self._linears.append((modules[owner], attr, a.to(device), b.to(device)))
            elif key.endswith(".delta") and not key.endswith((".delta_a", ".delta_b")):
                name = key[: -len(".delta")]
                p = params.get(name)
                if p is None or tuple(p.shape) != tuple(tensors[key].shape):
                    raise CheckpointError(
                        f"the adaptation changes {name!r}, which this model has no such vector for"
                    )
                base = (p.detach().float() - tensors[key].float().to(device)).to(p.dtype)
                self._vectors.append((p, base))
        self.layers = len(self._linears)

    @contextmanager
    def active(self) -> Iterator[None]:
        """Within the block the model computes as its base; everything is put back on the way out."""
        swapped: list[tuple[nn.Module, str, nn.Module]] = []
        saved: list[tuple[nn.Parameter, torch.Tensor]] = []
        try:
            for owner, attr, a, b in self._linears:
                layer = getattr(owner, attr)
                setattr(owner, attr, _BaseLinear(layer, a, b))
                swapped.append((owner, attr, layer))
            for p, base in self._vectors:
                saved.append((p, p.data))
                p.data = base
            yield
        finally:
            for p, data in saved:
                p.data = data
            for owner, attr, layer in swapped:
                setattr(owner, attr, layer)


def adaptation_folder(checkpoint: Path) -> Path | None:
    """Where the adaptation a checkpoint folder was merged from lives: beside its weights, or, for the bundled
    model's merged folder in the cache, the package's ``weights/`` folder. None for a plain checkpoint."""
    from .adaptation import MANIFEST, WEIGHTS
    from .bundled import BUNDLED_ADAPTATION_DIR, adapted_target, has_adaptation

    if (checkpoint / MANIFEST).is_file() and (checkpoint / WEIGHTS).is_file():
        return checkpoint
    try:
        if has_adaptation() and checkpoint.resolve() == adapted_target().resolve():
            return BUNDLED_ADAPTATION_DIR
    except OSError:
        return None
    return None


def base_view(lm) -> BaseView | None:
    """The loaded model's :class:`BaseView` (built once, kept on ``lm``), or None when it is not an adapted
    model. A broken adaptation file is logged and treated as none: the model itself is unaffected."""
    cached = getattr(lm, "_base_view", False)
    if cached is not False:
        return cached
    view = None
    folder = adaptation_folder(Path(lm.path))
    if folder is not None:
        from .adaptation import read_adaptation

        try:
            _, tensors = read_adaptation(folder)
            view = BaseView(lm.model, tensors)
        except CheckpointError as exc:
            log.warning("no base view for %s: %s", lm.path, exc)
    try:
        object.__setattr__(lm, "_base_view", view)
    except (AttributeError, TypeError):
        pass
    return view
