"""One process of several feeding one FrechetDistance (torch.distributed, gloo on CPU); rank 0 saves the result.

    python tests/fid_ddp_worker.py RANK WORLD_SIZE RENDEZVOUS_FILE OUT.json   (start one per rank)

Process r feeds images r, r + WORLD_SIZE, ... of each side, so together they feed every image once.
tests/test_fid.py starts the processes and compares the result with one process fed everything.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import gandissect  # noqa: F401  (makes torchvision, hence torchmetrics, importable on CPU-only torch)
import torch
import torch.distributed as dist

from gandissect.metrics.fid import FrechetDistance, build_fd

REAL_N, FAKE_N = 37, 41  # not multiples of the world size: the processes hold different counts


def tiny_backbone() -> torch.nn.Module:
    """A fixed random 6-d feature extractor (also reachable as ``tests.fid_ddp_worker:tiny_backbone``)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(48, 6))
    net.num_features = 6
    return net


def images(real: bool) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1 if real else 2)
    x = torch.rand(REAL_N if real else FAKE_N, 3, 16, 16, generator=gen) * 2 - 1
    return x if real else (x * 0.8 + 0.1)


def feed_shard(metric: FrechetDistance, rank: int, world: int, batch_size: int = 5) -> None:
    for real in (True, False):
        for batch in images(real)[rank::world].split(batch_size):
            metric.update(batch, real=real)


def run(rank: int, world: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    metric = build_fd(tiny_backbone())
    feed_shard(metric, rank, world)
    value = float(metric.compute())
    mu, sigma = metric.statistics(real=False)  # outside compute(): must sync by itself
    local_count = int(metric.fake_count)  # and leave the local sums in place afterwards
    if rank == 0:
        Path(out).write_text(json.dumps({"value": value, "fake_mu": mu.tolist(), "fake_sigma": sigma.tolist(),
                                         "local_fake_count": local_count}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    run(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
