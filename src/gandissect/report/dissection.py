"""Pictures and the HTML page of a dissection: unit image strips, per-layer bar charts, the report."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gandissect.io import figure_array
from gandissect.report.html import picture, table, write_report

OUTLINE = np.array([255, 225, 0], np.uint8)
CATEGORY_COLORS = {"object": "#4c72b0", "part": "#dd8452", "stuff": "#55a868", "material": "#8172b3"}


def outline(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool -> the masks' boundary pixels (inside the mask, next to a pixel outside it)."""
    inside = masks.float()[:, None]
    eroded = -F.max_pool2d(-inside, 3, stride=1, padding=1)
    return (inside - eroded)[:, 0] > 0


def unit_strip(images: np.ndarray, masks: torch.Tensor, scale: int = 2, gap: int = 2) -> np.ndarray:
    """Images (k, H, W, 3) uint8 side by side, each with its unit's region (k, H, W) outlined and the rest dimmed."""
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
