"""Pictures and the page of ``gandissect compare``: several models' dissections side by side."""

from __future__ import annotations

import html
from pathlib import Path

import matplotlib
import numpy as np

from gandissect.io import figure_array
from gandissect.report.dissection import CATEGORY_COLORS
from gandissect.report.html import picture, table, write_report

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the non-interactive backend)


def _panels(models: list[dict], height: float):
    """A figure with one panel per model, side by side, sharing the y axis; each panel wide enough for its layers."""
    widest = max(len(m["layers"]) for m in models)
    fig, axes = plt.subplots(1, len(models), figsize=(max(4.0, 0.65 * widest + 1.5) * len(models), height), dpi=100,
                             sharey=True, squeeze=False)
    return fig, axes[0]


def categories_chart(result: dict) -> np.ndarray:
    """One panel per model: interpretable units per layer, stacked by category (the paper's comparison figure)."""
    models = result["models"]
    fig, axes = _panels(models, 3.2)
    for ax, model in zip(axes, models):
        names = list(model["layers"])
        bottom = np.zeros(len(names))
        for category, color in CATEGORY_COLORS.items():
            counts = np.array([model["layers"][n]["per_category"].get(category, 0) for n in names], float)
            if counts.any():
                ax.bar(range(len(names)), counts, bottom=bottom, color=color, label=category)
                bottom += counts
        ax.set_xticks(range(len(names)), [f"{n}\n{model['layers'][n]['size']}\n({model['layers'][n]['units']})"
                                          for n in names], fontsize=7)
        ax.set_title(f"{model['label']}: {int(bottom.sum())} of {sum(r['units'] for r in model['layers'].values())} "
                     "units interpretable", fontsize=9)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("interpretable units")
    return figure_array(fig)


def classes_chart(result: dict) -> np.ndarray:
    """One panel per model: interpretable units per class (rows) and layer (columns), counts written in the cells."""
    models, classes = result["models"], result["classes"]
    fig, axes = _panels(models, 0.32 * len(classes) + 1.4)
    top = max([1] + [row["per_class"].get(c, 0) for m in models for row in m["layers"].values() for c in classes])
    for ax, model in zip(axes, models):
        names = list(model["layers"])
        counts = np.array([[model["layers"][n]["per_class"].get(c, 0) for n in names] for c in classes])
        ax.imshow(counts, cmap="Blues", vmin=0, vmax=top, aspect="auto")
        for (i, j), count in np.ndenumerate(counts):
            if count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                        color="white" if count > top / 2 else "black")
        ax.set_xticks(range(len(names)), names, fontsize=7, rotation=30)
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
        ax.set_title(f"{model['label']}: interpretable units per class", fontsize=9)
    return figure_array(fig)


def best_iou_chart(result: dict) -> np.ndarray:
    """One panel per model: each layer's units by their best IoU (box and points), the threshold as a line."""
    models = result["models"]
    fig, axes = _panels(models, 3.0)
    for ax, model in zip(axes, models):
        names = list(model["layers"])
        values = [model["layers"][n]["best_iou"]["values"] for n in names]
        ax.boxplot(values, showfliers=False)
        for i, v in enumerate(values, start=1):
            ax.scatter(np.full(len(v), i) + np.linspace(-0.2, 0.2, len(v)), v, s=3, color="#333333", alpha=0.5)
        threshold = next(iter(model["layers"].values()))["iou_threshold"]
        ax.axhline(threshold, color="#c44e52", lw=1, ls="--", label=f"IoU {threshold}")
        ax.set_xticks(range(1, len(names) + 1), names, fontsize=7, rotation=30)
        ax.set_title(f"{model['label']}: best IoU of each unit", fontsize=9)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("best IoU over the classes")
    return figure_array(fig)


def matches_chart(result: dict) -> np.ndarray:
    """One panel per pair of neighbouring models: per layer, the later model's interpretable units, and how many
    of them best match (by activation correlation) an earlier unit interpretable for the same class."""
    pairs = result["matches"]
    fig, axes = plt.subplots(1, len(pairs), figsize=(max(4.0, 0.65 * max(len(p["layers"]) for p in pairs) + 1.5)
                                                     * len(pairs), 3.0), dpi=100, sharey=True, squeeze=False)
    for ax, pair in zip(axes[0], pairs):
        names = list(pair["layers"])
        x = np.arange(len(names))
        ax.bar(x - 0.2, [pair["layers"][n]["interpretable"] for n in names], 0.4, color="#8c8c8c",
               label=f"interpretable in {pair['later']}")
        ax.bar(x + 0.2, [pair["layers"][n]["same_concept"] for n in names], 0.4, color="#4c72b0",
               label=f"same class in {pair['earlier']}")
        ax.set_xticks(x, names, fontsize=7, rotation=30)
        ax.set_title(f"{pair['earlier']} -> {pair['later']}: best-correlated units", fontsize=9)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("units")
    return figure_array(fig)


def write_compare_report(run_dir: Path, result: dict) -> Path:
    classes = result["classes"]
    pictures = (picture("categories.png", "interpretable units per layer and category, one panel per model")
                + picture("classes.png", "interpretable units per class and layer")
                + picture("best_iou.png", "each unit's best IoU per layer"))
    sections = [("Interpretable units per layer", pictures)]
    for model in result["models"]:
        rows = [[name, row["size"], row["units"], row["interpretable"], f"{100 * row['share']:.0f}%",
                 row["best_iou"]["median"], *[row["per_class"].get(c) for c in classes]]
                for name, row in model["layers"].items()]
        sections.append((f"{model['label']} ({model['generator']}, n={model['n']})",
                         table(["layer", "size", "units", "interpretable", "share", "median best IoU", *classes], rows)
                         + f"<p>dissection: {html.escape(model['dissection'])}</p>"))
    if result["ace"]:
        sections.append(("Removal by ablating the top units everywhere (ACE and IoU rankings)",
                         table(["model", "class", "layer", "units", "ACE top 5", "ACE top 20", "IoU top 5",
                                "IoU top 20"],
                               [[r["model"], r["class"], r["layer"], r["units"], r["ace_at_5"], r["ace_at_20"],
                                 r["iou_at_5"], r["iou_at_20"]] for r in result["ace"]])))
    if result["matches"]:
        rows = [[f"{p['earlier']} -> {p['later']}", layer, row["interpretable"], row["same_concept"],
                 row["median_correlation"]] for p in result["matches"] for layer, row in p["layers"].items()]
        sections.append(("Units matched across checkpoints (activation correlation on shared latents)",
                         picture("matches.png", "interpretable units of the later model and those whose best match "
                                                "was interpretable for the same class")
                         + table(["models", "layer", "interpretable (later)", "same class (earlier)",
                                  "median correlation"], rows)))
    if result["repair"]:
        sections.append(("Repair", table(
            ["model", "layer", "k", "route", "distance", "original", "repaired", "random (mean)", "random (std)",
             "target met"],
            [[r["model"], r["layer"], r["k"], r["route"], f"{r['fd_name']} (n={r['fd_n']})", r["fd_original"],
              r["fd_repaired"], r["fd_random_mean"], r["fd_random_std"], str(r["target_met"])]
             for r in result["repair"]])))
    return write_report(run_dir / "index.html", "Comparison of dissections", sections)
