"""Is the scene world fast enough to feed segmenter training? Both measured here, in one run.

Prints scenes drawn per second (one process), segmenter training images per second (forward +
backward + Adam step at the shipped config's batch size) and their ratio. A ratio above 1 means one
data-loading worker keeps up with training on this machine.

    python bench/segmenter_speed.py [--batch 32] [--steps 20]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from gandissect.data import scenes
from gandissect.models.segmenter import SceneSegmenter
from gandissect.core.runs import machine_description


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64, 128])
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"

    n = args.batch * args.steps
    start = time.perf_counter()
    batch = [scenes.SceneDataset(0, n)[i] for i in range(n)]
    draw_rate = n / (time.perf_counter() - start)

    images = torch.stack([b[0] for b in batch[:args.batch]]).to(device)
    labels = torch.stack([b[1] for b in batch[:args.batch]]).to(device)
    model = SceneSegmenter(widths=tuple(args.widths)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        opt.step()

    for _ in range(3):  # warm-up
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    train_rate = args.steps * args.batch / (time.perf_counter() - start)

    print(f"machine: {machine_description()}")
    print(f"scenes drawn per second (1 process, 64px): {draw_rate:8.1f}")
    print(f"training images per second (batch {args.batch}): {train_rate:8.1f}")
    print(f"ratio drawn / trained: {draw_rate / train_rate:.2f}")


if __name__ == "__main__":
    main()
