"""Intervention: do units cause a class? Ablation, insertion, ACE, removal curves, context (GAN Dissection 2-4).

An edit of layer output r at units U inside region P is ``r' = (1 - a*m) r + a*m*k`` (``NetHook.edit``):
ablation is a = 1 on U, k = 0; insertion is a = 1 on U, k = one constant per unit. The insertion constant
of unit u is the mean of r_u over feature-map cells weighted by the fraction of class-c pixels in each cell
(measured over the dissection's latents and cached beside its dissect.json), or the unit's 0.99 quantile
(its dissection threshold). The average causal effect is ``ACE = E[s_c(inserted)] - E[s_c(ablated)]``, s_c the
fraction of the pixels of P labelled c, over seeded latents.

The functions here work on plain tensors; ``InterventionModule`` learns a per-unit strength alpha in [0, 1]^U
with the Lightning Trainer, and ``run_ace`` drives a whole ``gandissect ace`` run.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from gandissect.config import AceConfig, DissectConfig, WandbConfig, to_dict
from gandissect.data.latents import seeded_latents
from gandissect.errors import GandissectError
from gandissect.nethook import NetHook


# --- masks and fractions -------------------------------------------------------------------------
def class_mask(segmenter, images: torch.Tensor, class_idx: int) -> torch.Tensor:
    """(N, 1, H, W) float: 1 where any of the segmenter's labels of a pixel is ``class_idx``."""
    return (segmenter.labels(images) == class_idx).any(dim=1, keepdim=True).float()


def pixel_region(region: torch.Tensor | None, images: torch.Tensor) -> torch.Tensor:
    """A feature-map region (H, W) / (N, H, W) / (N, 1, H, W), or None for the whole image, as (N, 1, h, w)
    at the images' resolution (nearest: each cell covers its block of pixels)."""
    n, _, h, w = images.shape
    if region is None:
        return images.new_ones(n, 1, h, w)
    region = region.to(images)
    region = region.view(1, 1, *region.shape) if region.ndim == 2 else region
    region = region.unsqueeze(1) if region.ndim == 3 else region
    return F.interpolate(region, size=(h, w), mode="nearest").expand(n, 1, h, w)


def class_fraction(segmenter, images: torch.Tensor, class_idx: int, region: torch.Tensor | None = None) -> torch.Tensor:
    """(N,) the fraction of each image's pixels (of ``region``, a feature-map mask) labelled ``class_idx``."""
    where = pixel_region(region, images)
    return (class_mask(segmenter, images, class_idx) * where).sum(dim=(1, 2, 3)) / where.sum(dim=(1, 2, 3)).clamp(min=1)


def cell_fraction(mask: torch.Tensor, cells: tuple[int, int]) -> torch.Tensor:
    """(N, 1, H, W) pixel mask -> (N, h, w): the fraction of each feature-map cell's pixels inside the mask."""
    return F.adaptive_avg_pool2d(mask, cells)[:, 0]


def unit_alpha(units, total: int) -> torch.Tensor:
    """(total,) strengths: 1 on ``units``, 0 elsewhere."""
    alpha = torch.zeros(total)
    alpha[torch.as_tensor(list(units), dtype=torch.long)] = 1.0
    return alpha


def cell_region(n: int, cells: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """(N, h, w): one random feature-map cell per image."""
    h, w = cells
    chosen = torch.randint(h * w, (n,), generator=generator)
    return F.one_hot(chosen, h * w).float().view(n, h, w)


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


# --- edits ------------------------------------------------------------------------------------------
def edited_images(generator: nn.Module, layer: str, z: torch.Tensor, alpha, value=0.0,
                  region: torch.Tensor | None = None) -> torch.Tensor:
    """Images of ``z`` with ``layer`` edited as ``(1 - alpha*m) r + alpha*m*value``; clamped to [-1, 1]."""
    with NetHook(generator, [layer]) as hook:
        hook.edit(layer, alpha, region, value)
        return hook(z).clamp(-1, 1)


def ablate(generator: nn.Module, layer: str, z: torch.Tensor, units, total: int,
           region: torch.Tensor | None = None) -> torch.Tensor:
    """Images with ``units`` of ``layer`` set to zero inside ``region`` (a feature-map mask; None: everywhere)."""
    return edited_images(generator, layer, z, unit_alpha(units, total).to(z), 0.0, region)


def insert(generator: nn.Module, layer: str, z: torch.Tensor, units, constants: torch.Tensor,
           region: torch.Tensor | None = None) -> torch.Tensor:
    """Images with ``units`` of ``layer`` set to their insertion ``constants`` (U,) inside ``region``."""
    return edited_images(generator, layer, z, unit_alpha(units, len(constants)).to(z), constants.to(z), region)


def latent_batches(seed: int, n: int, dim: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield seeded_latents(seed, min(batch_size, n - start), dim, start)


@torch.no_grad()
def ace(generator: nn.Module, segmenter, layer: str, units, class_idx: int, constants: torch.Tensor, seed: int,
        n: int, region: torch.Tensor | None = None, batch_size: int = 32) -> dict:
    """ACE of inserting vs ablating ``units`` in ``region`` over latents 0..n-1 of ``seed``:
    ``{"ace", "inserted", "ablated", "original"}`` (mean fractions of the region's pixels labelled c)."""
    device = _device(generator)
    sums = {"inserted": 0.0, "ablated": 0.0, "original": 0.0}
    for z in latent_batches(seed, n, generator.latent_dim, batch_size):
        z = z.to(device)
        sums["original"] += float(class_fraction(segmenter, generator(z).clamp(-1, 1), class_idx, region).sum())
        sums["inserted"] += float(class_fraction(segmenter, insert(generator, layer, z, units, constants, region),
                                                 class_idx, region).sum())
        sums["ablated"] += float(class_fraction(segmenter, ablate(generator, layer, z, units, len(constants), region),
                                                class_idx, region).sum())
    means = {k: v / n for k, v in sums.items()}
    return {"ace": means["inserted"] - means["ablated"], **means}


# --- insertion constants ----------------------------------------------------------------------------
def _is_rank_zero() -> bool:
    """True outside DDP and in its first process (Lightning's ddp launcher sets LOCAL_RANK for the others)."""
    return int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


@torch.no_grad()
def class_weighted_means(generator: nn.Module, segmenter, layer: str, class_idx: int, seed: int, n: int,
                         batch_size: int = 32) -> torch.Tensor:
    """(U,) the mean of each unit's value over feature-map cells, each cell weighted by its fraction of class-c
    pixels, over latents 0..n-1 of ``seed``."""
    device = _device(generator)
    weighted, weight = None, 0.0
    with NetHook(generator, [layer]) as hook:
        for z in tqdm(latent_batches(seed, n, generator.latent_dim, batch_size), total=math.ceil(n / batch_size),
                      desc=f"insertion constants ({layer})", leave=False):
            images = hook(z.to(device)).clamp(-1, 1)
            r = hook.retained[layer].float()
            w = cell_fraction(class_mask(segmenter, images, class_idx), r.shape[-2:])  # (N, h, w)
            part = torch.einsum("nuhw,nhw->u", r, w)
            weighted = part if weighted is None else weighted + part
            weight += float(w.sum())
    if weight == 0:
        raise GandissectError(f"class {segmenter.classes[class_idx]!r} appears in none of the {n} generated images; "
                              "no insertion constant can be measured")
    return (weighted / weight).cpu()


def insertion_constants(how: str, dissection: dict, dissect_dir: Path, generator: nn.Module, segmenter, layer: str,
                        class_name: str, n: int, batch_size: int = 32) -> torch.Tensor:
    """(U,) insertion constants: ``quantile`` = the dissection's per-unit thresholds (its 0.99 quantile);
    ``mean`` = class-weighted means over the dissection's first n latents, cached in
    ``<dissect_dir>/insertion_constants.json`` under ``<layer>/<class>/seed<S>/n<N>``."""
    if how == "quantile":
        return torch.tensor([u["threshold"] for u in dissection["layers"][layer]["units_detail"]])
    from gandissect.io import write_json
    from gandissect.models.segmenter import class_index

    seed = dissection["settings"]["seed"]
    n = min(n, dissection["settings"]["n"])
    key = f"{layer}/{class_name}/seed{seed}/n{n}"
    cache_path = Path(dissect_dir) / "insertion_constants.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    if cache.get("generator_sha256") not in (None, dissection["settings"]["generator_sha256"]):
        cache = {}  # made for other weights
    if key not in cache.get("constants", {}):
        means = class_weighted_means(generator, segmenter, layer, class_index(segmenter, class_name), seed, n,
                                     batch_size)
        cache = {"generator_sha256": dissection["settings"]["generator_sha256"],
                 "constants": {**cache.get("constants", {}), key: [round(float(v), 6) for v in means]}}
        if _is_rank_zero():  # the other DDP processes compute the same constants and keep them in memory
            write_json(cache_path, cache)
    return torch.tensor(cache["constants"][key])


# --- removal curves and context ---------------------------------------------------------------------
@torch.no_grad()
def removal_curve(generator: nn.Module, segmenter, layer: str, ranking, class_idx: int, seed: int, n: int,
                  max_units: int = 30, batch_size: int = 8, desc: str = "removal") -> list[float]:
    """Fraction of class-c pixels that disappear when the top 1..max_units units of ``ranking`` are ablated
    everywhere: ``1 - sum(c pixels after) / sum(c pixels before)`` over latents 0..n-1 of ``seed``.
    Entry k is for the top k+1 units. Every prefix of one latent batch runs in one forward pass."""
    device = _device(generator)
    ranking = list(ranking)[:max_units]
    units_total = _layer_units(generator, layer)
    prefixes = torch.zeros(len(ranking), units_total, device=device)  # row k: alpha of the top k+1 units
    for k, unit in enumerate(ranking):
        prefixes[k:, unit] = 1.0
    before, after = 0.0, torch.zeros(len(ranking), dtype=torch.float64)
    for z in tqdm(latent_batches(seed, n, generator.latent_dim, batch_size), total=math.ceil(n / batch_size),
                  desc=desc, leave=False):
        z = z.to(device)
        before += float(class_mask(segmenter, generator(z).clamp(-1, 1), class_idx).sum())
        repeated = z.repeat(len(ranking), 1)                                   # prefix-major
        alpha = prefixes.repeat_interleave(len(z), dim=0)[:, :, None, None]    # (K*N, U, 1, 1)
        images = edited_images(generator, layer, repeated, alpha, 0.0)
        counts = class_mask(segmenter, images, class_idx).sum(dim=(1, 2, 3)).view(len(ranking), len(z)).sum(1)
        after += counts.double().cpu()
    if before == 0:
        raise GandissectError(f"class {segmenter.classes[class_idx]!r} appears in none of the {n} images; "
                              "nothing can be removed")
    return [round(float(1 - a / before), 6) for a in after]


def _layer_units(generator: nn.Module, layer: str) -> int:
    from gandissect.dissect import layer_shapes

    return layer_shapes(generator, [layer])[layer][0]


@torch.no_grad()
def context_table(generator: nn.Module, segmenter, layer: str, units, class_idx: int, constants: torch.Tensor,
                  seed: int, n: int, batch_size: int = 32) -> list[dict]:
    """Insert ``units`` at one random feature-map cell per image; group the change in the cell's fraction of
    class-c pixels by the class that covered most of the cell before the edit. One row per prior class:
    ``{"class", "cells", "before", "after", "effect"}`` (means over the cells), largest effect first."""
    device = _device(generator)
    classes = segmenter.classes
    cells = _layer_shape(generator, layer)
    pick = torch.Generator().manual_seed(seed)
    count = torch.zeros(len(classes), dtype=torch.float64)
    before_sum, after_sum = count.clone(), count.clone()
    for z in tqdm(latent_batches(seed, n, generator.latent_dim, batch_size), total=math.ceil(n / batch_size),
                  desc="context", leave=False):
        z = z.to(device)
        region = cell_region(len(z), cells, pick).to(device)
        original = generator(z).clamp(-1, 1)
        # the most specific label (index 0: a door pixel is door, not building) decides the cell's prior class
        finest = segmenter.labels(original)[:, 0]
        where = pixel_region(region, original)[:, 0].bool()
        votes = torch.zeros(len(z), len(classes), device=device)
        votes.scatter_add_(1, (finest * where).flatten(1), where.flatten(1).float())
        prior = votes.argmax(dim=1).cpu()
        before = class_fraction(segmenter, original, class_idx, region).cpu().double()
        after = class_fraction(segmenter, insert(generator, layer, z, units, constants, region), class_idx,
                               region).cpu().double()
        count += torch.bincount(prior, minlength=len(classes)).double()
        before_sum.index_add_(0, prior, before)
        after_sum.index_add_(0, prior, after)
    rows = [{"class": classes[c], "cells": int(count[c]), "before": round(float(before_sum[c] / count[c]), 6),
             "after": round(float(after_sum[c] / count[c]), 6),
             "effect": round(float((after_sum[c] - before_sum[c]) / count[c]), 6)}
            for c in range(len(classes)) if count[c] > 0]
    return sorted(rows, key=lambda row: -row["effect"])


def _layer_shape(generator: nn.Module, layer: str) -> tuple[int, int]:
    from gandissect.dissect import layer_shapes

    return tuple(layer_shapes(generator, [layer])[layer][1:])


# --- learning alpha ------------------------------------------------------------------------------------
class LatentStream(Dataset):
    """Item i: the i-th batch of latents of stream ``seed`` (a DistributedSampler gives each process other items)."""

    def __init__(self, seed: int, dim: int, batch_size: int, batches: int):
        self.seed, self.dim, self.batch_size, self.batches = seed, dim, batch_size, batches

    def __len__(self) -> int:
        return self.batches

    def __getitem__(self, i: int) -> torch.Tensor:
        return seeded_latents(self.seed, self.batch_size, self.dim, i * self.batch_size)


def soft_ace(generator: nn.Module, segmenter, layer: str, z: torch.Tensor, alpha: torch.Tensor,
             constants: torch.Tensor, class_idx: int) -> tuple[torch.Tensor, dict]:
    """Differentiable ACE of strengths ``alpha`` with the segmenter's soft probability of c.

    As in the reference: ablation on the cells where c is present, pooled over those cells' pixels; insertion
    on the cells where c is absent, pooled over theirs. Returns (ace, parts) - the parts for logging.
    """
    with torch.no_grad():
        original = generator(z).clamp(-1, 1)
        cells = _retained_shape(generator, layer, z)
        present = (cell_fraction(class_mask(segmenter, original, class_idx), cells) > 0).float()
    absent = 1 - present
    ablated = edited_images(generator, layer, z, alpha, 0.0, present)
    inserted = edited_images(generator, layer, z, alpha, constants, absent)
    p_ablated = _pooled(segmenter.probs(ablated)[:, class_idx:class_idx + 1], pixel_region(present, ablated))
    p_inserted = _pooled(segmenter.probs(inserted)[:, class_idx:class_idx + 1], pixel_region(absent, inserted))
    return p_inserted - p_ablated, {"ablated": p_ablated.detach(), "inserted": p_inserted.detach()}


def _pooled(prob: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    return (prob * region).sum() / region.sum().clamp(min=1)


def _retained_shape(generator: nn.Module, layer: str, z: torch.Tensor) -> tuple[int, int]:
    with NetHook(generator, [layer], stop_after=layer) as hook:
        hook(z[:1])
        return tuple(hook.retained[layer].shape[-2:])


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
        data = LatentStream(self.cfg.seed, self.generator.latent_dim, self.cfg.batch_size, self.cfg.steps * world)
        return DataLoader(data, batch_size=None, shuffle=False)

    def configure_optimizers(self):
        return torch.optim.Adam([self.alpha], lr=self.cfg.lr)

    def training_step(self, z, batch_idx):
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
        grid = intervention_grid(self.generator, self.segmenter, self.layer, self.grid_latents,
                                 (self.alpha.detach() > 0.5).float(), self.constants)
        if hasattr(self.logger, "log_image"):
            self.logger.log_image(f"grid/{when}", [grid], step=self.global_step,
                                  caption=[f"{when}: original / units ablated / units inserted"])


@torch.no_grad()
def intervention_grid(generator: nn.Module, segmenter, layer: str, z: torch.Tensor, alpha: torch.Tensor,
                      constants: torch.Tensor) -> np.ndarray:
    """One picture: the original images, the same with ``alpha``'s units ablated, and inserted (everywhere)."""
    from gandissect.data import scenes
    from gandissect.io import image_grid

    z, alpha, constants = z.to(_device(generator)), alpha.to(_device(generator)), constants.to(_device(generator))
    rows = [generator(z).clamp(-1, 1), edited_images(generator, layer, z, alpha, 0.0),
            edited_images(generator, layer, z, alpha, constants)]
    return image_grid(np.concatenate([scenes.to_uint8(r) for r in rows]), columns=len(z))


# --- the run ------------------------------------------------------------------------------------------
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


def _dissection_dir(cfg: AceConfig) -> Path:
    from gandissect.runs import runs_root

    given = Path(cfg.dissection)
    return given if (os.sep in cfg.dissection or given.is_dir() and (given / "dissect.json").exists()) \
        else runs_root() / cfg.dissection


def _wait_for(path: Path, layer: str, timeout_s: float = 900) -> dict:
    """Another process writes ``path``: read it once it has ``layer``."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if path.exists():
            try:
                found = json.loads(path.read_text())
                if layer in found.get("layers", {}):
                    return found
            except json.JSONDecodeError:
                pass
        time.sleep(0.5)
    raise GandissectError(f"timed out waiting for {path} (written by the rank-0 process)")


def find_or_run_dissection(cfg: AceConfig, run_dir: Path, generator: nn.Module, segmenter,
                           generator_id: str) -> tuple[dict, Path]:
    """The dissection of ``cfg.layer`` that ranks the units: ``cfg.dissection`` when it has the layer (and was
    made from the same generator weights), else a new one in ``<run_dir>/dissect``. Returns (json, its dir)."""
    from gandissect.dissect import run_dissection

    given = _dissection_dir(cfg)
    if (given / "dissect.json").exists():
        found = json.loads((given / "dissect.json").read_text())
        if cfg.layer in found.get("layers", {}):
            if found["settings"].get("generator_sha256") != generator_id:
                raise GandissectError(f"{given / 'dissect.json'} dissects other generator weights "
                                      f"({found['settings'].get('generator')}); point `dissection` at a dissection "
                                      f"of {cfg.generator} or at a new run name")
            return found, given
    own = run_dir / "dissect"
    if (own / "dissect.json").exists():
        found = json.loads((own / "dissect.json").read_text())
        if cfg.layer in found.get("layers", {}) and found["settings"].get("generator_sha256") == generator_id:
            return found, own
    dcfg = DissectConfig(name=f"{cfg.name}-dissect", generator=cfg.generator, segmenter=cfg.segmenter,
                         layers=[cfg.layer], n=cfg.dissect_n, seed=cfg.dissect_seed, batch_size=32,
                         resume=False, devices=cfg.devices, wandb=WandbConfig(mode="disabled"))
    passed = generator_id.startswith("module ")  # weights read from a file are read again, by their file
    result = run_dissection(dcfg, own, generator=generator if passed else None, segmenter=segmenter)
    return (result if result else _wait_for(own / "dissect.json", cfg.layer)), own


def _identity(path: str, module: nn.Module | None) -> str:
    from gandissect.dissect import module_digest
    from gandissect.io import sha256_file

    return sha256_file(path) if module is None else f"module {module_digest(module)}"


def run_ace(cfg: AceConfig, run_dir: Path | None = None, generator: nn.Module | None = None,
            segmenter=None) -> dict:
    """Learn which units of ``cfg.layer`` cause ``cfg.class_name``, measure removal curves (IoU vs ACE ranking) and
    the context table; writes ``runs/<name>/`` (ace.json, index.html, removal.png, W&B) and the ``<class>-ace``
    ranking into the dissection's dissect.json. Returns ace.json's content ({} on DDP processes other than 0)."""
    from gandissect.models.progan import load_generator
    from gandissect.models.segmenter import SceneSegmenter, class_index
    from gandissect.runs import runs_root, start_run, wandb_logger

    run_dir = Path(run_dir) if run_dir is not None else runs_root() / cfg.name
    generator_id = _identity(cfg.generator, generator)
    segmenter_id = _identity(cfg.segmenter, segmenter)
    generator = (load_generator(cfg.generator) if generator is None else generator).eval()
    segmenter = (SceneSegmenter.load(cfg.segmenter) if segmenter is None else segmenter).eval()
    class_idx = class_index(segmenter, cfg.class_name)
    units_total = _layer_units(generator, cfg.layer)  # an unknown layer stops here, listing the layers
    start_run(cfg.name, cfg, root=run_dir)
    started = time.perf_counter()

    dissection, dissect_dir = find_or_run_dissection(cfg, run_dir, generator, segmenter, generator_id)
    layer_entry = dissection["layers"][cfg.layer]
    iou_order = iou_ranking(layer_entry, cfg.class_name)
    constants = insertion_constants(cfg.insertion, dissection, dissect_dir, generator, segmenter, cfg.layer,
                                    cfg.class_name, cfg.constants_n)
    init = torch.full((units_total,), cfg.init_value)
    init[iou_order[:cfg.init_units]] = 1.0

    grid_latents = seeded_latents(cfg.eval_seed, 8, generator.latent_dim)
    module = InterventionModule(generator, segmenter, cfg.layer, class_idx, constants, init, cfg, grid_latents)
    logger = wandb_logger(run_dir, cfg.wandb, cfg.name, to_dict(cfg))
    d = cfg.devices
    trainer = pl.Trainer(max_steps=cfg.steps, accelerator=d.accelerator, devices=d.devices, strategy=d.strategy,
                         logger=logger if logger else False, log_every_n_steps=min(cfg.log_every, cfg.steps),
                         enable_checkpointing=False, enable_model_summary=False, default_root_dir=str(run_dir))
    fit_started = time.perf_counter()
    trainer.fit(module)
    fit_s = time.perf_counter() - fit_started
    if not trainer.is_global_zero:
        return {}

    generator, segmenter = module.generator.cpu(), module.segmenter.cpu()
    device = torch.device("cuda") if torch.cuda.is_available() and d.accelerator in ("auto", "gpu", "cuda") \
        else torch.device("cpu")
    generator, segmenter = generator.to(device), segmenter.to(device)
    alpha = module.alpha.detach().cpu()
    ranked = ace_ranking(alpha, iou_order, module.alpha_mean())
    result = measure(cfg, generator, segmenter, class_idx, constants, iou_order, ranked)
    result.update({
        "run_dir": str(run_dir),
        "settings": {**to_dict(cfg), "generator_sha256": generator_id, "segmenter_sha256": segmenter_id,
                     "dissection": str(dissect_dir / "dissect.json")},
        "alpha": [round(float(a), 6) for a in alpha],
        "alpha_mean": [round(float(a), 6) for a in module.alpha_mean()], "units_above_half": int((alpha > 0.5).sum()),
        "alpha_norm": round(float(alpha.norm()), 6), "constants": [round(float(c), 6) for c in constants],
        "losses": {"first": module.losses[0], "last": module.losses[-1]} if module.losses else {},
        "timing": {"fit_s": round(fit_s, 1), "wall_s": round(time.perf_counter() - started, 1),
                   "processes": trainer.world_size},
    })
    write_outputs(cfg, run_dir, dissect_dir, result, logger, module)
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


def removal_figure(result: dict) -> np.ndarray:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gandissect.io import figure_array

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


def write_outputs(cfg: AceConfig, run_dir: Path, dissect_dir: Path, result: dict, logger, module) -> None:
    from gandissect.io import save_image, write_json
    from gandissect.report.html import picture, table, write_report

    save_image(run_dir / "removal.png", removal_figure(result))
    grid = intervention_grid(module.generator, module.segmenter, cfg.layer, module.grid_latents.cpu(),
                             unit_alpha(result["rankings"]["ace"][:cfg.top_units], result["units"]),
                             module.constants.cpu())
    save_image(run_dir / "edits.png", grid, scale=2)
    result["files"] = {"removal_plot": "removal.png", "edits": "edits.png"}
    write_json(run_dir / "ace.json", result)
    add_ranking(dissect_dir / "dissect.json", cfg.layer, f"{cfg.class_name}-ace", result)

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
        run.finish()


def add_ranking(path: Path, layer: str, key: str, result: dict) -> None:
    """Store the ACE ranking in ``layers.<layer>.rankings.<key>`` of a dissect.json (atomically)."""
    from gandissect.io import write_json

    data = json.loads(Path(path).read_text())
    alpha = result["alpha"]
    data["layers"][layer].setdefault("rankings", {})[key] = {
        "units": result["rankings"]["ace"], "alpha": [alpha[u] for u in result["rankings"]["ace"]],
        "alpha_mean": [result["alpha_mean"][u] for u in result["rankings"]["ace"]],
        "removal_at_20": result["removal"]["ace"].get("at_20"), "run": str(result.get("run_dir", "")),
        "insertion": result["settings"]["insertion"], "lam": result["settings"]["lam"],
    }
    write_json(path, data)
