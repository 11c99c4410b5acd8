"""Training: LightningModules for the models gandissect trains itself, and the functions that run them."""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from gandissect.config import (DevicesConfig, GANModelConfig, GANTrainConfig, SegmenterTrainConfig, TrainerConfig,
                               to_dict)
from gandissect.core import distributed
from gandissect.core.latents import generate, seeded_latents
from gandissect.core.runs import (GENERATOR_FILE, SNAPSHOTS_DIR, finish_run, finish_wandb, log_model_artifact,
                                  machine_description, model_name, set_summary, start_run, wandb_logger)
from gandissect.data import scenes
from gandissect.data.images import scene_batches
from gandissect.errors import ConfigError
from gandissect.io import image_grid, save_image, write_json
from gandissect.metrics.fid import scenes_fd
from gandissect.models.generators import save_generator
from gandissect.models.losses import discriminator_loss, generator_loss
from gandissect.models.progan import ProGANDiscriminator, ProGANGenerator
from gandissect.models.segmenter import SceneSegmenter, iou_metric, iou_summary
from gandissect.models.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator


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


def _resume_checkpoint(run_dir: Path, resume: bool) -> tuple[str | None, int]:
    """(path for ``Trainer.fit(ckpt_path=...)``, its Lightning global_step) of the run's last checkpoint."""
    last = run_dir / "lightning" / "last.ckpt"
    if not (resume and last.exists()):
        return None, 0
    return str(last), int(torch.load(last, map_location="cpu", weights_only=False)["global_step"])


def _trainer(t: TrainerConfig, devices: DevicesConfig, run_dir: Path, logger, max_steps: int,
             checkpoint_every: int, callbacks: list = (), **kwargs) -> pl.Trainer:
    """The Trainer of a training run: the ``devices`` settings, Lightning checkpoints in run_dir/lightning."""
    checkpoints = pl.callbacks.ModelCheckpoint(dirpath=run_dir / "lightning", save_last=True,
                                               every_n_train_steps=checkpoint_every)
    return distributed.build_trainer(devices, run_dir, [checkpoints, *callbacks], logger=logger if logger else False,
                                     max_steps=max_steps, log_every_n_steps=t.log_every_n_steps,
                                     enable_checkpointing=True, **kwargs)


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
    logger = wandb_logger(run_dir, cfg, "train")
    trainer = _trainer(t, cfg.devices, run_dir, logger, t.max_steps, t.val_check_interval,
                       val_check_interval=min(t.val_check_interval, t.max_steps), check_val_every_n_epoch=None)
    resume_from, resumed_step = _resume_checkpoint(run_dir, cfg.resume)
    start = time.time()
    trainer.fit(module, datamodule=data, ckpt_path=resume_from)
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
    if logger is not None and trainer.is_global_zero:  # the other processes' W&B run is a stand-in
        set_summary(logger.experiment, {"steps": results["steps"], "val_miou": results["val_miou"]})
        log_model_artifact(logger.experiment, run_dir / "segmenter.safetensors",
                           aliases=["latest", f"step-{results['steps']}"])
    if logger is not None:
        finish_wandb(logger.experiment, run_dir)
    finish_run(run_dir)
    return results


def build_gan(m: GANModelConfig) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(generator, discriminator) of a model config, freshly initialised."""
    if m.arch == "stylegan2":
        resolutions = [2 ** k for k in range(2, int(math.log2(m.resolution)) + 1)]
        for key in ("g_widths", "d_widths"):
            if len(getattr(m, key)) != len(resolutions):
                raise ConfigError(f"model.{key}: a {m.resolution}px StyleGAN2 takes one width per resolution "
                                  f"{resolutions}; got {list(getattr(m, key))}")
        return (StyleGAN2Generator(m.resolution, m.latent_dim, m.n_mlp, dict(zip(resolutions, m.g_widths))),
                StyleGAN2Discriminator(m.resolution, dict(zip(resolutions, m.d_widths))))
    return ProGANGenerator(m.resolution, m.g_widths, m.latent_dim), ProGANDiscriminator(m.resolution, m.d_widths)


class GANModule(pl.LightningModule):
    """Non-saturating GAN loss with lazy R1 on real images, and an EMA copy of the generator.

    Manual optimization: each training step is one discriminator update and one generator update.
    Lightning counts optimizer steps, so ``trainer.global_step`` is twice the number of training steps;
    ``self.step`` is the number of training steps. Every ``fd_every`` steps the EMA generator is scored
    with FD-scenes (Frechet distance on the scene segmenter's features) against fixed real statistics,
    and every ``sample_every`` steps a grid of the same fixed latents is logged. Every ``snapshot_every`` steps the
    EMA generator is saved as ``snapshots/generator-step<N>.safetensors`` (and logged as a W&B model artifact), so
    one can dissect the checkpoints of a run and see how its units emerged.
    """

    def __init__(self, cfg: GANTrainConfig):
        super().__init__()
        self.automatic_optimization = False
        self.save_hyperparameters({"cfg": to_dict(cfg)})
        self.cfg = cfg
        m = cfg.model
        self.G, self.D = build_gan(m)
        self.G_ema = copy.deepcopy(self.G).requires_grad_(False).eval()
        self.G.random_noise = True  # StyleGAN2 trains with fresh noise; its EMA copy keeps the fixed buffers
        self.fd = scenes_fd(SceneSegmenter.load(cfg.monitor.segmenter))
        self.register_buffer("fixed_z", seeded_latents(cfg.monitor.sample_seed, cfg.monitor.sample_n, m.latent_dim))
        self._noise = torch.Generator()

    @property
    def step(self) -> int:
        return self.global_step // 2

    def on_fit_start(self):
        self._noise.manual_seed(self.cfg.seed * 1000 + self.global_rank + 7919 * self.step)
        mon = self.cfg.monitor
        if not mon.fd_every:
            return
        reference = scenes_fd(self.fd.backbone.segmenter).to(self.device)
        for images in scene_batches(mon.fd_real_seed, mon.fd_real_n, self.cfg.model.resolution, batch_size=100,
                                    variant=self.cfg.data.variant):
            reference.update(images.to(self.device), real=True)
        self.fd.set_real_statistics(*reference.statistics(real=True, sync=False))  # each rank saw them all

    def _latents(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.G.latent_dim, generator=self._noise).to(self.device)

    def training_step(self, batch, batch_idx):
        real = batch[0]
        loss_cfg = self.cfg.loss
        opt_g, opt_d = self.optimizers()
        n = real.shape[0]

        with torch.no_grad():
            fake = self.G(self._latents(n))
        regularize = loss_cfg.r1_gamma > 0 and self.step % loss_cfg.r1_interval == 0
        d_total, parts = discriminator_loss(self.D, real, fake, loss_cfg.r1_gamma if regularize else 0.0,
                                            loss_cfg.r1_interval)
        if regularize:
            self.log("train/r1", parts["r1"])
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(d_total)
        opt_d.step()

        g_loss = generator_loss(self.D, self.G(self._latents(n)))
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(g_loss)
        opt_g.step()
        self._update_ema(n)

        self.log_dict({"train/d_loss": parts["d_loss"], "train/g_loss": g_loss,
                       "train/real_score": parts["real_score"], "train/fake_score": parts["fake_score"]},
                      prog_bar=True)

    @torch.no_grad()
    def _update_ema(self, batch_size: int):
        half_life = self.cfg.loss.ema_half_life
        images_seen = (self.step + 1) * batch_size * self.trainer.world_size
        half_life = min(half_life, images_seen * self.cfg.loss.ema_rampup) if self.cfg.loss.ema_rampup else half_life
        beta = 0.5 ** (batch_size * self.trainer.world_size / max(half_life, 1e-8))
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
            p_ema.lerp_(p, 1 - beta)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        mon, step = self.cfg.monitor, self.step
        # Logged straight to the logger: self.log would repeat the value at every later step.
        if mon.fd_every and step % mon.fd_every == 0:
            fd = self.evaluate_fd()  # every process takes part: the metric syncs across them
            if self.trainer.is_global_zero and self.logger is not None:
                self.logger.log_metrics({"fd_scenes": fd}, step=self._log_step)
        if mon.sample_every and step % mon.sample_every == 0 and self.trainer.is_global_zero:
            self.log_samples()
        if mon.snapshot_every and step % mon.snapshot_every == 0 and self.trainer.is_global_zero:
            self.save_snapshot()

    def save_snapshot(self) -> Path:
        """The EMA generator of this step in the run's snapshots/, and as a version of the run's generator artifact."""
        run_dir = Path(self.trainer.default_root_dir)
        path = save_ema_generator(self.G_ema, run_dir / SNAPSHOTS_DIR / f"generator-step{self.step}.safetensors")
        run = getattr(self.logger, "experiment", None)
        if run is not None:
            log_model_artifact(run, path, name=model_name(run_dir / GENERATOR_FILE), aliases=[f"step-{self.step}"],
                               metadata={"step": self.step})
        return path

    @property
    def _log_step(self) -> int:
        """The step Lightning itself logs under (batches so far), so W&B sees one increasing step."""
        return self.trainer.fit_loop.epoch_loop._batches_that_stepped

    @torch.no_grad()
    def evaluate_fd(self) -> float:
        """FD-scenes of the EMA generator on seeded latents (shared out over the processes)."""
        mon = self.cfg.monitor
        self.fd.reset()
        rank, world = self.global_rank, self.trainer.world_size
        for start in range(rank * 100, mon.fd_n, world * 100):
            self.fd.update(generate(self.G_ema, mon.sample_seed + 1, min(100, mon.fd_n - start), start=start),
                           real=False)
        return float(self.fd.compute())

    @torch.no_grad()
    def log_samples(self):
        grid = image_grid(scenes.to_uint8(self.G_ema(self.fixed_z).clamp(-1, 1).cpu()))
        run_dir = Path(self.trainer.default_root_dir)
        save_image(run_dir / "samples.png", grid, scale=2)
        if self.logger is not None and hasattr(self.logger, "log_image"):
            self.logger.log_image("samples", [grid], step=self._log_step,
                                  caption=[f"EMA generator, step {self.step}"])

    def configure_optimizers(self):
        o = self.cfg.optim
        betas = tuple(o.betas)
        # lazy R1 scales the D learning rate as StyleGAN2 does, so the effective regularization is unchanged
        ratio = self.cfg.loss.r1_interval / (self.cfg.loss.r1_interval + 1) if self.cfg.loss.r1_gamma > 0 else 1
        opt_g = torch.optim.Adam(self.G.parameters(), lr=o.g_lr, betas=betas)
        opt_d = torch.optim.Adam(self.D.parameters(), lr=o.d_lr * ratio, betas=tuple(b ** ratio for b in betas))
        return [opt_g, opt_d]


def save_ema_generator(G_ema: torch.nn.Module, path: Path) -> Path:
    """A copy of the EMA generator as a checkpoint, with the average w that truncation pulls towards (StyleGAN2)."""
    generator = copy.deepcopy(G_ema).cpu().eval()
    if hasattr(generator, "estimate_latent_avg"):
        generator.estimate_latent_avg()
    return save_generator(generator, path)


def scene_stream(cfg: GANTrainConfig, first_step: int, world_size: int) -> torch.utils.data.DataLoader:
    """The real scenes of steps ``first_step``..max_steps-1, in order: step s reads scenes s*B*W .. (s+1)*B*W - 1
    (B per process, W processes; Lightning's sampler deals them out), so a resumed run goes on with the scenes after
    the last it trained on instead of starting the world again."""
    per_step = cfg.data.batch_size * world_size
    steps = max(1, cfg.trainer.max_steps - first_step)  # a finished run still gets a (never read) batch
    dataset = scenes.SceneDataset(cfg.data.train_seed, steps * per_step, cfg.model.resolution,
                                  start=first_step * per_step, variant=cfg.data.variant)
    return torch.utils.data.DataLoader(dataset, batch_size=cfg.data.batch_size, shuffle=False, drop_last=True,
                                       num_workers=cfg.data.num_workers,
                                       persistent_workers=cfg.data.num_workers > 0)


def train_gan(cfg: GANTrainConfig, run_dir: Path | None = None, callbacks: list = ()) -> dict:
    """Train a GAN (ProGAN or StyleGAN2) on the scene world; writes the run directory and returns its results."""
    run_dir = start_run(cfg.name, cfg, root=run_dir)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    t = cfg.trainer
    module = GANModule(cfg)
    # the group of the generator it makes, which the dissections of that generator (or its snapshots) also get
    logger = wandb_logger(run_dir, cfg, "train", group=model_name(run_dir / GENERATOR_FILE))
    # The D update leaves G's parameters without gradients by design, which plain DDP treats as an error.
    devices = cfg.devices
    if devices.strategy == "ddp":
        devices = dataclasses.replace(devices, strategy="ddp_find_unused_parameters_true")
    # Lightning counts optimizer steps; one GAN step takes two (D and G).
    trainer = _trainer(t, devices, run_dir, logger, 2 * t.max_steps, 2 * cfg.monitor.checkpoint_every, callbacks)
    resume_from, resumed_optimizer_steps = _resume_checkpoint(run_dir, cfg.resume)
    resumed_step = resumed_optimizer_steps // 2
    data = scene_stream(cfg, resumed_step, trainer.world_size)
    start = time.time()
    trainer.fit(module, train_dataloaders=data, ckpt_path=resume_from)
    wall = time.time() - start
    fd = module.evaluate_fd() if cfg.monitor.fd_every else None
    results = {
        "steps": module.step, "resumed_from_step": int(resumed_step), "images_seen": module.step * cfg.data.batch_size
        * trainer.world_size, "wall_time_s": round(wall, 1), "machine": machine_description(),
        "world_size": trainer.world_size, "fd_scenes": fd, "fd_n": cfg.monitor.fd_n,
        "generator": str(run_dir / GENERATOR_FILE),
        "discriminator": str(run_dir / "discriminator.safetensors"),
    }
    if trainer.is_global_zero:
        save_ema_generator(module.G_ema, run_dir / GENERATOR_FILE)
        module.D.cpu().eval().save(run_dir / "discriminator.safetensors")
        write_json(run_dir / "results.json", results)
    if logger is not None and trainer.is_global_zero:  # the other processes' W&B run is a stand-in
        set_summary(logger.experiment, {key: results[key] for key in ("steps", "images_seen", "fd_scenes")})
        log_model_artifact(logger.experiment, run_dir / GENERATOR_FILE, aliases=["latest", f"step-{module.step}"],
                           metadata={"step": module.step, "fd_scenes": fd})
    if logger is not None:
        finish_wandb(logger.experiment, run_dir)
    finish_run(run_dir)
    return results
