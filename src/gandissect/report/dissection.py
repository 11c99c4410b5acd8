"""Pictures, the HTML page and the W&B run of a dissection: unit image strips, per-layer bar charts, the report."""

from __future__ import annotations

import html
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gandissect.config import DissectConfig
from gandissect.core.hooks import NetHook
from gandissect.core.latents import seeded_latents
from gandissect.core.runs import finish_wandb, set_summary, use_model_artifact, wandb_run
from gandissect.data import scenes
from gandissect.io import figure_array, save_image
from gandissect.metrics.unit_stats import upsampled_masks
from gandissect.report.html import picture, table, write_report

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the non-interactive backend)

OUTLINE = np.array([255, 225, 0], np.uint8)
CATEGORY_COLORS = {"object": "#4c72b0", "part": "#dd8452", "stuff": "#55a868", "material": "#8172b3"}


def outline(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool -> the masks' boundary pixels (inside the mask, next to a pixel outside it)."""
    inside = masks.float()[:, None]
    eroded = -F.max_pool2d(-inside, 3, stride=1, padding=1)
    return (inside - eroded)[:, 0] > 0


def unit_strip(images: np.ndarray, masks: torch.Tensor, scale: int | None = None, gap: int = 2) -> np.ndarray:
    """Images (k, H, W, 3) uint8 side by side, each with its unit's region (k, H, W) outlined and the rest dimmed.
    ``scale`` (default: enough for 128 pixels, so 64px images are doubled and 256px ones kept: enlarged, 512 strips
    of 256px images took 6 minutes to encode, longer than the dissection of them)."""
    scale = scale or max(1, 128 // images.shape[1])
    big = np.repeat(np.repeat(images, scale, axis=1), scale, axis=2).astype(np.float32)
    big_masks = masks.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    edge = outline(big_masks).numpy()
    big = np.where(big_masks.numpy()[..., None], big, big * 0.55).astype(np.uint8)
    big[edge] = OUTLINE
    k, h, w, _ = big.shape
    strip = np.full((h, k * (w + gap) - gap, 3), 255, np.uint8)
    for i, tile in enumerate(big):
        strip[:, i * (w + gap):i * (w + gap) + w] = tile
    return strip


def layer_chart(layer: str, summary: dict, categories: dict[str, str], iou_threshold: float) -> np.ndarray:
    """Bar chart of interpretable units per class, grouped by category, as an (H, W, 3) uint8 picture."""
    order = sorted(summary["per_class"], key=lambda c: (list(CATEGORY_COLORS).index(categories.get(c, "stuff"))
                                                        if categories.get(c) in CATEGORY_COLORS else 9,
                                                        -summary["per_class"][c], c))
    counts = [summary["per_class"][c] for c in order]
    colors = [CATEGORY_COLORS.get(categories.get(c, ""), "#999999") for c in order]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(order) + 1.5), 3.0), dpi=100)
    ax.bar(range(len(order)), counts, color=colors)
    ax.set_xticks(range(len(order)), order, rotation=40, ha="right")
    ax.set_ylabel("interpretable units")
    ax.set_title(f"{layer}: {summary['interpretable_units']} of {summary['units']} units with IoU > {iou_threshold}",
                 fontsize=10)
    for category, color in CATEGORY_COLORS.items():
        if any(categories.get(c) == category for c in order):
            ax.bar([0], [0], color=color, label=category)
    if order:
        ax.legend(fontsize=8)
    return figure_array(fig)


def layers_chart(result: dict) -> np.ndarray:
    """Interpretable units per layer, stacked by category, as an (H, W, 3) uint8 picture."""
    names = list(result["layers"])
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(names) + 2), 3.0), dpi=100)
    bottom = np.zeros(len(names))
    for category, color in CATEGORY_COLORS.items():
        counts = np.array([result["layers"][n]["per_category"].get(category, 0) for n in names], float)
        if counts.any():
            ax.bar(names, counts, bottom=bottom, color=color, label=category)
            bottom += counts
    totals = [result["layers"][n]["units"] for n in names]
    ax.set_xticks(range(len(names)), [f"{n}\n({u})" for n, u in zip(names, totals)], fontsize=8)
    ax.set_ylabel("interpretable units")
    ax.set_title(f"interpretable units per layer (IoU > {result['settings']['iou_threshold']}; "
                 "units in the layer in brackets)", fontsize=9)
    ax.legend(fontsize=8)
    return figure_array(fig)


def write_dissection_report(run_dir: Path, result: dict) -> Path:
    s = result["settings"]
    intro = (f"<p>Generator <code>{html.escape(str(s['generator']))}</code>, {s['n']} latents of seed {s['seed']}; "
             f"each unit thresholded at its {s['quantile']} quantile, its map upsampled to the segmentation "
             f"({s['segmentation_size']}px) and compared with every class; a unit is interpretable when its best "
             f"IoU exceeds {s['iou_threshold']}. Numbers: <a href='dissect.json'>dissect.json</a>; settings: "
             f"<a href='config.yaml'>config.yaml</a>.</p>")
    intro += "".join(f"<p><strong>Warning: {html.escape(w)}.</strong></p>" for w in result.get("warnings", []))
    categories = sorted({c for layer in result["layers"].values() for c in layer["per_category"]})
    rows = [[name, layer["units"], "x".join(map(str, layer["shape"][1:])), layer["interpretable_units"],
             *[layer["per_category"].get(c, 0) for c in categories],
             ", ".join(f"{c} {k}" for c, k in sorted(layer["per_class"].items(), key=lambda x: -x[1]))]
            for name, layer in result["layers"].items()]
    overview = table(["layer", "units", "size", "interpretable", *categories, "classes"], rows)
    if len(result["layers"]) > 1:
        overview += picture("chart_layers.png", "interpretable units per layer, by category")
    sections = [("What this is", intro), ("Interpretable units per layer", overview)]
    for name, layer in result["layers"].items():
        units = sorted(layer["units_detail"], key=lambda u: -u["iou"])
        unit_rows = [[u["unit"], u["label"], u["category"], u["iou"], u["threshold"],
                      picture(u["strip"], width=min(1000, 140 * s["top_k"])) if u.get("strip") else "-"]
                     for u in units]
        sections.append((f"{name}", picture(layer["chart"], f"{name}: interpretable units per class")
                         + table(["unit", "label", "category", "IoU", "threshold", "top images (region outlined)"],
                                 unit_rows)))
    return write_report(run_dir / "index.html", f"Dissection: {s['generator']}", sections)


@torch.no_grad()
def draw_strips(generator: nn.Module, layer: str, thresholds: torch.Tensor, top_indices: torch.Tensor, seed: int,
                out_dir: Path, batch_size: int = 64, max_images: int = 512) -> list[Path]:
    """One PNG per unit: its top images with the thresholded, upsampled unit map outlined; returns the paths.
    Each image is made once when the units' top images are at most ``max_images`` distinct samples; beyond that,
    units are drawn in blocks whose top images number at most ``max_images`` (a sample shared by two blocks is
    made twice), so memory does not grow with the samples (512 units x 8 distinct 256px images: 0.8 GB)."""
    distinct = int(torch.unique(top_indices[top_indices >= 0]).numel())
    units_per_block = len(top_indices) if distinct <= max_images else max(1, max_images // top_indices.shape[1])
    paths = []
    with NetHook(generator, [layer]) as hook:
        for first in range(0, len(top_indices), units_per_block):
            block = range(first, min(first + units_per_block, len(top_indices)))
            paths += _block_strips(hook, generator.latent_dim, layer, thresholds, top_indices, block, seed, out_dir,
                                   batch_size)
    return paths


def _block_strips(hook: NetHook, latent_dim: int, layer: str, thresholds: torch.Tensor, top_indices: torch.Tensor,
                  block: range, seed: int, out_dir: Path, batch_size: int) -> list[Path]:
    units_of: dict[int, list[int]] = {}  # sample -> the units of the block that have it among their top images
    for unit in block:
        for i in top_indices[unit].tolist():
            if i >= 0:  # -1: fewer samples than top_k
                units_of.setdefault(i, []).append(unit)
    wanted = sorted(units_of)
    images, masks = {}, {}  # only the masks that are drawn
    for start in range(0, len(wanted), batch_size):
        chunk = wanted[start:start + batch_size]
        z = torch.cat([seeded_latents(seed, 1, latent_dim, i) for i in chunk])
        x = hook(z).clamp(-1, 1)
        r = hook.retained[layer].float()
        for i, image, maps in zip(chunk, scenes.to_uint8(x), r):
            images[i] = image
            units = torch.tensor(units_of[i])
            for unit, m in zip(units_of[i], upsampled_masks(maps[units][None], thresholds[units], x.shape[-2:])[0]):
                masks[i, unit] = m
    paths = []
    for unit in block:
        row = [i for i in top_indices[unit].tolist() if i >= 0]
        path = out_dir / f"unit{unit:03d}.png"
        save_image(path, unit_strip(np.stack([images[i] for i in row]), torch.stack([masks[i, unit] for i in row])))
        paths.append(path)
    return paths


def wandb_summary(result: dict) -> dict:
    """A dissection's numbers for the W&B runs table: interpretable units in all, per layer, per class (``units/tree``,
    every class of the segmenter, 0 included, so runs compare column by column) and per category."""
    layers = result["layers"].values()
    summary = {"interpretable_units": sum(layer["interpretable_units"] for layer in layers)}
    summary.update({f"{name}/interpretable_units": layer["interpretable_units"]
                    for name, layer in result["layers"].items()})
    summary.update({f"units/{c}": sum(layer["per_class"].get(c, 0) for layer in layers) for c in result["classes"]})
    summary.update({f"categories/{category}": sum(layer["per_category"].get(category, 0) for layer in layers)
                    for category in sorted({c for c in result["categories"].values() if c})})
    return summary


def log_to_wandb(run_dir: Path, cfg: DissectConfig, result: dict) -> None:
    """The dissection as one W&B run (nothing when W&B is disabled): the unit table with every unit's top images, the
    charts, the best units' strips, the counts of ``wandb_summary`` as its summary, and the generator file it read
    as its input artifact."""
    run = wandb_run(run_dir, cfg, "dissect")
    if run is None:
        return
    import wandb

    rows = [[name, u["unit"], u["label"], u["category"], u["iou"], u["threshold"], u["interpretable"],
             wandb.Image(str(run_dir / u["strip"]))]
            for name, layer in result["layers"].items() for u in layer["units_detail"]]
    logged = {"units": wandb.Table(columns=["layer", "unit", "label", "category", "iou", "threshold",
                                            "interpretable", "top_images"], data=rows)}
    for name, layer in result["layers"].items():
        logged[f"{name}/interpretable_units"] = layer["interpretable_units"]
        logged[f"{name}/chart"] = wandb.Image(str(run_dir / layer["chart"]))
        best = sorted(layer["units_detail"], key=lambda u: -u["iou"])[:8]
        logged[f"{name}/top_units"] = [wandb.Image(str(run_dir / u["strip"]),
                                                   caption=f"unit {u['unit']}: {u['label']} IoU {u['iou']:.3f}")
                                       for u in best]
    run.log(logged)
    set_summary(run, wandb_summary(result))
    if not result["settings"]["generator_sha256"].startswith("module "):  # read from cfg.generator
        use_model_artifact(run, cfg.generator)
    finish_wandb(run, run_dir)
