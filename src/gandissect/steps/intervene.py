"""The learned intervention (GAN Dissection, step 3) and the ``gandissect ace`` run.

``InterventionModule`` learns a per-unit strength alpha in [0, 1]^U that maximizes the soft ACE of a class with
few units, trained by the Lightning Trainer (``devices.strategy: ddp`` works); units sorted by alpha are the
``<class>-ace`` ranking. ``run_ace`` measures both rankings (removal curves, ACE of the top units, context) with
``gandissect.metrics.intervention`` and writes ``runs/<name>/``. It reads the dissection it is given and writes
nothing into it: the ranking, the insertion constants and the dissection used are recorded in its own ace.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from gandissect.config import AceConfig, to_dict
from gandissect.core import distributed
from gandissect.core.hooks import edited_images, layer_shape
from gandissect.core.latents import LatentBatches, seeded_latents
from gandissect.core.runs import finish_run, runs_root, start_run, wandb_logger
from gandissect.errors import GandissectError
from gandissect.metrics.intervention import (ace, cell_fraction, class_mask, class_weighted_means, context_table,
                                             pixel_region, removal_curve)
from gandissect.models.generators import generator_identity, open_generator
from gandissect.models.segmenter import class_index, load_segmenter, segmenter_and_identity
from gandissect.report.ace import intervention_grid, write_ace_report


# --- learning alpha ------------------------------------------------------------------------------------
def soft_ace(generator: nn.Module, segmenter, layer: str, z: torch.Tensor, alpha: torch.Tensor,
             constants: torch.Tensor, class_idx: int) -> tuple[torch.Tensor, dict]:
    """Differentiable ACE of strengths ``alpha`` with the segmenter's soft probability of c.

    As in the reference: ablation on the cells where c is present, pooled over those cells' pixels; insertion
    on the cells where c is absent, pooled over theirs. Returns (ace, parts) - the parts for logging.
    """
    with torch.no_grad():
        original = generator(z).clamp(-1, 1)
        cells = layer_shape(generator, layer)[1:]
        present = (cell_fraction(class_mask(segmenter, original, class_idx), cells) > 0).float()
    absent = 1 - present
    ablated = edited_images(generator, layer, z, alpha, 0.0, present)
    inserted = edited_images(generator, layer, z, alpha, constants, absent)
    p_ablated = _pooled(segmenter.probs(ablated)[:, class_idx:class_idx + 1], pixel_region(present, ablated))
    p_inserted = _pooled(segmenter.probs(inserted)[:, class_idx:class_idx + 1], pixel_region(absent, inserted))
    return p_inserted - p_ablated, {"ablated": p_ablated.detach(), "inserted": p_inserted.detach()}


def _pooled(prob: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    return (prob * region).sum() / region.sum().clamp(min=1)


class InterventionModule(pl.LightningModule):
    """Learns alpha in [0, 1]^U minimizing ``-ACE_soft(alpha) + lam * ||alpha||^2``; generator and segmenter frozen."""

    def __init__(self, generator: nn.Module, segmenter, layer: str, class_idx: int, constants: torch.Tensor,
                 init_alpha: torch.Tensor, cfg: AceConfig, grid_latents: torch.Tensor | None = None):
        super().__init__()
        self.generator = generator.eval().requires_grad_(False)
        self.segmenter = segmenter.eval().requires_grad_(False)
        self.layer, self.class_idx, self.cfg = layer, class_idx, cfg
        self.alpha = nn.Parameter(init_alpha.clone().float().clamp(0, 1))
        self.register_buffer("constants", constants.clone().float())
        self.register_buffer("grid_latents", grid_latents if grid_latents is not None else torch.zeros(0))
        self.losses: list[float] = []
        self.alpha_sum: torch.Tensor | None = None
        self.alpha_steps = 0

    def train_dataloader(self) -> DataLoader:
        world = self.trainer.world_size if self._trainer is not None else 1
        batches = self.cfg.steps * world  # the DistributedSampler gives each process other batches
        data = LatentBatches(self.cfg.seed, self.generator.latent_dim, batches * self.cfg.batch_size,
                             self.cfg.batch_size)
        return DataLoader(data, batch_size=None, shuffle=False)

    def configure_optimizers(self):
        return torch.optim.Adam([self.alpha], lr=self.cfg.lr)

    def training_step(self, batch, batch_idx):
        _, z = batch
        value, parts = soft_ace(self.generator, self.segmenter, self.layer, z, self.alpha, self.constants,
                                self.class_idx)
        loss = -value + self.cfg.lam * self.alpha.pow(2).sum()
        self.losses.append(float(loss.detach()))
        self.log_dict({"train/loss": loss, "train/ace": value, "train/p_inserted": parts["inserted"],
                       "train/p_ablated": parts["ablated"], "train/alpha_norm": self.alpha.detach().norm(),
                       "train/units_above_half": (self.alpha.detach() > 0.5).sum().float()}, prog_bar=True)
        return loss

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        with torch.no_grad():  # right after the step, before any hook sees alpha; each process clamps its equal copy
            self.alpha.clamp_(0, 1)
            self.alpha_sum = self.alpha.detach().cpu() + (self.alpha_sum if self.alpha_sum is not None else 0)
            self.alpha_steps += 1

    def alpha_mean(self) -> torch.Tensor:
        """alpha averaged over the steps: among units clamped to the same final alpha, the ones that got there
        earlier and stayed rank first."""
        return self.alpha_sum / max(self.alpha_steps, 1) if self.alpha_sum is not None else self.alpha.detach().cpu()

    def on_train_start(self) -> None:
        self._log_grid("before")

    def on_train_end(self) -> None:
        self._log_grid("after")

    @torch.no_grad()
    def _log_grid(self, when: str) -> None:
        """Rows: original, ablated where c is, and inserted with the current alpha (units with alpha > 0.5)."""
        if len(self.grid_latents) == 0 or not self.trainer.is_global_zero or self.logger is None:
            return
        grid = intervention_grid(self.generator, self.layer, self.grid_latents,
                                 (self.alpha.detach() > 0.5).float(), self.constants)
        if hasattr(self.logger, "log_image"):
            self.logger.log_image(f"grid/{when}", [grid], step=self.global_step,
                                  caption=[f"{when}: original / units ablated / units inserted"])


def iou_ranking(layer_entry: dict, class_name: str) -> list[int]:
    """Units sorted by their IoU with ``class_name``, best first (ties: lower unit first)."""
    ious = layer_entry["iou_by_class"][class_name]
    return sorted(range(len(ious)), key=lambda u: (-ious[u], u))


def ace_ranking(alpha: torch.Tensor, iou_order: list[int], alpha_mean: torch.Tensor | None = None) -> list[int]:
    """Units sorted by learned alpha, largest first. Many end clamped at 1 (or 0): among equal alphas the larger
    mean alpha over the optimization ranks first, then the IoU order."""
    position = {u: i for i, u in enumerate(iou_order)}
    mean = alpha if alpha_mean is None else alpha_mean
    return sorted(range(len(alpha)), key=lambda u: (-round(float(alpha[u]), 6), -round(float(mean[u]), 6),
                                                    position[u]))


def read_dissection(path: str | Path, layer: str, generator_id: str) -> dict:
    """The dissect.json at ``path`` (a file or its run directory), checked to hold ``layer`` of these weights."""
    path = Path(path)
    path = path if path.suffix == ".json" else path / "dissect.json"
    if not path.is_file():
        raise GandissectError(f"no dissection at {path}; run `gandissect dissect` first (or let `gandissect ace` "
                              "run it)")
    found = json.loads(path.read_text())
    if layer not in found.get("layers", {}):
        raise GandissectError(f"{path} dissects {', '.join(found.get('layers', {})) or 'no layer'}, not {layer!r}")
    if found["settings"].get("generator_sha256") != generator_id:
        raise GandissectError(f"{path} dissects other generator weights ({found['settings'].get('generator')}); "
                              "point `dissection` at a dissection of this generator or at a new run name")
    return found


def insertion_constants(how: str, dissection: dict, generator: nn.Module, segmenter, layer: str, class_name: str,
                        n: int, batch_size: int = 32) -> torch.Tensor:
    """(U,) insertion constants: ``quantile`` = the dissection's per-unit thresholds (its 0.99 quantile);
    ``mean`` = class-weighted means over the dissection's first n latents."""
    if how == "quantile":
        return torch.tensor([u["threshold"] for u in dissection["layers"][layer]["units_detail"]])
    settings = dissection["settings"]
    return class_weighted_means(generator, segmenter, layer, class_index(segmenter, class_name), settings["seed"],
                                min(n, settings["n"]), batch_size)


def check_request(cfg: AceConfig, generator: nn.Module | None = None, segmenter=None) -> None:
    """Refuse an unknown class or layer (naming the valid ones) before anything runs or is written."""
    segmenter = load_segmenter(cfg.segmenter) if segmenter is None else segmenter
    class_index(segmenter, cfg.class_name)
    layer_shape(open_generator(cfg, "ace") if generator is None else generator, cfg.layer)


def run_ace(cfg: AceConfig, dissection: str | Path, run_dir: Path | None = None, generator: nn.Module | None = None,
            segmenter=None) -> dict:
    """Learn which units of ``cfg.layer`` cause ``cfg.class_name``, measure removal curves (IoU vs ACE ranking) and
    the context table; ``dissection`` is the dissect.json (or its run directory) that ranks the units by IoU.
    Writes ``runs/<name>/`` (ace.json, index.html, removal.png, edits.png, W&B). Returns ace.json's content ({} on
    the processes other than rank 0)."""
    run_dir = Path(run_dir) if run_dir is not None else runs_root() / cfg.name
    generator_id = generator_identity(cfg, generator)
    generator = (open_generator(cfg, "ace") if generator is None
                 else generator).eval()
    segmenter, segmenter_id = segmenter_and_identity(cfg.segmenter, segmenter)
    segmenter = segmenter.eval()
    class_idx = class_index(segmenter, cfg.class_name)
    units_total = layer_shape(generator, cfg.layer)[0]  # an unknown layer stops here, listing the layers
    dissection_path = Path(dissection) if Path(dissection).suffix == ".json" else Path(dissection) / "dissect.json"
    found = read_dissection(dissection_path, cfg.layer, generator_id)
    start_run(cfg.name, cfg, root=run_dir)
    started = time.perf_counter()

    iou_order = iou_ranking(found["layers"][cfg.layer], cfg.class_name)
    constants = insertion_constants(cfg.insertion, found, generator, segmenter, cfg.layer, cfg.class_name,
                                    cfg.constants_n)
    init = torch.full((units_total,), cfg.init_value)
    init[iou_order[:cfg.init_units]] = 1.0

    grid_latents = seeded_latents(cfg.eval_seed, 8, generator.latent_dim)
    module = InterventionModule(generator, segmenter, cfg.layer, class_idx, constants, init, cfg, grid_latents)
    logger = wandb_logger(run_dir, cfg, "ace")
    trainer = distributed.build_trainer(cfg.devices, run_dir, logger=logger if logger else False,
                                        max_steps=cfg.steps, log_every_n_steps=min(cfg.log_every, cfg.steps))
    fit_started = time.perf_counter()
    trainer.fit(module)
    fit_s = time.perf_counter() - fit_started
    if not trainer.is_global_zero:
        return {}

    # the measurements run in this process alone, on the Trainer's device (Lightning's teardown moved the module)
    device = trainer.strategy.root_device
    generator, segmenter = module.generator.to(device), module.segmenter.to(device)
    alpha = module.alpha.detach().cpu()
    ranked = ace_ranking(alpha, iou_order, module.alpha_mean())
    result = measure(cfg, generator, segmenter, class_idx, constants, iou_order, ranked)
    result.update({
        "run_dir": str(run_dir),
        "settings": {**to_dict(cfg), "generator_sha256": generator_id, "segmenter_sha256": segmenter_id,
                     "dissection": str(dissection_path)},
        "ranking": {"name": f"{cfg.class_name}-ace", "layer": cfg.layer, "units": ranked,
                    "alpha": [round(float(alpha[u]), 6) for u in ranked]},
        "alpha": [round(float(a), 6) for a in alpha],
        "alpha_mean": [round(float(a), 6) for a in module.alpha_mean()], "units_above_half": int((alpha > 0.5).sum()),
        "alpha_norm": round(float(alpha.norm()), 6), "constants": [round(float(c), 6) for c in constants],
        "losses": {"first": module.losses[0], "last": module.losses[-1]} if module.losses else {},
        "timing": {"fit_s": round(fit_s, 1), "wall_s": round(time.perf_counter() - started, 1),
                   "processes": trainer.world_size},
    })
    write_ace_report(cfg, run_dir, result, logger, generator.cpu(), constants, module.grid_latents.cpu())
    finish_run(run_dir)
    return result


def measure(cfg: AceConfig, generator, segmenter, class_idx: int, constants: torch.Tensor, iou_order: list[int],
            ranked: list[int]) -> dict:
    """Removal curves of both rankings, the ACE of each ranking's top units, and the context table."""
    curves = {name: removal_curve(generator, segmenter, cfg.layer, order, class_idx, cfg.eval_seed, cfg.n,
                                  cfg.removal_units, desc=f"removal ({name} ranking)")
              for name, order in (("iou", iou_order), ("ace", ranked))}
    top = cfg.top_units
    effects = {name: ace(generator, segmenter, cfg.layer, order[:top], class_idx, constants, cfg.eval_seed,
                         min(cfg.n, 200)) for name, order in (("iou", iou_order), ("ace", ranked))}
    context = context_table(generator, segmenter, cfg.layer, ranked[:top], class_idx, constants, cfg.eval_seed,
                            cfg.n)
    return {"class": cfg.class_name, "layer": cfg.layer, "units": len(constants),
            "rankings": {"iou": iou_order, "ace": ranked},
            "removal": {name: {"curve": curve, **{f"at_{k}": curve[k - 1] for k in (5, 20) if k <= len(curve)}}
                        for name, curve in curves.items()},
            "ace_of_top_units": {"units": top, **{k: {m: round(v, 6) for m, v in e.items()}
                                                  for k, e in effects.items()}},
            "context": context}


def summary(result: dict) -> dict:
    """What ``gandissect ace`` prints (the demo shows the same)."""
    removal = result["removal"]
    return {"run_dir": result["run_dir"], "report": f"{result['run_dir']}/index.html", "class": result["class"],
            "layer": result["layer"], "units_above_half": result["units_above_half"],
            "top_ace_units": result["rankings"]["ace"][:10], "top_iou_units": result["rankings"]["iou"][:10],
            "removal": {name: {k: v for k, v in r.items() if k != "curve"} for name, r in removal.items()},
            "ace_of_top_units": result["ace_of_top_units"], "context": result["context"][:6],
            "wall_s": result["timing"]["wall_s"]}
