"""The real side of a Frechet distance, computed once and cached as pytorch-fid's ``.npz``.

The cache file is named by everything that determines it - the metric, the first hex digits of its weights'
sha256, the image size and the scenes - so statistics of another backbone or world are never silently reused. Beside
pytorch-fid's ``mu`` and ``sigma`` it keeps the real features themselves (pytorch-fid ignores the extra array),
which KID and precision/recall need. Under several processes each computes the features of its share of the
scenes, rank 0 writes the file and the others read it after a barrier.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gandissect.core import distributed
from gandissect.data.images import scene_batches
from gandissect.errors import CheckpointError, ConfigError
from gandissect.io import atomic_path, sha256_file
from gandissect.metrics.feature_bank import FeatureBank, feature_statistics
from gandissect.metrics.fid import FrechetDistance, load_statistics


@dataclass
class RealStatistics:
    mu: np.ndarray
    sigma: np.ndarray
    count: int | None
    features: torch.Tensor | None  # None for a user's .npz that holds only mu and sigma
    path: Path


def cache_name(fd: FrechetDistance, size: int, seed: int, n: int, weights_file: str | Path | None,
               variant: str = "default") -> str:
    weights = sha256_file(weights_file)[:12] if weights_file else "pytorch-fid"  # None: pytorch-fid's own cache
    world = "" if variant == "default" else f"{variant}_"  # the default world's files keep their earlier names
    return f"real_stats_{fd.name}_{size}px_{world}seed{seed}_n{n}_{weights}.npz"


def _has_features(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as f:
            return "features" in f.files
    except Exception:  # unreadable: load_statistics names the problem
        return True


@torch.no_grad()
def real_statistics(fd: FrechetDistance, size: int, seed: int, n: int, batch_size: int, cache_dir: str | Path,
                    weights_file: str | Path | None, given: str | Path | None = None,
                    variant: str = "default") -> RealStatistics:
    """Statistics and features of ``n`` ``size``-pixel scenes of world ``seed`` (of ``variant``) through ``fd``'s
    backbone, cached in ``cache_dir``; or the ``given`` .npz (which must hold statistics of the same metric)."""
    path = Path(given) if given else Path(cache_dir) / cache_name(fd, size, seed, n, weights_file, variant)
    if given is None and not _has_features(path):  # an older cache holds mu and sigma only: made again
        device = distributed.collective_device()
        bank = FeatureBank().to(device)
        rank, world = distributed.rank(), distributed.world_size()
        batches = scene_batches(seed, n, size, batch_size, (rank, world), variant)
        indices = torch.arange(rank, n, world)
        backbone_device = next(fd.backbone.parameters()).device
        for start, images in zip(range(0, len(indices), batch_size), batches):
            bank.update(fd.backbone(images.to(backbone_device)).to(device), indices[start:start + batch_size])
        features = bank.compute()  # every process's scenes, in order
        mu, sigma = feature_statistics(features)

        def save() -> None:
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                np.savez_compressed(fh, mu=mu, sigma=sigma, name=np.array(fd.name), count=np.array(n, np.int64),
                                    features=features.numpy())
        distributed.rank_zero_first(save)
    stats = load_statistics(path)
    if stats["name"] not in (None, fd.name):
        raise ConfigError(f"real statistics {path} hold {stats['name']} statistics; this measures {fd.name}")
    try:
        with np.load(path, allow_pickle=False) as f:
            features = torch.from_numpy(f["features"]) if "features" in f.files else None
    except Exception as err:  # load_statistics read it, so this is a damaged features array
        raise CheckpointError(f"statistics file {path}: cannot read its features ({err})") from None
    return RealStatistics(stats["mu"], stats["sigma"], stats["count"], features, path)
