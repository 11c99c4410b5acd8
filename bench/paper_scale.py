"""What a dissection costs at the paper's scale: a 256px ProGAN in the official LSUN layout (512 units at layer4) and
a SegFormer-b0-sized ADE20K segmenter at 256px, both with random weights (no pretrained weights can be fetched here).

The generator is saved as an official GAN-dissection state dict (.pth) and the segmenter with ``save_pretrained``,
and both are read back the way a user's files are (``load_generator``, ``segmenter: hf:<directory>``). Measured in
one run, each part in its own fresh process (so peak memory belongs to that part alone):
  (a) the two passes of a dissection of layer4 over N seeded latents, divided by the time of the bare forward of
      generator + segmenter (``segmenter.labels(generator(z))``) over the same latents and batch size
      - target <= 1.15; and images/s of both;
  (b) peak memory of a dissection of N latents over one of ``--small-n`` latents - target <= 1.1 (resident memory
      on the CPU, ``torch.cuda.max_memory_allocated`` on a GPU).
On a GPU, ``--options bf16,channels_last,compile`` measures each option alone against the plain float32 run (the
forward and the dissection): an option is kept only when its dissection is faster and its IoU table stays within
``--tolerance`` of the float32 table (largest absolute IoU difference) with at least 99% of the units keeping
their best class. ``compile`` compiles the segmenter only (the generator carries the dissection's hooks).

    python bench/paper_scale.py                          # CPU: N = 64 vs 16 (about 5 minutes on 2 cores)
    python bench/paper_scale.py --n 10000 --small-n 1000 --options bf16,channels_last,compile   # a GPU
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
OFFICIAL_WIDTHS = [512, 512, 512, 512, 512, 512, 256, 256, 128, 128, 64, 64, 32, 32]
OPTIONS = ("bf16", "channels_last", "compile")


def make_models(folder: Path) -> tuple[str, str]:
    """The random full-width generator as an official .pth state dict and the random SegFormer-b0-sized segmenter
    as a save_pretrained directory; returns (generator file, segmenter spec)."""
    import torch

    import gandissect  # noqa: F401
    from gandissect.models.progan import ProGANGenerator
    from gandissect.models.hf_segmenters import import_transformers

    transformers = import_transformers()
    torch.manual_seed(0)
    generator = ProGANGenerator(resolution=256, widths=OFFICIAL_WIDTHS, latent_dim=512)
    torch.save(generator.state_dict(), folder / "churchoutdoor_lsun.pth")
    config = transformers.SegformerConfig(num_labels=150, hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2],
                                          num_attention_heads=[1, 2, 5, 8], decoder_hidden_size=256)
    transformers.SegformerForSemanticSegmentation(config).save_pretrained(folder / "segformer")
    return str(folder / "churchoutdoor_lsun.pth"), f"hf:{folder / 'segformer'}"


def load_models(generator_file: str, segmenter_spec: str, option: str, device):
    import torch

    from gandissect.models.progan import load_generator
    from gandissect.models.segmenter import load_segmenter

    generator, segmenter = load_generator(generator_file).eval().to(device), load_segmenter(segmenter_spec).to(device)
    if option == "channels_last":
        generator, segmenter = generator.to(memory_format=torch.channels_last), segmenter.to(
            memory_format=torch.channels_last)
    if option == "compile":
        segmenter.model = torch.compile(segmenter.model)
    return generator, segmenter


def plain(args, device) -> dict:
    import contextlib

    import torch

    from gandissect.core.latents import seeded_latents

    generator, segmenter = load_models(args.generator, args.segmenter, args.option, device)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if args.option == "bf16"
                else contextlib.nullcontext())
    _sync(device)
    start = time.perf_counter()
    with torch.no_grad(), autocast:
        for first in range(0, args.n, args.batch_size):
            z = seeded_latents(0, min(args.batch_size, args.n - first), generator.latent_dim, first).to(device)
            segmenter.labels(generator(z).clamp(-1, 1))
    _sync(device)
    return {"wall_s": time.perf_counter() - start}


def dissect(args, device) -> dict:
    from gandissect.config import DissectConfig, load_config
    from gandissect.steps.dissect import run_dissection

    generator, segmenter = load_models(args.generator, args.segmenter, args.option, device)
    cfg = load_config(DissectConfig, None, [
        "name=paper-scale", f"generator={args.generator}", f"segmenter={args.segmenter}", "layers=[layer4]",
        f"n={args.n}", f"batch_size={args.batch_size}", "resume=false", "wandb.mode=disabled",
        f"devices.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}",
        f"devices.precision={'bf16-mixed' if args.option == 'bf16' else '32-true'}"])
    start = time.perf_counter()
    result = run_dissection(cfg, run_dir=Path(args.run_dir), generator=generator, segmenter=segmenter)
    return {"wall_s": time.perf_counter() - start, "passes_s": result["timing"]["wall_s"],
            "table": str(Path(args.run_dir) / "dissect.json")}


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def child(args) -> None:
    import torch

    import gandissect  # noqa: F401

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = plain(args, device) if args.child == "plain" else dissect(args, device)
    if device.type == "cuda":
        out["peak_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    else:
        out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(out))


def run_child(kind: str, n: int, args, option: str = "none", run_dir: str = "") -> dict:
    command = [sys.executable, __file__, "--child", kind, "--n", str(n), "--batch-size", str(args.batch_size),
               "--generator", args.generator, "--segmenter", args.segmenter, "--option", option,
               "--run-dir", run_dir]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"{kind} ({option}) failed:\n{done.stderr[-3000:]}")
    line = [row for row in done.stdout.splitlines() if row.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def table_difference(a: str, b: str) -> tuple[float, float]:
    """Largest absolute IoU difference between two dissections' layer4 tables, and the share of units whose best
    class is the same in both."""
    import numpy as np

    first, second = (json.loads(Path(p).read_text())["layers"]["layer4"] for p in (a, b))
    iou = [np.array(list(layer["iou_by_class"].values())) for layer in (first, second)]
    same = np.mean([u["label"] == v["label"] for u, v in zip(first["units_detail"], second["units_detail"])])
    return float(np.abs(iou[0] - iou[1]).max()), float(same)


def report(args, forwards: list[dict], bigs: list[dict], smalls: list[dict], option: str = "float32") -> dict:
    forward = min(forwards, key=lambda r: r["wall_s"])
    big = min(bigs, key=lambda r: r["passes_s"])
    big_peak, small_peak = (max(r["peak_mb"] for r in runs) for runs in (bigs, smalls))
    print(f"[{option}] {args.n} latents: bare forward {forward['wall_s']:.1f} s ({args.n / forward['wall_s']:.1f} "
          f"images/s); dissection passes {big['passes_s']:.1f} s ({args.n / big['passes_s']:.1f} images/s), whole "
          f"command {big['wall_s']:.1f} s")
    print(f"    (a) ratio passes / forward = {big['passes_s'] / forward['wall_s']:.3f}   (target <= 1.15); whole "
          f"command / forward = {big['wall_s'] / forward['wall_s']:.3f}")
    small = min(smalls, key=lambda r: r["passes_s"])
    per_latent = (big["passes_s"] - small["passes_s"]) / (args.n - args.small_n)  # the fixed costs drop out
    print(f"        per extra latent: passes {per_latent:.3f} s vs forward {forward['wall_s'] / args.n:.3f} s, ratio "
          f"{per_latent * args.n / forward['wall_s']:.3f} (what the ratio tends to at large N; the passes of "
          f"{args.small_n} latents took {small['passes_s']:.1f} s)")
    print(f"    (b) peak memory {args.n} latents {big_peak:.0f} MB, {args.small_n} latents {small_peak:.0f} MB: "
          f"ratio = {big_peak / small_peak:.3f}   (target <= 1.1)")
    return {"forward_s": forward["wall_s"], "passes_s": big["passes_s"], "table": big["table"]}


def measure(args, tmp: str, option: str = "none") -> tuple[list, list, list]:
    forwards, bigs, smalls = [], [], []
    for _ in range(args.repeats):  # turns, so a slow spell of a shared machine hits every part alike
        forwards.append(run_child("plain", args.n, args, option))
        bigs.append(run_child("dissect", args.n, args, option, f"{tmp}/{option}-big"))
        smalls.append(run_child("dissect", args.small_n, args, option, f"{tmp}/{option}-small"))
    return forwards, bigs, smalls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=None, help="latents (default: 10000 on a GPU, 64 on the CPU)")
    parser.add_argument("--small-n", type=int, default=None, help="latents of the memory comparison's small run "
                                                                  "(default: 1000 on a GPU, 16 on the CPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 64 on a GPU, 8 on the CPU")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--options", default="", help=f"comma-separated, GPU only: {', '.join(OPTIONS)}")
    parser.add_argument("--tolerance", type=float, default=0.01, help="largest IoU difference an option may make")
    parser.add_argument("--child", choices=["plain", "dissect"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--generator", default="", help=argparse.SUPPRESS)
    parser.add_argument("--segmenter", default="", help=argparse.SUPPRESS)
    parser.add_argument("--option", default="none", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    import torch

    import gandissect  # noqa: F401
    from gandissect.core.runs import machine_description

    gpu = torch.cuda.is_available()
    args.n = args.n or (10000 if gpu else 64)
    args.small_n = args.small_n or (1000 if gpu else 16)
    args.batch_size = args.batch_size or (64 if gpu else 8)
    options = [o for o in args.options.split(",") if o]
    if any(o not in OPTIONS for o in options):
        raise SystemExit(f"--options: expected some of {', '.join(OPTIONS)}, got {args.options!r}")
    print(f"machine: {machine_description()}, torch {torch.__version__}; 256px ProGAN (official widths, layer4: 512 "
          f"units at 8x8), SegFormer-b0-sized segmenter at 256px, random weights; batch {args.batch_size}")
    if options and not gpu:
        print(f"options {', '.join(options)}: no GPU here, not measured")
        options = []
    with tempfile.TemporaryDirectory() as tmp:
        args.generator, args.segmenter = make_models(Path(tmp))
        base = report(args, *measure(args, tmp))
        for option in options:
            result = report(args, *measure(args, tmp, option), option=option)
            worst, same = table_difference(base["table"], result["table"])
            faster = result["passes_s"] < base["passes_s"]
            keep = faster and worst <= args.tolerance and same >= 0.99
            print(f"    vs float32: dissection {base['passes_s'] / result['passes_s']:.2f}x, largest IoU difference "
                  f"{worst:.4f}, units with the same best class {same:.1%} -> {'keep' if keep else 'drop'}")


if __name__ == "__main__":
    main()
