"""Comparison (GAN Dissection, step 7): the dissections of several models (or layers, or checkpoints) side by side.

Reads finished runs only - ``dissect.json`` of each model, and optionally ``ace.json`` and ``repair.json`` runs, each
attributed to the model whose generator it used (by the generator identity the runs record) - and writes
``runs/<name>/``: ``compare.json``, ``categories.png`` (interpretable units per category, layer and model),
``best_iou.png`` (the distribution of each unit's best IoU per layer) and ``index.html``.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from gandissect.config import CompareConfig
from gandissect.core.runs import finish_run, runs_root, start_run
from gandissect.errors import GandissectError
from gandissect.io import save_image, write_json
from gandissect.report.compare import best_iou_chart, categories_chart, write_compare_report


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


def run_compare(cfg: CompareConfig, run_dir: Path | None = None) -> dict:
    """Read the runs (refusing a missing one before anything is written), then write the comparison."""
    if cfg.labels and len(cfg.labels) != len(cfg.dissections):
        raise GandissectError(f"labels={list(cfg.labels)}: give one label per dissection ({len(cfg.dissections)})")
    dissections = [_read(p, "dissect.json", "dissection") for p in cfg.dissections]
    labels = list(cfg.labels) or [Path(path).parent.name for path, _ in dissections]
    if len(set(labels)) != len(labels):
        raise GandissectError(f"labels {labels} repeat a name; give distinct labels")
    result = compare_dissections(dissections, labels)
    result["ace"] = ace_rows(result["models"], [_read(p, "ace.json", "ACE run") for p in cfg.ace])
    result["repair"] = repair_rows(result["models"], [_read(p, "repair.json", "repair run") for p in cfg.repairs])
    run_dir = start_run(cfg.name, cfg, root=run_dir)
    save_image(run_dir / "categories.png", categories_chart(result))
    save_image(run_dir / "best_iou.png", best_iou_chart(result))
    write_json(run_dir / "compare.json", result)
    write_compare_report(run_dir, result)
    finish_run(run_dir)
    return {"run_dir": str(run_dir), "report": str(run_dir / "index.html"),
            "models": {m["label"]: {layer: row["interpretable"] for layer, row in m["layers"].items()}
                       for m in result["models"]}}
