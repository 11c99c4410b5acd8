"""One repair run: choose units by each configured route, evaluate every route's repair against the original and
random ablations on the same latents, save the default route's repaired generator, write repair.json and the
report. The artifact segmenter and its dissection come from ``gandissect.pipelines.run_repair_pipeline``."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gandissect.config import RepairConfig
from gandissect.core import distributed
from gandissect.core.hooks import apply_unit_scales, layer_shape, scaled_units, unit_alpha
from gandissect.core.latents import seeded_latents
from gandissect.core.runs import machine_description
from gandissect.errors import BadValueError, ConfigError
from gandissect.io import sha256_file, write_json
from gandissect.metrics.bootstrap import FrechetToReal
from gandissect.metrics.fid import FrechetDistance, build_fd
from gandissect.metrics.real_stats import real_statistics
from gandissect.models.artifact_segmenter import ArtifactSegmenter
from gandissect.models.planted import PlantedArtifacts
from gandissect.models.generators import generator_identity, open_generator, save_generator
from gandissect.models.segmenter import load_segmenter
from gandissect.report.repair import log_to_wandb, write_pictures, write_repair_report
from gandissect.steps.repair.evaluation import Variant, VariantPass, VariantProgressBar, measure
from gandissect.steps.repair.learned import ArtifactRepairModule
from gandissect.steps.repair.routes import (ablation_effects, choose_by_effect, default_k, flagged_share,
                                            planted_recovery, ranked_by, unit_fds)


@dataclass
class RepairPlan:
    """What a repair works on, checked before anything is written."""

    generator: nn.Module          # the generator to repair (with planted artifacts when asked for)
    generator_id: str
    width: int                    # units in the layer
    k: int                        # units to ablate
    candidates: int               # units whose ablation effect is measured (route iou_effect)
    planted: list[int]
    fd: FrechetDistance
    backbone: str


def plan_repair(cfg: RepairConfig, generator: nn.Module | None = None) -> RepairPlan:
    """Load the generator (or take the one given), check the layer, k and candidates, and build the FD metric."""
    generator_id = generator_identity(cfg, generator)
    base = open_generator(cfg, "repair") if generator is None \
        else generator.eval()
    width = layer_shape(base, cfg.layer)[0]  # also refuses an unknown layer, listing the layers
    k = cfg.k or default_k(width)
    if 2 * k > width:
        raise ConfigError(f"k={k} of {cfg.layer}'s {width} units: the random draws need k units outside the chosen "
                          f"ones; use k <= {width // 2}")
    if "multilayer" in cfg.routes:
        for later in cfg.multilayer.layers:
            layer_shape(base, later)
        if cfg.layer in cfg.multilayer.layers:
            raise ConfigError(f"multilayer.layers={list(cfg.multilayer.layers)} repeats the repaired layer {cfg.layer}")
    if cfg.candidates is not None and cfg.candidates < k:
        raise ConfigError(f"candidates={cfg.candidates} < k={k}: k units are chosen among the candidates")
    planted = cfg.plant.units
    if planted:
        base = PlantedArtifacts(base, cfg.layer, planted, cfg.plant.quantile, cfg.plant.calibration_n)
        generator_id = f"{generator_id}, planted units {sorted(set(planted))} of {cfg.layer}"
    backbone = fd_backbone(cfg)
    check_segmenter(cfg, backbone)
    fd = build_fd(backbone, weights=cfg.inception_weights if backbone == "inception" else None,
                  segmenter_path=cfg.segmenter)
    return RepairPlan(base, generator_id, width, k, min(width, cfg.candidates or 4 * k), planted, fd, backbone)


def check_signal(cfg: RepairConfig, artifact_record: dict) -> None:
    """Refuse to choose units by an artifact map that flags generated images no more than real ones: its units
    would be chosen by noise."""
    signal = artifact_record.get("signal")
    if not cfg.artifact.require_signal or signal is None or signal["has_signal"]:
        return
    by_map = [route for route in cfg.routes if route in ("iou", "iou_effect") or
              (route.startswith("learned") and cfg.learned.objective == "artifact")]
    if by_map:
        raise BadValueError(
            f"the artifact map ({artifact_record['method']}) has no signal on this generator: it flags "
            f"{signal['generated_share']:.3%} +- {signal['generated_se']:.3%} of generated pixels and "
            f"{signal['real_share']:.3%} +- {signal['real_se']:.3%} of real ones ({signal['n']} images each), so "
            f"routes {', '.join(by_map)} would choose units by noise; use another artifact.method (occlusion), "
            "routes that do not read the map (unit_fd, learned with learned.objective=discriminator), or "
            "artifact.require_signal=false to choose anyway")


def check_segmenter(cfg: RepairConfig, backbone: str) -> None:
    """A repair reads ``segmenter`` for FD-scenes and for the world's rules, both made for the scene segmenter's
    classes; another segmenter (hf:, a factory) goes with FID and no rules."""
    if Path(cfg.segmenter).suffix == ".safetensors" or (backbone != "scenes" and cfg.evaluation.rules_n == 0):
        return
    raise ConfigError(f"segmenter={cfg.segmenter}: a repair reads its segmenter for FD-scenes and the scene world's "
                      "rules, which need the scene segmenter; with another segmenter set "
                      "inception_weights=<pytorch-fid weights file> (FID) and evaluation.rules_n=0")


def fd_backbone(cfg: RepairConfig) -> str:
    if cfg.fd_backbone == "auto":
        return "inception" if cfg.inception_weights else "scenes"
    return cfg.fd_backbone


def hard(units: list[int], width: int) -> torch.Tensor:
    """Unit scales of a full ablation of ``units``."""
    return 1 - unit_alpha(units, width)


def learn_alpha(cfg: RepairConfig, plan: RepairPlan, artifact_segmenter: ArtifactSegmenter, by_iou: list[int],
                run_dir: Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The learned repair's alpha and its mean over the steps (every process gets the same), and a record of the
    optimization."""
    ln = cfg.learned
    init = torch.full((plan.width,), ln.init_value)
    init[by_iou[:plan.k]] = 1.0
    module = ArtifactRepairModule(plan.generator, artifact_segmenter, cfg.layer, init, ln.objective, ln.lam, ln.lr,
                                  ln.batch_size, ln.steps, ln.seed)
    trainer = distributed.build_trainer(cfg.devices, run_dir, max_steps=ln.steps, log_every_n_steps=10,
                                        enable_progress_bar=True)
    started = time.perf_counter()
    trainer.fit(module)
    alpha = module.alpha.detach().cpu().clamp(0, 1)
    record = {"objective": ln.objective, "steps": ln.steps, "lam": ln.lam, "lr": ln.lr,
              "loss_first": module.losses[0] if module.losses else None,
              "loss_last": module.losses[-1] if module.losses else None,
              "units_above_half": int((alpha > 0.5).sum()), "alpha_norm": round(float(alpha.norm()), 6),
              "fit_s": round(time.perf_counter() - started, 1)}
    return alpha, module.alpha_mean(), record


# (generator as repaired so far, layer) -> the IoU of each of the layer's units with the artifact class
DissectLayer = Callable[[nn.Module, str], list[float]]


def look_again(cfg: RepairConfig, plan: RepairPlan, first_units: list[int], dissect_layer: DissectLayer) -> dict:
    """Route ``multilayer``: ablate ``first_units`` of the layer, then per later layer dissect the generator as
    repaired so far and ablate its top units by artifact IoU. The unit scales of every layer, and the evidence."""
    scales = {cfg.layer: hard(first_units, plan.width)}
    later = {}
    for layer in cfg.multilayer.layers:
        iou = dissect_layer(apply_unit_scales(plan.generator, scales)[0], layer)
        k = cfg.multilayer.k or default_k(len(iou))
        later[layer] = {"units": ranked_by(iou)[:k], "iou": [round(v, 6) for v in iou]}
        scales[layer] = hard(later[layer]["units"], len(iou))
    return {"units": first_units, "later_layers": later, "scales": scales}


def choose(cfg: RepairConfig, plan: RepairPlan, artifact_segmenter: ArtifactSegmenter, iou: list[float],
           distance: FrechetToReal, run_dir: Path, dissect_layer: DissectLayer | None) -> tuple[dict, dict]:
    """Per route: ``{"units", "scales" (per layer, its unit scales), ...evidence}``; and the rankings behind
    them."""
    width, k, generator = plan.width, plan.k, plan.generator
    by_iou = ranked_by(iou)
    routes, rankings = {}, {"iou": by_iou}
    for route in cfg.routes:
        if route == "iou":
            routes[route] = {"units": by_iou[:k]}
        elif route == "iou_effect":
            original, effects = ablation_effects(generator, artifact_segmenter, cfg.layer, by_iou[:plan.candidates],
                                                 width, cfg.effect_seed, cfg.effect_n, cfg.batch_size)
            rankings["effect"] = sorted(effects, key=lambda u: (-effects[u], u))
            routes[route] = {"units": choose_by_effect(iou, effects, k), "candidates": by_iou[:plan.candidates],
                             "flagged_share_original": original,
                             "effects": {str(u): round(v, 6) for u, v in effects.items()}}
        elif route == "unit_fd":
            u = cfg.unit_fd
            fds = unit_fds(generator, plan.fd.backbone, cfg.layer, distance, u.seed, u.n, u.top, cfg.batch_size)
            rankings["unit_fd"] = ranked_by(fds)
            routes[route] = {"units": rankings["unit_fd"][:k], "unit_fd": [round(v, 6) for v in fds]}
        elif route in ("learned", "learned_soft"):
            if "alpha" not in rankings:
                alpha, mean, record = learn_alpha(cfg, plan, artifact_segmenter, by_iou, run_dir)
                # many units end clamped at 1: among equal alphas, the larger mean over the steps ranks first
                rankings["alpha"] = sorted(range(width), key=lambda u: (-round(float(alpha[u]), 6),
                                                                        -round(float(mean[u]), 6), u))
                learned = {"alpha": [round(float(a), 6) for a in alpha], "optimization": record}
            if route == "learned":
                routes[route] = {"units": rankings["alpha"][:k], **learned}
            else:
                routes[route] = {"units": [u for u in rankings["alpha"] if float(alpha[u]) > 0.5], "soft": True,
                                 "scales": {cfg.layer: 1 - alpha}, **learned}
        elif route == "multilayer":
            if dissect_layer is None:
                raise ConfigError("route multilayer needs a way to dissect further layers (run it through "
                                  "gandissect repair)")
            routes[route] = look_again(cfg, plan, by_iou[:k], dissect_layer)
        else:
            raise ConfigError(f"unknown repair route {route!r}")
    for entry in routes.values():
        entry.setdefault("scales", {cfg.layer: hard(entry["units"], width)})
    return routes, rankings


def random_draws(cfg: RepairConfig, plan: RepairPlan, routes: dict) -> list[list[int]]:
    """``random_draws`` sets of k units drawn from all the layer's units except the default route's. (Excluding
    every route's units would bias the control: a soft route can touch half the layer.)"""
    others = [u for u in range(plan.width) if u not in routes[cfg.routes[0]]["units"]]
    if len(others) < plan.k:
        raise ConfigError(f"the default route {cfg.routes[0]} chose {plan.width - len(others)} of {plan.width} units, "
                          f"which leaves fewer than k={plan.k} for the random draws; put another route first")
    rng = np.random.default_rng(cfg.random_seed)
    return [sorted(rng.choice(others, size=plan.k, replace=False).tolist()) for _ in range(cfg.random_draws)]


def save_repaired(generator: nn.Module, scales: dict[str, torch.Tensor], run_dir: Path, planted: list[int]) -> dict:
    """Make the edit permanent (folded into the weights, or recorded where a layer cannot be folded), check the
    result against the hooked edit, and save it."""
    if all(bool((scale == 1).all()) for scale in scales.values()):
        return {"path": None, "note": "the default route chose no unit; nothing was repaired"}
    edited, how = apply_unit_scales(generator, scales)
    z = seeded_latents(0, 8, generator.latent_dim)
    with torch.no_grad(), scaled_units(generator, scales) as hook:
        hooked = hook(z)
        difference = float((edited(z) - hooked).abs().max())
    exact = all(bool(((scale == 0) | (scale == 1)).all()) for scale in scales.values())
    if (exact and difference != 0) or difference > 1e-4:
        raise BadValueError(f"the edited generator differs from the hooked edit of {', '.join(scales)} by "
                            f"{difference:.3g}; not saved")
    check = ("bit-identical to the hooked ablation on 8 latents" if exact else
             f"within {difference:.2g} of the hooked soft ablation on 8 latents (float rounding)")
    if planted:  # the planted blotches are not part of the ProGAN architecture: no ordinary checkpoint
        return {"path": None, "fold_check": check, "edits": how,
                "note": "a planted-artifact generator is a test case, not an ordinary ProGAN; not saved"}
    try:
        path = save_generator(edited, run_dir / "repaired_generator.safetensors")
    except BadValueError as err:  # e.g. a factory's generator: the run's unit scales are in repair.json
        return {"path": None, "fold_check": check, "edits": how, "note": str(err)}
    return {"path": path.name, "sha256": sha256_file(path), "fold_check": check, "edits": how}


def routes_table(routes: dict, evaluation: dict, fractions: dict) -> list[dict]:
    """One row per route: the units and every measure of its repair against the original and the random draws."""
    rows = []
    for route, entry in routes.items():
        name = f"route:{route}"
        variant, repair = evaluation["variants"][name], evaluation["repairs"][name]
        rows.append({"route": route, "units": entry["units"], "soft": bool(entry.get("soft")),
                     "later_layers": {layer: later["units"] for layer, later in entry.get("later_layers", {}).items()},
                     **{key: variant.get(key) for key in ("fd", "fd_interval", "kid", "kid_std", "precision",
                                                          "recall")},
                     "rules_broken": variant.get("rules", {}).get("images_broken"),
                     "flagged_share": fractions.get(name),
                     "vs_original": repair["vs_original"],
                     "random_draws_at_least_as_good": repair["random_draws_at_least_as_good"],
                     "verdict": repair["verdict"]})
    return rows


def run_repair(cfg: RepairConfig, plan: RepairPlan, artifact_segmenter: ArtifactSegmenter, artifact_record: dict,
               artifact_layer: dict, run_dir: Path, seconds: dict, dissect_layer: DissectLayer | None = None) -> dict:
    """Choose the units by every route from the artifact dissection of the layer (``artifact_layer``: its entry of
    dissect.json; ``dissect_layer`` dissects further layers for route multilayer), evaluate, save, report.
    ``seconds`` holds the wall time of the phases so far and gets the rest. Every process calls it; rank 0 returns
    the result, the others {}."""
    clock = time.perf_counter()

    def lap(phase: str) -> None:
        nonlocal clock
        seconds[phase], clock = round(time.perf_counter() - clock, 1), time.perf_counter()

    generator, width, fd = plan.generator, plan.width, plan.fd
    world = distributed.world_size()
    if world > 1 and -(-cfg.fd_n // cfg.batch_size) < world:
        raise ConfigError(f"fd_n={cfg.fd_n} in batches of {cfg.batch_size} leaves some of the {world} processes "
                          "without a batch; use fd_n >= batch_size * processes")
    backbone_file = cfg.inception_weights if plan.backbone == "inception" else cfg.segmenter
    real = real_statistics(fd, generator.resolution, cfg.real_seed, cfg.real_n, cfg.batch_size, run_dir,
                           backbone_file, cfg.real_stats, cfg.real_variant)
    lap("real_statistics_s")
    iou = artifact_layer["iou_by_class"]["artifact"]
    routes, rankings = choose(cfg, plan, artifact_segmenter, iou, FrechetToReal(real.mu, real.sigma), run_dir,
                              dissect_layer)
    random_sets = random_draws(cfg, plan, routes)
    variants: dict[str, Variant] = {"original": {}}
    variants.update({f"route:{route}": entry["scales"] for route, entry in routes.items()})
    variants.update({f"random{i}": {cfg.layer: hard(units, width)} for i, units in enumerate(random_sets)})
    lap("unit_choice_s")

    module = VariantPass(generator, variants, fd.backbone, load_segmenter(cfg.segmenter), cfg.fd_seed,
                         cfg.fd_n, cfg.batch_size, cfg.evaluation.rules_n)
    trainer = distributed.build_trainer(cfg.devices, run_dir, [VariantProgressBar()], use_distributed_sampler=False)
    try:
        trainer.validate(module, verbose=False)
    finally:
        module.remove_hook()
    module.to(trainer.strategy.root_device)  # Lightning's teardown moved it to the CPU; NCCL gathers need the GPU
    features, labels = module.collected()
    lap("evaluation_pass_s")
    if not trainer.is_global_zero:
        return {}
    generator = generator.cpu()
    e = cfg.evaluation
    repaired_names = [f"route:{route}" for route in routes]
    random_names = [f"random{i}" for i in range(len(random_sets))]
    evaluation = measure(features, labels, real, repaired_names, random_names, e.resamples, e.level, e.kid_subsets,
                         e.kid_subset_size, e.k, e.seed)
    lap("measures_s")
    # flagged shares on the FD latents: on the latents the units were chosen on they would flatter them
    fractions = {name: flagged_share(generator, artifact_segmenter, variant, cfg.fd_seed, cfg.effect_n,
                                     cfg.batch_size) for name, variant in variants.items()}
    default = cfg.routes[0]
    chosen = routes[default]["units"]
    result = {
        "settings": {"generator": cfg.generator, "generator_id": plan.generator_id, "layer": cfg.layer,
                     "units_in_layer": width, "k": plan.k, "candidates": plan.candidates, "routes": cfg.routes,
                     "default_route": default,
                     "k_rule": "k (default round(4% of the layer's units)) units per route; iou_effect: those with "
                               "the largest positive causal effect among the top `candidates` units by IoU with "
                               "the artifact class",
                     "planted_units": plan.planted or None},
        "artifact_segmenter": {k_: v for k_, v in artifact_record.items() if k_ != "key"},
        "ranking": [{"unit": u, "iou": round(iou[u], 6),
                     "effect": routes.get("iou_effect", {}).get("effects", {}).get(str(u))} for u in rankings["iou"]],
        "routes": {route: {k_: (v.tolist() if isinstance(v, torch.Tensor) else v) for k_, v in entry.items()
                           if k_ != "scales"} for route, entry in routes.items()},
        "chosen_units": chosen,
        "random_units": random_sets,
        "artifact_fraction": {"seed": cfg.fd_seed, "n": cfg.effect_n, "original": fractions["original"],
                              "repaired": fractions[f"route:{default}"],
                              "random": [fractions[name] for name in random_names],
                              "routes": {route: fractions[f"route:{route}"] for route in routes},
                              **({"selection": {"seed": cfg.effect_seed, "n": cfg.effect_n,
                                                "original": routes["iou_effect"]["flagged_share_original"]}}
                                 if "iou_effect" in routes else {})},
        "fd": {"name": fd.name, "backbone": plan.backbone, "n": cfg.fd_n, "seed": cfg.fd_seed,
               "real": {"n": real.count, "seed": cfg.real_seed if cfg.real_stats is None else None,
                        "stats": cfg.real_stats},
               "original": evaluation["variants"]["original"]["fd"],
               "repaired": evaluation["variants"][f"route:{default}"]["fd"],
               "random": evaluation["random"]["fd"], "random_mean": evaluation["random"]["fd_mean"],
               "random_std": evaluation["random"]["fd_std"]},
        "evaluation": evaluation,
        "routes_table": routes_table(routes, evaluation, fractions),
        "verdict": {"route": default, **evaluation["repairs"][f"route:{default}"]["verdict"]},
    }
    if plan.planted:
        result["planted"] = planted_recovery(plan.planted, rankings, {r: e_["units"] for r, e_ in routes.items()})
    result["checkpoint"] = save_repaired(generator, routes[default]["scales"], run_dir, plan.planted)
    write_pictures(generator, artifact_segmenter, cfg.fd_seed, routes[default]["scales"],
                   variants[random_names[0]], run_dir)
    lap("fractions_checkpoint_pictures_s")
    result["timing"] = {**seconds, "machine": machine_description(), "processes": trainer.world_size,
                        "wall_s": round(sum(seconds.values()), 1)}
    write_json(run_dir / "repair.json", result)
    write_repair_report(run_dir, result, artifact_layer)
    log_to_wandb(run_dir, cfg, result)
    return result


def summary(result: dict, run_dir: Path) -> dict:
    """What ``gandissect repair`` prints (the demo shows the same)."""
    fd = result["fd"]
    out = {"run_dir": str(run_dir), "report": str(run_dir / "index.html"), "layer": result["settings"]["layer"],
           "chosen_units": result["chosen_units"], "fd_name": fd["name"], "fd_n": fd["n"],
           "fd_original": fd["original"], "fd_repaired": fd["repaired"], "fd_random": fd["random"],
           "fd_random_mean": fd["random_mean"], "fd_random_std": fd["random_std"],
           "artifact_fraction": result["artifact_fraction"], "verdict": result["verdict"],
           "routes": {row["route"]: {"fd": row["fd"], "fd_interval": row["fd_interval"],
                                     "target_met": row["verdict"]["target_met"]} for row in result["routes_table"]},
           "checkpoint": result["checkpoint"].get("path") and str(run_dir / result["checkpoint"]["path"]),
           "wall_s": result["timing"]["wall_s"]}
    if "planted" in result:
        out["planted"] = result["planted"]
    return out
