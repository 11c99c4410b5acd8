"""Training: LightningModules for the models gandissect trains itself, and the functions that run them."""

from __future__ import annotations

import math
import platform
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from gandissect.config import SegmenterTrainConfig, to_dict
from gandissect.data import scenes
from gandissect.io import image_grid, write_json
from gandissect.models.segmenter import SceneSegmenter, iou_metric, iou_summary
from gandissect.runs import start_run, wandb_logger


def prediction_panel(images: torch.Tensor, truth: torch.Tensor, predicted: torch.Tensor) -> np.ndarray:
    """Rows of images, their true labels and the predicted labels, as one picture."""
    n = len(images)
    tiles = np.concatenate([scenes.to_uint8(images), scenes.colorize(truth.cpu()), scenes.colorize(predicted.cpu())])
    return image_grid(tiles, columns=n)


class SegmenterModule(pl.LightningModule):
    """Trains a SceneSegmenter with cross-entropy on the world's exact labels; tracks per-class IoU."""

    def __init__(self, widths: list[int], input_size: int, lr: float, weight_decay: float, max_steps: int):
        super().__init__()
        self.save_hyperparameters()
        self.model = SceneSegmenter(widths=tuple(widths), input_size=input_size)
        self.val_iou = iou_metric(self.model.classes)
        self._panel_batch = None

    def training_step(self, batch, batch_idx):
        images, label = batch
        loss = F.cross_entropy(self.model(images), label)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        images, label = batch
        logits = self.model(images)
        self.log("val/loss", F.cross_entropy(logits, label), sync_dist=True)
        predicted = logits.argmax(dim=1)
        self.val_iou.update(predicted, label)
        if batch_idx == 0:
            self._panel_batch = (images[:8], label[:8], predicted[:8])

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking:
            self.val_iou.reset()
            self._panel_batch = None
            return
        summary = iou_summary(self.val_iou, self.model.classes)
        self.val_iou.reset()
        self.log("val/miou", summary["miou"], prog_bar=True)
        for name, iou in summary["per_class_iou"].items():
            if iou is not None:
                self.log(f"val/iou/{name}", iou)
        if self._panel_batch is not None and self.logger is not None and hasattr(self.logger, "log_image"):
            if self.trainer.is_global_zero:
                self.logger.log_image("val/predictions", [prediction_panel(*self._panel_batch)],
                                      step=self.global_step, caption=["image / true labels / predicted"])
        self._panel_batch = None

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(warmup_cosine, total=hp.max_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def warmup_cosine(step: int, total: int, warmup: float = 0.05, floor: float = 0.02) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to ``floor``.

    A plain function of the step rather than a stateful scheduler, so a run resumed with a larger
    ``max_steps`` simply follows the longer schedule.
    """
    ramp = max(1, int(warmup * total))
    if step < ramp:
        return (step + 1) / ramp
    progress = min(1.0, (step - ramp) / max(1, total - ramp))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def machine_description() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (GPU)"
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads"


def train_segmenter(cfg: SegmenterTrainConfig, run_dir: Path | None = None) -> dict:
    """Train the scene segmenter; writes the run directory and returns its results."""
    run_dir = start_run(cfg.name, cfg, root=run_dir)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    t = cfg.trainer
    data = scenes.ScenesDataModule(size=cfg.data.size, batch_size=cfg.data.batch_size,
                                   train_seed=cfg.data.train_seed, train_length=t.max_steps * cfg.data.batch_size,
                                   val_seed=cfg.data.val_seed, val_length=cfg.data.val_length,
                                   num_workers=cfg.data.num_workers)
    module = SegmenterModule(cfg.model.widths, cfg.data.size, cfg.optim.lr, cfg.optim.weight_decay, t.max_steps)
    logger = wandb_logger(run_dir, cfg.wandb, cfg.name, to_dict(cfg))
    trainer = pl.Trainer(
        max_steps=t.max_steps, accelerator=t.accelerator, devices=t.devices, strategy=t.strategy,
        precision=t.precision, val_check_interval=min(t.val_check_interval, t.max_steps),
        check_val_every_n_epoch=None, log_every_n_steps=t.log_every_n_steps, logger=logger if logger else False,
        default_root_dir=str(run_dir), enable_model_summary=False,
        callbacks=[pl.callbacks.ModelCheckpoint(dirpath=run_dir / "lightning", save_last=True,
                                                every_n_train_steps=t.val_check_interval)],
    )
    last = run_dir / "lightning" / "last.ckpt"
    resume_from = last if cfg.resume and last.exists() else None
    resumed_step = torch.load(resume_from, map_location="cpu", weights_only=False)["global_step"] if resume_from else 0
    start = time.time()
    trainer.fit(module, datamodule=data, ckpt_path=str(resume_from) if resume_from else None)
    wall = time.time() - start
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    results = {
        "steps": int(trainer.global_step), "resumed_from_step": int(resumed_step),
        "wall_time_s": round(wall, 1), "machine": machine_description(),
        "val_miou": metrics.get("val/miou"),
        "val_per_class_iou": {n: metrics.get(f"val/iou/{n}") for n in module.model.classes[1:]},
        "checkpoint": str(run_dir / "segmenter.safetensors"),
    }
    if trainer.is_global_zero:
        module.model.cpu().eval().save(run_dir / "segmenter.safetensors")
        write_json(run_dir / "results.json", results)
    if logger is not None:
        logger.experiment.finish()
    return results
