"""Is our streaming Frechet-distance metric as fast as pytorch-fid's statistics path? Both measured here, in one run.

For the same images (64x64 scenes of world seed 0) and the same backbone, prints images per second of
  - pytorch-fid's path: the loop of ``pytorch_fid.fid_score.get_activations`` (``model(batch)[0]``, pooled,
    to a float64 numpy array) on images already in memory, then ``np.mean`` / ``np.cov``, as
    ``calculate_activation_statistics`` does - file decoding is left out of both sides;
  - our ``FrechetDistance``: ``update`` per batch (float64 sums) and ``statistics()`` at the end, with its
    default channels-last layout and with ``channels_last=False`` (pytorch-fid's features bit for bit);
and the ratio ours / pytorch-fid's (target >= 1). The paths take turns batch by batch, so load from
other programs slows them alike. Backbones: pytorch-fid's Inception (random weights in
pytorch-fid's file format, loaded by pytorch-fid from its cache - nothing is downloaded) and the shipped
scene segmenter. Last, the time of the final distance for 2048-d statistics.

    python bench/fid_speed.py [--n 20] [--scenes-n 500] [--batch-size 10]

With fewer images than features the statistics are singular; that does not matter for speed, so the
warning is silenced here.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gandissect.data import scenes
from gandissect.metrics.fid import build_fd, frechet_distance, random_inception_weights
from gandissect.models.segmenter import SceneSegmenter
from gandissect.core.runs import machine_description

SEGMENTER = Path(__file__).resolve().parents[1] / "checkpoints" / "scene_segmenter.safetensors"


class PytorchFidSegmenter(torch.nn.Module):
    """The scene segmenter's features in pytorch-fid's model interface: [0, 1] images -> [(N, D, 1, 1)]."""

    def __init__(self, segmenter):
        super().__init__()
        self.segmenter = segmenter

    def forward(self, x):
        return [self.segmenter.features(2 * x - 1)[:, :, None, None]]


class PytorchFidPath:
    """``calculate_activation_statistics`` of pytorch-fid 0.3.0, fed in-memory batches instead of its data loader."""

    def __init__(self, model, n: int, dims: int):
        self.model = model.eval()
        self.pred_arr = np.empty((n, dims))
        self.start_idx = 0

    @torch.no_grad()
    def feed(self, images: torch.Tensor) -> float:
        batch = (images + 1) / 2  # what pytorch-fid's data loader gives (not timed on its side)
        start = time.perf_counter()
        pred = self.model(batch)[0]
        if pred.size(2) != 1 or pred.size(3) != 1:
            pred = F.adaptive_avg_pool2d(pred, output_size=(1, 1))
        pred = pred.squeeze(3).squeeze(2).cpu().numpy()
        self.pred_arr[self.start_idx:self.start_idx + pred.shape[0]] = pred
        self.start_idx = self.start_idx + pred.shape[0]
        return time.perf_counter() - start

    def finish(self):
        return np.mean(self.pred_arr, axis=0), np.cov(self.pred_arr, rowvar=False)


class OurPath:
    def __init__(self, metric):
        self.metric = metric

    def feed(self, images: torch.Tensor) -> float:
        start = time.perf_counter()
        self.metric.update(images, real=True)
        return time.perf_counter() - start

    def finish(self):
        return self.metric.statistics(real=True)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def compare(label: str, theirs_model, ours: dict, images: torch.Tensor, batch_size: int) -> None:
    """Batch by batch in turn (the order rotating), so that other load on the machine hits every path alike."""
    dims = next(iter(ours.values())).num_features
    paths = {"pytorch-fid statistics path": PytorchFidPath(theirs_model, len(images), dims)}
    paths.update({f"ours, {name}": OurPath(metric) for name, metric in ours.items()})
    for path in paths.values():  # warm-up: first calls pay one-off set-up costs
        with torch.no_grad():
            (path.model if isinstance(path, PytorchFidPath) else path.metric.backbone)(images[:2])
    seconds = dict.fromkeys(paths, 0.0)
    names = list(paths)
    for i, batch in enumerate(images.split(batch_size)):
        for name in names[i % len(names):] + names[:i % len(names)]:
            seconds[name] += paths[name].feed(batch)
    stats = {}
    for name, path in paths.items():
        stats[name], finish_seconds = timed(path.finish)
        seconds[name] += finish_seconds
    theirs_name = names[0]
    theirs_rate = len(images) / seconds[theirs_name]
    print(f"{label}: {len(images)} images, batch {batch_size}, {dims}-d features")
    print(f"  {theirs_name:40s} {theirs_rate:8.2f} img/s")
    mu, sigma = stats[theirs_name]
    for name in names[1:]:
        rate = len(images) / seconds[name]
        agree = max(np.abs(stats[name][0] - mu).max(), np.abs(stats[name][1] - sigma).max())
        print(f"  {name:40s} {rate:8.2f} img/s   ratio ours/pytorch-fid {rate / theirs_rate:5.2f}"
              f"   max |difference| of mu, sigma {agree:.1e}")


def distance_time(dims: int = 2048, n: int = 2500) -> None:
    """Our final step is pytorch-fid's (the same scipy sqrtm): its cost for full-size statistics."""
    gen = np.random.default_rng(0)
    stats = [(f.mean(axis=0), np.cov(f, rowvar=False)) for f in
             (gen.normal(size=(n, dims)), gen.normal(size=(n, dims)) * 1.1 + 0.1)]
    value, seconds = timed(lambda: frechet_distance(*stats[0], *stats[1]))
    print(f"final distance, {dims}-d statistics (matrix square root): {seconds:.2f} s (value {value:.4f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20, help="images through Inception (299x299: slow on CPU)")
    parser.add_argument("--scenes-n", type=int, default=500, help="images through the scene segmenter")
    parser.add_argument("--batch-size", type=int, default=10, help="pytorch-fid's default is 50")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".* images for .* features", category=RuntimeWarning)
    print(f"machine: {machine_description()}")
    dataset = scenes.SceneDataset(0, max(args.n, args.scenes_n))
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])

    with tempfile.TemporaryDirectory() as tmp:
        from pytorch_fid.inception import FID_WEIGHTS_URL, InceptionV3

        os.environ["TORCH_HOME"] = tmp  # pytorch-fid reads the weights from its cache instead of downloading
        weights = Path(tmp) / "hub" / "checkpoints" / FID_WEIGHTS_URL.rsplit("/", 1)[1]
        weights.parent.mkdir(parents=True)
        torch.save(random_inception_weights(seed=0), weights)
        theirs = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
        ours = {"default (channels-last)": build_fd("inception", weights=weights),
                "channels_last=False (bit-exact)": build_fd("inception", weights=weights, channels_last=False)}
        compare("Inception (pytorch-fid's, random weights)", theirs, ours, images[:args.n], args.batch_size)

    segmenter = SceneSegmenter.load(SEGMENTER)
    ours = {"default (channels-last)": build_fd("scenes", segmenter_path=SEGMENTER),
            "channels_last=False": build_fd("scenes", segmenter_path=SEGMENTER, channels_last=False)}
    compare("scene segmenter (FD-scenes)", PytorchFidSegmenter(segmenter), ours, images[:args.scenes_n],
            args.batch_size)
    distance_time()


if __name__ == "__main__":
    main()
