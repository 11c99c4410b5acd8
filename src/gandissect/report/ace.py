"""Pictures, the HTML page and the W&B run of an ACE run (``gandissect ace``)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import torch
from torch import nn

from gandissect.config import AceConfig
from gandissect.core.hooks import edited_images, module_device, unit_alpha
from gandissect.core.runs import finish_wandb, set_summary, use_model_artifact
from gandissect.data import scenes
from gandissect.io import figure_array, image_grid, save_image, write_json
from gandissect.report.html import picture, table, write_report

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the non-interactive backend)


@torch.no_grad()
def intervention_grid(generator: nn.Module, layer: str, z: torch.Tensor, alpha: torch.Tensor,
                      constants: torch.Tensor) -> np.ndarray:
    """One picture: the original images, the same with ``alpha``'s units ablated, and inserted (everywhere)."""
    device = module_device(generator)
    z, alpha, constants = z.to(device), alpha.to(device), constants.to(device)
    rows = [generator(z).clamp(-1, 1), edited_images(generator, layer, z, alpha, 0.0),
            edited_images(generator, layer, z, alpha, constants)]
    return image_grid(np.concatenate([scenes.to_uint8(r) for r in rows]), columns=len(z))


def removal_figure(result: dict) -> np.ndarray:
    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=100)
    for name, colour in (("iou", "tab:blue"), ("ace", "tab:red")):
        curve = result["removal"][name]["curve"]
        ax.plot(range(1, len(curve) + 1), [100 * v for v in curve], color=colour, marker=".",
                label=f"{name.upper()} ranking")
    ax.set_xlabel("units ablated (top n of the ranking)")
    ax.set_ylabel(f"{result['class']} pixels removed (%)")
    ax.set_title(f"{result['layer']}: removing {result['class']}")
    ax.grid(alpha=0.3)
    ax.legend()
    return figure_array(fig)


def write_ace_report(cfg: AceConfig, run_dir: Path, result: dict, logger, generator: nn.Module,
                     constants: torch.Tensor, grid_latents: torch.Tensor) -> None:
    """ace.json, removal.png, edits.png, index.html and the W&B run's tables and pictures."""
    save_image(run_dir / "removal.png", removal_figure(result))
    grid = intervention_grid(generator, cfg.layer, grid_latents,
                             unit_alpha(result["rankings"]["ace"][:cfg.top_units], result["units"]), constants)
    save_image(run_dir / "edits.png", grid, scale=2)
    result["files"] = {"removal_plot": "removal.png", "edits": "edits.png"}
    write_json(run_dir / "ace.json", result)

    rem = result["removal"]
    rows = [[f"top {k}", rem["iou"]["curve"][k - 1], rem["ace"]["curve"][k - 1]]
            for k in (1, 5, 10, 20, 30) if k <= len(rem["iou"]["curve"])]
    top = result["ace_of_top_units"]
    sections = [
        ("Removal", f"<p>Fraction of {cfg.class_name} pixels that disappear when the top n units are ablated "
                    f"everywhere ({cfg.n} latents of seed {cfg.eval_seed}).</p>"
                    + table(["units", "IoU ranking", "ACE ranking"], rows) + picture("removal.png")),
        ("ACE", table(["ranking", f"ACE of top {top['units']}", "inserted", "ablated", "original"],
                      [[k, top[k]["ace"], top[k]["inserted"], top[k]["ablated"], top[k]["original"]]
                       for k in ("iou", "ace")])
         + f"<p>Learned alpha: {result['units_above_half']} units above 0.5, ||alpha|| = {result['alpha_norm']:.3f}."
         f" Top ACE units: {result['rankings']['ace'][:10]}; top IoU units: {result['rankings']['iou'][:10]}.</p>"),
        ("Context", f"<p>Top {top['units']} ACE units inserted at one random cell per image; rows by the class "
                    f"that covered most of the cell before.</p>"
                    + table(["class before", "cells", f"{cfg.class_name} before", "after", "effect"],
                            [[r["class"], r["cells"], r["before"], r["after"], r["effect"]]
                             for r in result["context"]])),
        ("Edits", picture("edits.png", "rows: original, top ACE units ablated, inserted everywhere")),
    ]
    write_report(run_dir / "index.html", f"ACE: {cfg.class_name} at {cfg.layer}", sections)
    if logger is not None:
        import wandb

        run = logger.experiment
        curve_rows = [[k + 1, rem["iou"]["curve"][k], rem["ace"]["curve"][k]] for k in range(len(rem["iou"]["curve"]))]
        run.log({"removal/plot": wandb.Image(str(run_dir / "removal.png")),
                 "removal/curves": wandb.Table(columns=["units", "iou_ranking", "ace_ranking"], data=curve_rows),
                 "removal/iou_at_20": rem["iou"].get("at_20"), "removal/ace_at_20": rem["ace"].get("at_20"),
                 "context": wandb.Table(columns=["class", "cells", "before", "after", "effect"],
                                        data=[[r[k] for k in ("class", "cells", "before", "after", "effect")]
                                              for r in result["context"]]),
                 "edits": wandb.Image(str(run_dir / "edits.png"))})
        set_summary(run, {**{f"removal/{name}_at_{k}": rem[name].get(f"at_{k}") for name in rem for k in (5, 20)},
                          **{f"ace/{name}_top_units": top[name]["ace"] for name in ("iou", "ace")},
                          "units_above_half": result["units_above_half"]})
        if not result["settings"]["generator_sha256"].startswith("module "):  # read from cfg.generator
            use_model_artifact(run, cfg.generator)
        finish_wandb(run, run_dir)
