"""Foreign checkpoint formats, kept apart from the models: which layout a PyTorch file holds, and the small
modules that only exist to read one.

- official GAN-dissection ProGAN state dicts (``layer1.conv.weight`` ...): ``progan.ProGANGenerator``;
- rosinality ``stylegan2-pytorch`` files: a dict with ``g_ema`` (and/or ``g``), ``d``, optionally ``latent_avg``
  and ``args`` (an ``argparse.Namespace``, the one Python object read without ``allow_pickle``);
- pytorch_GAN_zoo ProGAN files: a dict with ``avgG`` (the averaged generator, preferred) and/or ``netG``, or such a
  state dict alone (``formatLayer.module.weight``, ``groupScale0.0.module.weight``, ``scaleLayers.i.j...``,
  ``toRGBLayers.i...``): ``GANZooGenerator``;
- NVIDIA StyleGAN2-ADA / StyleGAN3 pickles (``G_ema``): unpickling them imports NVIDIA's ``dnnlib`` and
  ``torch_utils`` and can run any code, so only when those packages import and the user passed ``allow_pickle``.
"""

from __future__ import annotations

import importlib.util
import math
import pickle
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gandissect.checkpoint import load_state_checked, read_state_dict
from gandissect.errors import CheckpointError
from gandissect.models import progan, stylegan2
from gandissect.models.progan import PixelNorm, strip_wrapper_prefixes


# --- pytorch_GAN_zoo ProGAN -------------------------------------------------------------------------------------
class EqualizedLayer(nn.Module):
    """GAN zoo's equalized layer: the wrapped conv/linear's whole output (bias included) times sqrt(2 / fan_in)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        nn.init.normal_(module.weight)
        nn.init.zeros_(module.bias)
        self.scale = math.sqrt(2.0 / module.weight[0].numel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x) * self.scale


class GANZooGenerator(nn.Module):
    """pytorch_GAN_zoo's ProGAN generator at its final scale (alpha = 0): pixel-normed z -> ``formatLayer``
    (linear to 4x4) -> ``groupScale0`` (3x3 conv) -> per doubling ``scaleLayers.i`` (nearest 2x, two 3x3 convs),
    each followed by LeakyReLU(0.2) and pixel norm -> the last ``toRGBLayers``. A layer's units are its conv's output
    before the activation (what ``fold_parameters`` scales exactly)."""

    ARCH = "ganzoo-progan-generator"

    def __init__(self, latent_dim: int = 512, depths: list[int] | None = None, output_dim: int = 3):
        super().__init__()
        depths = list(depths or [512, 512, 512, 512, 256, 128])
        self.latent_dim, self.depths, self.output_dim = latent_dim, depths, output_dim
        self.resolution = 4 * 2 ** (len(depths) - 1)
        self.norm = PixelNorm()
        self.formatLayer = EqualizedLayer(nn.Linear(latent_dim, 16 * depths[0]))
        self.groupScale0 = nn.ModuleList([EqualizedLayer(nn.Conv2d(depths[0], depths[0], 3, padding=1))])
        self.scaleLayers = nn.ModuleList()
        self.toRGBLayers = nn.ModuleList([EqualizedLayer(nn.Conv2d(depths[0], output_dim, 1))])
        for c_in, c_out in zip(depths, depths[1:]):
            self.scaleLayers.append(nn.ModuleList([EqualizedLayer(nn.Conv2d(c_in, c_out, 3, padding=1)),
                                                   EqualizedLayer(nn.Conv2d(c_out, c_out, 3, padding=1))]))
            self.toRGBLayers.append(EqualizedLayer(nn.Conv2d(c_out, output_dim, 1)))

    @property
    def layer_names(self) -> list[str]:
        return ["groupScale0.0"] + [f"scaleLayers.{i}.{j}" for i in range(len(self.scaleLayers)) for j in (0, 1)]

    def config(self) -> dict:
        return {"latent_dim": self.latent_dim, "depths": self.depths, "output_dim": self.output_dim}

    def fold_parameters(self, layer: str):
        block = dict(self.named_modules()).get(layer)
        if isinstance(block, EqualizedLayer):  # the hooked output is (W x + b) * scale: rows scale it exactly
            return block.module.weight, block.module.bias
        return None

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.formatLayer(self.norm(z.flatten(1))), 0.2)
        x = self.norm(x.view(x.shape[0], -1, 4, 4))
        x = self.norm(F.leaky_relu(self.groupScale0[0](x), 0.2))
        for group in self.scaleLayers:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            for conv in group:
                x = self.norm(F.leaky_relu(conv(x), 0.2))
        return self.toRGBLayers[-1](x)


def ganzoo_config_from_state(tensors: dict[str, torch.Tensor], source: str) -> dict:
    if "formatLayer.module.weight" not in tensors:
        raise CheckpointError(f"checkpoint {source} is not a pytorch_GAN_zoo ProGAN generator: no "
                              f"formatLayer.module.weight; keys: {', '.join(sorted(tensors)[:12])}")
    depths = [int(tensors["formatLayer.module.weight"].shape[0]) // 16]
    i = 0
    while f"scaleLayers.{i}.0.module.weight" in tensors:
        depths.append(int(tensors[f"scaleLayers.{i}.0.module.weight"].shape[0]))
        i += 1
    rgb = tensors.get(f"toRGBLayers.{i}.module.weight")
    return {"latent_dim": int(tensors["formatLayer.module.weight"].shape[1]), "depths": depths,
            "output_dim": int(rgb.shape[0]) if rgb is not None else 3}


# --- which layout -------------------------------------------------------------------------------------------------
def generator_from_state(state: dict, source: str, latent_avg: torch.Tensor | None = None) -> nn.Module:
    """A generator from a state dict of any layout we read (ProGAN official / ours, rosinality, GAN zoo)."""
    tensors = strip_wrapper_prefixes({k: v for k, v in state.items() if isinstance(v, torch.Tensor)})
    if "input.input" in tensors:
        config = stylegan2.generator_config_from_state(tensors, source)
        model = stylegan2.StyleGAN2Generator(**config)
        tensors.setdefault("latent_avg", torch.zeros(config["latent_dim"]))
        load_state_checked(model, tensors, source)
        if latent_avg is not None:
            model.latent_avg.copy_(latent_avg.flatten())
        elif not bool(tensors["latent_avg"].any()):
            model.estimate_latent_avg()  # rosinality training files carry no latent_avg: measure it
        return model
    if "formatLayer.module.weight" in tensors:
        model = GANZooGenerator(**ganzoo_config_from_state(tensors, source))
        load_state_checked(model, tensors, source)
        return model
    if any(k.startswith("output_") for k in tensors):
        model = progan.ProGANGenerator(**progan.generator_config_from_state(tensors, source))
        load_state_checked(model, tensors, source)
        return model
    raise CheckpointError(f"checkpoint {source} holds no generator layout gandissect reads (ProGAN: "
                          "output_RxR.conv.weight; StyleGAN2 rosinality: input.input; pytorch_GAN_zoo: "
                          f"formatLayer.module.weight); keys: {', '.join(sorted(tensors)[:12]) or 'none'}")


def load_torch_generator(path: Path, allow_pickle: bool = False) -> nn.Module:
    """A generator from a ``torch.save`` file: a state dict, or a dict holding one under ``g_ema`` / ``g``
    (rosinality), ``avgG`` / ``netG`` (GAN zoo) or ``state_dict``."""
    loaded = read_state_dict(path, "generator", allow_pickle=allow_pickle)
    for key in ("g_ema", "g", "avgG", "netG", "state_dict"):
        if isinstance(loaded.get(key), dict):
            latent_avg = loaded.get("latent_avg") if isinstance(loaded.get("latent_avg"), torch.Tensor) else None
            return generator_from_state(loaded[key], f"{path} [{key}]", latent_avg)
    return generator_from_state(loaded, str(path))


def load_torch_discriminator(path: Path, allow_pickle: bool = False) -> nn.Module:
    """The ``d`` of a rosinality StyleGAN2 file (or such a state dict alone)."""
    loaded = read_state_dict(path, "discriminator", allow_pickle=allow_pickle)
    tensors = strip_wrapper_prefixes(loaded["d"] if isinstance(loaded.get("d"), dict) else loaded)
    source = f"{path} [d]" if isinstance(loaded.get("d"), dict) else str(path)
    if "convs.0.0.weight" not in tensors:
        raise CheckpointError(f"{source} holds no discriminator gandissect reads (a rosinality StyleGAN2 'd', or a "
                              "gandissect .safetensors discriminator); keys: "
                              f"{', '.join(sorted(k for k in tensors if isinstance(k, str))[:12])}")
    model = stylegan2.StyleGAN2Discriminator(**stylegan2.discriminator_config_from_state(tensors, source))
    load_state_checked(model, {k: v for k, v in tensors.items() if isinstance(v, torch.Tensor)}, source)
    return model


# --- NVIDIA pickles ---------------------------------------------------------------------------------------------------
class NvidiaGenerator(nn.Module):
    """An NVIDIA StyleGAN2-ADA / StyleGAN3 ``G_ema`` behind our contract: z -> G(z, c) with constant noise; its
    layers are ``synthesis.b8.conv0`` ... (StyleGAN2-ADA) or ``synthesis.L0_36_512`` ... (StyleGAN3)."""

    def __init__(self, g: nn.Module, truncation: float = 1.0):
        super().__init__()
        self.mapping, self.synthesis = g.mapping, g.synthesis
        self.latent_dim, self.resolution = int(g.z_dim), int(g.img_resolution)
        self.c_dim, self.truncation = int(getattr(g, "c_dim", 0)), truncation

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        c = torch.zeros(z.shape[0], self.c_dim, device=z.device)
        w = self.mapping(z.flatten(1), c, truncation_psi=self.truncation)
        return self.synthesis(w, noise_mode="const")


def load_nvidia_pickle(path: Path, allow_pickle: bool = False) -> nn.Module:
    missing = [name for name in ("dnnlib", "torch_utils") if importlib.util.find_spec(name) is None]
    if missing:
        raise CheckpointError(f"{path} is an NVIDIA pickle: reading it needs NVIDIA's {' and '.join(missing)} "
                              "package(s) (put the stylegan2-ada-pytorch or stylegan3 repository on PYTHONPATH), and "
                              "unpickling runs code from the file: pass allow_pickle=true only for a file you trust")
    if not allow_pickle:
        raise CheckpointError(f"{path} is a pickle: unpickling it can run any code the file holds; pass "
                              "allow_pickle=true (--set allow_pickle=true) only for a file you trust")
    with open(path, "rb") as f:
        data = pickle.load(f)  # noqa: S301 - the user asked for it with allow_pickle
    g = data.get("G_ema") if isinstance(data, dict) else None
    if not isinstance(g, nn.Module):
        held = ", ".join(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path} holds no G_ema module; it holds: {held}")
    return NvidiaGenerator(g.float())
