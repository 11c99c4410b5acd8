"""The proof of a repair: the same seeded latents through the original generator, each repaired one and random
ablations of as many units, each measured against real scenes - with intervals, so a gain can be told from chance.

``VariantPass`` (a LightningModule run by ``Trainer.validate``; ``ddp`` splits the batches) keeps every variant's
features and, on the first ``rules_n`` latents, the scene segmenter's labels for the world's rules. ``measure``
then computes per variant: the Frechet distance with a bootstrap interval, KID, precision and recall (k = 3), the
share of images that break a rule; and for each repaired variant its paired difference from the original (same
latents: a bootstrap for FD, precision and rules, shared subsets for KID) and its rank among the random draws.
"""

from __future__ import annotations

import math

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from gandissect.core.hooks import NetHook
from gandissect.core.latents import LatentBatches
from gandissect.metrics.bootstrap import FrechetToReal, fd_interval, paired_difference_interval
from gandissect.metrics.feature_bank import FeatureBank, feature_statistics
from gandissect.metrics.fid import frechet_distance
from gandissect.metrics.kid import kernel_distance, kernel_distance_difference
from gandissect.metrics.precision_recall import covered, knn_radii
from gandissect.metrics.real_stats import RealStatistics
from gandissect.metrics.world_rules import violations

Variant = dict[str, torch.Tensor]  # layer -> (units,) scale of each unit's output (1: as is, 0: ablated)


class VariantPass(pl.LightningModule):
    def __init__(self, generator: nn.Module, variants: dict[str, Variant], backbone: nn.Module, segmenter,
                 seed: int, n: int, batch_size: int, rules_n: int):
        super().__init__()
        self.allow_zero_length_dataloader_with_multiple_devices = True
        self.generator = generator.eval().requires_grad_(False)
        self.backbone = backbone.eval().requires_grad_(False)
        self.segmenter = segmenter.eval().requires_grad_(False)
        self.variants = variants
        self.seed, self.n, self.batch_size, self.rules_n = seed, n, batch_size, rules_n
        self.banks = nn.ModuleDict({name: FeatureBank() for name in variants})
        self.label_banks = nn.ModuleDict({name: FeatureBank() for name in variants})  # finest labels, flattened
        self.layers = sorted({layer for variant in variants.values() for layer in variant})
        self._hook: NetHook | None = None

    def val_dataloader(self) -> DataLoader:
        batches = list(range(math.ceil(self.n / self.batch_size)))[self.global_rank::self.trainer.world_size]
        return DataLoader(LatentBatches(self.seed, self.generator.latent_dim, self.n, self.batch_size, batches),
                          batch_size=None, shuffle=False)

    def on_validation_start(self) -> None:
        self._hook = NetHook(self.generator, self.layers)

    def validation_step(self, batch, batch_idx):
        index, z = batch
        for name, variant in self.variants.items():
            self._hook.clear_edit()
            for layer, scale in variant.items():
                self._hook.edit(layer, 1 - scale.to(z), value=0.0)
            images = self._hook(z).clamp(-1, 1)
            self.banks[name].update(self.backbone(images), index)
            ruled = index < self.rules_n
            if ruled.any():
                labels = self.segmenter.labels(images[ruled])[:, 0]
                self.label_banks[name].update(labels.flatten(1).float(), index[ruled])

    def on_validation_end(self) -> None:
        self.remove_hook()

    def remove_hook(self) -> None:
        """Leave the generator as it was (also called when the pass fails)."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def collected(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Features and label maps of every variant, in latent order (a collective: every process calls it)."""
        side = self.generator.resolution
        for bank in self.label_banks.values():  # a process without ruled latents still takes part in the gather
            if isinstance(bank.features, list) and not bank.features:
                bank.update(torch.zeros(0, side * side, device=self.device),
                            torch.zeros(0, dtype=torch.long, device=self.device))
        features = {name: bank.compute() for name, bank in self.banks.items()}
        labels = {name: bank.compute().long().view(-1, side, side) for name, bank in self.label_banks.items()}
        return features, labels


class VariantProgressBar(pl.callbacks.TQDMProgressBar):
    @property
    def validation_description(self) -> str:
        return f"{len(self.trainer.lightning_module.variants)} generators"


def _share_interval(values: np.ndarray, baseline: np.ndarray, resamples: int, seed: int,
                    level: float) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(values) - mean(baseline) over paired samples."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(values), size=(resamples, len(values)))
    differences = values[draws].mean(axis=1) - baseline[draws].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(differences, alpha)), float(np.quantile(differences, 1 - alpha))


def measure(features: dict[str, torch.Tensor], labels: dict[str, torch.Tensor], real: RealStatistics,
            repaired: list[str], randoms: list[str], resamples: int = 200, level: float = 0.95,
            kid_subsets: int = 100, kid_subset_size: int = 1000, k: int = 3, seed: int = 0) -> dict:
    """Every number of the table, per variant and for each repaired variant against the original and the random
    draws. ``features``/``labels`` hold the variants' samples in latent order (row i: latent i for all)."""
    distance = FrechetToReal(real.mu, real.sigma)
    real_radii = knn_radii(real.features.double(), k) if real.features is not None else None
    per_variant, inside, broken = {}, {}, {}
    for name, feats in features.items():
        x = feats.double().numpy()
        mu, sigma = feature_statistics(x)
        low, high = fd_interval(distance, x, resamples, seed, level)
        row = {"fd": frechet_distance(mu, sigma, real.mu, real.sigma), "fd_interval": [low, high], "n": len(x)}
        if real.features is not None:
            row["kid"], row["kid_std"] = kernel_distance(real.features, feats, kid_subsets, kid_subset_size, seed)
            inside[name] = covered(feats.double(), real.features.double(), real_radii).numpy().astype(np.float64)
            row["precision"] = float(inside[name].mean())
            fake_radii = knn_radii(feats.double(), k)
            row["recall"] = float(covered(real.features.double(), feats.double(), fake_radii).double().mean())
        if name in labels and len(labels[name]):
            union, rules = violations(labels[name])
            broken[name] = np.stack(list(rules.values())).any(axis=0).astype(np.float64)
            row["rules"] = {"images": len(broken[name]), "images_broken": float(broken[name].mean()),
                            "per_rule": {rule: float(v.mean()) for rule, v in rules.items()}}
        per_variant[name] = row

    random_fd = [per_variant[name]["fd"] for name in randoms]
    comparisons = {}
    for name in repaired:
        mine = per_variant[name]
        vs_original = {"fd_difference": mine["fd"] - per_variant["original"]["fd"],
                       "fd_interval": list(paired_difference_interval(
                           distance, features[name].double().numpy(), features["original"].double().numpy(),
                           resamples, seed, level))}
        if real.features is not None:
            difference, interval = kernel_distance_difference(real.features, features[name], features["original"],
                                                              kid_subsets, kid_subset_size, seed, level)
            vs_original["kid_difference"], vs_original["kid_interval"] = difference, list(interval)
        if name in inside:
            vs_original["precision_difference"] = mine["precision"] - per_variant["original"]["precision"]
            vs_original["precision_interval"] = list(_share_interval(inside[name], inside["original"], resamples,
                                                                     seed, level))
        if name in broken:
            vs_original["rules_difference"] = float(broken[name].mean() - broken["original"].mean())
            vs_original["rules_interval"] = list(_share_interval(broken[name], broken["original"], resamples, seed,
                                                                 level))
        fd_better = vs_original["fd_interval"][1] < 0
        other_better = [metric for metric, better in (
            ("kid", "kid_interval" in vs_original and vs_original["kid_interval"][1] < 0),
            ("precision", "precision_interval" in vs_original and vs_original["precision_interval"][0] > 0),
            ("rules", "rules_interval" in vs_original and vs_original["rules_interval"][1] < 0)) if better]
        rank = sum(value <= mine["fd"] for value in random_fd)  # random draws at least as good
        comparisons[name] = {
            "vs_original": vs_original,
            "random_draws_at_least_as_good": rank, "random_draws": len(random_fd),
            "verdict": {"fd_better_than_original_beyond_interval": fd_better,
                        "another_metric_better_beyond_interval": other_better,
                        "better_than_every_random_draw": rank == 0 and bool(random_fd),
                        "target_met": fd_better and bool(other_better) and rank == 0 and bool(random_fd)}}
    random_summary = {"fd": random_fd, "fd_mean": float(np.mean(random_fd)) if random_fd else None,
                      "fd_std": float(np.std(random_fd, ddof=1)) if len(random_fd) > 1 else None}
    return {"variants": per_variant, "repairs": comparisons, "random": random_summary,
            "settings": {"bootstrap_resamples": resamples, "level": level, "kid_subsets": kid_subsets,
                         "kid_subset_size": kid_subset_size, "k": k, "seed": seed,
                         "intervals": "percentile bootstrap over the generated samples (the real side fixed); "
                                      "differences paired by latent"}}
