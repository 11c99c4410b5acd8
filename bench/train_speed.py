"""GAN training speed of the shipped config (experiments/scenes/gan.yaml) on this machine.

Runs the real GANModule through the Lightning Trainer (W&B, FD and sample grids off) and times the
steps after a warm-up, so the figure is what `gandissect train gan` achieves between evaluations.

    python bench/train_speed.py [--steps 40] [--warmup 5] [--set devices.accelerator=gpu]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from gandissect.config import GANTrainConfig, load_config  # gandissect first: it makes torchvision importable
from gandissect.core.runs import machine_description
from gandissect.steps.train import train_gan

import pytorch_lightning as pl  # noqa: E402,I100

REPO = Path(__file__).resolve().parents[1]


class StepTimer(pl.Callback):
    def __init__(self, warmup: int):
        self.warmup, self.start, self.timed = warmup, None, 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if batch_idx + 1 == self.warmup:
            self.start = time.perf_counter()
        elif batch_idx + 1 > self.warmup:
            self.timed += 1
            self.elapsed = time.perf_counter() - self.start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    cfg = load_config(GANTrainConfig, REPO / "experiments/scenes/gan.yaml", [
        f"trainer.max_steps={args.steps + args.warmup}", "wandb.mode=disabled", "monitor.fd_every=0",
        "monitor.sample_every=0", f"monitor.checkpoint_every={10 ** 6}", "resume=false",
        f"monitor.segmenter={REPO / 'checkpoints/scene_segmenter.safetensors'}", *args.set])
    timer = StepTimer(args.warmup)
    with tempfile.TemporaryDirectory() as tmp:
        train_gan(cfg, run_dir=Path(tmp) / "bench", callbacks=[timer])
    rate = timer.timed / timer.elapsed
    batch = cfg.data.batch_size
    print(f"machine: {machine_description()}")
    print(f"config: experiments/scenes/gan.yaml, batch {batch}, {cfg.model.resolution}px")
    print(f"training steps/s (Trainer, {timer.timed} steps after {args.warmup} warm-up): {rate:.2f}")
    print(f"images/s: {rate * batch:.0f}; 1,000 steps take {1000 / rate / 60:.1f} min")


if __name__ == "__main__":
    main()
