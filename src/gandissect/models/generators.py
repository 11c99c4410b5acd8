"""The generator contract, and the one place that turns a ``generator:`` setting into a module.

A generator is any ``nn.Module`` that maps latents ``(N, latent_dim)`` to images ``(N, 3, R, R)`` in about
[-1, 1] and has the attributes ``latent_dim`` and ``resolution``. Its layers are its submodules, named as
``model.named_modules()`` names them; ``layer_names`` (optional) lists the ones worth dissecting. That is all
dissect, ACE, repair and paint rely on: none of them tests for an architecture.

Ablations are saved in one of two ways (``core.hooks.apply_unit_scales``):

- **folded** into the weights, when the generator says which parameters carry a layer's units
  (``fold_parameters(layer) -> (weight, bias)`` whose output-channel rows scale unit u exactly, as ProGAN's
  conv + bias before a LeakyReLU) or the layer is a plain ``Conv2d`` / ``Linear``;
- **recorded**, otherwise (a StyleGAN2 layer adds noise shared by all its channels after the conv, so zeroing
  the conv does not zero the unit): the model keeps its weights and a forward hook multiplies the layer's units by
  the recorded scales. ``save_generator`` writes the scales next to the weights and ``load_generator`` re-applies
  them, so a repaired StyleGAN2 loads as what was measured.

Formats ``load_generator`` reads: our ``.safetensors`` checkpoints (any architecture below, with recorded edits);
PyTorch files holding an official GAN-dissection ProGAN, a rosinality StyleGAN2 (``g_ema``) or a pytorch_GAN_zoo
ProGAN (``avgG`` / ``netG``) (see ``legacy``); NVIDIA StyleGAN2-ADA / StyleGAN3 pickles (only with their packages
and ``allow_pickle``); and ``package.module:function`` factories returning a module.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import safe_open
from torch import nn

from gandissect.checkpoint import load_state_checked, read_checkpoint, save_checkpoint
from gandissect.core.factory import is_factory_spec, load_factory
from gandissect.core.runs import model_identity
from gandissect.core.hooks import SCALE_BUFFER, record_unit_scales, recorded_unit_scales, stop_on_non_finite
from gandissect.errors import BadValueError, CheckpointError, ConfigError
from gandissect.models import legacy
from gandissect.models.progan import ProGANDiscriminator, ProGANGenerator
from gandissect.models.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator

GENERATORS = {cls.ARCH: cls for cls in (ProGANGenerator, StyleGAN2Generator, legacy.GANZooGenerator)}
DISCRIMINATORS = {cls.ARCH: cls for cls in (ProGANDiscriminator, StyleGAN2Discriminator)}


# --- loading ------------------------------------------------------------------------------------------------------
def load_generator(source, truncation: float | None = None, allow_pickle: bool = False) -> nn.Module:
    """A generator in eval mode from a checkpoint file, a state dict in memory or a ``package.module:function``
    factory; ``truncation`` (StyleGAN2 only) pulls w towards the average w."""
    if isinstance(source, dict):
        generator = legacy.generator_from_state(source, "<state dict>")
    elif is_factory_spec(source):
        generator = from_factory(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(f"generator not found: {path}")
        if path.suffix == ".safetensors":
            generator = _load_safetensors(path)
        elif path.suffix == ".pkl":
            generator = legacy.load_nvidia_pickle(path, allow_pickle)
        else:
            generator = legacy.load_torch_generator(path, allow_pickle)
    if truncation is not None and truncation != getattr(generator, "truncation", 1.0):
        if not hasattr(generator, "truncation"):
            raise ConfigError(f"truncation={truncation}: generator {source} has no mapping network to truncate "
                              f"({type(generator).__name__}); leave truncation unset")
        if not 0 <= truncation <= 1:
            raise ConfigError(f"truncation={truncation}: expected a number from 0 to 1 (1: none)")
        generator.truncation = float(truncation)
    return generator.eval()


def open_generator(cfg, step: str) -> nn.Module:
    """The generator a step's config names (``generator``, ``truncation``, ``allow_pickle``), checked to make
    finite images (the step stops with one line naming itself otherwise)."""
    generator = load_generator(cfg.generator, getattr(cfg, "truncation", None), getattr(cfg, "allow_pickle", False))
    return stop_on_non_finite(generator, step, cfg.generator)


def generator_identity(cfg, module: nn.Module | None = None) -> str:
    """How a run records the generator it used: the file's sha256 (or a factory's module digest), with the
    truncation when one is set; or the digest of a module handed over in memory."""
    if module is None and not is_factory_spec(cfg.generator) and not Path(cfg.generator).is_file():
        raise CheckpointError(f"generator not found: {cfg.generator}")
    identity = model_identity(cfg.generator, module)
    truncation = getattr(cfg, "truncation", None)
    return identity if module is not None or truncation is None else f"{identity} truncation {truncation}"


def from_factory(spec: str) -> nn.Module:
    """The module a ``package.module:function`` factory returns, checked against the contract: ``latent_dim`` (or
    ``z_dim``), and ``resolution`` (measured from one image when the module does not say)."""
    generator = load_factory(spec, "generator")()
    if not isinstance(generator, nn.Module):
        raise ConfigError(f"generator {spec!r} returned a {type(generator).__name__}; expected a torch.nn.Module "
                          "mapping latents (N, latent_dim) to images (N, 3, R, R)")
    if not hasattr(generator, "latent_dim"):
        if not isinstance(getattr(generator, "z_dim", None), int):
            raise ConfigError(f"generator {spec!r}: the module has neither latent_dim nor z_dim; expected the size "
                              "of its latent vector as one of them")
        generator.latent_dim = generator.z_dim
    if not hasattr(generator, "resolution"):
        with torch.no_grad():
            images = generator.eval()(torch.zeros(1, generator.latent_dim))
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ConfigError(f"generator {spec!r} gives {shape} for one latent; expected images (1, 3, R, R)")
        generator.resolution = int(images.shape[-1])
    return generator


def _load_safetensors(path: Path) -> nn.Module:
    with safe_open(str(path), framework="pt") as f:
        arch = (f.metadata() or {}).get("gandissect_arch")
    if arch not in GENERATORS:  # read_checkpoint names what the file holds
        read_checkpoint(path, "generator (" + ", ".join(GENERATORS) + ")")
    config, tensors = read_checkpoint(path, arch)
    suffix = "." + SCALE_BUFFER
    scales = {key[:-len(suffix)]: tensors.pop(key) for key in list(tensors) if key.endswith(suffix)}
    model = GENERATORS[arch](**config)
    load_state_checked(model, tensors, str(path))
    if scales:
        record_unit_scales(model, scales)
    return model


def load_discriminator(source, allow_pickle: bool = False) -> nn.Module:
    """A discriminator (images -> realness logits (N,)) in eval mode: our checkpoints, the ``d`` of a rosinality
    StyleGAN2 file, or a ``package.module:function`` factory."""
    if is_factory_spec(source):
        model = load_factory(source, "discriminator")()
        if not isinstance(model, nn.Module):
            raise ConfigError(f"discriminator {source!r} returned a {type(model).__name__}; expected a "
                              "torch.nn.Module mapping images to realness logits")
        model.factory = source  # how an artifact segmenter built on it is rebuilt
        return model.eval()
    path = Path(source)
    if path.suffix != ".safetensors":
        return legacy.load_torch_discriminator(path, allow_pickle)
    with safe_open(str(path), framework="pt") as f:
        arch = (f.metadata() or {}).get("gandissect_arch")
    if arch not in DISCRIMINATORS:
        read_checkpoint(path, "discriminator (" + ", ".join(DISCRIMINATORS) + ")")
    config, tensors = read_checkpoint(path, arch)
    model = DISCRIMINATORS[arch](**config)
    load_state_checked(model, tensors, str(path))
    return model.eval()


def build_discriminator(arch: str, config: dict) -> nn.Module:
    """An untrained discriminator of a saved architecture (the artifact segmenter stores its D this way)."""
    if arch not in DISCRIMINATORS:
        raise CheckpointError(f"unknown discriminator architecture {arch!r}; expected one of "
                              f"{', '.join(DISCRIMINATORS)}")
    return DISCRIMINATORS[arch](**config)


def save_generator(generator: nn.Module, path: str | Path) -> Path:
    """Write a generator of a known architecture, with its recorded edits, as a gandissect checkpoint."""
    arch = getattr(generator, "ARCH", None)
    if arch not in GENERATORS:
        raise BadValueError(f"cannot save a {type(generator).__name__} as a gandissect checkpoint (architectures: "
                            f"{', '.join(GENERATORS)}); save its state dict with torch.save instead")
    return save_checkpoint(path, arch, generator.config(), generator.state_dict())  # recorded edits included


# --- what a user sees ------------------------------------------------------------------------------------------------
def describe_layers(generator: nn.Module) -> list[dict]:
    """name, units, height and width of every layer with a feature-map output, in forward order (the names a user
    passes to ``--layers``); ``dissectable`` marks the generator's own ``layer_names``."""
    shapes, order = {}, []

    def keep(name):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor) and output.ndim == 4 and name not in shapes:
                shapes[name] = tuple(output.shape[1:])
                order.append(name)
        return hook

    handles = [module.register_forward_hook(keep(name)) for name, module in generator.named_modules() if name]
    try:
        with torch.no_grad():
            generator(torch.zeros(1, generator.latent_dim, device=next(generator.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
    preferred = set(getattr(generator, "layer_names", order))
    return [{"layer": name, "units": shapes[name][0], "height": shapes[name][1], "width": shapes[name][2],
             "dissectable": name in preferred} for name in order]


def describe(generator: nn.Module) -> dict:
    return {"architecture": getattr(generator, "ARCH", type(generator).__name__),
            "latent_dim": generator.latent_dim, "resolution": generator.resolution,
            "parameters": sum(p.numel() for p in generator.parameters()),
            "recorded_edits": {k: int((v != 1).sum()) for k, v in recorded_unit_scales(generator).items()},
            "config": json.loads(json.dumps(generator.config())) if hasattr(generator, "config") else None}
