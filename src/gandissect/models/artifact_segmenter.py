"""The artifact segmenter: a discriminator's per-pixel "fakeness" map, thresholded, as a segmenter with one class.

It follows the segmenter protocol (``classes``, ``categories``, ``labels``, ``probs``), so the dissection engine
ranks units against ``artifact`` as it does against trees. How it is built for a repair (D fine-tuned against the
generator, the threshold calibrated on real scenes): ``gandissect.steps.artifacts``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from gandissect.checkpoint import load_state_checked, read_checkpoint, save_checkpoint
from gandissect.core.hooks import NetHook, UnknownLayerError, layer_names
from gandissect.errors import BadValueError
from gandissect.metrics.unit_stats import UnitQuantile, calibrated_edges
from gandissect.models.progan import ProGANDiscriminator


class ArtifactSegmenter(nn.Module):
    """Segments generated images into ``artifact`` / not, from a discriminator's per-pixel fakeness map.

    ``fakeness`` needs gradients of D, so it switches autograd on for itself (it works under ``no_grad``,
    not under ``inference_mode``). D's minibatch-stddev layer mixes images in groups of 4, so a map depends
    slightly on the other images of its batch, as D's score does.
    """

    ARCH = "artifact-segmenter"
    classes = ("-", "artifact")
    categories = {"artifact": "artifact"}

    def __init__(self, discriminator: ProGANDiscriminator, method: str = "gradcam", d_layer: str = "layer3"):
        super().__init__()
        if method not in ("gradcam", "saliency"):
            raise BadValueError(f"artifact map method must be gradcam or saliency, got {method!r}")
        if method == "gradcam" and d_layer not in dict(discriminator.named_modules()):
            raise UnknownLayerError(f"unknown discriminator layer {d_layer!r}; it has: "
                                    f"{', '.join(layer_names(discriminator))}")
        self.discriminator = discriminator.eval().requires_grad_(False)
        self.method, self.d_layer = method, d_layer
        self.register_buffer("threshold", torch.tensor(float("nan")))

    def config(self) -> dict:
        return {"discriminator": self.discriminator.config(), "method": self.method, "d_layer": self.d_layer}

    def fakeness(self, images: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """(N, H, W) non-negative map: how much each pixel's region pushes D towards 'fake'."""
        with torch.enable_grad():
            # keep the caller's graph only when a differentiable result is asked for and there is one to keep
            x = images if create_graph and images.requires_grad else images.detach().requires_grad_(True)
            if self.method == "saliency":
                grad, = torch.autograd.grad(-self.discriminator(x).sum(), x, create_graph=create_graph)
                return F.avg_pool2d(grad.abs().sum(dim=1, keepdim=True), 5, stride=1, padding=2)[:, 0]
            with NetHook(self.discriminator, [self.d_layer]) as hook:
                fake_logit = -hook(x)
                features = hook.retained[self.d_layer]
            grad, = torch.autograd.grad(fake_logit.sum(), features, create_graph=create_graph)
            cam = F.relu((grad.mean(dim=(2, 3), keepdim=True) * features).sum(dim=1, keepdim=True))
            return F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]

    def _check_calibrated(self) -> None:
        if torch.isnan(self.threshold):
            raise BadValueError("the artifact segmenter is not calibrated yet: call calibrate() on real images")

    def labels(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) int64: 1 where the map exceeds the calibrated threshold (``artifact``), else 0."""
        self._check_calibrated()
        return (self.fakeness(images) > self.threshold).long().unsqueeze(1).detach()

    def probs(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 2, H, W) differentiable: a logistic ramp around the threshold, 1/8 of it wide."""
        self._check_calibrated()
        scale = self.threshold.clamp_min(1e-12) / 8
        p = torch.sigmoid((self.fakeness(images, create_graph=True) - self.threshold) / scale).unsqueeze(1)
        return torch.cat([1 - p, p], dim=1)

    def calibrate(self, real_batches, flag_rate: float, total: int | None = None) -> float:
        """Set the threshold to the (1 - flag_rate) quantile of the map over real images' pixels."""
        sketch = None
        for images in tqdm(real_batches, total=total, desc="calibrate artifact threshold", unit="batch",
                           leave=False):
            values = self.fakeness(images).detach().unsqueeze(1)  # (N, 1, H, W): one "unit"
            if sketch is None:  # bins focused around the wanted quantile, from the first batch
                sketch = UnitQuantile(calibrated_edges(values, 1024, 1 - flag_rate), 1 - flag_rate)
            sketch.update(values)
        self.threshold.fill_(float(sketch.compute().reshape(-1)[0]))
        return float(self.threshold)

    @torch.no_grad()
    def flag_rate(self, batches) -> float:
        """The share of pixels flagged over ``batches`` of images."""
        flagged = total = 0
        for images in batches:
            labels = self.labels(images)
            flagged, total = flagged + int(labels.sum()), total + labels.numel()
        return flagged / max(total, 1)

    def save(self, path: str | Path) -> Path:
        return save_checkpoint(path, self.ARCH, self.config(), self.state_dict())

    @classmethod
    def load(cls, path: str | Path) -> "ArtifactSegmenter":
        config, tensors = read_checkpoint(path, cls.ARCH)
        model = cls(ProGANDiscriminator(**config["discriminator"]), config["method"], config["d_layer"])
        load_state_checked(model, tensors, str(path))
        return model.eval()
