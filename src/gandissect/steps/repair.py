"""Repair (GAN Dissection, step 5): choose the units that draw artifacts, switch them off, prove it with FD.

Given the artifact segmenter (``steps.artifacts``) and its dissection at the layer (``steps.dissect``), which
``gandissect.pipelines.run_repair_pipeline`` builds first:

1. **Artifact units.** The top ``candidates`` units by IoU with ``artifact`` are ablated one at a time on held-out
   latents and re-ranked by how much of the flagged area their ablation removes (the causal effect); the k best
   with a positive effect are chosen.
2. **Proof.** ``RepairModule`` (a LightningModule run by ``Trainer.validate``) draws the same seeded latents through
   the original generator, the repaired one, and ``random_draws`` generators with k random units ablated,
   streaming each into its own Frechet distance against real statistics.
3. **Checkpoint.** Ablating a unit everywhere equals zeroing its output channel's weights and bias, so the repaired
   generator is written as an ordinary checkpoint (``core.hooks.fold_ablation``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from gandissect.config import RepairConfig, to_dict
from gandissect.core import distributed
from gandissect.core.hooks import NetHook, fold_ablation, layer_shape, unit_alpha
from gandissect.core.latents import LatentBatches, generated_batches, seeded_latents
from gandissect.core.runs import machine_description, model_identity
from gandissect.errors import BadValueError, ConfigError
from gandissect.io import sha256_file, write_json
from gandissect.metrics.fid import FrechetDistance, build_fd
from gandissect.metrics.real_stats import real_statistics
from gandissect.models.artifact_segmenter import ArtifactSegmenter
from gandissect.models.planted import PlantedArtifacts
from gandissect.models.progan import ProGANGenerator, load_generator
from gandissect.report.repair import log_to_wandb, write_pictures, write_repair_report


@dataclass
class RepairPlan:
    """What a repair works on, checked before anything is written."""

    generator: nn.Module          # the generator to repair (with planted artifacts when asked for)
    generator_id: str
    width: int                    # units in the layer
    k: int                        # units to ablate
    candidates: int               # units whose ablation effect is measured
    planted: list[int]
    fd: FrechetDistance
    backbone: str


def plan_repair(cfg: RepairConfig, generator: nn.Module | None = None) -> RepairPlan:
    """Load the generator (or take the one given), check the layer, k and candidates, and build the FD metric."""
    generator_id = model_identity(cfg.generator, generator)
    base = load_generator(cfg.generator) if generator is None else generator.eval()
    width = layer_shape(base, cfg.layer)[0]  # also refuses an unknown layer, listing the layers
    k = cfg.k or default_k(width)
    if 2 * k > width:
        raise ConfigError(f"k={k} of {cfg.layer}'s {width} units: the random draws need k units outside the chosen "
                          f"ones; use k <= {width // 2}")
    if cfg.candidates is not None and cfg.candidates < k:
        raise ConfigError(f"candidates={cfg.candidates} < k={k}: k units are chosen among the candidates")
    planted = cfg.plant.units
    if planted:
        base = PlantedArtifacts(base, cfg.layer, planted, cfg.plant.quantile, cfg.plant.calibration_n)
        generator_id = f"{generator_id}, planted units {sorted(set(planted))} of {cfg.layer}"
    backbone = fd_backbone(cfg)
    fd = build_fd(backbone, weights=cfg.inception_weights if backbone == "inception" else None,
                  segmenter_path=cfg.segmenter)
    return RepairPlan(base, generator_id, width, k, min(width, cfg.candidates or 4 * k), planted, fd, backbone)


def fd_backbone(cfg: RepairConfig) -> str:
    if cfg.fd_backbone == "auto":
        return "inception" if cfg.inception_weights else "scenes"
    return cfg.fd_backbone


@torch.no_grad()
def artifact_fraction(generator: nn.Module, artifact_segmenter: ArtifactSegmenter, layer: str, units: list[int],
                      width: int, seed: int, n: int, batch_size: int) -> float:
    """The share of pixels flagged as artifact over latents 0..n-1 of ``seed``, with ``units`` ablated."""
    with NetHook(generator, [layer]) as hook:
        hook.edit(layer, unit_alpha(units, width), value=0.0)
        return artifact_segmenter.flag_rate(generated_batches(generator, seed, n, batch_size))


def choose_units(iou: list[float], effects: dict[int, float], k: int) -> list[int]:
    """The rule: among the measured candidates, the k with the largest positive causal effect (fewer when
    fewer have one); ties keep the IoU order."""
    ranked = sorted(effects, key=lambda u: (-effects[u], -iou[u], u))
    return [u for u in ranked if effects[u] > 0][:k]


def default_k(width: int) -> int:
    return max(1, round(0.04 * width))  # the paper ablated 20 of 512 units (3.9%)


# --- the FD comparison -------------------------------------------------------------------------------------------


class RepairModule(pl.LightningModule):
    """Streams the same seeded latents through every variant of the generator (``variants``: name -> ablated
    units; the empty list is the original) into one Frechet distance per variant. Under ``ddp`` the batches
    are split over processes and torchmetrics sums the feature statistics."""

    def __init__(self, generator: nn.Module, layer: str, width: int, variants: dict[str, list[int]],
                 fd: FrechetDistance, real: tuple[np.ndarray, np.ndarray, int], seed: int, n: int, batch_size: int):
        super().__init__()
        self.generator = generator.eval().requires_grad_(False)
        self.layer, self.width, self.variants = layer, width, variants
        self.seed, self.n, self.batch_size = seed, n, batch_size
        self.fds = nn.ModuleDict()
        for name in variants:
            metric = FrechetDistance(fd.backbone, fd.num_features, name=fd.name)
            metric.set_real_statistics(*real)
            self.fds[name] = metric
        self.values: dict[str, float] = {}
        self._hook: NetHook | None = None

    def val_dataloader(self) -> DataLoader:
        batches = list(range(math.ceil(self.n / self.batch_size)))[self.global_rank::self.trainer.world_size]
        return DataLoader(LatentBatches(self.seed, self.generator.latent_dim, self.n, self.batch_size, batches),
                          batch_size=None, shuffle=False)

    def on_validation_start(self) -> None:
        self._hook = NetHook(self.generator, [self.layer])

    def validation_step(self, batch, batch_idx):
        _, z = batch
        for name, units in self.variants.items():
            self._hook.clear_edit()
            if units:
                self._hook.edit(self.layer, unit_alpha(units, self.width).to(z.device), value=0.0)
            self.fds[name].update(self._hook(z).clamp(-1, 1), real=False)

    def on_validation_epoch_end(self) -> None:
        self.values = {name: float(metric.compute()) for name, metric in self.fds.items()}

    def on_validation_end(self) -> None:
        self.remove_hook()

    def remove_hook(self) -> None:
        """Leave the generator as it was (also called when the pass fails)."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None


class RepairProgressBar(pl.callbacks.TQDMProgressBar):
    @property
    def validation_description(self) -> str:
        return f"FD of {len(self.trainer.lightning_module.variants)} generators"


def planted_recovery(planted: list[int], by_iou: list[int], chosen: list[int], effects: dict, k: int) -> dict:
    """Precision and recall of the planted units among the chosen units, among the top-k by IoU alone, and among
    as many units as were planted, by IoU and by causal effect."""
    planted_set = set(planted)

    def scores(found: list[int]) -> dict:
        hits = len(planted_set & set(found))
        return {"units": found, "hits": hits, "precision": hits / len(found) if found else None,
                "recall": hits / len(planted_set)}

    by_effect = sorted(effects, key=lambda u: -effects[u])
    return {"units": sorted(planted_set), "chosen": scores(chosen), "top_k_by_iou": scores(by_iou[:k]),
            "top_planted_count_by_iou": scores(by_iou[:len(planted_set)]),
            "top_planted_count_by_effect": scores(by_effect[:len(planted_set)])}


def _save_repaired(generator: nn.Module, layer: str, width: int, chosen: list[int], run_dir: Path,
                   planted: list[int]) -> dict:
    """Fold the ablation into the weights, check the folded model against the hooked ablation, and save it."""
    if not chosen:
        return {"path": None, "note": "no unit's ablation lowered the artifact fraction; nothing was repaired"}
    folded = fold_ablation(generator, layer, chosen)
    z = seeded_latents(0, 8, generator.latent_dim)
    with torch.no_grad(), NetHook(generator, [layer]) as hook:
        hook.edit(layer, unit_alpha(chosen, width), value=0.0)
        identical = torch.equal(folded(z), hook(z))
    if not identical:
        raise BadValueError(f"the folded generator differs from the hooked ablation of {layer}; not saved")
    if planted:  # the planted blotches are not part of the ProGAN architecture: no ordinary checkpoint
        return {"path": None, "fold_check": "bit-identical to the hooked ablation on 8 latents",
                "note": "a planted-artifact generator is a test case, not an ordinary ProGAN; not saved"}
    path = ProGANGenerator.save(folded, run_dir / "repaired_generator.safetensors")
    return {"path": path.name, "sha256": sha256_file(path),
            "fold_check": "bit-identical to the hooked ablation on 8 latents"}


def run_repair(cfg: RepairConfig, plan: RepairPlan, artifact_segmenter: ArtifactSegmenter, artifact_record: dict,
               artifact_layer: dict, run_dir: Path, seconds: dict) -> dict:
    """Choose the units from the artifact dissection of the layer (``artifact_layer``: its entry of dissect.json),
    compare FDs, save the repaired checkpoint, write repair.json and the report. ``seconds`` holds the wall time
    of the phases so far and gets the rest. Every process calls it; rank 0 returns the result, the others {}."""
    clock = time.perf_counter()

    def lap(phase: str) -> None:
        nonlocal clock
        seconds[phase], clock = round(time.perf_counter() - clock, 1), time.perf_counter()

    generator, width, k = plan.generator, plan.width, plan.k
    iou = artifact_layer["iou_by_class"]["artifact"]
    by_iou = sorted(range(width), key=lambda u: (-iou[u], u))

    def flagged(units: list[int], seed: int = cfg.effect_seed) -> float:
        return artifact_fraction(generator, artifact_segmenter, cfg.layer, units, width, seed, cfg.effect_n,
                                 cfg.batch_size)

    # the original and each candidate ablated alone; each process measures its share, and all of them then choose
    # the same units from the same gathered numbers
    ablations = [()] + [(u,) for u in by_iou[:plan.candidates]]
    measured = distributed.gather_dicts({units: flagged(list(units)) for units in tqdm(
        distributed.my_share(ablations), desc="ablation effect of candidates", unit="ablation", leave=False)})
    selection = {"seed": cfg.effect_seed, "n": cfg.effect_n, "original": measured[()]}
    effects = {u: selection["original"] - measured[(u,)] for u in by_iou[:plan.candidates]}
    chosen = choose_units(iou, effects, k)
    rng = np.random.default_rng(cfg.random_seed)
    others = [u for u in range(width) if u not in chosen]
    random_sets = [sorted(rng.choice(others, size=len(chosen), replace=False).tolist())
                   for _ in range(cfg.random_draws)] if chosen else []
    variants = {"original": [], **({"repaired": chosen} if chosen else {}),
                **{f"random{i}": units for i, units in enumerate(random_sets)}}
    lap("unit_effects_s")

    world = distributed.world_size()
    if world > 1 and math.ceil(cfg.fd_n / cfg.batch_size) < world:
        raise ConfigError(f"fd_n={cfg.fd_n} in batches of {cfg.batch_size} leaves some of the {world} processes "
                          "without a batch; use fd_n >= batch_size * processes")
    fd = plan.fd
    backbone_file = cfg.inception_weights if plan.backbone == "inception" else cfg.segmenter
    real = real_statistics(fd, generator.resolution, cfg.real_seed, cfg.real_n, cfg.batch_size, run_dir,
                           backbone_file, cfg.real_stats)
    lap("real_statistics_s")
    module = RepairModule(generator, cfg.layer, width, variants, fd, real, cfg.fd_seed, cfg.fd_n, cfg.batch_size)
    trainer = distributed.build_trainer(cfg.devices, run_dir, [RepairProgressBar()], use_distributed_sampler=False)
    try:
        trainer.validate(module, verbose=False)
    finally:
        module.remove_hook()
    lap("fd_pass_s")
    if not trainer.is_global_zero:
        return {}
    generator = generator.cpu()
    # the table's shares are measured on the FD latents: on the latents the units were chosen on they flatter them
    fraction = {"seed": cfg.fd_seed, "n": cfg.effect_n, "original": flagged([], cfg.fd_seed)}
    if chosen:
        fraction["repaired"] = flagged(chosen, cfg.fd_seed)
        fraction["random"] = [flagged(units, cfg.fd_seed) for units in random_sets]
    fraction["selection"] = selection

    values = module.values
    random_fd = [values[f"random{i}"] for i in range(len(random_sets))]
    result = {
        "settings": {"generator": cfg.generator, "generator_id": plan.generator_id, "layer": cfg.layer,
                     "units_in_layer": width, "k": k, "candidates": plan.candidates,
                     "k_rule": "k (default round(4% of the layer's units)) units with the largest positive causal "
                               "effect among the top `candidates` units by IoU with the artifact class",
                     "planted_units": plan.planted or None},
        "artifact_segmenter": {k_: v for k_, v in artifact_record.items() if k_ != "key"},
        "ranking": [{"unit": u, "iou": round(iou[u], 6), "effect": round(effects[u], 6) if u in effects else None}
                    for u in by_iou],
        "chosen_units": chosen,
        "random_units": random_sets,
        "artifact_fraction": fraction,
        "fd": {"name": fd.name, "backbone": plan.backbone, "n": cfg.fd_n, "seed": cfg.fd_seed,
               "real": {"n": real[2], "seed": cfg.real_seed if cfg.real_stats is None else None,
                        "stats": cfg.real_stats},
               "original": values["original"], "repaired": values.get("repaired"),
               "random": random_fd,
               "random_mean": float(np.mean(random_fd)) if random_fd else None,
               "random_std": float(np.std(random_fd, ddof=1)) if len(random_fd) > 1 else None},
        "timing": {**seconds, "machine": machine_description(), "processes": trainer.world_size},
    }
    if plan.planted:
        result["planted"] = planted_recovery(plan.planted, by_iou, chosen, effects, k)
    result["checkpoint"] = _save_repaired(generator, cfg.layer, width, chosen, run_dir, plan.planted)
    write_pictures(generator, artifact_segmenter, cfg.layer, cfg.fd_seed, width, chosen, random_sets, run_dir)
    lap("fractions_checkpoint_pictures_s")
    result["timing"] = {**seconds, "machine": machine_description(), "processes": trainer.world_size,
                        "wall_s": round(sum(v for v in seconds.values()), 1)}
    write_json(run_dir / "repair.json", result)
    write_repair_report(run_dir, result, artifact_layer)
    log_to_wandb(run_dir, cfg.wandb, cfg.name, to_dict(cfg), result)
    return result


def summary(result: dict, run_dir: Path) -> dict:
    """What ``gandissect repair`` prints (the demo shows the same)."""
    fd = result["fd"]
    out = {"run_dir": str(run_dir), "report": str(run_dir / "index.html"), "layer": result["settings"]["layer"],
           "chosen_units": result["chosen_units"], "fd_name": fd["name"], "fd_n": fd["n"],
           "fd_original": fd["original"],
           "fd_repaired": fd["repaired"], "fd_random": fd["random"], "fd_random_mean": fd["random_mean"],
           "fd_random_std": fd["random_std"], "artifact_fraction": result["artifact_fraction"],
           "checkpoint": result["checkpoint"].get("path") and str(run_dir / result["checkpoint"]["path"]),
           "wall_s": result["timing"]["wall_s"]}
    if "planted" in result:
        out["planted"] = result["planted"]
    return out
