"""Evaluate the models of the world: the segmenter against exact labels, a GAN's class pixel shares and FD-scenes
against real scenes, sample grids, and pictures of the world itself (``gandissect eval``, ``generate``, ``scenes``).

Both sides are labelled by the same segmenter, so a class the segmenter misreads is misread on both
sides and the comparison stays fair. The bar a shipped GAN must pass: every class covering at least
``min_share`` of real pixels has a generated share within ``tolerance`` (relative) of the real one.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import torch
from tqdm import tqdm

from gandissect import defaults
from gandissect.core.hooks import stop_on_non_finite
from gandissect.core.latents import generate
from gandissect.core.runs import finish_run, start_run
from gandissect.data import scenes
from gandissect.errors import BadValueError, GandissectError
from gandissect.io import figure_array, image_grid, save_image, write_json
from gandissect.metrics.fid import scenes_fd
from gandissect.models.generators import load_generator
from gandissect.models.segmenter import SceneSegmenter, evaluate_segmenter

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the non-interactive backend)


def sample_grid(generator, seed: int, n: int = 64, columns: int = 8) -> np.ndarray:
    return image_grid(scenes.to_uint8(generate(generator, seed, n)), columns=columns)


@torch.no_grad()
def evaluate_generator(generator, segmenter, n: int = 2000, seed: int = 0, real_seed: int = 12345,
                       batch_size: int = 100, min_share: float = 0.02, tolerance: float = 0.35,
                       variant: str = "default") -> dict:
    """Per-class pixel shares of n generated and n real scenes (both segmented), how many images hold each class
    and how large it is where it is drawn (a class drawn too rarely and one drawn too small look alike in the share),
    and FD-scenes."""
    classes = segmenter.classes
    counts = {side: torch.zeros(len(classes), dtype=torch.float64) for side in ("real", "generated")}
    holding = {side: torch.zeros(len(classes), dtype=torch.float64) for side in ("real", "generated")}
    fd = scenes_fd(segmenter)
    real_data = torch.utils.data.DataLoader(scenes.SceneDataset(real_seed, n, generator.resolution, variant=variant),
                                            batch_size=batch_size)
    for start, (real, _) in zip(tqdm(range(0, n, batch_size), desc="real vs generated", leave=False), real_data):
        fake = generate(generator, seed, len(real), batch_size, start=start)
        for side, images in (("real", real), ("generated", fake)):
            labels = segmenter(images).argmax(dim=1).flatten(1)
            per_image = torch.zeros(len(labels), len(classes), dtype=torch.float64)
            per_image.scatter_add_(1, labels, torch.ones_like(labels, dtype=torch.float64))
            counts[side] += per_image.sum(0)
            holding[side] += (per_image > 0).sum(0)
            fd.update(images, real=side == "real")
    shares = {side: (c / c.sum()).tolist() for side, c in counts.items()}
    rows = {}
    for i, name in enumerate(classes):
        if i == 0:
            continue
        real_share, gen_share = shares["real"][i], shares["generated"][i]
        relative = (gen_share - real_share) / real_share if real_share > 0 else None
        checked = real_share >= min_share
        rows[name] = {"real_share": real_share, "generated_share": gen_share, "relative_difference": relative,
                      "checked": checked, "within_tolerance": (abs(relative) <= tolerance) if checked else None}
        for side in ("real", "generated"):  # the fraction of images holding the class, and its pixels in those
            held = holding[side][i].item()
            rows[name][f"{side}_presence"] = held / n
            rows[name][f"{side}_pixels_where_present"] = counts[side][i].item() / held if held else None
    return {
        "n": n, "seed": seed, "real_seed": real_seed, "variant": variant, "min_share": min_share,
        "tolerance": tolerance,
        "fd_scenes": float(fd.compute()),
        "classes": rows,
        "passes": all(r["within_tolerance"] for r in rows.values() if r["checked"]),
    }


def shares_chart(result: dict) -> np.ndarray:
    """Bar chart of real vs generated pixel share per class, as an (H, W, 3) uint8 picture."""
    names = list(result["classes"])
    real = [100 * result["classes"][c]["real_share"] for c in names]
    gen = [100 * result["classes"][c]["generated_share"] for c in names]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=100)
    ax.bar(x - 0.2, real, 0.4, label=f"real ({result['n']})", color="#4c72b0")
    ax.bar(x + 0.2, gen, 0.4, label=f"generated ({result['n']})", color="#dd8452")
    ax.set_xticks(x, names, rotation=30)
    ax.set_ylabel("pixel share (%)")
    ax.set_title(f"class pixel shares by the scene segmenter; FD-scenes {result['fd_scenes']:.3f}")
    ax.legend()
    return figure_array(fig)


# --- the commands -----------------------------------------------------------------------------------------------
def _positive(**values: int) -> None:
    bad = [f"--{k.replace('_', '-')} {v}" for k, v in values.items() if v < 1]
    if bad:
        raise BadValueError(f"{', '.join(bad)}: expected a positive number")


def run_scenes(n: int, seed: int, size: int, out: str | Path, class_name: str | None = None,
               stats_n: int = 1000, variant: str = "default") -> dict:
    """Draw ``n`` scenes of world ``seed`` (only those holding ``class_name`` when given) beside their labels, and
    the world's class statistics over ``max(n, stats_n)`` scenes, into ``out``."""
    _positive(n=n, stats_n=stats_n)
    scenes.check_size(size)
    wanted = scenes.class_index(class_name) if class_name else None
    pairs, index = [], 0
    while len(pairs) < n:
        image, label = scenes.render_scene(seed, index, size, variant)
        if wanted is None or (label == wanted).any():
            pairs.append((index, image, label))
        index += 1
        if index > 1000 * n:
            raise GandissectError(f"class {class_name!r} is too rare: found {len(pairs)} scenes in {index}")
    stats_n = max(n, stats_n)
    out = start_run("scenes", {"command": "scenes", "n": n, "seed": seed, "size": size, "class": class_name,
                               "stats_n": stats_n, "variant": variant}, root=out)
    images = image_grid(np.stack([p[1] for p in pairs]))
    labels = image_grid(scenes.colorize(np.stack([p[2] for p in pairs])))
    gap = np.full((images.shape[0], 8, 3), 255, np.uint8)
    save_image(out / "scenes.png", np.concatenate([images, gap, labels], axis=1), scale=2)
    stats = scenes.world_statistics(seed, stats_n, size, variant)
    stats["shown_indices"] = [p[0] for p in pairs]
    stats["legend"] = {name: scenes.LABEL_COLORS[i].tolist() for i, name in enumerate(scenes.CLASSES) if i}
    write_json(out / "statistics.json", stats)
    finish_run(out)
    return {"out": str(out), "images": str(out / "scenes.png"), "statistics": str(out / "statistics.json")}


def run_eval_segmenter(checkpoint: str, n: int, seed: int, size: int, name: str, variant: str = "default") -> dict:
    """Per-class IoU of a segmenter checkpoint against the world's exact labels on ``n`` scenes of ``seed``."""
    _positive(n=n)
    segmenter = SceneSegmenter.load(checkpoint)
    run_dir = start_run(name, {"command": "eval segmenter", "checkpoint": str(checkpoint), "n": n, "seed": seed,
                               "size": size, "variant": variant})
    results = evaluate_segmenter(segmenter, seed, n, size, variant=variant)
    results["checkpoint"] = str(checkpoint)
    write_json(run_dir / "results.json", results)
    finish_run(run_dir)
    return results


def run_eval_gan(checkpoint: str, n: int, seed: int, real_seed: int = defaults.REAL_SEED,
                 segmenter: str = defaults.SCENE_SEGMENTER, name: str = "eval-gan", variant: str = "default") -> dict:
    """Class pixel shares and FD-scenes of ``n`` generated vs ``n`` real scenes; shares.png and samples.png."""
    _positive(n=n)
    generator = stop_on_non_finite(load_generator(checkpoint), "eval gan", checkpoint)
    scene_segmenter = SceneSegmenter.load(segmenter)
    run_dir = start_run(name, {"command": "eval gan", "checkpoint": str(checkpoint), "n": n, "seed": seed,
                               "real_seed": real_seed, "segmenter": segmenter, "variant": variant})
    results = evaluate_generator(generator, scene_segmenter, n, seed, real_seed, variant=variant)
    results["checkpoint"] = str(checkpoint)
    save_image(run_dir / "shares.png", shares_chart(results))
    save_image(run_dir / "samples.png", sample_grid(generator, seed), scale=2)
    write_json(run_dir / "results.json", results)
    finish_run(run_dir)
    return {**results, "run_dir": str(run_dir)}


def run_generate(checkpoint: str, n: int, seed: int, out: str | Path, columns: int = 8, scale: int = 2) -> dict:
    """A grid of the images of latents 0..n-1 of stream ``seed``, saved at ``out``; its settings beside it."""
    _positive(n=n, columns=columns, scale=scale)
    generator = stop_on_non_finite(load_generator(checkpoint), "generate", checkpoint)
    out = Path(out)
    save_image(out, sample_grid(generator, seed, n, columns), scale=scale)
    record = {"checkpoint": str(checkpoint), "seed": seed, "n": n, "latent_indices": [0, n - 1],
              "latent_dim": generator.latent_dim, "resolution": generator.resolution, "image": str(out),
              "reproduce": f"gandissect generate --checkpoint {checkpoint} --n {n} --seed {seed}"}
    write_json(out.with_suffix(".json"), record)
    return record
