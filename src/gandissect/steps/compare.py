"""Comparison (GAN Dissection, step 7): the dissections of several models (or layers, or checkpoints) side by side.

Reads finished runs - ``dissect.json`` of each model, and optionally ``ace.json`` and ``repair.json`` runs, each
attributed to the model whose generator it used (by the generator identity the runs record) - and writes
``runs/<name>/``: ``compare.json``, ``categories.png`` (interpretable units per category, layer and model),
``classes.png`` (the same per class), ``best_iou.png`` (the distribution of each unit's best IoU per layer) and
``index.html``. With ``match_units`` it also runs each pair of neighbouring models (checkpoints of one GAN) on
shared latents and matches every interpretable unit of the later one to the earlier unit whose activations
correlate with it most (``matches.png``). Generators to dissect first are the pipeline's business
(``pipelines.run_compare_pipeline``).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import torch
from tqdm import tqdm

from gandissect.config import CompareConfig
from gandissect.core.hooks import NetHook
from gandissect.core.latents import latent_batches
from gandissect.core.runs import (finish_run, finish_wandb, model_identity, model_name, runs_root, set_summary,
                                  start_run, use_model_artifact, wandb_run)
from gandissect.errors import GandissectError
from gandissect.io import save_image, write_json
from gandissect.metrics.unit_match import UnitCorrelation, best_matches
from gandissect.models.generators import load_generator
from gandissect.report.compare import (best_iou_chart, categories_chart, classes_chart, matches_chart,
                                       write_compare_report)


def _read(path: str | Path, file_name: str, what: str) -> tuple[Path, dict]:
    """A run's result file: ``path`` is the file, its run directory or a run name under runs/."""
    candidates = [Path(path), Path(path) / file_name, runs_root() / str(path) / file_name]
    for found in candidates:
        if found.is_file() and found.name == file_name:
            return found, json.loads(found.read_text())
    raise GandissectError(f"{what} {path!r}: no {file_name} there (looked at {', '.join(map(str, candidates[1:]))}); "
                          f"expected a finished run")


def layer_row(layer: dict, iou_threshold: float) -> dict:
    best = sorted(unit["iou"] for unit in layer["units_detail"])
    return {"size": "x".join(map(str, layer["shape"][1:])), "units": layer["units"],
            "interpretable": layer["interpretable_units"],
            "share": round(layer["interpretable_units"] / max(layer["units"], 1), 4),
            "per_category": layer["per_category"], "per_class": layer["per_class"],
            "best_iou": {"median": round(statistics.median(best), 6), "q90": round(best[int(0.9 * (len(best) - 1))], 6),
                         "max": best[-1], "values": best},
            "iou_threshold": iou_threshold}


def compare_dissections(dissections: list[dict], labels: list[str]) -> dict:
    """Per model and layer: interpretable units in all, per category and per class, and the best-IoU spread."""
    models = []
    for label, (path, result) in zip(labels, dissections):
        settings = result["settings"]
        models.append({"label": label, "dissection": str(path), "generator": settings["generator"],
                       "generator_id": settings["generator_sha256"], "n": settings["n"],
                       "layers": {name: layer_row(layer, settings["iou_threshold"])
                                  for name, layer in result["layers"].items()}})
    classes = list(dict.fromkeys(c for _, result in dissections for c in result["classes"]))
    categories = {}
    for _, result in dissections:
        categories.update(result["categories"])
    return {"models": models, "classes": classes, "categories": categories}


def _owner(models: list[dict], generator_id: str, path: Path, what: str) -> str:
    for model in models:
        if model["generator_id"] == generator_id:
            return model["label"]
    raise GandissectError(f"{what} {path} was made with generator {generator_id[:24]}..., which none of the "
                          f"dissections compared used ({', '.join(m['label'] for m in models)})")


def ace_rows(models: list[dict], runs: list[tuple[Path, dict]]) -> list[dict]:
    rows = []
    for path, ace in runs:
        row = {"model": _owner(models, ace["settings"]["generator_sha256"], path, "ACE run"), "class": ace["class"],
               "layer": ace["layer"], "units": ace["units"], "run": str(path)}
        for ranking in ("ace", "iou"):
            for k in (5, 20):
                row[f"{ranking}_at_{k}"] = ace["removal"][ranking].get(f"at_{k}")
        rows.append(row)
    return rows


def repair_rows(models: list[dict], runs: list[tuple[Path, dict]]) -> list[dict]:
    rows = []
    for path, repair in runs:
        fd, settings = repair["fd"], repair["settings"]
        rows.append({"model": _owner(models, settings["generator_id"], path, "repair run"), "layer": settings["layer"],
                     "k": settings["k"], "route": settings["default_route"], "fd_name": fd["name"], "fd_n": fd["n"],
                     "fd_original": fd["original"], "fd_repaired": fd["repaired"], "fd_random_mean": fd["random_mean"],
                     "fd_random_std": fd["random_std"], "random_draws": len(fd["random"]),
                     "target_met": repair["verdict"].get("target_met"), "run": str(path)})
    return rows


def _dissected_generator(model: dict) -> torch.nn.Module:
    """The generator a dissection read (with the truncation its identity records), checked to be the same weights."""
    path, identity = model["generator"], model["generator_id"]
    truncation = float(identity.split(" truncation ")[1]) if " truncation " in identity else None
    generator = load_generator(path, truncation=truncation)
    made = model_identity(path, None if Path(path).is_file() else generator)
    if (made if truncation is None else f"{made} truncation {truncation}") != identity:
        raise GandissectError(f"unit matching: {path} is no longer the generator that {model['dissection']} "
                              "dissected (its sha256 differs); dissect it again")
    return generator


@torch.no_grad()
def layer_correlations(earlier: torch.nn.Module, later: torch.nn.Module, layers: list[str], n: int, seed: int,
                       batch_size: int) -> dict[str, torch.Tensor]:
    """(units of earlier, units of later) activation correlation at each layer, over latents 0..n-1 of ``seed``."""
    if earlier.latent_dim != later.latent_dim:
        raise GandissectError(f"unit matching needs one latent space; the models take {earlier.latent_dim} and "
                              f"{later.latent_dim} numbers")
    metrics: dict[str, UnitCorrelation] = {}
    with NetHook(earlier, layers) as hook_a, NetHook(later, layers) as hook_b:
        for z in tqdm(latent_batches(seed, n, earlier.latent_dim, batch_size), total=-(-n // batch_size),
                      desc="matching units", leave=False):
            hook_a(z)
            hook_b(z)
            for layer in layers:
                a, b = hook_a.retained[layer], hook_b.retained[layer]
                if layer not in metrics:
                    metrics[layer] = UnitCorrelation(a.shape[1], b.shape[1])
                metrics[layer].update(a, b)
    return {layer: metric.compute() for layer, metric in metrics.items()}


def match_units(earlier: dict, later: dict, correlations: dict[str, torch.Tensor],
                layers_a: dict, layers_b: dict) -> dict:
    """Per layer: each interpretable unit of ``later``, its best-correlated unit of ``earlier`` and whether that
    unit was interpretable for the same class there."""
    result = {"earlier": earlier["label"], "later": later["label"], "layers": {}}
    for layer, correlation in correlations.items():
        rows_a, corr = best_matches(correlation)
        detail_a = layers_a[layer]["units_detail"]
        units = []
        for unit in layers_b[layer]["units_detail"]:
            if not unit["interpretable"]:
                continue
            match = detail_a[int(rows_a[unit["unit"]])]
            units.append({"unit": unit["unit"], "label": unit["label"], "iou": unit["iou"], "match": match["unit"],
                          "correlation": round(float(corr[unit["unit"]]), 4), "match_label": match["label"],
                          "match_iou": match["iou"],
                          "same_concept": bool(match["interpretable"] and match["label"] == unit["label"])})
        same = sum(u["same_concept"] for u in units)
        result["layers"][layer] = {
            "interpretable": len(units), "same_concept": same,
            "share_same_concept": round(same / len(units), 4) if units else None,
            "median_correlation": round(statistics.median(u["correlation"] for u in units), 4) if units else None,
            "units": units}
    return result


def matched_pairs(cfg: CompareConfig, models: list[dict], dissections: list[tuple[Path, dict]]) -> list[dict]:
    """Unit matching between each model and the next, at the layers both dissected with the same spatial size."""
    pairs = []
    for (a, (_, res_a)), (b, (_, res_b)) in zip(zip(models, dissections), zip(models[1:], dissections[1:])):
        layers = [name for name in res_b["layers"] if name in res_a["layers"]
                  and res_a["layers"][name]["shape"][1:] == res_b["layers"][name]["shape"][1:]]
        if not layers:
            raise GandissectError(f"unit matching: {a['label']} and {b['label']} share no dissected layer of one size")
        correlations = layer_correlations(_dissected_generator(a), _dissected_generator(b), layers, cfg.match_n,
                                          cfg.match_seed, cfg.batch_size)
        pairs.append(match_units(a, b, correlations, res_a["layers"], res_b["layers"]))
    return pairs


def summary_metrics(result: dict) -> dict:
    """Flat numbers for the W&B runs table: interpretable units per model (all layers and per layer) and per class,
    and the share of units matched to the same class across checkpoints."""
    summary = {}
    for model in result["models"]:
        label, layers = model["label"], model["layers"]
        summary[f"{label}/interpretable_units"] = sum(row["interpretable"] for row in layers.values())
        for name, row in layers.items():
            summary[f"{label}/{name}/interpretable_units"] = row["interpretable"]
        for c in result["classes"]:
            summary[f"{label}/units/{c}"] = sum(row["per_class"].get(c, 0) for row in layers.values())
    for pair in result["matches"]:
        for name, row in pair["layers"].items():
            summary[f"{pair['earlier']} -> {pair['later']}/{name}/share_same_concept"] = row["share_same_concept"]
    return summary


def log_to_wandb(run_dir: Path, cfg: CompareConfig, result: dict) -> None:
    run = wandb_run(run_dir, cfg, "compare")
    if run is None:
        return
    import wandb

    set_summary(run, summary_metrics(result))
    for model in result["models"]:  # lineage: the comparison read these checkpoints
        use_model_artifact(run, model["generator"])
    charts = ("categories", "classes", "best_iou", "matches")
    run.log({name: wandb.Image(str(run_dir / f"{name}.png")) for name in charts if (run_dir / f"{name}.png").is_file()})
    finish_wandb(run, run_dir)


def read_inputs(cfg: CompareConfig) -> dict:
    """The finished runs a comparison reads and the models' labels, every problem refused here, before any work:
    a missing run, labels that do not fit, unit matching with one model."""
    dissections = [_read(p, "dissect.json", "dissection") for p in cfg.dissections]
    count = len(cfg.dissections) + len(cfg.generators)
    if cfg.labels and len(cfg.labels) != count:
        raise GandissectError(f"labels={list(cfg.labels)}: give one label per dissection and generator ({count})")
    labels = list(cfg.labels) or ([Path(path).parent.name for path, _ in dissections]
                                  + [model_name(g) for g in cfg.generators])
    if len(set(labels)) != len(labels):
        raise GandissectError(f"labels {labels} repeat a name; give distinct labels")
    if cfg.match_units and count < 2:
        raise GandissectError("match_units: true matches each model's units to the previous model's; give at "
                              "least two models")
    return {"dissections": dissections, "labels": labels,
            "ace": [_read(p, "ace.json", "ACE run") for p in cfg.ace],
            "repairs": [_read(p, "repair.json", "repair run") for p in cfg.repairs]}


def run_compare(cfg: CompareConfig, run_dir: Path | None = None, dissected: list[Path] = ()) -> dict:
    """Read the runs (refusing a missing one before anything is written), then write the comparison.
    ``dissected``: dissections made for ``cfg.generators``, compared after ``cfg.dissections``."""
    inputs = read_inputs(cfg)
    dissections = inputs["dissections"] + [_read(p, "dissect.json", "dissection") for p in dissected]
    result = compare_dissections(dissections, inputs["labels"])
    result["ace"] = ace_rows(result["models"], inputs["ace"])
    result["repair"] = repair_rows(result["models"], inputs["repairs"])
    result["matches"] = matched_pairs(cfg, result["models"], dissections) if cfg.match_units else []
    run_dir = start_run(cfg.name, cfg, root=run_dir)
    save_image(run_dir / "categories.png", categories_chart(result))
    save_image(run_dir / "classes.png", classes_chart(result))
    save_image(run_dir / "best_iou.png", best_iou_chart(result))
    if result["matches"]:
        save_image(run_dir / "matches.png", matches_chart(result))
    write_json(run_dir / "compare.json", result)
    write_compare_report(run_dir, result)
    log_to_wandb(run_dir, cfg, result)
    finish_run(run_dir)
    return {"run_dir": str(run_dir), "report": str(run_dir / "index.html"),
            "models": {m["label"]: {layer: row["interpretable"] for layer, row in m["layers"].items()}
                       for m in result["models"]}}
