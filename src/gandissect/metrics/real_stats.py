"""The real side of a Frechet distance, computed once and cached as pytorch-fid's ``.npz``.

The cache file is named by everything that determines it - the metric, the first hex digits of its weights'
sha256, the image size and the scenes - so statistics of another backbone or world are never silently reused.
Under several processes each feeds its share of the scenes, the metric sums them, rank 0 writes the file and the
others read it after a barrier.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gandissect.core import distributed
from gandissect.data.images import scene_batches
from gandissect.errors import ConfigError
from gandissect.io import sha256_file
from gandissect.metrics.fid import FrechetDistance, feed, load_statistics, save_statistics


def cache_name(fd: FrechetDistance, size: int, seed: int, n: int, weights_file: str | Path | None) -> str:
    weights = sha256_file(weights_file)[:12] if weights_file else "pytorch-fid"  # None: pytorch-fid's own cache
    return f"real_stats_{fd.name}_{size}px_seed{seed}_n{n}_{weights}.npz"


def real_statistics(fd: FrechetDistance, size: int, seed: int, n: int, batch_size: int, cache_dir: str | Path,
                    weights_file: str | Path | None, given: str | Path | None = None
                    ) -> tuple[np.ndarray, np.ndarray, int | None]:
    """(mu, sigma, count) of ``n`` ``size``-pixel scenes of world ``seed`` through ``fd``'s backbone, cached in
    ``cache_dir``; or of the ``given`` .npz (which must hold statistics of the same metric)."""
    path = Path(given) if given else Path(cache_dir) / cache_name(fd, size, seed, n, weights_file)
    if not path.is_file() and given is None:
        metric = FrechetDistance(fd.backbone, fd.num_features, name=fd.name).to(distributed.collective_device())
        share = (distributed.rank(), distributed.world_size())
        feed(metric, scene_batches(seed, n, size, batch_size, share), real=True,
             total=len(range(share[0], n, share[1])), desc=f"real statistics ({fd.name})")
        mu, sigma = metric.statistics(real=True)  # summed over the processes
        distributed.rank_zero_first(lambda: save_statistics(path, mu, sigma, name=fd.name, count=n))
    stats = load_statistics(path)
    if stats["name"] not in (None, fd.name):
        raise ConfigError(f"real statistics {path} hold {stats['name']} statistics; this measures {fd.name}")
    return stats["mu"], stats["sigma"], stats["count"]
