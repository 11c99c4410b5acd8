"""Planted generators: test cases with known answers, used by the tests and by ``gandissect repair --set plant.units``.

- ``PlantedArtifacts``: chosen units of a ProGAN layer paint a checkerboard blotch where they fire; a repair must
  find exactly those units.
- ``PlantedTreeShare``: a layer whose unit 7 is, by construction, the share of tree pixels of each cell; a
  dissection must label it tree with a high IoU.
- ``PlantedTreePainter``: one extra unit after layer4 paints a tree texture over its cells; its ACE on trees must
  be large, a random unit's near zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gandissect.core.hooks import NetHook, UnknownLayerError
from gandissect.core.latents import seeded_latents
from gandissect.data import scenes
from gandissect.errors import BadValueError
from gandissect.models.progan import ProGANGenerator

TREE = scenes.CLASSES.index("tree")


def checkerboard(size: int) -> torch.Tensor:
    """(3, size, size) a one-pixel magenta/green checkerboard in [-1, 1]: as high-frequency as an image gets."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    sign = ((yy + xx) % 2).float() * 2 - 1
    return torch.stack([sign, -sign, sign])


class PlantedArtifacts(ProGANGenerator):
    """A ProGAN generator whose ``units`` of ``layer`` paint a checkerboard blotch where they fire.

    A unit fires where its map, upsampled bilinearly to the image, exceeds its ``quantile`` (measured on
    ``calibration_n`` latents of stream 0); the blotch fades in over half a threshold above that. Ablating
    the planted units (or folding their ablation into the weights) removes the blotches.
    """

    def __init__(self, generator: ProGANGenerator, layer: str, units: list[int], quantile: float = 0.97,
                 calibration_n: int = 512):
        super().__init__(**generator.config())
        self.load_state_dict(generator.state_dict())
        self.eval()
        if layer not in self.layer_names:
            raise UnknownLayerError(f"unknown layer {layer!r}; this generator has: {', '.join(self.layer_names)}")
        width = getattr(self, layer).conv.out_channels
        bad = [u for u in units if not 0 <= u < width]
        if bad or not units:
            raise BadValueError(f"planted units must be distinct units 0..{width - 1} of {layer}; got {units}")
        self.planted_layer = layer
        self.register_buffer("planted_units", torch.tensor(sorted(set(units))))
        self.register_buffer("planted_thresholds", torch.zeros(len(self.planted_units)))
        self.register_buffer("pattern", checkerboard(self.resolution))
        with torch.no_grad():
            maps = self._upsampled(self._layer_output(seeded_latents(0, calibration_n, self.latent_dim)))
        values = maps.transpose(0, 1).flatten(1)
        self.planted_thresholds.copy_(torch.quantile(values[:, :: max(1, values.shape[1] // 2 ** 23)], quantile,
                                                     dim=1).clamp_min(1e-3))

    def _layer_output(self, z: torch.Tensor) -> torch.Tensor:
        with NetHook(self, [self.planted_layer], stop_after=self.planted_layer) as hook:
            hook(z)
            return hook.retained[self.planted_layer]

    def _upsampled(self, r: torch.Tensor) -> torch.Tensor:
        return F.interpolate(r[:, self.planted_units], size=self.resolution, mode="bilinear", align_corners=False)

    def _paint(self, r: torch.Tensor) -> torch.Tensor:
        t = self.planted_thresholds.view(1, -1, 1, 1)
        return ((self._upsampled(r) - t) / (0.5 * t)).clamp(0, 1).amax(dim=1, keepdim=True)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z.view(z.shape[0], -1, 1, 1) if z.ndim == 2 else z
        paint = None
        for name in self.layer_names:
            x = getattr(self, name)(x)
            if name == self.planted_layer:
                paint = self._paint(x)
        return x * (1 - paint) + paint * self.pattern

    @torch.no_grad()
    def paint(self, z: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) in [0, 1]: how much of each pixel the blotches cover."""
        return self._paint(self._layer_output(z))

    def planted_mask(self, z: torch.Tensor) -> torch.Tensor:
        """(N, H, W) bool: where the blotch covers at least half of a pixel."""
        return self.paint(z)[:, 0] > 0.5


class PlantedTreeShare(nn.Module):
    """A generator plus a 16-unit layer ``planted`` computed from its own output: unit 7 is the share of 'tree'
    pixels (by the segmenter) in each ``factor`` x ``factor`` cell; the other units mix the image's colours, so
    they correlate with sky, grass and the rest."""

    TREE_UNIT = 7

    def __init__(self, generator: nn.Module, segmenter, factor: int):
        super().__init__()
        self.generator, self.segmenter, self.factor = generator, segmenter, factor
        self.latent_dim = generator.latent_dim
        self.planted = nn.Identity()
        self.register_buffer("mix", torch.randn(15, 3, generator=torch.Generator().manual_seed(0)))

    def tree_mask(self, images: torch.Tensor) -> torch.Tensor:
        return (self.segmenter.labels(images) == TREE).any(dim=1, keepdim=True).float()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        images = self.generator(z).clamp(-1, 1)
        small = F.avg_pool2d(self.tree_mask(images), self.factor)
        colours = torch.einsum("uc,nchw->nuhw", self.mix, F.avg_pool2d(images, self.factor))
        self.planted(torch.cat([colours[:, :7], small, colours[:, 7:]], dim=1))
        return images


def tree_texture() -> torch.Tensor:
    """(1, 3, 64, 64): an 8x8 patch of a real tree crown from the built-in world, tiled."""
    for index in range(200):
        image, label = scenes.render_scene(0, index, 64)
        inside = F.avg_pool2d(torch.tensor(label == TREE).float()[None, None], 8, stride=1)[0, 0]
        if inside.max() == 1:
            y, x = divmod(int(inside.flatten().argmax()), inside.shape[1])
            return scenes.to_tensor(image)[None, :, y:y + 8, x:x + 8].repeat(1, 1, 8, 8)
    raise BadValueError("no scene of world seed 0 has a tree crown of 8x8 pixels")


class PlantedTreePainter(nn.Module):
    """A 64px ProGAN generator with a layer ``planted`` after its layer4: its first units (layer4's) feed the rest
    of the generator; one more unit (``PAINTER``, = layer4's width) paints a tree texture over its cells, blended
    by 4 * value - 1 (clamped to [0, 1]). Left alone, that unit is 1 on one 2x2-cell block per image (placed by
    the latent), else 0."""

    def __init__(self, generator: ProGANGenerator, texture: torch.Tensor):
        super().__init__()
        self.generator, self.latent_dim = generator, generator.latent_dim
        self.PAINTER = generator.layer4.conv.out_channels
        self.planted = nn.Identity()
        self.register_buffer("texture", texture)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        g, painter = self.generator, self.PAINTER
        x = z.view(len(z), -1, 1, 1)
        for name in g.layer_names[:4]:
            x = getattr(g, name)(x)
        block = torch.zeros(len(z), 1, 8, 8, device=z.device)
        corner = (z[:, 0] * 1000).long() % 7
        for i, c in enumerate(corner.tolist()):
            block[i, 0, c:c + 2, 6 - c:8 - c] = 1.0
        r = self.planted(torch.cat([x, block], dim=1))
        x = r[:, :painter]
        for name in g.layer_names[4:]:
            x = getattr(g, name)(x)
        # the blend saturates (like a ReLU network's units): any value from 0.5 on paints a full tree
        paint = F.interpolate((4 * r[:, painter:] - 1).clamp(0, 1), size=x.shape[-2:], mode="nearest")
        return (1 - paint) * x + paint * self.texture
