"""Retain or edit the output of named submodules of any ``torch.nn.Module`` through forward hooks.

A :class:`NetHook` hooks layers by their ``model.named_modules()`` names; after each forward pass
``hook.retained[name]`` holds that layer's output. An edit replaces a layer's output ``r`` (units on dim 1,
e.g. ``(N, U, H, W)``) by ``r' = (1 - a*m) * r + a*m * k``, where ``a`` is a scalar or one strength per unit
(U,), ``m`` an optional spatial mask in [0, 1] and ``k`` a scalar, one constant per unit (U,) or a tensor
broadcastable to ``r``. ``a = 1, k = 0`` ablates units; ``a = 1, k = c`` inserts them at level ``c``.

Retained tensors are the very tensors that flow on through the model (not detached, not copied), so gradients
reach them and, through an edit, ``a``; under ``torch.no_grad()`` they are plain tensors. A later in-place
operation of the model on a layer's output (``nn.ReLU(inplace=True)``) would change the retained value too;
the ProGAN blocks have none.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
import torch.nn as nn

from gandissect.errors import BadValueError, GandissectError

Number = float | torch.Tensor


class UnknownLayerError(GandissectError):
    """A layer name that is not among the model's submodules."""


class _StopForward(Exception):
    """Raised by the ``stop_after`` hook to end the forward pass early; caught in :meth:`NetHook.__call__`."""


def layer_names(model: nn.Module) -> list[str]:
    """Every submodule name a NetHook accepts (the root module, named "", excluded)."""
    return [name for name, _ in model.named_modules() if name]


def _per_unit(x: Number, r: torch.Tensor, what: str, layer: str) -> Number:
    """A float as is; a (U,) tensor reshaped to (1, U, 1, ...); any other tensor must broadcast to ``r``."""
    if not isinstance(x, torch.Tensor):
        return x
    if x.ndim == 1:
        if len(x) != r.shape[1]:
            raise BadValueError(f"edit of layer {layer!r}: {what} has {len(x)} entries, expected {r.shape[1]} "
                                f"(one per unit)")
        return x.to(r).view(1, -1, *[1] * (r.ndim - 2))
    try:
        torch.broadcast_shapes(x.shape, r.shape)
    except RuntimeError:
        raise BadValueError(f"edit of layer {layer!r}: {what} of shape {tuple(x.shape)} does not broadcast to the "
                            f"output shape {tuple(r.shape)}") from None
    return x.to(r)


def _mask(mask: torch.Tensor | None, r: torch.Tensor, layer: str) -> torch.Tensor | float:
    """(H, W) -> (1, 1, H, W), (N, H, W) -> (N, 1, H, W), (N, 1, H, W) as is (any number of spatial dims)."""
    if mask is None:
        return 1.0
    spatial = r.ndim - 2
    if spatial < 1 or mask.ndim not in (spatial, spatial + 1, spatial + 2):
        raise BadValueError(f"edit of layer {layer!r}: a mask of shape {tuple(mask.shape)} does not fit the output "
                            f"shape {tuple(r.shape)}; give (H, W), (N, H, W) or (N, 1, H, W)")
    mask = mask.to(r)
    if mask.ndim == spatial + 1:
        return mask.unsqueeze(1)
    return mask.view(1, 1, *mask.shape) if mask.ndim == spatial else mask


class NetHook:
    """Retains (and optionally edits) the outputs of ``layers`` of ``model``; see the module docstring.

    With ``stop_after``, calling the hook ends the forward pass as soon as that layer's output is retained and
    returns None (call the hook, not the model, while it is set).
    """

    def __init__(self, model: nn.Module, layers: Iterable[str] = (), stop_after: str | None = None):
        self.model = model
        self.layers: list[str] = []
        self.retained: dict[str, torch.Tensor] = {}
        self.stop_after = stop_after
        self._by_name = dict(model.named_modules())
        self._handles: dict[str, torch.utils.hooks.RemovableHandle] = {}
        self._edits: dict[str, tuple[Number, torch.Tensor | None, Number]] = {}
        for name in layers:
            self.add_layer(name)
        if stop_after is not None:
            self.add_layer(stop_after)

    def add_layer(self, name: str) -> None:
        if name in self._handles:
            return
        if not name or name not in self._by_name:
            raise UnknownLayerError(f"unknown layer {name!r}; this model has: {', '.join(layer_names(self.model))}")
        self._handles[name] = self._by_name[name].register_forward_hook(self._hook(name))
        self.layers.append(name)

    def _hook(self, name: str) -> Callable[..., torch.Tensor | None]:
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
            edited = None
            if name in self._edits:
                alpha, mask, value = self._edits[name]
                am = _per_unit(alpha, output, "alpha", name) * _mask(mask, output, name)
                edited = (1 - am) * output + am * _per_unit(value, output, "value", name)
            self.retained[name] = output if edited is None else edited
            if name == self.stop_after:
                raise _StopForward
            return edited  # None leaves the output untouched
        return hook

    def edit(self, layer: str, alpha: Number, mask: torch.Tensor | None = None, value: Number = 0.0) -> None:
        """From the next forward pass on, ``layer``'s output r becomes ``(1 - alpha*mask) * r + alpha*mask * value``.

        Sizes are checked against the output when the layer runs: a wrong-size alpha or value raises BadValueError
        from the forward pass.
        """
        self.add_layer(layer)
        self._edits[layer] = (alpha, mask, value)

    def clear_edit(self, layer: str | None = None) -> None:
        if layer is None:
            self._edits.clear()
        else:
            self._edits.pop(layer, None)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``model(*args, **kwargs)``, or None when the pass was stopped after ``stop_after``."""
        self.retained = {}
        try:
            return self.model(*args, **kwargs)
        except _StopForward:
            return None

    def remove(self) -> None:
        for handle in self._handles.values():
            handle.remove()
        self._handles.clear()
        self._edits.clear()
        self.layers = []

    def __enter__(self) -> NetHook:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()
