"""Pictures, the HTML page and the W&B run of a repair (``gandissect repair``)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
import torch
from torch import nn

from gandissect.config import RepairConfig
from gandissect.core.hooks import scaled_units
from gandissect.core.latents import seeded_latents
from gandissect.core.runs import finish_wandb, log_model_artifact, set_summary, use_model_artifact, wandb_run
from gandissect.data import scenes
from gandissect.io import figure_array, image_grid, save_image
from gandissect.report.html import picture, table, write_report

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the non-interactive backend)

ARTIFACT_TINT = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1)  # red, in [-1, 1] image units
SHOWN = 12  # latents of the FD stream shown in the before/after pictures


def overlay(images: torch.Tensor, flagged: torch.Tensor) -> torch.Tensor:
    """Images with their flagged pixels (N, 1, H, W) tinted red."""
    return torch.where(flagged.bool(), 0.4 * images + 0.6 * ARTIFACT_TINT, images)


def write_pictures(generator: nn.Module, artifact_segmenter, seed: int, scales: dict[str, torch.Tensor],
                   random_scales: dict[str, torch.Tensor], run_dir: Path) -> None:
    """before_after.png (original, repaired, random ablation) and artifacts.png (flagged pixels in red); the
    repair is the default route's unit ``scales`` per layer (0: ablated, 1: as is, between: a soft repair)."""
    z = seeded_latents(seed, SHOWN, generator.latent_dim)
    with torch.no_grad():
        original = generator(z).clamp(-1, 1)
        rows = [original]
        if any(bool((scale != 1).any()) for scale in scales.values()):
            for edit in (scales, random_scales):
                with scaled_units(generator, edit) as hook:
                    rows.append(hook(z).clamp(-1, 1))
    save_image(run_dir / "before_after.png", image_grid(scenes.to_uint8(torch.cat(rows)), columns=SHOWN), scale=2)
    marked = [overlay(images, artifact_segmenter.labels(images)) for images in rows[:2]]
    save_image(run_dir / "artifacts.png", image_grid(scenes.to_uint8(torch.cat([original, *marked])),
                                                     columns=SHOWN), scale=2)


def fd_verdict(fd: dict) -> tuple[str, bool | None]:
    """The repair's FD against the original's and the random ablations', in words, and whether it is lower (None:
    nothing was repaired)."""
    if fd["repaired"] is None:
        return "nothing was ablated, so there is no repair to compare", None
    better = fd["repaired"] < fd["original"]
    text = (f"the repaired generator's {fd['name']} is {'lower (better)' if better else 'not lower (no better)'} than "
            f"the original's: {fd['repaired']:.4f} against {fd['original']:.4f}")
    if fd["random"]:
        worse = sum(value > fd["repaired"] for value in fd["random"])
        text += f"; {worse} of {len(fd['random'])} random ablations of as many units have a higher one"
    return text, better


def fd_chart(fd: dict) -> np.ndarray:
    names, values, colors = ["original"], [fd["original"]], ["#888888"]
    if fd["repaired"] is not None:
        names += ["repaired", f"random (n={len(fd['random'])})"]
        values += [fd["repaired"], fd["random_mean"]]
        colors += ["#55a868" if fd_verdict(fd)[1] else "#c44e52", "#8c8cb4"]  # the repair's colour: its verdict
    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=100)
    ax.bar(names, values, color=colors)
    if fd["random"]:
        ax.errorbar([2], [fd["random_mean"]], yerr=[fd["random_std"] or 0], color="black", capsize=6)
        ax.scatter([2] * len(fd["random"]), fd["random"], color="black", s=10, zorder=3)
    ax.set_ylabel(f"{fd['name']} (lower is better)")
    ax.set_title(f"{fd['name']} over {fd['n']} latents")
    fig.tight_layout()
    picture = figure_array(fig)
    plt.close(fig)
    return picture


def _share(value) -> str:
    """A standard error as a percentage; n/a where it is undefined (one image: inf in memory, null in the JSON)."""
    return f"{value:.3%}" if value is not None and math.isfinite(value) else "n/a"


def _interval(values) -> str:
    return f"[{values[0]:.4f}, {values[1]:.4f}]" if values else ""


def verdict_text(verdict: dict) -> str:
    """The verdict of a route's repair in one sentence."""
    parts = ["better than the original beyond the 95% interval on FD" if
             verdict["fd_better_than_original_beyond_interval"] else "not better than the original beyond the 95% "
             "interval on FD"]
    parts.append(f"also on {', '.join(verdict['another_metric_better_beyond_interval'])}"
                 if verdict["another_metric_better_beyond_interval"] else "on no other metric")
    parts.append("better than every random draw" if verdict["better_than_every_random_draw"] else
                 "not better than every random draw")
    return "; ".join(parts) + (": the target is met." if verdict["target_met"] else ": the target is not met.")


def routes_section(result: dict) -> str:
    """The routes table: each route's repair against the original (paired intervals) and the random draws."""
    evaluation, fd_name = result["evaluation"], result["fd"]["name"]
    original = evaluation["variants"]["original"]
    rows = [["original", "", original["fd"], _interval(original["fd_interval"]), "", original.get("kid"),
             original.get("precision"), original.get("recall"), original.get("rules", {}).get("images_broken"),
             result["artifact_fraction"]["original"], ""]]
    for row in result["routes_table"]:
        vs, draws = row["vs_original"], evaluation["repairs"]["route:" + row["route"]]["random_draws"]
        units = str(row["units"][:8]) + "".join(f"; {layer}: {later}" for layer, later in row["later_layers"].items())
        rows.append([row["route"] + (" (soft)" if row["soft"] else ""), units, row["fd"],
                     _interval(row["fd_interval"]), _interval(vs["fd_interval"]), row["kid"], row["precision"],
                     row["recall"], row["rules_broken"], row["flagged_share"],
                     f"{row['random_draws_at_least_as_good']} of {draws}"])
    randoms = evaluation["random"]
    if randoms["fd"]:
        rows.append([f"random ({len(randoms['fd'])} draws)", "", f"{randoms['fd_mean']:.4f} +- "
                     f"{randoms['fd_std'] or 0:.4f}", "", "", "", "", "", "", "", ""])
    header = ["repair", "units", fd_name, "95% interval", "minus original (paired 95%)", "KID", "precision",
              "recall", "images breaking a rule", "flagged pixels", "random draws at least as good"]
    verdict = result["verdict"]
    return (table(header, rows) + f"<p>Default route <b>{verdict['route']}</b>: {verdict_text(verdict)}</p>")


def artifact_map_text(art: dict) -> str:
    """How the artifact map was made and whether it tells generated from real pixels, in two sentences."""
    method = art["method"]
    what = {"occlusion": f"occlusion: the discriminator's realness gain when a {art.get('cell')}px window (every "
                         f"{art.get('stride')}px) is blurred",
            "gradcam": f"Grad-CAM of the discriminator's fake logit at {art.get('d_layer')}"}.get(
        method, f"{method.replace('_', ' ')} of the discriminator's fake logit")
    if "segmenter" in art:
        text = (f"{what}, the ready artifact segmenter <code>{art['segmenter']}</code> (threshold "
                f"{art['threshold']:.4g}; how it was made: its manifest entry).")
    else:
        held = art.get("held_out")
        text = (f"{what}, after {art['finetune_steps']} fine-tuning steps of the discriminator; above "
                f"{art['threshold']:.4g}, calibrated to flag {art['target_flag_rate']:.2%} of real pixels (measured: "
                f"{art['calibration']['flag_rate']:.3%} on the {art['calibration']['n']} calibration scenes"
                + (f", {held['flag_rate']:.3%} on {held['n']} held-out scenes" if held else "") + ").")
    signal = art.get("signal")
    if signal:
        ratio = f"{signal['ratio']:.2f}x" if signal["ratio"] is not None else "n/a"
        text += (f" It flags {signal['generated_share']:.3%} +- {_share(signal['generated_se'])} of generated pixels "
                 f"and {signal['real_share']:.3%} +- {_share(signal['real_se'])} of held-out real ones ({signal['n']} "
                 f"images each; ratio {ratio}): " + ("a signal." if signal["has_signal"] else
                                                     "<b>no signal</b> beyond the sampling noise."))
        if signal.get("d_auc") is not None:
            text += f" The discriminator's own score tells the same images apart at ROC AUC {signal['d_auc']:.3f}."
    return text


def write_repair_report(run_dir: Path, result: dict, layer: dict) -> None:
    fd, art, s = result["fd"], result["artifact_segmenter"], result["settings"]
    save_image(run_dir / "fd_chart.png", fd_chart(fd))
    rows = [["original", fd["original"], result["artifact_fraction"]["original"]]]
    if fd["repaired"] is not None:
        f = result["artifact_fraction"]
        rows += [["repaired", fd["repaired"], f["repaired"]],
                 *[[f"random {i} (units {units})", v, f["random"][i]]
                   for i, (units, v) in enumerate(zip(result["random_units"], fd["random"]))],
                 [f"random: mean +- std over {len(fd['random'])}",
                  f"{fd['random_mean']:.4f} +- {fd['random_std'] or 0:.4f}", float(np.mean(f["random"]))]]
    details = {u["unit"]: u for u in layer["units_detail"]}
    unit_rows = [[r["unit"], r["iou"], r["effect"], "yes" if r["unit"] in result["chosen_units"] else "",
                  picture(f"dissect/{details[r['unit']]['strip']}", width=560)]
                 for r in result["ranking"][:s["candidates"]]]
    sections = [
        ("Result", f"<p>{len(result['chosen_units'])} of {s['units_in_layer']} units of <code>{s['layer']}</code> "
                   f"ablated. {fd['name']} over {fd['n']} seeded latents against {fd['real']['n']} real scenes "
                   "(every generator draws the same latents):</p>"
                   + table(["generator", fd["name"], f"flagged pixels ({result['artifact_fraction']['n']} latents)"],
                           rows)
                   + f"<p><b>Verdict:</b> {fd_verdict(fd)[0]}.</p>"
                   + picture("fd_chart.png", "Frechet distance: original, repaired, random ablations of as many "
                                             "units")),
        ("Before and after", picture("before_after.png", "rows: original, repaired, random ablation (same latents)")),
        ("Artifact maps", picture("artifacts.png", "rows: original; original with flagged pixels in red; repaired "
                                                   "with flagged pixels in red")
         + f"<p>Flagged: {artifact_map_text(art)}</p>"),
        ("Units", f"<p>Rule: {s['k_rule']}. Top {s['candidates']} units by IoU with <i>artifact</i> "
                  "(effect = drop in the flagged share when that unit alone is ablated); full artifact dissection: "
                  "<a href='dissect/index.html'>dissect/</a>.</p>"
         + table(["unit", "IoU with artifact", "effect", "chosen", "top images (region outlined)"], unit_rows)),
    ]
    sections.insert(1, ("Routes", routes_section(result)))
    if "planted" in result:
        p = result["planted"]
        rows = [[route, score["units"], score["precision"], score["recall"]] for route, score in p["chosen"].items()]
        sections.insert(1, ("Planted artifacts", f"<p>Planted units {p['units']}; what each route chose:</p>"
                            + table(["route", "units", "precision", "recall"], rows)))
    checkpoint = result["checkpoint"]
    link = (f"<a href='{checkpoint['path']}'>{checkpoint['path']}</a> (sha256 {checkpoint['sha256'][:16]}...)"
            if checkpoint.get("path") else checkpoint.get("note", ""))
    sections.append(("Files", f"<p>Numbers: <a href='repair.json'>repair.json</a>; repaired generator: {link}; "
                              "settings: <a href='config.yaml'>config.yaml</a>.</p>"))
    write_report(run_dir / "index.html", f"gandissect repair: {s['layer']} of {s['generator']}", sections)


def wandb_summary(result: dict) -> dict:
    """A repair's numbers for the W&B runs table: FD (and KID where measured) of the original, the repaired and the
    mean of the random ablations, the flagged artifact shares, and whether the target was met."""
    fd, variants = result["fd"], result["evaluation"]["variants"]
    summary = {"fd/original": fd["original"], "fd/repaired": fd["repaired"], "fd/random_mean": fd["random_mean"],
               "fd/random_std": fd["random_std"], "target_met": result["verdict"]["target_met"],
               "artifact_fraction/original": result["artifact_fraction"]["original"],
               "artifact_fraction/repaired": result["artifact_fraction"]["repaired"]}
    random_kid = [v["kid"] for name, v in variants.items() if name.startswith("random") and "kid" in v]
    if "kid" in variants["original"]:
        summary.update({"kid/original": variants["original"]["kid"],
                        "kid/repaired": variants[f"route:{result['verdict']['route']}"]["kid"],
                        "kid/random_mean": sum(random_kid) / len(random_kid) if random_kid else None})
    return summary


def log_to_wandb(run_dir: Path, cfg: RepairConfig, result: dict) -> None:
    """The repair as one W&B run (nothing when W&B is disabled): its figures, the unit table, ``wandb_summary`` as
    its summary, the generator it read as its input artifact and the repaired generator as its output."""
    run = wandb_run(run_dir, cfg, "repair")
    if run is None:
        return
    import wandb

    fd = result["fd"]
    logged = {f"fd/{name}": value for name, value in (("original", fd["original"]), ("repaired", fd["repaired"]),
                                                      ("random_mean", fd["random_mean"]),
                                                      ("random_std", fd["random_std"])) if value is not None}
    logged.update({f"artifact_fraction/{k}": v for k, v in result["artifact_fraction"].items()
                   if k in ("original", "repaired")})
    logged["units"] = wandb.Table(columns=["unit", "iou", "effect", "chosen"],
                                  data=[[r["unit"], r["iou"], r["effect"], r["unit"] in result["chosen_units"]]
                                        for r in result["ranking"][:result["settings"]["candidates"]]])
    for name in ("before_after", "artifacts", "fd_chart"):
        logged[f"images/{name}"] = wandb.Image(str(run_dir / f"{name}.png"))
    run.log(logged)
    set_summary(run, wandb_summary(result))
    if not result["settings"]["generator_id"].startswith("module "):  # read from cfg.generator
        use_model_artifact(run, cfg.generator)
    if result["checkpoint"].get("path"):
        log_model_artifact(run, run_dir / result["checkpoint"]["path"], aliases=["latest"],
                           metadata={"repaired_from": cfg.generator, "layer": cfg.layer,
                                     "units": result["chosen_units"], "route": result["verdict"]["route"]})
    finish_wandb(run, run_dir)
