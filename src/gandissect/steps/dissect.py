"""Dissection: which units of a generator's layers draw which classes (GAN Dissection, step 1).

Two passes over seeded latents 0..n-1, each a ``Trainer.validate`` run, so ``devices: N, strategy: ddp``
splits the batches over processes and torchmetrics sums their tallies:

1. **quantile**: only the generator up to the deepest dissected layer runs. Per unit, a histogram of
   all its values (``UnitQuantile``, bins calibrated beforehand on the first samples, identically on
   every process) and the top-k samples by maximum activation (``UnitTopK``).
2. **iou**: generator and segmenter. Each unit's map, upsampled (bilinear) to the segmentation's
   resolution and thresholded at its 0.99 quantile, is counted against every class (``UnitClassIoU``).

Every ``save_every`` batches the processes' tallies are summed and written to ``tally.pt`` with the
batches they cover; a rerun with the same settings resumes from there. ``dissect.json`` and the
report are written at the end (see the README for the schema).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from gandissect.config import DissectConfig
from gandissect.core import distributed
from gandissect.core.hooks import NetHook, layer_shapes
from gandissect.core.latents import LatentBatches, latent_batches
from gandissect.core.runs import finish_run, machine_description, runs_root, start_run
from gandissect.core.tally import TallyFile
from gandissect.io import save_image, write_json
from gandissect.metrics.unit_stats import UnitClassIoU, UnitQuantile, UnitTopK, calibrated_edges, iou_from_counts
from gandissect.models.generators import generator_identity, open_generator
from gandissect.models.segmenter import segmenter_and_identity
from gandissect.report.dissection import draw_strips, layer_chart, layers_chart, log_to_wandb, write_dissection_report

BINS = 1024
MIN_N = 100  # fewer images: a unit's 0.99 quantile rests on a handful of pixels per image and its IoU on chance
CALIBRATION_VALUES = 65536  # per unit: enough for ~64 calibration values in each bin


def _key(layer: str) -> str:
    return layer.replace(".", "__")  # ModuleDict keys may not contain dots


@torch.no_grad()
def calibrate(generator: nn.Module, layer: str, cells: int, cfg: DissectConfig) -> torch.Tensor:
    """Bin edges for ``layer``'s units (``cells`` positions per map) from its values on the first latents of
    the run; every process computes the same ones."""
    count = min(cfg.n, max(cfg.batch_size, math.ceil(CALIBRATION_VALUES / cells)))
    parts = []
    with NetHook(generator, [layer], stop_after=layer) as hook:
        for z in latent_batches(cfg.seed, count, generator.latent_dim, cfg.batch_size):
            hook(z.to(next(generator.parameters()).device))
            parts.append(hook.retained[layer].float())
    return calibrated_edges(torch.cat(parts), bins=BINS, focus=cfg.quantile)


class DissectModule(pl.LightningModule):
    """Runs the two passes of a dissection; ``run_dissection`` drives it."""

    def __init__(self, generator: nn.Module, segmenter, cfg: DissectConfig, tally_path: Path,
                 generator_id: str, segmenter_id: str):
        super().__init__()
        self.allow_zero_length_dataloader_with_multiple_devices = True  # a process may have no batch left
        self.generator_id, self.segmenter_id = generator_id, segmenter_id
        self.generator = generator.eval().requires_grad_(False)
        self.segmenter = segmenter.eval().requires_grad_(False)
        self.cfg = cfg
        self.layers = list(cfg.layers)
        self.shapes = layer_shapes(generator, self.layers)
        self.deepest = list(self.shapes)[-1]  # the quantile pass stops there
        self.phase = "quantile"
        self.done: list[int] = []          # batches tallied in the current phase, over all processes
        self.thresholds: dict[str, torch.Tensor] = {}
        self.top: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._started, self._elapsed_before = time.perf_counter(), 0.0
        self._hook: NetHook | None = None
        self.tally_file = TallyFile(tally_path, self.settings(), cfg.resume)
        self._tally = self.tally_file.read()  # checks an earlier tally before anything is computed
        edges = self._tally["edges"] if self._tally else {
            _key(n): calibrate(generator, n, s[1] * s[2], cfg) for n, s in self.shapes.items()}
        classes = len(segmenter.classes)
        self.quantiles = nn.ModuleDict({_key(n): UnitQuantile(edges[_key(n)], cfg.quantile) for n in self.shapes})
        self.topk = nn.ModuleDict({_key(n): UnitTopK(s[0], cfg.top_k) for n, s in self.shapes.items()})
        self.iou = nn.ModuleDict({_key(n): UnitClassIoU(s[0], classes) for n, s in self.shapes.items()})

    # --- the tally file ---------------------------------------------------------------------------
    def settings(self) -> dict:
        c = self.cfg
        return {"layers": self.layers, "n": c.n, "seed": c.seed, "batch_size": c.batch_size, "quantile": c.quantile,
                "top_k": c.top_k, "generator_sha256": self.generator_id,
                "segmenter_sha256": self.segmenter_id}

    def _metric_states(self, group: nn.ModuleDict) -> dict:
        return {k: {name: v.detach().cpu().clone() for name, v in m.metric_state.items()} for k, m in group.items()}

    def _synced_states(self) -> dict:
        """The tallies of the current phase summed over processes (a collective: every process calls it)."""
        groups = {"quantiles": self.quantiles, "topk": self.topk} if self.phase == "quantile" else {"iou": self.iou}
        with contextlib.ExitStack() as stack:
            for group in groups.values():
                for metric in group.values():
                    stack.enter_context(metric.sync_context())
            return {name: self._metric_states(group) for name, group in groups.items()}

    def save_tally(self, states: dict | None = None) -> None:
        """Write the summed tallies and the batches they cover (rank 0 writes; every process must call it)."""
        states = self._synced_states() if states is None else states
        if self.global_rank != 0:
            return
        self.tally_file.write({"phase": self.phase, "done": sorted(self.done), "states": states,
                               "elapsed_s": self.elapsed_s(),
                               "edges": {k: m.edges.cpu() for k, m in self.quantiles.items()},
                               "thresholds": {k: v.cpu() for k, v in self.thresholds.items()},
                               "top": {k: (s.cpu(), i.cpu()) for k, (s, i) in self.top.items()}})

    def load_tally(self) -> None:
        """Continue from the tally: every process takes the phase and what is done, rank 0 the counts."""
        tally, self._tally = self._tally, None
        if tally is None:
            return
        self.phase, self.done = tally["phase"], list(tally["done"])
        self.thresholds = dict(tally["thresholds"])
        self._elapsed_before = float(tally.get("elapsed_s", 0.0))
        self.top = {k: tuple(v) for k, v in tally["top"].items()}
        if self.phase == "done":
            self.counts = tally["states"]["iou"]
        elif self.global_rank == 0:  # the other processes start from zero, so the sum counts everything once
            for group_name, states in tally["states"].items():
                for key, state in states.items():
                    metric = getattr(self, group_name)[key]
                    for name, value in state.items():
                        setattr(metric, name, value.to(getattr(metric, name).device))

    # --- Lightning hooks --------------------------------------------------------------------------
    def elapsed_s(self) -> float:
        """Seconds spent on this dissection so far, over every attempt (a resumed run adds to it)."""
        if self.phase == "done":
            return self._elapsed_before
        return self._elapsed_before + time.perf_counter() - self._started

    def setup(self, stage: str) -> None:
        self.load_tally()  # the first time only: it forgets the tally once taken

    def _pending(self) -> list[int]:
        done = set(self.done)
        return [b for b in range(math.ceil(self.cfg.n / self.cfg.batch_size)) if b not in done]

    def val_dataloader(self) -> DataLoader:
        rank, world = self.global_rank, self.trainer.world_size
        pending = self._pending()
        self._save_points = len(pending) // world  # every process reaches these batch counts
        self._others = [pending[r::world] for r in range(world)]
        data = LatentBatches(self.cfg.seed, self.generator.latent_dim, self.cfg.n, self.cfg.batch_size,
                             self._others[rank])
        return DataLoader(data, batch_size=None, shuffle=False)

    def on_validation_start(self) -> None:
        self._hook = NetHook(self.generator, self.layers)
        self._count = 0

    def validation_step(self, batch, batch_idx):
        indices, z = batch
        if self.phase == "quantile":
            self._hook.stop_after = self.deepest
            self._hook(z)
            for name in self.layers:
                r = self._hook.retained[name]
                self.quantiles[_key(name)].update(r)
                self.topk[_key(name)].update(r.flatten(2).amax(dim=2) if r.dim() > 2 else r, indices)
        else:
            self._hook.stop_after = None
            images = self._hook(z).clamp(-1, 1)
            labels = self.segmenter.labels(images)
            for name in self.layers:
                r = self._hook.retained[name]
                self.iou[_key(name)].update_upsampled(r, self.thresholds[_key(name)].to(r.device), labels)

    def on_validation_batch_end(self, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._count += 1
        if self._count % self.cfg.save_every == 0 and self._count <= self._save_points:
            self.done = sorted(set(self.done).union(*(mine[:self._count] for mine in self._others)))
            self.save_tally()

    def on_validation_end(self) -> None:
        self.remove_hooks()

    def remove_hooks(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    # --- the ends of the passes (collectives: every process calls them) -------------------------
    def finish_quantile_phase(self) -> None:
        """Thresholds and top-k from the summed tallies; the IoU pass starts."""
        self.to(self.trainer.strategy.root_device)  # Lightning's teardown moved it to the CPU; NCCL syncs need the GPU
        for name in self.layers:
            key = _key(name)
            with self.quantiles[key].sync_context():
                self.thresholds[key] = self.quantiles[key].quantile(self.cfg.quantile)
            self.top[key] = tuple(t.cpu() for t in self.topk[key].compute())
            self.thresholds[key] = self.thresholds[key].cpu()
        self.phase, self.done = "iou", []
        self.save_tally()

    def finish_iou_phase(self) -> None:
        self.to(self.trainer.strategy.root_device)
        self.counts = self._synced_states()["iou"]
        self._elapsed_before = self.elapsed_s()
        self.phase, self.done = "done", list(range(math.ceil(self.cfg.n / self.cfg.batch_size)))
        self.save_tally({"iou": self.counts})


class PassProgressBar(pl.callbacks.TQDMProgressBar):
    """Lightning's progress bar, naming the dissection pass instead of "Validation"."""

    @property
    def validation_description(self) -> str:
        return f"dissect ({self.trainer.lightning_module.phase} pass)"


# --- the run ----------------------------------------------------------------------------------------
def summarize(counts: dict, classes: tuple[str, ...], categories: dict[str, str], iou_threshold: float) -> dict:
    """Per unit: best class (IoU over all images) and whether it is interpretable; per layer: counts per class."""
    inter, unit_area, class_area = (counts[k] for k in ("intersection", "unit_area", "class_area"))
    iou = iou_from_counts(inter, unit_area, class_area)
    union = unit_area[:, None] + class_area[None, :] - inter
    best_iou, best = iou[:, 1:].max(dim=1)
    units, per_class, per_category = [], {}, {}
    for u in range(len(best)):
        label = classes[int(best[u]) + 1]
        ok = bool(best_iou[u] > iou_threshold)
        units.append({"unit": u, "label": label, "category": categories.get(label), "iou": round(float(best_iou[u]), 6),
                      "interpretable": ok, "intersection": int(inter[u, best[u] + 1]),
                      "union": int(union[u, best[u] + 1])})
        if ok:
            per_class[label] = per_class.get(label, 0) + 1
            per_category[categories.get(label)] = per_category.get(categories.get(label), 0) + 1
    return {"units": len(units), "interpretable_units": sum(u["interpretable"] for u in units),
            "per_class": per_class, "per_category": per_category, "units_detail": units,
            "iou_by_class": {c: [round(float(v), 6) for v in iou[:, i]] for i, c in enumerate(classes) if i}}


def sample_warnings(cfg: DissectConfig) -> list[str]:
    """What makes a dissection's numbers weak; said on stderr before the work and kept in dissect.json."""
    if cfg.n >= MIN_N:
        return []
    return [f"n={cfg.n} images is below the minimum of {MIN_N} for a dissection: the per-unit thresholds and IoUs "
            "(and which units count as interpretable) rest on too few images to be trusted"]


def run_dissection(cfg: DissectConfig, run_dir: Path | None = None, generator: nn.Module | None = None,
                   segmenter=None, callbacks: list = ()) -> dict:
    """Dissect ``cfg.layers`` of ``cfg.generator`` (or of the ``generator`` module given); writes the run directory."""
    run_dir = Path(run_dir) if run_dir is not None else runs_root() / cfg.name
    generator_id = generator_identity(cfg, generator)
    generator = open_generator(cfg, "dissect") if generator is None \
        else generator
    segmenter, segmenter_id = segmenter_and_identity(cfg.segmenter, segmenter)
    # checks the layers and an earlier tally before anything in the run directory is written
    module = DissectModule(generator, segmenter, cfg, run_dir / "tally.pt", generator_id, segmenter_id)
    start_run(cfg.name, cfg, root=run_dir)
    for message in sample_warnings(cfg):  # after the checks and the lock: a refused run says one line, no warning
        print(f"gandissect: warning: {message}", file=sys.stderr)
    # inference_mode=False: a segmenter may need autograd inside labels() (the artifact segmenter's Grad-CAM)
    trainer = distributed.build_trainer(cfg.devices, run_dir, [PassProgressBar(), *callbacks],
                                        use_distributed_sampler=False, inference_mode=False)
    start = time.perf_counter()
    try:
        trainer.validate(module, verbose=False)  # the phase an earlier run stopped in, else the quantile pass
        if module.phase == "quantile":
            module.finish_quantile_phase()
            trainer.validate(module, verbose=False)
        if module.phase == "iou":
            module.finish_iou_phase()
    finally:
        module.remove_hooks()  # also when interrupted: the generator is left as it was
    wall = time.perf_counter() - start
    result = write_outputs(module, cfg, run_dir, wall, trainer.world_size) if trainer.is_global_zero else {}
    distributed.barrier()  # the other processes may read dissect.json from here on
    return result


def write_outputs(module: DissectModule, cfg: DissectConfig, run_dir: Path, wall: float, world_size: int) -> dict:
    segmenter, generator = module.segmenter, module.generator.cpu()
    classes, categories = tuple(segmenter.classes), dict(segmenter.categories)
    result = {
        "settings": {"generator": cfg.generator, "segmenter": cfg.segmenter, **module.settings(),
                     "iou_threshold": cfg.iou_threshold, "segmentation_size": None, "processes": world_size},
        "classes": list(classes[1:]), "categories": {c: categories.get(c) for c in classes[1:]},
        "layers": {},
        "timing": {"wall_s": round(module.elapsed_s(), 1), "this_run_s": round(wall, 1),
                   "machine": machine_description()},
        "warnings": sample_warnings(cfg),
    }
    for name in module.layers:
        key = _key(name)
        counts = module.counts[key]
        summary = summarize(counts, classes, categories, cfg.iou_threshold)
        thresholds, (top_scores, top_indices) = module.thresholds[key], module.top[key]
        strip_dir = run_dir / "strips" / name
        strips = draw_strips(generator, name, thresholds, top_indices, cfg.seed, strip_dir, cfg.batch_size)
        for u, unit in enumerate(summary["units_detail"]):
            unit.update({"threshold": round(float(thresholds[u]), 6),
                         "top_images": [int(i) for i in top_indices[u] if i >= 0],
                         "top_scores": [round(float(v), 5) for v, i in zip(top_scores[u], top_indices[u]) if i >= 0],
                         "strip": str(strips[u].relative_to(run_dir))})
        chart = run_dir / f"chart_{name}.png"
        save_image(chart, layer_chart(name, summary, categories, cfg.iou_threshold))
        result["layers"][name] = {"shape": list(module.shapes[name]), "chart": chart.name, **summary}
    with torch.no_grad():
        probe = module.generator(torch.zeros(1, module.generator.latent_dim))
    result["settings"]["segmentation_size"] = int(probe.shape[-1])
    write_json(run_dir / "dissect.json", result)
    if len(result["layers"]) > 1:
        save_image(run_dir / "chart_layers.png", layers_chart(result))
    write_dissection_report(run_dir, result)
    log_to_wandb(run_dir, cfg, result)
    finish_run(run_dir)
    return result


def summary(result: dict, run_dir: Path) -> dict:
    """What ``gandissect dissect`` prints: where the run is, and per layer the interpretable units per class."""
    return {"run_dir": str(run_dir), "report": str(run_dir / "index.html"), "wall_s": result["timing"]["wall_s"],
            "warnings": result.get("warnings", []),
            "layers": {name: {"units": layer["units"], "interpretable_units": layer["interpretable_units"],
                              "per_class": layer["per_class"]} for name, layer in result["layers"].items()}}
