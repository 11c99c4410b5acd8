"""Frechet distance between real and generated images, as a streaming torchmetrics metric.

Features of both image sets are reduced to float64 sums (count, sum, sum of outer products), so
memory does not grow with the number of images and Lightning/torch.distributed add the sums of all
processes for free. ``compute`` turns them into means and covariances and calls ``frechet_distance``,
which follows pytorch-fid's ``calculate_frechet_distance`` step for step.

Backbones (``build_fd``): ``inception`` is pytorch-fid's FID Inception (pool3, 2048-d) and its number
is called FID; ``scenes`` is the shipped scene segmenter's pooled features (FD-scenes); any other
``nn.Module`` mapping images in [-1, 1] to (N, D) features plugs in as well.
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from torchmetrics import Metric
from tqdm import tqdm

from gandissect import defaults
from gandissect.checkpoint import read_state_dict
from gandissect.errors import BadValueError, CheckpointError
from gandissect.io import atomic_path
from gandissect.models.segmenter import SceneSegmenter


def _sqrtm(matrix: np.ndarray) -> np.ndarray:
    # The same call as pytorch-fid's, without its `disp=False`, which SciPy 1.18 removes (the result is identical).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        return linalg.sqrtm(matrix)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)), computed as pytorch-fid computes it."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise BadValueError(f"feature statistics differ in size: mean {mu1.shape} vs {mu2.shape}, "
                            f"covariance {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    covmean = _sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        warnings.warn(f"Frechet distance: the covariance product is singular; adding {eps} to the diagonal of "
                      "both covariances (as pytorch-fid does)", RuntimeWarning, stacklevel=2)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise BadValueError(f"Frechet distance: the matrix square root has an imaginary component of "
                                f"{np.max(np.abs(covmean.imag)):.3g}; the statistics are numerically unusable")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def mean_and_covariance(count: torch.Tensor, total: torch.Tensor, outer: torch.Tensor) -> tuple[np.ndarray, ...]:
    """Mean and unbiased covariance (as ``np.cov(rowvar=False)``) from streamed float64 sums."""
    n = float(count)
    if n < 2:
        raise BadValueError(f"need at least 2 images per side for a Frechet distance, got {int(n)}")
    mu = total / n
    sigma = (outer - n * torch.outer(mu, mu)) / (n - 1)
    return mu.cpu().numpy(), sigma.cpu().numpy()


def _warn_if_singular(name: str, side: str, count: int, num_features: int) -> None:
    if 0 < count <= num_features:
        warnings.warn(f"{name}: only {count} {side} images for {num_features} features; the covariance is "
                      "singular and the distance is unreliable (use more images than features)",
                      RuntimeWarning, stacklevel=3)


class FrechetDistance(Metric):
    """Streams features of real and generated images; ``compute()`` gives their Frechet distance.

    ``backbone`` maps images (N, 3, H, W) in [-1, 1] to features (N, D) (or (N, D, h, w), averaged over
    space as pytorch-fid does); it is frozen and kept in eval mode. ``update(images, real=...)`` feeds
    images; ``update_features`` feeds ready-made features. Real statistics may instead be fixed with
    ``set_real_statistics(mu, sigma)`` (e.g. from a pytorch-fid ``.npz``). ``name`` says what the number
    is (``FID`` only for pytorch-fid's Inception; ``FD-scenes`` for the scene segmenter).
    Calling the metric (``metric(images, real=...)``) only feeds it: a distance per batch would be
    meaningless and costs a matrix square root.
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, backbone: torch.nn.Module | None, num_features: int, name: str = "FD", **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone.eval().requires_grad_(False) if backbone is not None else None
        self.num_features = num_features
        self.name = name
        for side in ("real", "fake"):
            self.add_state(f"{side}_count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_sum", torch.zeros(num_features, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_outer", torch.zeros(num_features, num_features, dtype=torch.float64),
                           dist_reduce_fx="sum")
        self._fixed_real: tuple[np.ndarray, np.ndarray] | None = None
        self._fixed_real_count: int | None = None

    def train(self, mode: bool = True) -> "FrechetDistance":
        # A LightningModule's .train() reaches every submodule; batch norm in the backbone must stay in eval mode.
        super().train(mode)
        if self.backbone is not None:
            self.backbone.eval()
        return self

    def forward(self, *args, **kwargs) -> None:
        self.update(*args, **kwargs)

    def set_real_statistics(self, mu, sigma, count: int | None = None) -> None:
        """Fix the real side (``count``: how many images they came from, if known - for the singularity warning)."""
        mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
        if mu.shape != (self.num_features,) or sigma.shape != (self.num_features, self.num_features):
            raise BadValueError(f"real statistics have mean {mu.shape} and covariance {sigma.shape}; {self.name} "
                                f"expects ({self.num_features},) and ({self.num_features}, {self.num_features})")
        if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
            raise BadValueError("real statistics hold non-finite values (NaN or Inf)")
        self._fixed_real, self._fixed_real_count = (mu, sigma), count
        self._computed = None  # torchmetrics' cached compute() result is stale now

    @torch.no_grad()
    def update(self, images: torch.Tensor | None = None, *, real: bool, features: torch.Tensor | None = None) -> None:
        """Feed images (through the backbone) or ready-made ``features`` to the real or the generated side."""
        if features is None:
            if self.backbone is None:
                raise BadValueError("this FrechetDistance has no backbone; feed features with update_features")
            features = self.backbone(images)
        if features.ndim == 4:
            features = F.adaptive_avg_pool2d(features, 1).flatten(1)
        if features.ndim != 2 or features.shape[1] != self.num_features:
            raise BadValueError(f"features must be (N, {self.num_features}), got {tuple(features.shape)}")
        side = "real" if real else "fake"
        f = features.detach().to(getattr(self, f"{side}_sum").device, torch.float64)
        setattr(self, f"{side}_count", getattr(self, f"{side}_count") + f.shape[0])
        setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + f.sum(dim=0))
        setattr(self, f"{side}_outer", getattr(self, f"{side}_outer") + f.T @ f)

    def update_features(self, features: torch.Tensor, real: bool) -> None:
        self.update(features=features, real=real)

    def statistics(self, real: bool, sync: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sigma) of one side, as pytorch-fid's ``calculate_activation_statistics`` returns them.

        Under torch.distributed they cover the images of all processes (every process must call this),
        unless ``sync=False``.
        """
        if real and self._fixed_real is not None:
            if self._fixed_real_count is not None:
                _warn_if_singular(self.name, "real", self._fixed_real_count, self.num_features)
            return self._fixed_real
        side = "real" if real else "fake"
        nested = self._is_synced  # inside compute(), which has synced already and will unsync itself
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=sync and not nested,
                               should_unsync=not nested):
            count = getattr(self, f"{side}_count")
            _warn_if_singular(self.name, side, int(count), self.num_features)
            return mean_and_covariance(count, getattr(self, f"{side}_sum"), getattr(self, f"{side}_outer"))

    def compute(self) -> torch.Tensor:
        mu1, sigma1 = self.statistics(real=False)
        mu2, sigma2 = self.statistics(real=True)
        return torch.tensor(frechet_distance(mu1, sigma1, mu2, sigma2), dtype=torch.float64)


# --- backbones ---------------------------------------------------------------------------------------------


def _memory_format(channels_last: bool) -> torch.memory_format:
    # Channels-last convolutions are about 1.5x faster on CPU; the features then differ from the default
    # layout's by float32 rounding (~1e-7 relative), not more.
    return torch.channels_last if channels_last else torch.contiguous_format


class SegmenterFeatures(torch.nn.Module):
    """The scene segmenter's pooled features as an FD backbone (the distance is then called FD-scenes)."""

    def __init__(self, segmenter, channels_last: bool = True):
        super().__init__()
        self.segmenter = segmenter.eval().requires_grad_(False)
        self.num_features = segmenter.widths[-1]
        self.memory_format = _memory_format(channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.segmenter.features(images.clamp(-1, 1).contiguous(memory_format=self.memory_format))


def scenes_fd(segmenter, channels_last: bool = True, **kwargs) -> FrechetDistance:
    backbone = SegmenterFeatures(segmenter, channels_last)
    return FrechetDistance(backbone, backbone.num_features, name="FD-scenes", **kwargs)


def fid_inception_architecture() -> torch.nn.Module:
    """pytorch-fid's ``fid_inception_v3()`` network, without loading its weights (it always downloads them)."""
    from pytorch_fid import inception as pfi

    net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pfi.FIDInceptionE_1(1280)
    net.Mixed_7c = pfi.FIDInceptionE_2(2048)
    return net


def inception_state_dict(weights: str | Path | None) -> dict[str, torch.Tensor]:
    """pytorch-fid's Inception weights: from the local file ``weights``, else pytorch-fid's own URL and cache
    (``$TORCH_HOME/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth``; downloaded on first use)."""
    if weights is None:
        from pytorch_fid.inception import FID_WEIGHTS_URL, load_state_dict_from_url

        try:
            return load_state_dict_from_url(FID_WEIGHTS_URL, progress=True)
        except OSError as err:
            raise CheckpointError(f"could not download pytorch-fid's Inception weights from {FID_WEIGHTS_URL} "
                                  f"({err}); fetch that file elsewhere and give its path as the weights") from None
    return read_state_dict(weights, "Inception weights")


def load_fid_inception(weights: str | Path | None = None) -> torch.nn.Module:
    """pytorch-fid's FID Inception with its weights (see ``inception_state_dict``)."""
    net = fid_inception_architecture()
    state = inception_state_dict(weights)
    result = net.load_state_dict(state, strict=False) if isinstance(state, dict) else None
    if result is None or result.missing_keys or result.unexpected_keys:
        detail = (f"missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}" if result
                  else f"a {type(state).__name__}")
        raise CheckpointError(f"{weights or 'the downloaded file'} does not hold pytorch-fid's FID Inception weights "
                              f"(pt_inception-2015-12-05): {detail}")
    return net.eval()


def random_inception_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict of pytorch-fid's weights-file format with random values (He-normal convolutions, batch
    norm near identity): for tests and benchmarks where the real file is absent. Its numbers are not FID."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in fid_inception_architecture().state_dict().items():
        if value.ndim == 4:
            state[key] = torch.randn(value.shape, generator=gen) * (2.0 / value[0].numel()) ** 0.5
        elif key.endswith("running_var") or (value.ndim == 1 and key.endswith("bn.weight")):
            state[key] = 0.75 + 0.5 * torch.rand(value.shape, generator=gen)
        elif value.is_floating_point():
            state[key] = 0.05 * torch.randn(value.shape, generator=gen)
        else:
            state[key] = value.clone()
    return state


class InceptionFeatures(torch.nn.Module):
    """pytorch-fid's ``InceptionV3([3])``: pool3 features (N, 2048) of images in [-1, 1].

    The images go through pytorch-fid's own steps: to [0, 1] (what its data loader gives), bilinear
    resize to 299x299, back to [-1, 1]. ``channels_last`` runs the same network in channels-last memory
    order (about 1.5x faster on CPU; features then agree with pytorch-fid's to float32 rounding); with
    ``channels_last=False`` they are pytorch-fid's bit for bit.
    """

    num_features = 2048

    def __init__(self, weights: str | Path | None = None, channels_last: bool = True):
        super().__init__()
        net = load_fid_inception(weights)
        pool = torch.nn.MaxPool2d(kernel_size=3, stride=2)
        self.blocks = torch.nn.Sequential(
            net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, pool,
            net.Conv2d_3b_1x1, net.Conv2d_4a_3x3, pool,
            net.Mixed_5b, net.Mixed_5c, net.Mixed_5d, net.Mixed_6a, net.Mixed_6b, net.Mixed_6c, net.Mixed_6d,
            net.Mixed_6e, net.Mixed_7a, net.Mixed_7b, net.Mixed_7c, torch.nn.AdaptiveAvgPool2d((1, 1)),
        ).eval()
        self.memory_format = _memory_format(channels_last)
        self.blocks.to(memory_format=self.memory_format)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.clamp(-1, 1) + 1) / 2
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        return self.blocks(x.contiguous(memory_format=self.memory_format)).flatten(1)


def import_backbone(spec: str) -> torch.nn.Module:
    """``package.module:factory`` -> ``factory()``, an nn.Module mapping images in [-1, 1] to features."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise BadValueError(f"unknown backbone {spec!r}; expected inception, scenes or package.module:factory")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise BadValueError(f"backbone {spec!r} cannot be imported ({err})") from None
    backbone = factory()
    if not isinstance(backbone, torch.nn.Module):
        raise BadValueError(f"backbone {spec!r} gave a {type(backbone).__name__}, not a torch.nn.Module")
    return backbone


def _num_features(backbone: torch.nn.Module) -> int:
    count = getattr(backbone, "num_features", None)
    if isinstance(count, int):
        return count
    with torch.no_grad():  # no declared size: ask the backbone on two blank 64x64 images
        probe = backbone.eval()(torch.zeros(2, 3, 64, 64))
    return probe.shape[1]


def build_fd(backbone: str | torch.nn.Module = "scenes", weights: str | Path | None = None,
             segmenter_path: str | Path = defaults.SCENE_SEGMENTER, name: str | None = None,
             channels_last: bool = True, **kwargs) -> FrechetDistance:
    """The Frechet distance metric for a backbone: ``inception`` (FID; ``weights`` a local pytorch-fid weights
    file, else pytorch-fid's download), ``scenes`` (FD-scenes; the segmenter at ``segmenter_path``),
    ``package.module:factory``, or an nn.Module (FD-<class>; it may declare ``num_features``).
    ``channels_last=False`` gives pytorch-fid's Inception features bit for bit (and is slower on CPU)."""
    if backbone == "inception":
        if name not in (None, "FID"):
            raise BadValueError(f"the inception backbone gives FID; it cannot be named {name!r}")
        return FrechetDistance(InceptionFeatures(weights, channels_last), 2048, name="FID", **kwargs)
    if weights is not None:
        raise BadValueError(f"weights are for the inception backbone only, not {backbone!r}")
    if backbone == "scenes":
        fd = scenes_fd(SceneSegmenter.load(segmenter_path), channels_last, **kwargs)
        return fd if name is None else _renamed(fd, name)
    if isinstance(backbone, str):
        default_name = f"FD-{backbone.partition(':')[2]}"
        backbone = import_backbone(backbone)
    elif isinstance(backbone, torch.nn.Module):
        default_name = f"FD-{type(backbone).__name__}"
    else:
        raise BadValueError(f"a backbone is a name or a torch.nn.Module, not a {type(backbone).__name__}")
    return _renamed(FrechetDistance(backbone, _num_features(backbone), **kwargs), name or default_name)


def _renamed(fd: FrechetDistance, name: str) -> FrechetDistance:
    if name == "FID":
        raise BadValueError("only the inception backbone (pytorch-fid's Inception) gives a number called FID")
    fd.name = name
    return fd


# --- statistics files (pytorch-fid's .npz) --------------------------------------------------------------------


def save_statistics(path: str | Path, mu: np.ndarray, sigma: np.ndarray, name: str | None = None,
                    count: int | None = None) -> Path:
    """Write pytorch-fid's statistics format (``mu``, ``sigma``; pytorch-fid ignores our extra ``name``, ``count``)."""
    extra = {}
    if name is not None:
        extra["name"] = np.array(name)
    if count is not None:
        extra["count"] = np.array(count, np.int64)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a file object: np.savez would append .npz to a name
        np.savez_compressed(fh, mu=mu, sigma=sigma, **extra)
    return Path(path)


def load_statistics(path: str | Path) -> dict:
    """``{"mu", "sigma", "name", "count"}`` of a pytorch-fid ``.npz`` (name and count None when not recorded)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"statistics file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = set(f.keys())
            stats = {key: f[key][()] for key in keys & {"mu", "sigma", "name", "count"}}
    except Exception as err:  # np.load raises many kinds for a file that is not an .npz archive
        raise CheckpointError(f"statistics file {path} is corrupt or not an .npz file ({err})") from None
    if not {"mu", "sigma"} <= keys:
        raise CheckpointError(f"statistics file {path} has no mu and sigma arrays (it has: {', '.join(sorted(keys))})")
    return {"mu": stats["mu"], "sigma": stats["sigma"],
            "name": str(stats["name"]) if "name" in stats else None,
            "count": int(stats["count"]) if "count" in stats else None}


# --- feeding images -----------------------------------------------------------------------------------------


def feed(metric: FrechetDistance, batches: Iterable[torch.Tensor], real: bool, total: int | None = None,
         desc: str | None = None) -> None:
    """Feed image batches to one side of the metric, with a progress bar on stderr."""
    device = metric.real_sum.device
    with tqdm(total=total, desc=desc or metric.name, unit="img", dynamic_ncols=True) as bar:
        for images in batches:
            metric.update(images.to(device), real=real)
            bar.update(images.shape[0])
