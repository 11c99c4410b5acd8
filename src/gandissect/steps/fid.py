"""``gandissect fid stats`` and ``gandissect fid score``: real-data statistics as pytorch-fid's ``.npz``, and the
Frechet distance of a generator's images to them (FID with pytorch-fid's Inception, or FD-scenes)."""

from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from gandissect import defaults
from gandissect.core.hooks import stop_on_non_finite
from gandissect.core.latents import generated_batches
from gandissect.core.runs import finish_run, start_run
from gandissect.data.images import folder_batches, scene_batches
from gandissect.errors import BadValueError, GandissectError
from gandissect.io import write_json
from gandissect.metrics.fid import FrechetDistance, build_fd, feed, load_statistics, save_statistics
from gandissect.models.generators import load_generator


def _metric(backbone: str, weights: str | None, segmenter: str, device: str | None) -> FrechetDistance:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return build_fd(backbone, weights=weights, segmenter_path=segmenter).to(device)


def _finish(run_dir: Path, results: dict, caught: list) -> dict:
    """Say every warning (too few images for the features, a singular covariance) on stderr and in the results."""
    results["warnings"] = [str(w.message) for w in caught]
    for message in results["warnings"]:
        print(f"gandissect: warning: {message}", file=sys.stderr)
    write_json(run_dir / "results.json", results)
    finish_run(run_dir)
    return {**results, "run_dir": str(run_dir)}


def run_fid_stats(data: str, n: int, out: str | Path, seed: int = 0, size: int = 64, backbone: str = "scenes",
                  weights: str | None = None, segmenter: str = defaults.SCENE_SEGMENTER, batch_size: int = 50,
                  device: str | None = None, name: str = "fid-stats", variant: str = "default") -> dict:
    """Feature statistics of ``n`` real images (``data``: "scenes" or a folder), saved at ``out``."""
    if n < 2 or batch_size < 1:
        raise BadValueError(f"--n {n}, --batch-size {batch_size}: statistics need n >= 2 images and batches of >= 1")
    if data == "scenes":
        batches = scene_batches(seed, n, size, batch_size, variant=variant)
    else:
        batches = folder_batches(data, n, batch_size)
    metric = _metric(backbone, weights, segmenter, device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        feed(metric, batches, real=True, total=n, desc=f"{metric.name} statistics")
        mu, sigma = metric.statistics(real=True)
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise GandissectError(f"fid stats: the {metric.name} statistics of {data} came out non-finite (NaN or Inf); "
                              "nothing was saved")
    # the run directory is made once the statistics exist: a run that fails on the way leaves none behind
    run_dir = start_run(name, {"command": "fid stats", "data": data, "n": n, "seed": seed, "size": size,
                               "variant": variant, "backbone": backbone, "weights": weights, "segmenter": segmenter,
                               "out": str(out)})
    save_statistics(out, mu, sigma, name=metric.name, count=n)
    results = {"metric": metric.name, "statistics": str(out), "n": n, "data": data,
               "seed": seed if data == "scenes" else None, "num_features": metric.num_features}
    return _finish(run_dir, results, caught)


def run_fid_score(checkpoint: str, stats: str | Path, n: int, seed: int = 0, backbone: str = "scenes",
                  weights: str | None = None, segmenter: str = defaults.SCENE_SEGMENTER, batch_size: int = 50,
                  device: str | None = None, name: str = "fid-score") -> dict:
    """The Frechet distance of ``n`` images of the generator at ``checkpoint`` to the statistics file ``stats``."""
    if n < 2 or batch_size < 1:
        raise BadValueError(f"--n {n}, --batch-size {batch_size}: a distance needs n >= 2 images and batches of >= 1")
    real = load_statistics(stats)
    metric = _metric(backbone, weights, segmenter, device)
    generator = stop_on_non_finite(load_generator(checkpoint), "fid score", checkpoint)
    generator = generator.eval().to(metric.real_sum.device)
    if real["name"] is not None and real["name"] != metric.name:
        raise BadValueError(f"statistics file {stats} holds {real['name']} statistics; backbone {backbone!r} gives "
                            f"{metric.name}")
    try:
        metric.set_real_statistics(real["mu"], real["sigma"], count=real["count"])
    except BadValueError as err:
        raise BadValueError(f"statistics file {stats}: {err}") from None
    run_dir = start_run(name, {"command": "fid score", "checkpoint": str(checkpoint), "stats": str(stats), "n": n,
                               "seed": seed, "backbone": backbone, "weights": weights, "segmenter": segmenter})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        feed(metric, generated_batches(generator, seed, n, batch_size), real=False, total=n,
             desc=f"{metric.name} generated")
        value = float(metric.compute())
    if not math.isfinite(value):
        raise GandissectError(f"fid score: the {metric.name} of {checkpoint} came out {value}; no result was saved")
    results = {"metric": metric.name, "value": value, "n": n, "seed": seed, "latent_indices": [0, n - 1],
               "checkpoint": str(checkpoint), "stats": str(stats), "real_n": real["count"]}
    return _finish(run_dir, results, caught)
