"""How much does dissection cost over just running the networks, and does its memory grow with the samples?

Measured in one run, each part in its own fresh process (so peak memory belongs to that part alone);
the plain forward, the big and the small dissection take turns ``--repeats`` times; the fastest turn
counts for time and the highest for memory, because on a shared machine the same job varies by 10%
in time and by tens of MB in peak memory from one run to the next:
  (a) wall time of a dissection of the default layer (layer4 of the shipped scene GAN, 128 units at 8x8)
      over N seeded latents, divided by the time of one plain forward pass of generator + segmenter
      (``segmenter.labels(generator(z))``) over the same N latents and batch size - target <= 1.25.
      Two dissection times: the two passes (calibration included), and the whole command (with the
      strips, chart, JSON and report it writes);
  (b) peak resident memory of a 10,000-sample dissection over a 1,000-sample one - target <= 1.1.

    python bench/dissect_speed.py [--n 10000] [--small-n 1000] [--layers layer4] [--batch-size 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def plain(n: int, batch_size: int) -> dict:
    import torch

    import gandissect  # noqa: F401
    from gandissect.core.latents import seeded_latents
    from gandissect.models.progan import load_generator
    from gandissect.models.segmenter import SceneSegmenter

    generator = load_generator(REPO / "checkpoints/scene_gan_generator.safetensors").eval()
    segmenter = SceneSegmenter.load(REPO / "checkpoints/scene_segmenter.safetensors")
    start = time.perf_counter()
    with torch.no_grad():
        for first in range(0, n, batch_size):
            z = seeded_latents(0, min(batch_size, n - first), generator.latent_dim, first)
            segmenter.labels(generator(z).clamp(-1, 1))
    return {"wall_s": time.perf_counter() - start}


def dissect(n: int, batch_size: int, layers: str, run_dir: str) -> dict:
    import gandissect  # noqa: F401
    from gandissect.config import DissectConfig, load_config
    from gandissect.steps.dissect import run_dissection

    cfg = load_config(DissectConfig, REPO / "experiments/scenes/dissect.yaml", [
        f"generator={REPO / 'checkpoints/scene_gan_generator.safetensors'}",
        f"segmenter={REPO / 'checkpoints/scene_segmenter.safetensors'}", f"layers=[{layers}]", f"n={n}",
        f"batch_size={batch_size}", "resume=false", "wandb.mode=disabled", "devices.accelerator=cpu"])
    start = time.perf_counter()
    result = run_dissection(cfg, run_dir=Path(run_dir))
    return {"wall_s": time.perf_counter() - start, "passes_s": result["timing"]["wall_s"]}


def child(args) -> None:
    if args.child == "plain":
        out = plain(args.n, args.batch_size)
    else:
        out = dissect(args.n, args.batch_size, args.layers, args.run_dir)
    out["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(out))


def run_child(kind: str, n: int, args, run_dir: str = "") -> dict:
    command = [sys.executable, __file__, "--child", kind, "--n", str(n), "--batch-size", str(args.batch_size),
               "--layers", args.layers, "--run-dir", run_dir]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=True)
    line = [row for row in done.stdout.splitlines() if row.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--small-n", type=int, default=1000)
    parser.add_argument("--layers", default="layer4")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=["plain", "dissect"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    import torch

    import gandissect  # noqa: F401
    from gandissect.core.runs import machine_description

    forwards, bigs, smalls = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            forwards.append(run_child("plain", args.n, args))
            bigs.append(run_child("dissect", args.n, args, f"{tmp}/big"))
            smalls.append(run_child("dissect", args.small_n, args, f"{tmp}/small"))
    forward = min(forwards, key=lambda r: r["wall_s"])
    big = min(bigs, key=lambda r: r["passes_s"])
    print("each turn: plain forward " + ", ".join(f"{r['wall_s']:.1f}" for r in forwards) + " s; dissection passes "
          + ", ".join(f"{r['passes_s']:.1f}" for r in bigs) + " s")
    print(f"machine: {machine_description()}, torch {torch.__version__}; layers {args.layers}, "
          f"batch {args.batch_size}")
    print(f"(a) {args.n} samples, fastest turn: plain forward (generator + segmenter) {forward['wall_s']:.1f} s; "
          f"dissection passes {big['passes_s']:.1f} s, whole command {big['wall_s']:.1f} s")
    print(f"    ratio passes / forward       = {big['passes_s'] / forward['wall_s']:.3f}   (target <= 1.25)")
    print(f"    ratio whole command / forward = {big['wall_s'] / forward['wall_s']:.3f}")
    big_peak, small_peak = (max(r["max_rss_mb"] for r in runs) for runs in (bigs, smalls))
    print(f"(b) peak memory, highest turn: {args.n} samples {big_peak:.0f} MB, {args.small_n} samples "
          f"{small_peak:.0f} MB (each turn: " + ", ".join(f"{r['max_rss_mb']:.0f}" for r in bigs) + " / "
          + ", ".join(f"{r['max_rss_mb']:.0f}" for r in smalls) + " MB)")
    print(f"    ratio = {big_peak / small_peak:.3f}   (target <= 1.1)")


if __name__ == "__main__":
    main()
