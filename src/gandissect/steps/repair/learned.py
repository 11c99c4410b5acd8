"""The learned repair: a per-unit soft ablation alpha in [0, 1]^U of one layer, r' = (1 - alpha) r, that makes the
generator's images look real, with few units: ``min_alpha  artifact(G_alpha(z)) + lam ||alpha||^2``, G and the
judge frozen, alpha clamped to [0, 1] after every step (the design's learned intervention, applied to artifacts).

The artifact term is either the discriminator's generator loss ``softplus(-D(x))`` (``objective: discriminator``)
or the artifact segmenter's mean soft artifact probability (``objective: artifact``, which backpropagates through
its Grad-CAM map). Trained by the Lightning Trainer, so ``ddp`` splits the batches.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from gandissect.core.hooks import edited_images
from gandissect.core.latents import LatentBatches
from gandissect.models.artifact_segmenter import ArtifactSegmenter
from gandissect.models.losses import generator_loss

OBJECTIVES = ("discriminator", "artifact")


class ArtifactRepairModule(pl.LightningModule):
    def __init__(self, generator: nn.Module, artifact_segmenter: ArtifactSegmenter, layer: str,
                 init_alpha: torch.Tensor, objective: str, lam: float, lr: float, batch_size: int, steps: int,
                 seed: int):
        super().__init__()
        self.generator = generator.eval().requires_grad_(False)
        self.judge = artifact_segmenter.eval().requires_grad_(False)
        self.layer, self.objective, self.lam, self.lr = layer, objective, lam, lr
        self.batch_size, self.steps, self.seed = batch_size, steps, seed
        self.alpha = nn.Parameter(init_alpha.clone().float().clamp(0, 1))
        self.losses: list[float] = []
        self.alpha_sum = torch.zeros_like(self.alpha.detach())  # over the steps: breaks ties among clamped units
        self.alpha_steps = 0

    def train_dataloader(self) -> DataLoader:
        batches = self.steps * self.trainer.world_size  # the DistributedSampler gives each process other batches
        return DataLoader(LatentBatches(self.seed, self.generator.latent_dim, batches * self.batch_size,
                                        self.batch_size), batch_size=None, shuffle=False)

    def configure_optimizers(self):
        return torch.optim.Adam([self.alpha], lr=self.lr)

    def artifact_loss(self, images: torch.Tensor) -> torch.Tensor:
        if self.objective == "discriminator":
            return generator_loss(self.judge.discriminator, images)
        return self.judge.probs(images)[:, 1].mean()

    def training_step(self, batch, batch_idx):
        _, z = batch
        images = edited_images(self.generator, self.layer, z, self.alpha, 0.0)
        artifact = self.artifact_loss(images)
        loss = artifact + self.lam * self.alpha.pow(2).sum()
        self.losses.append(float(loss.detach()))
        self.log_dict({"repair/loss": loss, "repair/artifact": artifact,
                       "repair/alpha_norm": self.alpha.detach().norm(),
                       "repair/units_above_half": (self.alpha.detach() > 0.5).sum().float()}, prog_bar=True)
        return loss

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        with torch.no_grad():  # each process clamps its equal copy
            self.alpha.clamp_(0, 1)
            self.alpha_sum += self.alpha.detach().cpu()
            self.alpha_steps += 1

    def alpha_mean(self) -> torch.Tensor:
        """alpha averaged over the steps: among units clamped at the same alpha, those that got there first rank
        first."""
        return self.alpha_sum / max(self.alpha_steps, 1)
