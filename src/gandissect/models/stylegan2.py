"""StyleGAN2 generator and discriminator (Karras et al. 2020) in plain PyTorch, laid out like rosinality's
``stylegan2-pytorch`` so its checkpoints load key for key.

No CUDA extension: the FIR up/down-sampling (``upfirdn2d``) and the fused bias + leaky ReLU are ordinary torch
ops, so the same code runs on the CPU and the GPU. Modulation is applied to the activations rather than to the
weights (``x * s``, one shared convolution, then the demodulation factor per sample and output channel): the
same function as a grouped convolution of per-sample weights, and much faster on a CPU.

Generator (``StyleGAN2Generator``): z -> ``style`` (pixel norm + ``n_mlp`` equalized linear layers, learning rate
x0.01) -> w; a learned 4x4 ``input``; ``conv1`` (4x4); then per resolution 8..R an upsampling ``convs.{2i}`` and a
``convs.{2i+1}``, each followed by a noise input and a biased leaky ReLU; ``to_rgb1`` / ``to_rgbs.{i}`` add to an
upsampled RGB skip image. The dissectable layers are ``conv1`` and ``convs.N`` (their outputs, after the
activation); ``layer_names`` lists them. Noise comes from the fixed buffers ``noises.noise_{k}`` (so a latent
gives the same image every time) unless ``random_noise`` is set, as it is for the generator being trained.
Truncation: ``w = latent_avg + truncation * (w - latent_avg)`` with ``latent_avg`` from the checkpoint.

Discriminator (``StyleGAN2Discriminator``): ``convs.0`` from RGB, residual blocks ``convs.1..`` that halve the
resolution (blurred strided convolutions with a 1x1 skip, summed and divided by sqrt 2), minibatch standard
deviation, ``final_conv`` and two linear layers ``final_linear``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gandissect.checkpoint import save_checkpoint
from gandissect.errors import BadValueError, CheckpointError
from gandissect.models.progan import PixelNorm, check_resolution, minibatch_stddev

SQRT2 = math.sqrt(2)


def default_channels(resolution: int, channel_multiplier: int = 2) -> dict[int, int]:
    """rosinality's channel table: 512 up to 32x32, then 256, 128, 64, 32, 16 times the multiplier."""
    table = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * channel_multiplier, 128: 128 * channel_multiplier,
             256: 64 * channel_multiplier, 512: 32 * channel_multiplier, 1024: 16 * channel_multiplier}
    return {r: c for r, c in table.items() if r <= resolution}


def _blur_kernel(factor: float = 1.0) -> torch.Tensor:
    k = torch.tensor([1.0, 3.0, 3.0, 1.0])
    k = k[:, None] * k[None, :]
    return k / k.sum() * factor


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Upsample by inserting zeros, pad, filter with ``kernel`` (per channel), keep every ``down``-th pixel."""
    n, c, h, w = x.shape
    if up > 1:
        x = F.pad(x.view(n, c, h, 1, w, 1), [0, up - 1, 0, 0, 0, up - 1]).view(n, c, h * up, w * up)
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    weight = kernel.flip(0, 1).to(x)[None, None].expand(c, 1, *kernel.shape)
    x = F.conv2d(x, weight, groups=c)
    return x[:, :, ::down, ::down] if down > 1 else x


class Blur(nn.Module):
    def __init__(self, pad: tuple[int, int], factor: float = 1.0):
        super().__init__()
        self.pad = pad
        self.register_buffer("kernel", _blur_kernel(factor))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """2x upsampling of the RGB skip image with the [1, 3, 3, 1] filter."""

    def __init__(self):
        super().__init__()
        self.register_buffer("kernel", _blur_kernel(4.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, up=2, pad=(2, 1))


class EqualLinear(nn.Module):
    """Linear layer with equalized learning rate (weights N(0, 1/lr_mul), scaled at run time); ``activate``: the
    biased leaky ReLU with gain sqrt 2."""

    def __init__(self, c_in: int, c_out: int, bias_init: float = 0.0, lr_mul: float = 1.0, activate: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in) / lr_mul)
        self.bias = nn.Parameter(torch.full((c_out,), float(bias_init)))
        self.scale, self.lr_mul, self.activate = lr_mul / math.sqrt(c_in), lr_mul, activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activate:
            return F.leaky_relu(F.linear(x, self.weight * self.scale) + self.bias * self.lr_mul, 0.2) * SQRT2
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class EqualConv2d(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        self.scale, self.stride, self.padding = 1 / math.sqrt(c_in * kernel * kernel), stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)


class FusedLeakyReLU(nn.Module):
    """``leaky_relu(x + bias, 0.2) * sqrt 2`` (a plain op here, not a CUDA kernel)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x + self.bias.view(1, -1, *[1] * (x.ndim - 2)), 0.2) * SQRT2


class ModulatedConv2d(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, style_dim: int, demodulate: bool = True,
                 upsample: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, c_out, c_in, kernel, kernel))
        self.modulation = EqualLinear(style_dim, c_in, bias_init=1.0)
        self.scale, self.padding = 1 / math.sqrt(c_in * kernel * kernel), kernel // 2
        self.demodulate, self.upsample = demodulate, upsample
        if upsample:  # transposed 3x3 conv (stride 2) then the blur that removes its checkerboard
            self.blur = Blur(pad=(1, 1), factor=4.0)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        style = self.modulation(w)                       # (N, c_in)
        weight = self.weight[0] * self.scale              # (c_out, c_in, k, k)
        x = x * style[:, :, None, None]
        if self.upsample:
            x = self.blur(F.conv_transpose2d(x, weight.transpose(0, 1), stride=2))
        else:
            x = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:  # 1 / |per-sample weight| of each output channel: sum_i s_i^2 sum_kk w_oi^2
            norms = style.square() @ weight.square().sum(dim=(2, 3)).t()
            x = x * torch.rsqrt(norms + 1e-8)[:, :, None, None]
        return x


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return x + self.weight * noise


class StyledConv(nn.Module):
    """Modulated conv -> noise -> biased leaky ReLU. Its output is a dissectable layer."""

    def __init__(self, c_in: int, c_out: int, style_dim: int, upsample: bool = False):
        super().__init__()
        self.conv = ModulatedConv2d(c_in, c_out, 3, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(c_out)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.activate(self.noise(self.conv(x, w), noise))


class ToRGB(nn.Module):
    def __init__(self, c_in: int, style_dim: int, upsample: bool = True):
        super().__init__()
        if upsample:
            self.upsample = Upsample()
        self.conv = ModulatedConv2d(c_in, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, w: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        rgb = self.conv(x, w) + self.bias
        return rgb if skip is None else rgb + self.upsample(skip)


class ConstantInput(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, 4, 4))

    def forward(self, n: int) -> torch.Tensor:
        return self.input.expand(n, -1, -1, -1)


def _resolutions(resolution: int) -> list[int]:
    return [2 ** k for k in range(3, int(math.log2(resolution)) + 1)]  # 8 .. R


class StyleGAN2Generator(nn.Module):
    """z (N, latent_dim) -> images (N, 3, R, R), roughly in [-1, 1]; see the module docstring."""

    ARCH = "stylegan2-generator"

    def __init__(self, resolution: int = 64, latent_dim: int = 512, n_mlp: int = 8,
                 channels: dict | None = None, channel_multiplier: int = 2, lr_mlp: float = 0.01,
                 truncation: float = 1.0):
        super().__init__()
        check_resolution(resolution)
        channels = {int(r): int(c) for r, c in (channels or default_channels(resolution, channel_multiplier)).items()}
        missing = [r for r in [4] + _resolutions(resolution) if r not in channels]
        if missing:
            raise BadValueError(f"channels: no width for resolution(s) {missing}; expected one per 4..{resolution}")
        self.resolution, self.latent_dim, self.n_mlp = resolution, latent_dim, n_mlp
        self.channels, self.lr_mlp = {r: channels[r] for r in [4] + _resolutions(resolution)}, lr_mlp
        self.truncation = float(truncation)
        self.random_noise = False
        self.style = nn.Sequential(PixelNorm(), *[EqualLinear(latent_dim, latent_dim, lr_mul=lr_mlp, activate=True)
                                                  for _ in range(n_mlp)])
        self.input = ConstantInput(channels[4])
        self.conv1 = StyledConv(channels[4], channels[4], latent_dim)
        self.to_rgb1 = ToRGB(channels[4], latent_dim, upsample=False)
        self.convs, self.to_rgbs = nn.ModuleList(), nn.ModuleList()
        self.noises = nn.Module()
        self.noises.register_buffer("noise_0", torch.randn(1, 1, 4, 4))
        c_in = channels[4]
        for i, res in enumerate(_resolutions(resolution)):
            self.convs.append(StyledConv(c_in, channels[res], latent_dim, upsample=True))
            self.convs.append(StyledConv(channels[res], channels[res], latent_dim))
            self.to_rgbs.append(ToRGB(channels[res], latent_dim))
            for k in (2 * i + 1, 2 * i + 2):
                self.noises.register_buffer(f"noise_{k}", torch.randn(1, 1, res, res))
            c_in = channels[res]
        self.register_buffer("latent_avg", torch.zeros(latent_dim))

    @property
    def layer_names(self) -> list[str]:
        return ["conv1"] + [f"convs.{i}" for i in range(len(self.convs))]

    def config(self) -> dict:
        return {"resolution": self.resolution, "latent_dim": self.latent_dim, "n_mlp": self.n_mlp,
                "channels": {str(r): c for r, c in self.channels.items()}, "lr_mlp": self.lr_mlp,
                "truncation": self.truncation}

    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        """w of each latent, truncated towards ``latent_avg`` when ``truncation`` < 1."""
        w = self.style(z)
        if self.truncation != 1.0:
            w = self.latent_avg + self.truncation * (w - self.latent_avg)
        return w

    def _noise(self, k: int, like: torch.Tensor) -> torch.Tensor:
        fixed = getattr(self.noises, f"noise_{k}")
        if self.random_noise:
            return torch.randn(like.shape[0], 1, *fixed.shape[-2:], device=like.device, dtype=like.dtype)
        return fixed

    def synthesis(self, w: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.input(w.shape[0]), w, self._noise(0, w))
        skip = self.to_rgb1(x, w)
        for i, to_rgb in enumerate(self.to_rgbs):
            x = self.convs[2 * i](x, w, self._noise(2 * i + 1, w))
            x = self.convs[2 * i + 1](x, w, self._noise(2 * i + 2, w))
            skip = to_rgb(x, w, skip)
        return skip

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z.flatten(1)
        if z.shape[1] != self.latent_dim:
            raise BadValueError(f"latents must have {self.latent_dim} channels, got shape {tuple(z.shape)}")
        return self.synthesis(self.mapping(z))

    @torch.no_grad()
    def estimate_latent_avg(self, n: int = 4096, seed: int = 0) -> None:
        """``latent_avg`` = the mean w of ``n`` seeded latents (what truncation pulls towards)."""
        z = torch.randn(n, self.latent_dim, generator=torch.Generator().manual_seed(seed))
        self.latent_avg.copy_(self.style(z.to(self.latent_avg.device)).mean(dim=0))

    def save(self, path: str | Path) -> Path:
        return save_checkpoint(path, self.ARCH, self.config(), self.state_dict())


class ConvLayer(nn.Sequential):
    """[blur] -> equalized conv (stride 2 when downsampling) -> [biased leaky ReLU], as rosinality's ConvLayer."""

    def __init__(self, c_in: int, c_out: int, kernel: int, downsample: bool = False, activate: bool = True):
        layers = []
        if downsample:
            p = 2 + (kernel - 1)
            layers.append(Blur(pad=((p + 1) // 2, p // 2)))
        layers.append(EqualConv2d(c_in, c_out, kernel, stride=2 if downsample else 1,
                                  padding=0 if downsample else kernel // 2, bias=False))  # bias: in the activation
        if activate:
            layers.append(FusedLeakyReLU(c_out))
        super().__init__(*layers)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = ConvLayer(c_in, c_in, 3)
        self.conv2 = ConvLayer(c_in, c_out, 3, downsample=True)
        self.skip = ConvLayer(c_in, c_out, 1, downsample=True, activate=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / SQRT2


class StyleGAN2Discriminator(nn.Module):
    """images (N, 3, R, R) -> realness logits (N,)."""

    ARCH = "stylegan2-discriminator"

    def __init__(self, resolution: int = 64, channels: dict | None = None, channel_multiplier: int = 2):
        super().__init__()
        check_resolution(resolution)
        channels = {int(r): int(c) for r, c in (channels or default_channels(resolution, channel_multiplier)).items()}
        self.resolution = resolution
        self.channels = {r: channels[r] for r in [4] + _resolutions(resolution)}
        blocks = [ConvLayer(3, channels[resolution], 1)]
        c_in = channels[resolution]
        for res in reversed(_resolutions(resolution)):
            blocks.append(ResBlock(c_in, channels[res // 2]))
            c_in = channels[res // 2]
        self.convs = nn.Sequential(*blocks)
        self.final_conv = ConvLayer(c_in + 1, channels[4], 3)
        self.final_linear = nn.Sequential(EqualLinear(channels[4] * 16, channels[4], activate=True),
                                          EqualLinear(channels[4], 1))

    @property
    def layer_names(self) -> list[str]:
        return [f"convs.{i}" for i in range(len(self.convs))] + ["final_conv", "final_linear"]

    def config(self) -> dict:
        return {"resolution": self.resolution, "channels": {str(r): c for r, c in self.channels.items()}}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = minibatch_stddev(self.convs(images))
        return self.final_linear(self.final_conv(x).flatten(1)).squeeze(1)

    def save(self, path: str | Path) -> Path:
        return save_checkpoint(path, self.ARCH, self.config(), self.state_dict())


# --- configurations read off rosinality state dicts ---------------------------------------------------------------
def generator_config_from_state(tensors: dict[str, torch.Tensor], source: str) -> dict:
    """resolution, latent_dim, n_mlp and channels of a rosinality ``g`` / ``g_ema`` state dict."""
    if "input.input" not in tensors or "conv1.conv.weight" not in tensors:
        raise CheckpointError(f"checkpoint {source} is not a StyleGAN2 generator of the rosinality layout: no "
                              f"input.input / conv1.conv.weight; keys: {', '.join(sorted(tensors)[:12])}")
    n_mlp = sum(1 for k in tensors if k.startswith("style.") and k.endswith(".weight"))
    latent_dim = int(tensors["conv1.conv.modulation.weight"].shape[1])
    n_blocks = sum(1 for k in tensors if k.startswith("to_rgbs.") and k.endswith(".conv.weight"))
    resolution = 4 * 2 ** n_blocks
    channels = {4: int(tensors["input.input"].shape[1])}
    for i, res in enumerate(_resolutions(resolution)):
        key = f"convs.{2 * i}.conv.weight"
        if key not in tensors:
            raise CheckpointError(f"checkpoint {source}: to_rgbs.{i} is present but {key} is missing")
        channels[res] = int(tensors[key].shape[1])
    try:
        check_resolution(resolution)
    except BadValueError as err:
        raise CheckpointError(f"checkpoint {source}: {err}") from None
    return {"resolution": resolution, "latent_dim": latent_dim, "n_mlp": n_mlp, "channels": channels}


def discriminator_config_from_state(tensors: dict[str, torch.Tensor], source: str) -> dict:
    """resolution and channels of a rosinality ``d`` state dict."""
    if "convs.0.0.weight" not in tensors or "final_conv.0.weight" not in tensors:
        raise CheckpointError(f"checkpoint {source} is not a StyleGAN2 discriminator of the rosinality layout: no "
                              f"convs.0.0.weight / final_conv.0.weight; keys: {', '.join(sorted(tensors)[:12])}")
    n_blocks = sum(1 for k in tensors if k.startswith("convs.") and k.endswith(".conv1.0.weight"))
    resolution = 4 * 2 ** n_blocks
    channels = {resolution: int(tensors["convs.0.0.weight"].shape[0])}
    for i in range(1, n_blocks + 1):
        channels[resolution // 2 ** i] = int(tensors[f"convs.{i}.conv2.1.weight"].shape[0])
    return {"resolution": resolution, "channels": channels}
