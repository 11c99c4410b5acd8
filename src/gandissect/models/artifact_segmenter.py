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
from gandissect.config import ARTIFACT_MAPS
from gandissect.core.hooks import NetHook, UnknownLayerError, layer_names
from gandissect.errors import BadValueError
from gandissect.metrics.unit_stats import UnitQuantile, calibrated_edges
from gandissect.models.generators import build_discriminator, load_discriminator


def gaussian_blur(images: torch.Tensor, sigma: float = 2.0) -> torch.Tensor:
    """Separable Gaussian blur with reflected borders (radius 2.5 sigma, at most the image size - 1)."""
    radius = max(1, min(int(2.5 * sigma + 0.5), images.shape[-1] - 1, images.shape[-2] - 1))
    t = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-t ** 2 / (2 * sigma ** 2))
    kernel = (kernel / kernel.sum()).repeat(images.shape[1], 1, 1, 1)  # (C, 1, 1, taps)
    x = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel, groups=images.shape[1])
    return F.conv2d(x, kernel.transpose(2, 3), groups=images.shape[1])


def window_starts(size: int, cell: int, stride: int) -> list[int]:
    """Start offsets of windows of ``cell`` pixels every ``stride`` pixels, the last one flush with the edge."""
    return sorted(set(range(0, size - cell + 1, stride)) | {size - cell})


class ArtifactSegmenter(nn.Module):
    """Segments generated images into ``artifact`` / not, from a discriminator's per-pixel fakeness map.

    Maps (``method``), each "how much this region pushes D towards fake", measured side by side in
    ``bench/artifact_maps.py``:

    - ``occlusion``: D's realness gain when a ``cell`` x ``cell`` window (every ``stride`` pixels) is replaced by a
      blurred copy of itself; overlapping windows are averaged. Blurring keeps the layout and colours and removes
      the local detail, so a region whose detail D finds fake gains realness when blurred.
    - ``gradcam``: Grad-CAM of the fake logit at D's layer ``d_layer``.
    - ``saliency``, ``grad_x_input``, ``integrated_gradients``: the input gradient of the fake logit (absolute),
      times the input, or integrated from a blurred copy of the image (``ig_steps`` points), summed over colours.

    Maps that need gradients of D switch autograd on for themselves (they work under ``no_grad``, not under
    ``inference_mode``). D's minibatch-stddev layer mixes images in groups of 4, so a map depends slightly on the
    other images of its batch, as D's score does.
    """

    ARCH = "artifact-segmenter"
    classes = ("-", "artifact")
    categories = {"artifact": "artifact"}

    def __init__(self, discriminator: nn.Module, method: str = "occlusion", d_layer: str = "layer3",
                 cell: int = 16, stride: int = 16, ig_steps: int = 16):
        super().__init__()
        if method not in ARTIFACT_MAPS:
            raise BadValueError(f"artifact map method must be one of {', '.join(ARTIFACT_MAPS)}, got {method!r}")
        if method == "gradcam" and d_layer not in dict(discriminator.named_modules()):
            raise UnknownLayerError(f"unknown discriminator layer {d_layer!r}; it has: "
                                    f"{', '.join(layer_names(discriminator))}")
        if not (0 < stride <= cell and cell >= 1 and ig_steps >= 1):
            raise BadValueError(f"occlusion needs 0 < stride <= cell and ig_steps >= 1; got cell={cell}, "
                                f"stride={stride}, ig_steps={ig_steps}")
        self.discriminator = discriminator.eval().requires_grad_(False)
        self.method, self.d_layer, self.cell, self.stride, self.ig_steps = method, d_layer, cell, stride, ig_steps
        self.register_buffer("threshold", torch.tensor(float("nan")))

    def config(self) -> dict:
        d = self.discriminator
        if hasattr(d, "ARCH"):
            source = {"discriminator_arch": d.ARCH, "discriminator": d.config()}
        elif getattr(d, "factory", None):  # rebuilt by its factory, then given the saved weights
            source = {"discriminator_factory": d.factory}
        else:
            raise BadValueError(f"cannot save an artifact segmenter around a {type(d).__name__}: a discriminator "
                                "needs a gandissect architecture or a package.module:function factory")
        return {**source, "method": self.method, "d_layer": self.d_layer, "cell": self.cell, "stride": self.stride,
                "ig_steps": self.ig_steps}

    def settings(self) -> dict:
        """The method and the options it reads (for records and reports)."""
        options = {"gradcam": ("d_layer",), "occlusion": ("cell", "stride"), "integrated_gradients": ("ig_steps",)}
        return {"method": self.method, **{key: getattr(self, key) for key in options.get(self.method, ())}}

    def fakeness(self, images: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """(N, H, W) non-negative map: how much each pixel's region pushes D towards 'fake'."""
        if self.method == "occlusion":
            with torch.set_grad_enabled(create_graph and images.requires_grad):
                return self._occlusion(images)
        with torch.enable_grad():
            # keep the caller's graph only when a differentiable result is asked for and there is one to keep
            x = images if create_graph and images.requires_grad else images.detach().requires_grad_(True)
            if self.method == "gradcam":
                return self._gradcam(x, create_graph)
            if self.method == "integrated_gradients":
                baseline = gaussian_blur(x)
                grad = 0
                for i in range(self.ig_steps):  # the midpoint rule along the straight path from the baseline
                    point = baseline + (i + 0.5) / self.ig_steps * (x - baseline)
                    grad = grad + torch.autograd.grad(-self.discriminator(point).sum(), point,
                                                      create_graph=create_graph)[0] / self.ig_steps
                attribution = (x - baseline) * grad
                per_pixel = F.relu(attribution.sum(dim=1, keepdim=True))
            else:
                grad, = torch.autograd.grad(-self.discriminator(x).sum(), x, create_graph=create_graph)
                per_pixel = (grad.abs().sum(dim=1, keepdim=True) if self.method == "saliency" else
                             F.relu((grad * x).sum(dim=1, keepdim=True)))
            return F.avg_pool2d(per_pixel, 5, stride=1, padding=2, count_include_pad=False)[:, 0]

    def _gradcam(self, x: torch.Tensor, create_graph: bool) -> torch.Tensor:
        with NetHook(self.discriminator, [self.d_layer]) as hook:
            fake_logit = -hook(x)
            features = hook.retained[self.d_layer]
        grad, = torch.autograd.grad(fake_logit.sum(), features, create_graph=create_graph)
        cam = F.relu((grad.mean(dim=(2, 3), keepdim=True) * features).sum(dim=1, keepdim=True))
        return F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]

    def _occlusion(self, images: torch.Tensor) -> torch.Tensor:
        n, _, h, w = images.shape
        cell_h, cell_w = min(self.cell, h), min(self.cell, w)
        blurred = gaussian_blur(images)
        base = self.discriminator(images)
        gain, count = images.new_zeros(n, h, w), images.new_zeros(h, w)
        for top in window_starts(h, cell_h, self.stride):
            for left in window_starts(w, cell_w, self.stride):
                window = images.new_zeros(h, w)
                window[top:top + cell_h, left:left + cell_w] = 1
                occluded = images + (blurred - images) * window
                gain = gain + (self.discriminator(occluded) - base).view(n, 1, 1) * window
                count = count + window
        return F.relu(gain / count)

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
    def flagged_shares(self, batches) -> torch.Tensor:
        """Per image of ``batches``, the share of its pixels flagged (float64, on the CPU)."""
        shares = [self.labels(images).flatten(1).double().mean(dim=1).cpu() for images in batches]
        return torch.cat(shares) if shares else torch.zeros(0, dtype=torch.float64)

    def flag_rate(self, batches) -> float:
        """The share of pixels flagged over ``batches`` of images (of one size)."""
        shares = self.flagged_shares(batches)
        return float(shares.mean()) if len(shares) else 0.0

    def save(self, path: str | Path) -> Path:
        return save_checkpoint(path, self.ARCH, self.config(), self.state_dict())

    @classmethod
    def load(cls, path: str | Path) -> "ArtifactSegmenter":
        config, tensors = read_checkpoint(path, cls.ARCH)
        options = {key: config[key] for key in ("cell", "stride", "ig_steps") if key in config}
        if "discriminator_factory" in config:
            discriminator = load_discriminator(config["discriminator_factory"])
        else:  # files from before StyleGAN2 support hold a ProGAN discriminator
            discriminator = build_discriminator(config.get("discriminator_arch", "progan-discriminator"),
                                                config["discriminator"])
        model = cls(discriminator, config["method"], config["d_layer"], **options)
        load_state_checked(model, tensors, str(path))
        return model.eval()


def flag_signal(real_shares: torch.Tensor, generated_shares: torch.Tensor, z: float = 2.0) -> dict:
    """Does the map flag generated images more than real ones, beyond the sampling noise of both? From per-image
    flagged shares: the means, their standard errors, the ratio, and ``has_signal`` (the generated mean exceeds the
    real one by more than ``z`` standard errors of the difference)."""
    def mean_se(shares: torch.Tensor) -> tuple[float, float]:
        n = len(shares)
        return float(shares.mean()), float(shares.std() / n ** 0.5) if n > 1 else float("inf")
    (real, real_se), (generated, generated_se) = mean_se(real_shares.double()), mean_se(generated_shares.double())
    noise = (real_se ** 2 + generated_se ** 2) ** 0.5
    return {"real_share": real, "real_se": real_se, "real_n": len(real_shares), "generated_share": generated,
            "generated_se": generated_se, "generated_n": len(generated_shares),
            "ratio": generated / real if real > 0 else None,
            "z": z, "has_signal": bool(generated - real > z * noise)}
