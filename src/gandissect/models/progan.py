"""ProGAN generator and discriminator (Karras et al. 2018), laid out like the GAN-dissection models.

Every generator layer is one block ``pixel-norm -> [2x nearest upsample] -> conv (no bias) -> scale by
the equalized-LR constant, add a learned bias -> LeakyReLU(0.2)``. ``layer1`` maps z (N, Z, 1, 1) to
4x4 with a 4x4 convolution padded by 3, ``layer2`` is a 3x3 convolution, then each resolution from 8 to
R adds an (upsample + conv, conv) pair, and ``output_{R}x{R}`` is a 1x1 convolution to RGB. Parameters
are therefore ``layerN.conv.weight`` and ``layerN.wscale.b``, the names of the official GAN-dissection
LSUN state dicts, which ``load_generator`` reads as well as our own checkpoints.

There is no progressive growing here: our models are small enough to train at full resolution.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from gandissect.checkpoint import load_state_checked, read_checkpoint, read_state_dict, save_checkpoint
from gandissect.errors import BadValueError, CheckpointError

RESOLUTIONS = tuple(2 ** k for k in range(5, 11))  # 32 .. 1024


def num_layers(resolution: int) -> int:
    """Generator layers for a resolution: 2 at 4x4, then 2 per doubling (14 at 256px)."""
    return 2 + 2 * int(math.log2(resolution // 4))


def layer_resolution(index: int) -> int:
    """Feature-map size of generator layer ``index`` (1-based): layer1-2 are 4x4, layer3-4 8x8, ..."""
    return 4 * 2 ** ((index - 1) // 2)


def check_resolution(resolution: int) -> None:
    if resolution not in RESOLUTIONS:
        raise BadValueError(f"resolution must be one of {', '.join(map(str, RESOLUTIONS))}, got {resolution}")


class PixelNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class WScale(nn.Module):
    """Equalized learning rate: weights are stored N(0, 1) and scaled by gain/sqrt(fan_in) at run time."""

    def __init__(self, channels: int, fan_in: int, gain: float = math.sqrt(2)):
        super().__init__()
        self.scale = gain / math.sqrt(fan_in)
        self.b = nn.Parameter(torch.zeros(channels))

    def conv(self, x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
        """``conv(x) * scale + b`` with the scale folded into the (small) weight instead of the activations."""
        return F.conv2d(x, conv.weight * self.scale, self.b, padding=conv.padding)


class GeneratorBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, padding: int, upsample: bool = False,
                 gain: float = math.sqrt(2), activation: bool = True):
        super().__init__()
        self.upsample = upsample
        self.norm = PixelNorm()
        self.conv = nn.Conv2d(c_in, c_out, kernel, padding=padding, bias=False)
        nn.init.normal_(self.conv.weight)
        self.wscale = WScale(c_out, c_in * kernel * kernel, gain)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = self.wscale.conv(x, self.conv)
        return F.leaky_relu(x, 0.2, inplace=True) if self.activation else x


class ProGANGenerator(nn.Module):
    """z (N, Z) or (N, Z, 1, 1) -> images (N, 3, R, R), roughly in [-1, 1]."""

    ARCH = "progan-generator"

    def __init__(self, resolution: int = 64, widths: list[int] | None = None, latent_dim: int | None = None):
        super().__init__()
        check_resolution(resolution)
        n = num_layers(resolution)
        widths = list(widths) if widths is not None else [min(512, 2 ** 13 // layer_resolution(i)) for i in
                                                          range(1, n + 1)]
        if len(widths) != n:
            raise BadValueError(f"a {resolution}px generator has {n} layers; got {len(widths)} widths")
        self.resolution, self.widths = resolution, widths
        self.latent_dim = latent_dim or widths[0]
        c_in = self.latent_dim
        for i, width in enumerate(widths, start=1):
            if i == 1:
                block = GeneratorBlock(c_in, width, 4, 3)
            else:
                block = GeneratorBlock(c_in, width, 3, 1, upsample=i > 2 and i % 2 == 1)
            self.add_module(f"layer{i}", block)
            c_in = width
        self.output_name = f"output_{resolution}x{resolution}"
        self.add_module(self.output_name, GeneratorBlock(c_in, 3, 1, 0, gain=1.0, activation=False))

    @property
    def layer_names(self) -> list[str]:
        return [f"layer{i}" for i in range(1, len(self.widths) + 1)] + [self.output_name]

    def config(self) -> dict:
        return {"resolution": self.resolution, "widths": self.widths, "latent_dim": self.latent_dim}

    def fold_parameters(self, layer: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A block's conv weight and bias: LeakyReLU is positively homogeneous (lrelu(s x) = s lrelu(x), s >= 0), so
        scaling their rows scales the block's units exactly."""
        block = getattr(self, layer, None) if layer in self.layer_names else None
        return (block.conv.weight, block.wscale.b) if isinstance(block, GeneratorBlock) else None

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z.view(z.shape[0], -1, 1, 1) if z.ndim == 2 else z
        if x.shape[1] != self.latent_dim:
            raise BadValueError(f"latents must have {self.latent_dim} channels, got shape {tuple(z.shape)}")
        for name in self.layer_names:
            x = getattr(self, name)(x)
        return x

    def save(self, path: str | Path) -> Path:
        return save_checkpoint(path, self.ARCH, self.config(), self.state_dict())


class DiscriminatorBlock(nn.Module):
    """conv -> equalized-LR scale + bias -> LeakyReLU, optionally followed by 2x average pooling."""

    def __init__(self, c_in: int, c_out: int, kernel: int, padding: int, downsample: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, padding=padding, bias=False)
        nn.init.normal_(self.conv.weight)
        self.wscale = WScale(c_out, c_in * kernel * kernel)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.wscale.conv(x, self.conv), 0.2, inplace=True)
        return F.avg_pool2d(x, 2) if self.downsample else x


def minibatch_stddev(x: torch.Tensor, group: int = 4) -> torch.Tensor:
    """Append one channel holding the mean standard deviation of features over groups of images."""
    n, c, h, w = x.shape
    g = min(group, n)
    while n % g:
        g -= 1
    y = x.view(g, -1, c, h, w)
    y = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (n/g,)
    y = y.view(-1, 1, 1, 1).repeat(g, 1, h, w)
    return torch.cat([x, y], dim=1)


class ProGANDiscriminator(nn.Module):
    """images (N, 3, R, R) -> realness logits (N,).

    ``fromrgb`` (1x1 conv), then for each resolution R..8 a pair ``layerK`` (3x3 conv), ``layerK+1``
    (3x3 conv + 2x average pool); at 4x4 minibatch standard deviation, a 3x3 conv, a 4x4 conv to 1x1 and
    a linear ``output``. ``widths`` lists the channels of the layers in that order (first = fromrgb).
    """

    ARCH = "progan-discriminator"

    def __init__(self, resolution: int = 64, widths: list[int] | None = None):
        super().__init__()
        check_resolution(resolution)
        n = num_layers(resolution)  # same count as the generator: fromrgb + pairs + two 4x4 convs = n + 1
        widths = list(widths) if widths is not None else [min(512, 2 ** 13 // layer_resolution(n + 1 - max(i, 1)))
                                                          for i in range(0, n + 1)]
        if len(widths) != n + 1:
            raise BadValueError(f"a {resolution}px discriminator has {n + 1} layers; got {len(widths)} widths")
        self.resolution, self.widths = resolution, widths
        self.fromrgb = DiscriminatorBlock(3, widths[0], 1, 0)
        c_in = widths[0]
        for i in range(1, n - 1):
            self.add_module(f"layer{i}", DiscriminatorBlock(c_in, widths[i], 3, 1, downsample=i % 2 == 0))
            c_in = widths[i]
        self.add_module(f"layer{n - 1}", DiscriminatorBlock(c_in + 1, widths[n - 1], 3, 1))
        self.add_module(f"layer{n}", DiscriminatorBlock(widths[n - 1], widths[n], 4, 0))
        self.output = nn.Linear(widths[n], 1)
        self.n_layers = n

    @property
    def layer_names(self) -> list[str]:
        return ["fromrgb"] + [f"layer{i}" for i in range(1, self.n_layers + 1)] + ["output"]

    def config(self) -> dict:
        return {"resolution": self.resolution, "widths": self.widths}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.fromrgb(images)
        for i in range(1, self.n_layers + 1):
            if i == self.n_layers - 1:
                x = minibatch_stddev(x)
            x = getattr(self, f"layer{i}")(x)
        return self.output(x.flatten(1)).squeeze(1)

    def save(self, path: str | Path) -> Path:
        return save_checkpoint(path, self.ARCH, self.config(), self.state_dict())


def generator_config_from_state(tensors: dict[str, torch.Tensor], source: str) -> dict:
    """Resolution, widths and latent size read off the shapes of a generator state dict."""
    outputs = [k for k in tensors if k.startswith("output_") and k.endswith(".conv.weight")]
    if len(outputs) != 1:
        raise CheckpointError(f"checkpoint {source} is not a ProGAN generator: expected one output_RxR.conv.weight "
                              f"key, found {outputs or 'none'}; keys: {', '.join(sorted(tensors)[:12])}")
    resolution = int(outputs[0].split(".")[0].split("x")[-1])
    try:
        check_resolution(resolution)
    except BadValueError as err:
        raise CheckpointError(f"checkpoint {source}: {err}") from None
    widths = []
    for i in range(1, num_layers(resolution) + 1):
        key = f"layer{i}.conv.weight"
        if key not in tensors:
            break
        widths.append(int(tensors[key].shape[0]))
    if not widths:
        raise CheckpointError(f"checkpoint {source} has no layer1.conv.weight")
    latent_dim = int(tensors["layer1.conv.weight"].shape[1])
    if len(widths) != num_layers(resolution):
        widths += [widths[-1]] * (num_layers(resolution) - len(widths))  # let load_state_checked name the gap
    return {"resolution": resolution, "widths": widths, "latent_dim": latent_dim}


def strip_wrapper_prefixes(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept state dicts saved from a DataParallel/Sequential wrapper ("module."/"features." prefixes)."""
    for prefix in ("module.", "features."):
        if tensors and all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors


def load_generator(source: str | Path | dict) -> ProGANGenerator:
    """A generator from one of our checkpoints (.safetensors), an official GAN-dissection state dict
    (.pth / .pt, e.g. ``churchoutdoor_lsun.pth``), or a state dict already in memory."""
    if isinstance(source, dict):
        name, tensors = "<state dict>", strip_wrapper_prefixes(dict(source))
        config = generator_config_from_state(tensors, name)
    else:
        path = Path(source)
        name = str(path)
        if path.suffix == ".safetensors":
            config, tensors = read_checkpoint(path, ProGANGenerator.ARCH)
        else:
            loaded = read_state_dict(path)
            tensors = strip_wrapper_prefixes(loaded.get("state_dict", loaded))
            config = generator_config_from_state(tensors, name)
    model = ProGANGenerator(**config)
    load_state_checked(model, tensors, name)
    return model.eval()


def load_discriminator(path: str | Path) -> ProGANDiscriminator:
    config, tensors = read_checkpoint(path, ProGANDiscriminator.ARCH)
    model = ProGANDiscriminator(**config)
    load_state_checked(model, tensors, str(path))
    return model.eval()
