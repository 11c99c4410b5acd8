"""Hooks and edits: retain or edit the output of named submodules of any ``torch.nn.Module``, and make unit scales
(ablations) permanent - folded into the weights where a layer allows it, recorded as a kept hook otherwise.

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

import copy
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn

from gandissect.errors import BadValueError, GandissectError

Number = float | torch.Tensor
SCALE_BUFFER = "gandissect_unit_scale"  # the buffer of a layer whose units carry a recorded edit


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


# --- checked outputs --------------------------------------------------------------------------------------------
class NonFiniteImagesError(GandissectError):
    """A generator with finite weights made NaN or infinite images (its values overflow)."""


def stop_on_non_finite(generator: nn.Module, step: str, source) -> nn.Module:
    """Check every image ``generator`` makes from now on (one ``torch.isfinite(...).all()`` per forward pass) and
    stop ``step`` with one line naming it when one holds NaN or Inf: clamped to [-1, 1], an infinite pixel would
    pass as a plain colour. The steps install it on the generators they load (``source``: its file); the first step
    to install it on a module is the one named."""
    if getattr(generator, "_finite_images_step", None) is not None:
        return generator

    def check(module: nn.Module, inputs: Any, images: torch.Tensor) -> None:
        if isinstance(images, torch.Tensor) and not bool(torch.isfinite(images).all()):
            raise NonFiniteImagesError(f"{step}: generator {source} made non-finite images (NaN or Inf) from finite "
                                       "weights (its values overflow); stopped before any result was written")
    generator.register_forward_hook(check)
    generator._finite_images_step = step
    return generator


# --- layer shapes ---------------------------------------------------------------------------------------------
def layer_shapes(generator: nn.Module, layers: list[str]) -> dict[str, tuple[int, ...]]:
    """(units, h, w) of each layer's output, from one latent, in the order the forward pass reaches them.

    The one place a layer's shape is probed; an unknown name raises UnknownLayerError listing the layers."""
    with torch.no_grad(), NetHook(generator, layers) as hook:
        hook(torch.zeros(1, generator.latent_dim, device=module_device(generator)))
        silent = [name for name in layers if name not in hook.retained]
        if silent:
            raise GandissectError(f"layer(s) {', '.join(silent)} did not run in the generator's forward pass; "
                                  f"the layers that ran: {', '.join(hook.retained) or 'none'}")
        for name, output in hook.retained.items():
            if not isinstance(output, torch.Tensor) or output.dim() != 4:
                shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
                raise GandissectError(f"layer {name!r} gives {shape}; gandissect needs a (N, units, height, width) "
                                      "feature map")
        return {name: tuple(output.shape[1:]) for name, output in hook.retained.items()}


def layer_shape(generator: nn.Module, layer: str) -> tuple[int, int, int]:
    """(units, h, w) of one layer's output."""
    return layer_shapes(generator, [layer])[layer]


def module_device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


# --- edits ------------------------------------------------------------------------------------------------------
def unit_alpha(units, total: int) -> torch.Tensor:
    """(total,) strengths: 1 on ``units``, 0 elsewhere."""
    alpha = torch.zeros(total)
    alpha[torch.as_tensor(list(units), dtype=torch.long)] = 1.0
    return alpha


def edited_images(generator: nn.Module, layer: str, z: torch.Tensor, alpha, value=0.0,
                  region: torch.Tensor | None = None) -> torch.Tensor:
    """Images of ``z`` with ``layer`` edited as ``(1 - alpha*m) r + alpha*m*value``; clamped to [-1, 1]."""
    with NetHook(generator, [layer]) as hook:
        hook.edit(layer, alpha, region, value)
        return hook(z).clamp(-1, 1)


def ablate(generator: nn.Module, layer: str, z: torch.Tensor, units, total: int,
           region: torch.Tensor | None = None) -> torch.Tensor:
    """Images with ``units`` of ``layer`` (of ``total``) set to zero inside ``region`` (a feature-map mask; None:
    everywhere)."""
    return edited_images(generator, layer, z, unit_alpha(units, total).to(z), 0.0, region)


def insert(generator: nn.Module, layer: str, z: torch.Tensor, units, constants: torch.Tensor,
           region: torch.Tensor | None = None) -> torch.Tensor:
    """Images with ``units`` of ``layer`` set to their insertion ``constants`` (U,) inside ``region``."""
    return edited_images(generator, layer, z, unit_alpha(units, len(constants)).to(z), constants.to(z), region)


def unit_parameters(generator: nn.Module, layer: str) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight, bias) whose output-channel rows, scaled by s_u, scale ``layer``'s unit u by s_u exactly (for every
    s_u >= 0); None when the layer has no such parameters."""
    modules = dict(generator.named_modules())
    if not layer or layer not in modules:
        raise UnknownLayerError(f"unknown layer {layer!r}; this model has: {', '.join(layer_names(generator))}")
    found = generator.fold_parameters(layer) if hasattr(generator, "fold_parameters") else None
    if found is not None:
        return found
    block = modules[layer]
    if isinstance(block, (nn.Conv2d, nn.Linear)):  # not ConvTranspose2d: its weight is (in, out, ...)
        return block.weight, block.bias
    return None


def fold_unit_scale(generator: nn.Module, layer: str, scale: torch.Tensor) -> nn.Module:
    """A copy of ``generator`` whose ``layer`` unit u is multiplied by ``scale[u]`` (>= 0) in its weights: a scale
    of 0 (a full ablation) or 1 is exact to the bit, others to float rounding. Refuses a layer that has no
    foldable parameters (``apply_unit_scales`` records the edit instead)."""
    found = unit_parameters(generator, layer)
    if found is None:
        raise BadValueError(f"cannot fold an edit into {layer!r} of {type(generator).__name__}: its units are not "
                            "the output channels of one conv or linear layer")
    scale = torch.as_tensor(scale, dtype=torch.float32).flatten()
    if len(scale) != found[0].shape[0] or bool((scale < 0).any()):
        raise BadValueError(f"{layer!r} has {found[0].shape[0]} units; got {len(scale)} scales (each must be >= 0)")
    folded = copy.deepcopy(generator)
    weight, bias = unit_parameters(folded, layer)
    with torch.no_grad():
        weight.mul_(scale.to(weight).view(-1, *[1] * (weight.ndim - 1)))
        if bias is not None:
            bias.mul_(scale.to(bias))
    return folded


def record_unit_scales(generator: nn.Module, scales: dict[str, torch.Tensor]) -> nn.Module:
    """Multiply each named layer's units by ``scales[layer]`` in every forward pass from now on: the scale is a
    buffer of the layer (``gandissect_unit_scale``: in the state dict, so it moves with the model, is saved by
    ``save_generator`` and changes the model's digest) applied by a forward hook. A second edit multiplies."""
    modules = dict(generator.named_modules())
    for layer, scale in scales.items():
        if layer not in modules or not layer:
            raise UnknownLayerError(f"unknown layer {layer!r}; this model has: {', '.join(layer_names(generator))}")
        module, scale = modules[layer], torch.as_tensor(scale, dtype=torch.float32).flatten()
        if hasattr(module, SCALE_BUFFER):
            setattr(module, SCALE_BUFFER, getattr(module, SCALE_BUFFER) * scale.to(getattr(module, SCALE_BUFFER)))
        else:
            module.register_buffer(SCALE_BUFFER, scale)
            module.register_forward_hook(_apply_recorded_scale)
    return generator


def recorded_unit_scales(generator: nn.Module) -> dict[str, torch.Tensor]:
    return {name: getattr(module, SCALE_BUFFER) for name, module in generator.named_modules()
            if name and hasattr(module, SCALE_BUFFER)}


def _apply_recorded_scale(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
    scale = getattr(module, SCALE_BUFFER)
    if len(scale) != output.shape[1]:
        raise BadValueError(f"a recorded edit has {len(scale)} scales; its layer has {output.shape[1]} units")
    return output * scale.to(output).view(1, -1, *[1] * (output.ndim - 2))


def apply_unit_scales(generator: nn.Module, scales: dict[str, torch.Tensor]) -> tuple[nn.Module, dict[str, str]]:
    """A copy of ``generator`` with each layer's unit scales folded into its weights where it can be, recorded as
    a kept hook otherwise; and how each layer was edited ("folded" / "recorded")."""
    edited, how = copy.deepcopy(generator), {}
    for layer, scale in scales.items():
        if unit_parameters(edited, layer) is not None:
            edited, how[layer] = fold_unit_scale(edited, layer, scale), "folded"
        else:
            edited, how[layer] = record_unit_scales(edited, {layer: scale}), "recorded"
    return edited, how


def fold_unit_scales(generator: nn.Module, scales: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of ``generator`` with each layer's unit scales folded in (``fold_unit_scale``, layer by layer)."""
    for layer, scale in scales.items():
        generator = fold_unit_scale(generator, layer, scale)
    return generator


def scaled_units(generator: nn.Module, scales: dict[str, torch.Tensor]) -> NetHook:
    """A NetHook (use it as a context manager) that multiplies each named layer's units by ``scales[layer]``
    (0: ablated, 1: as is) - the hooked twin of ``apply_unit_scales``."""
    hook = NetHook(generator, list(scales))
    for layer, scale in scales.items():
        hook.edit(layer, 1 - scale, value=0.0)
    return hook


def fold_ablation(generator: nn.Module, layer: str, units: list[int]) -> nn.Module:
    """A copy of ``generator`` whose ``layer`` outputs exactly 0 at ``units``: folded into the weights (their
    weights and bias zeroed) where the layer allows it, else recorded (see ``apply_unit_scales``)."""
    total = layer_shape(generator, layer)[0]
    return apply_unit_scales(generator, {layer: 1 - unit_alpha(units, total)})[0]
