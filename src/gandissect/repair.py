"""Repair (GAN Dissection, step 5): find the units that draw artifacts, switch them off, prove it with FD.

1. **Artifact segmenter.** The GAN's discriminator D, optionally fine-tuned for a few hundred steps
   against the generator being repaired, gives a per-pixel fakeness map: Grad-CAM of D's fake logit
   (-D(x)) at an intermediate layer (default), or the input-gradient saliency. A threshold calibrated on
   real scenes flags ``flag_rate`` (1%) of their pixels; what it flags on generated images is the class
   ``artifact``. The segmenter follows the common protocol (``classes``, ``labels``, ``probs``).
2. **Artifact units.** The dissection engine ranks the layer's units by IoU with ``artifact``; the top
   ``candidates`` are then ablated one at a time on held-out latents and re-ranked by how much of the
   flagged area their ablation removes (the causal effect). The k best with a positive effect are chosen.
3. **Proof.** ``RepairModule`` (a LightningModule run by ``Trainer.validate``) draws the same seeded
   latents through the original generator, the repaired one, and ``random_draws`` generators with k
   random units ablated, streaming each into its own Frechet distance against real statistics.
4. **Checkpoint.** Ablating a unit everywhere equals zeroing its output channel's weights and bias, so the
   repaired generator is written as an ordinary checkpoint (``fold_ablation``).

``PlantedArtifacts`` makes a test case with known answers: chosen units paint a checkerboard blotch where
they fire, and the repair must find exactly them.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from gandissect.checkpoint import load_state_checked, read_checkpoint, save_checkpoint
from gandissect.config import DissectConfig, RepairConfig, WandbConfig, to_dict
from gandissect.data import scenes
from gandissect.data.latents import generated_batches, seeded_latents
from gandissect.errors import BadValueError, ConfigError
from gandissect.fid import FrechetDistance, build_fd, feed, load_statistics, save_statistics, scene_batches
from gandissect.intervene import ablate, unit_alpha
from gandissect.io import figure_array, image_grid, save_image, sha256_file, write_json
from gandissect.models.progan import ProGANDiscriminator, ProGANGenerator
from gandissect.nethook import NetHook, UnknownLayerError, layer_names
from gandissect.stats import UnitQuantile, calibrated_edges

ARTIFACT_TINT = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1)  # red, in [-1, 1] image units


# --- the artifact segmenter ---------------------------------------------------------------------------------


class ArtifactSegmenter(nn.Module):
    """Segments generated images into ``artifact`` / not, from a discriminator's per-pixel fakeness map.

    ``fakeness`` needs gradients of D, so it switches autograd on for itself (it works under ``no_grad``,
    not under ``inference_mode``). D's minibatch-stddev layer mixes images in groups of 4, so a map depends
    slightly on the other images of its batch, as D's score does.
    """

    ARCH = "artifact-segmenter"
    classes = ("-", "artifact")
    categories = {"artifact": "artifact"}

    def __init__(self, discriminator: ProGANDiscriminator, method: str = "gradcam", d_layer: str = "layer3"):
        super().__init__()
        if method not in ("gradcam", "saliency"):
            raise BadValueError(f"artifact map method must be gradcam or saliency, got {method!r}")
        if method == "gradcam" and d_layer not in dict(discriminator.named_modules()):
            raise UnknownLayerError(f"unknown discriminator layer {d_layer!r}; it has: "
                                    f"{', '.join(layer_names(discriminator))}")
        self.discriminator = discriminator.eval().requires_grad_(False)
        self.method, self.d_layer = method, d_layer
        self.register_buffer("threshold", torch.tensor(float("nan")))

    def config(self) -> dict:
        return {"discriminator": self.discriminator.config(), "method": self.method, "d_layer": self.d_layer}

    def fakeness(self, images: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """(N, H, W) non-negative map: how much each pixel's region pushes D towards 'fake'."""
        with torch.enable_grad():
            # keep the caller's graph only when a differentiable result is asked for and there is one to keep
            x = images if create_graph and images.requires_grad else images.detach().requires_grad_(True)
            if self.method == "saliency":
                grad, = torch.autograd.grad(-self.discriminator(x).sum(), x, create_graph=create_graph)
                return F.avg_pool2d(grad.abs().sum(dim=1, keepdim=True), 5, stride=1, padding=2)[:, 0]
            with NetHook(self.discriminator, [self.d_layer]) as hook:
                fake_logit = -hook(x)
                features = hook.retained[self.d_layer]
            grad, = torch.autograd.grad(fake_logit.sum(), features, create_graph=create_graph)
            cam = F.relu((grad.mean(dim=(2, 3), keepdim=True) * features).sum(dim=1, keepdim=True))
            return F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]

    def _check_calibrated(self) -> None:
        if torch.isnan(self.threshold):
            raise BadValueError("the artifact segmenter is not calibrated yet: call calibrate() on real images")

    def labels(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) int64: 1 where the map exceeds the calibrated threshold (``artifact``), else 0."""
        self._check_calibrated()
        return (self.fakeness(images) > self.threshold).long().unsqueeze(1).detach()

    def probs(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 2, H, W) differentiable: a logistic ramp around the threshold, 1/8 of it wide."""
        self._check_calibrated()
        scale = self.threshold.clamp_min(1e-12) / 8
        p = torch.sigmoid((self.fakeness(images, create_graph=True) - self.threshold) / scale).unsqueeze(1)
        return torch.cat([1 - p, p], dim=1)

    def calibrate(self, real_batches, flag_rate: float, total: int | None = None) -> float:
        """Set the threshold to the (1 - flag_rate) quantile of the map over real images' pixels."""
        sketch = None
        for images in tqdm(real_batches, total=total, desc="calibrate artifact threshold", unit="batch",
                           leave=False):
            values = self.fakeness(images).detach().unsqueeze(1)  # (N, 1, H, W): one "unit"
            if sketch is None:  # bins focused around the wanted quantile, from the first batch
                sketch = UnitQuantile(calibrated_edges(values, 1024, 1 - flag_rate), 1 - flag_rate)
            sketch.update(values)
        self.threshold.fill_(float(sketch.compute().reshape(-1)[0]))
        return float(self.threshold)

    @torch.no_grad()
    def flag_rate(self, batches) -> float:
        """The share of pixels flagged over ``batches`` of images."""
        flagged = total = 0
        for images in batches:
            labels = self.labels(images)
            flagged, total = flagged + int(labels.sum()), total + labels.numel()
        return flagged / max(total, 1)

    def save(self, path: str | Path) -> Path:
        return save_checkpoint(path, self.ARCH, self.config(), self.state_dict())

    @classmethod
    def load(cls, path: str | Path) -> "ArtifactSegmenter":
        config, tensors = read_checkpoint(path, cls.ARCH)
        model = cls(ProGANDiscriminator(**config["discriminator"]), config["method"], config["d_layer"])
        load_state_checked(model, tensors, str(path))
        return model.eval()


def finetune_discriminator(discriminator: ProGANDiscriminator, generator: nn.Module, steps: int, batch_size: int,
                           lr: float, seed: int, r1_gamma: float = 1.0, r1_interval: int = 4) -> ProGANDiscriminator:
    """A copy of D trained ``steps`` more steps (non-saturating loss, lazy R1, as in training) against the
    frozen generator, on real scenes of world ``seed``. A GAN's D at equilibrium is weak; this sharpens it
    on the generator being repaired."""
    D = copy.deepcopy(discriminator).train().requires_grad_(True)
    optimizer = torch.optim.Adam(D.parameters(), lr=lr, betas=(0.0, 0.99))
    real_scenes = scenes.SceneDataset(seed, steps * batch_size, generator.resolution)
    for step in tqdm(range(steps), desc="fine-tune discriminator", unit="step", leave=False):
        real = torch.stack([real_scenes[step * batch_size + i][0] for i in range(batch_size)])
        with torch.no_grad():
            fake = generator(seeded_latents(seed, batch_size, generator.latent_dim, step * batch_size)).clamp(-1, 1)
        regularize = r1_gamma > 0 and step % r1_interval == 0
        real.requires_grad_(regularize)
        real_logits = D(real)
        loss = F.softplus(D(fake)).mean() + F.softplus(-real_logits).mean()
        if regularize:
            grad, = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
            loss = loss + 0.5 * r1_gamma * r1_interval * grad.pow(2).sum(dim=(1, 2, 3)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return D.eval().requires_grad_(False)


def build_artifact_segmenter(cfg: RepairConfig, generator: nn.Module) -> tuple[ArtifactSegmenter, dict]:
    """Fine-tune (optionally) and calibrate the artifact segmenter; returns it with a record of how."""
    from gandissect.models.progan import load_discriminator

    a = cfg.artifact
    start = time.perf_counter()
    D = load_discriminator(a.discriminator)
    if a.finetune_steps:
        D = finetune_discriminator(D, generator, a.finetune_steps, a.finetune_batch_size, a.finetune_lr,
                                   a.finetune_seed)
    segmenter = ArtifactSegmenter(D, a.method, a.d_layer)
    size = generator.resolution
    batches = math.ceil(a.calibration_n / cfg.batch_size)
    threshold = segmenter.calibrate(scene_batches(a.calibration_seed, a.calibration_n, size, cfg.batch_size),
                                    a.flag_rate, total=batches)
    record = {"discriminator": a.discriminator, "discriminator_sha256": sha256_file(a.discriminator),
              "method": a.method, "d_layer": a.d_layer if a.method == "gradcam" else None,
              "finetune_steps": a.finetune_steps, "threshold": threshold, "target_flag_rate": a.flag_rate,
              "calibration": {"n": a.calibration_n, "seed": a.calibration_seed,
                              "flag_rate": segmenter.flag_rate(scene_batches(a.calibration_seed, a.calibration_n,
                                                                             size, cfg.batch_size))}}
    if a.check_n:
        record["held_out"] = {"n": a.check_n, "seed": a.check_seed,
                              "flag_rate": segmenter.flag_rate(scene_batches(a.check_seed, a.check_n, size,
                                                                             cfg.batch_size))}
    record["build_s"] = round(time.perf_counter() - start, 1)
    return segmenter, record


# --- planted artifacts ----------------------------------------------------------------------------------------


def checkerboard(size: int) -> torch.Tensor:
    """(3, size, size) a one-pixel magenta/green checkerboard in [-1, 1]: as high-frequency as an image gets."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    sign = ((yy + xx) % 2).float() * 2 - 1
    return torch.stack([sign, -sign, sign])


class PlantedArtifacts(ProGANGenerator):
    """A ProGAN generator whose ``units`` of ``layer`` paint a checkerboard blotch where they fire.

    A unit fires where its map, upsampled bilinearly to the image, exceeds its ``quantile`` (measured on
    ``calibration_n`` latents of stream 0); the blotch fades in over half a threshold above that. Ablating
    the planted units (or folding their ablation into the weights) removes the blotches.
    """

    def __init__(self, generator: ProGANGenerator, layer: str, units: list[int], quantile: float = 0.97,
                 calibration_n: int = 512):
        super().__init__(**generator.config())
        self.load_state_dict(generator.state_dict())
        self.eval()
        if layer not in self.layer_names:
            raise UnknownLayerError(f"unknown layer {layer!r}; this generator has: {', '.join(self.layer_names)}")
        width = getattr(self, layer).conv.out_channels
        bad = [u for u in units if not 0 <= u < width]
        if bad or not units:
            raise BadValueError(f"planted units must be distinct units 0..{width - 1} of {layer}; got {units}")
        self.planted_layer = layer
        self.register_buffer("planted_units", torch.tensor(sorted(set(units))))
        self.register_buffer("planted_thresholds", torch.zeros(len(self.planted_units)))
        self.register_buffer("pattern", checkerboard(self.resolution))
        with torch.no_grad():
            maps = self._upsampled(self._layer_output(seeded_latents(0, calibration_n, self.latent_dim)))
        values = maps.transpose(0, 1).flatten(1)
        self.planted_thresholds.copy_(torch.quantile(values[:, :: max(1, values.shape[1] // 2 ** 23)], quantile,
                                                     dim=1).clamp_min(1e-3))

    def _layer_output(self, z: torch.Tensor) -> torch.Tensor:
        with NetHook(self, [self.planted_layer], stop_after=self.planted_layer) as hook:
            hook(z)
            return hook.retained[self.planted_layer]

    def _upsampled(self, r: torch.Tensor) -> torch.Tensor:
        return F.interpolate(r[:, self.planted_units], size=self.resolution, mode="bilinear", align_corners=False)

    def _paint(self, r: torch.Tensor) -> torch.Tensor:
        t = self.planted_thresholds.view(1, -1, 1, 1)
        return ((self._upsampled(r) - t) / (0.5 * t)).clamp(0, 1).amax(dim=1, keepdim=True)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z.view(z.shape[0], -1, 1, 1) if z.ndim == 2 else z
        paint = None
        for name in self.layer_names:
            x = getattr(self, name)(x)
            if name == self.planted_layer:
                paint = self._paint(x)
        return x * (1 - paint) + paint * self.pattern

    @torch.no_grad()
    def paint(self, z: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) in [0, 1]: how much of each pixel the blotches cover."""
        return self._paint(self._layer_output(z))

    def planted_mask(self, z: torch.Tensor) -> torch.Tensor:
        """(N, H, W) bool: where the blotch covers at least half of a pixel."""
        return self.paint(z)[:, 0] > 0.5


# --- artifact units --------------------------------------------------------------------------------------------


def fold_ablation(generator: nn.Module, layer: str, units: list[int]) -> nn.Module:
    """A copy of ``generator`` whose ``layer`` outputs exactly 0 at ``units``: their conv weights and bias are
    zeroed, which equals ablating them everywhere (LeakyReLU(0) = 0)."""
    folded = copy.deepcopy(generator)
    block = dict(folded.named_modules()).get(layer)
    if block is None:
        raise UnknownLayerError(f"unknown layer {layer!r}; this model has: {', '.join(layer_names(generator))}")
    conv = getattr(block, "conv", block)
    bias = block.wscale.b if hasattr(block, "wscale") else getattr(conv, "bias", None)
    if not isinstance(conv, nn.Conv2d) or not isinstance(getattr(block, "activation", True), bool):
        raise BadValueError(f"cannot fold an ablation into {layer!r} ({type(block).__name__}): expected a ProGAN "
                            "block or a Conv2d whose output is the layer's output")
    with torch.no_grad():
        index = torch.tensor(units, dtype=torch.long)
        conv.weight[index] = 0
        if bias is not None:
            bias[index] = 0
    return folded


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
        from gandissect.dissect import LatentBatches

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


def real_statistics(cfg: RepairConfig, fd: FrechetDistance, size: int,
                    run_dir: Path) -> tuple[np.ndarray, np.ndarray, int | None]:
    """The real side: ``cfg.real_stats`` if given, else ``size``-pixel scenes of world ``real_seed``, cached in
    the run under a name that records the metric, its weights, the size and the scenes."""
    backbone_file = cfg.inception_weights if fd.backbone == "inception" else cfg.segmenter
    weights = sha256_file(backbone_file)[:12] if backbone_file else "pytorch-fid"  # None: pytorch-fid's own cache
    cached = f"real_stats_{fd.name}_{size}px_seed{cfg.real_seed}_n{cfg.real_n}_{weights}.npz"
    path = Path(cfg.real_stats) if cfg.real_stats else run_dir / cached
    if not path.is_file() and cfg.real_stats is None:
        # under ddp each process feeds its share of the scenes, and the metric sums the statistics over processes
        share = _rank_and_world()
        metric = FrechetDistance(fd.backbone, fd.num_features, name=fd.name)
        if share[1] > 1 and torch.distributed.get_backend() == "nccl":  # NCCL gathers CUDA tensors only
            metric = metric.to(torch.device("cuda", torch.cuda.current_device()))
        feed(metric, scene_batches(cfg.real_seed, cfg.real_n, size, cfg.batch_size, share), real=True,
             total=len(range(share[0], cfg.real_n, share[1])), desc=f"real statistics ({fd.name})")
        mu, sigma = metric.statistics(real=True)
        if share[0] == 0:
            save_statistics(path, mu, sigma, name=fd.name, count=cfg.real_n)
        _barrier()  # the other processes read what rank 0 wrote
    stats = load_statistics(path)
    if stats["name"] not in (None, fd.name):
        raise ConfigError(f"real_stats {path} holds {stats['name']} statistics; this repair measures {fd.name}")
    return stats["mu"], stats["sigma"], stats["count"]


# --- the run ------------------------------------------------------------------------------------------------------


def _rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 outside a ddp run)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _barrier() -> None:
    if _rank_and_world()[1] > 1:
        torch.distributed.barrier()


def _from_all_ranks(mine: dict) -> dict:
    """The union of every process's dict (each process measured its own share of the work)."""
    if _rank_and_world()[1] == 1:
        return mine
    gathered = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, mine)
    return {k: v for part in gathered for k, v in part.items()}


def _fd_backbone(cfg: RepairConfig) -> str:
    if cfg.fd_backbone == "auto":
        return "inception" if cfg.inception_weights else "scenes"
    return cfg.fd_backbone


def _artifact_segmenter(cfg: RepairConfig, generator: nn.Module, generator_id: str,
                        run_dir: Path) -> tuple[ArtifactSegmenter, dict]:
    """Build the artifact segmenter, or reuse the one an earlier run with the same settings saved."""
    import json

    path, record_path = run_dir / "artifact_segmenter.safetensors", run_dir / "artifact_segmenter.json"
    key = {"artifact": to_dict(cfg.artifact), "discriminator_sha256": sha256_file(cfg.artifact.discriminator),
           "generator": generator_id, "plant": to_dict(cfg.plant), "batch_size": cfg.batch_size}
    if path.is_file() and record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("key") == key:
            return ArtifactSegmenter.load(path), record
    segmenter, record = build_artifact_segmenter(cfg, generator)
    segmenter.save(path)
    record["key"] = key
    write_json(record_path, record)
    return segmenter, record


def _dissect_artifacts(cfg: RepairConfig, generator: nn.Module, segmenter: ArtifactSegmenter, segmenter_key: dict,
                       run_dir: Path) -> dict:
    """The dissection of the artifact class at ``cfg.layer``; an interrupted one is resumed, one made with other
    settings (another artifact segmenter, n, seed or layer) is started over."""
    import json

    from gandissect.dissect import run_dissection

    dissect_dir = run_dir / "dissect"
    key = {"artifact_segmenter": segmenter_key, "layer": cfg.layer, "n": cfg.dissect_n, "seed": cfg.dissect_seed}
    key_path = dissect_dir / "repair_key.json"
    if not key_path.is_file() or json.loads(key_path.read_text()) != key:
        (dissect_dir / "tally.pt").unlink(missing_ok=True)  # a tally of other settings: this run's own cache
        dissect_dir.mkdir(parents=True, exist_ok=True)
        write_json(key_path, key)
    dcfg = DissectConfig(name=f"{cfg.name}-artifact-dissection", generator=cfg.generator,
                         segmenter=str(run_dir / "artifact_segmenter.safetensors"), layers=[cfg.layer],
                         n=cfg.dissect_n, seed=cfg.dissect_seed, resume=True, devices=cfg.devices,
                         wandb=WandbConfig(mode="disabled"))  # one W&B run per repair: the repair's own
    result = run_dissection(dcfg, run_dir=dissect_dir, generator=generator, segmenter=segmenter)
    _barrier()
    if not result:  # a ddp process other than rank 0: read what rank 0 wrote
        result = json.loads((run_dir / "dissect" / "dissect.json").read_text())
    return result["layers"][cfg.layer]


def run_repair(cfg: RepairConfig, run_dir: Path | None = None, generator: nn.Module | None = None) -> dict:
    """Find ``cfg.layer``'s artifact units, ablate them, and compare FDs; writes the run directory."""
    from gandissect.dissect import layer_shapes, module_digest
    from gandissect.models.progan import load_generator
    from gandissect.runs import runs_root, start_run
    from gandissect.train import machine_description

    start = time.perf_counter()
    run_dir = Path(run_dir) if run_dir is not None else runs_root() / cfg.name
    generator_id = sha256_file(cfg.generator) if generator is None else f"module {module_digest(generator)}"
    base = load_generator(cfg.generator) if generator is None else generator.eval()
    width = layer_shapes(base, [cfg.layer])[cfg.layer][0]  # also refuses an unknown layer, listing the layers
    k = cfg.k or default_k(width)
    if 2 * k > width:
        raise ConfigError(f"k={k} of {cfg.layer}'s {width} units: the random draws need k units outside the chosen "
                          f"ones; use k <= {width // 2}")
    if cfg.candidates and cfg.candidates < k:
        raise ConfigError(f"candidates={cfg.candidates} < k={k}: k units are chosen among the candidates")
    candidates = min(width, cfg.candidates or 4 * k)
    planted = cfg.plant.units
    generator = PlantedArtifacts(base, cfg.layer, planted, cfg.plant.quantile, cfg.plant.calibration_n) \
        if planted else base
    if planted:
        generator_id = f"{generator_id}, planted units {sorted(set(planted))} of {cfg.layer}"
    backbone = _fd_backbone(cfg)
    fd = build_fd(backbone, weights=cfg.inception_weights if backbone == "inception" else None,
                  segmenter_path=cfg.segmenter)
    start_run(cfg.name, cfg, root=run_dir)
    seconds = {}  # wall time of each phase
    clock = time.perf_counter()

    def lap(phase: str) -> None:
        nonlocal clock
        seconds[phase], clock = round(time.perf_counter() - clock, 1), time.perf_counter()

    artifact_segmenter, artifact_record = _artifact_segmenter(cfg, generator, generator_id, run_dir)
    lap("artifact_segmenter_s")
    layer = _dissect_artifacts(cfg, generator, artifact_segmenter, artifact_record["key"], run_dir)
    lap("artifact_dissection_s")
    iou = layer["iou_by_class"]["artifact"]
    by_iou = sorted(range(width), key=lambda u: (-iou[u], u))

    def flagged(units: list[int], seed: int = cfg.effect_seed) -> float:
        return artifact_fraction(generator, artifact_segmenter, cfg.layer, units, width, seed, cfg.effect_n,
                                 cfg.batch_size)

    # the original and each candidate ablated alone; under ddp each process measures its share (the processes
    # exist since the dissection), and all of them then choose the same units from the same gathered numbers
    rank, world = _rank_and_world()
    ablations = [()] + [(u,) for u in by_iou[:candidates]]
    measured = _from_all_ranks({units: flagged(list(units)) for units in tqdm(
        ablations[rank::world], desc="ablation effect of candidates", unit="ablation", leave=False)})
    selection = {"seed": cfg.effect_seed, "n": cfg.effect_n, "original": measured[()]}
    effects = {u: selection["original"] - measured[(u,)] for u in by_iou[:candidates]}
    chosen = choose_units(iou, effects, k)
    rng = np.random.default_rng(cfg.random_seed)
    others = [u for u in range(width) if u not in chosen]
    random_sets = [sorted(rng.choice(others, size=len(chosen), replace=False).tolist())
                   for _ in range(cfg.random_draws)] if chosen else []
    variants = {"original": [], **({"repaired": chosen} if chosen else {}),
                **{f"random{i}": units for i, units in enumerate(random_sets)}}
    lap("unit_effects_s")

    if world > 1 and math.ceil(cfg.fd_n / cfg.batch_size) < world:
        raise ConfigError(f"fd_n={cfg.fd_n} in batches of {cfg.batch_size} leaves some of the {world} processes "
                          "without a batch; use fd_n >= batch_size * processes")
    real = real_statistics(cfg, fd, generator.resolution, run_dir)
    lap("real_statistics_s")
    module = RepairModule(generator, cfg.layer, width, variants, fd, real, cfg.fd_seed, cfg.fd_n, cfg.batch_size)
    d = cfg.devices
    trainer = pl.Trainer(accelerator=d.accelerator, devices=d.devices, strategy=d.strategy, logger=False,
                         enable_checkpointing=False, enable_model_summary=False, use_distributed_sampler=False,
                         default_root_dir=str(run_dir), callbacks=[RepairProgressBar()])
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
        "settings": {"generator": cfg.generator, "generator_id": generator_id, "layer": cfg.layer,
                     "units_in_layer": width, "k": k, "candidates": candidates,
                     "k_rule": "k (default round(4% of the layer's units)) units with the largest positive causal "
                               "effect among the top `candidates` units by IoU with the artifact class",
                     "planted_units": planted or None},
        "artifact_segmenter": {k_: v for k_, v in artifact_record.items() if k_ != "key"},
        "ranking": [{"unit": u, "iou": round(iou[u], 6), "effect": round(effects[u], 6) if u in effects else None}
                    for u in by_iou],
        "chosen_units": chosen,
        "random_units": random_sets,
        "artifact_fraction": fraction,
        "fd": {"name": fd.name, "backbone": backbone, "n": cfg.fd_n, "seed": cfg.fd_seed,
               "real": {"n": real[2], "seed": cfg.real_seed if cfg.real_stats is None else None,
                        "stats": cfg.real_stats},
               "original": values["original"], "repaired": values.get("repaired"),
               "random": random_fd,
               "random_mean": float(np.mean(random_fd)) if random_fd else None,
               "random_std": float(np.std(random_fd, ddof=1)) if len(random_fd) > 1 else None},
        "timing": {**seconds, "machine": machine_description(), "processes": trainer.world_size},
    }
    if planted:
        result["planted"] = planted_recovery(planted, by_iou, chosen, effects, k)
    result["checkpoint"] = _save_repaired(generator, cfg.layer, width, chosen, run_dir, planted)
    _write_pictures(generator, artifact_segmenter, cfg, width, chosen, random_sets, run_dir)
    lap("fractions_checkpoint_pictures_s")
    result["timing"]["wall_s"] = round(time.perf_counter() - start, 1)
    write_json(run_dir / "repair.json", result)
    write_repair_report(run_dir, result, layer)
    log_to_wandb(run_dir, cfg, result)
    return result


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


# --- pictures, report, W&B --------------------------------------------------------------------------------------

SHOWN = 12  # latents of the FD stream shown in the before/after pictures


def overlay(images: torch.Tensor, flagged: torch.Tensor) -> torch.Tensor:
    """Images with their flagged pixels (N, 1, H, W) tinted red."""
    return torch.where(flagged.bool(), 0.4 * images + 0.6 * ARTIFACT_TINT, images)


def _write_pictures(generator, artifact_segmenter, cfg: RepairConfig, width: int, chosen: list[int],
                    random_sets: list[list[int]], run_dir: Path) -> None:
    z = seeded_latents(cfg.fd_seed, SHOWN, generator.latent_dim)
    with torch.no_grad():
        original = generator(z).clamp(-1, 1)
        rows = [original]
        if chosen:
            rows += [ablate(generator, cfg.layer, z, units, width) for units in (chosen, random_sets[0])]
    save_image(run_dir / "before_after.png", image_grid(scenes.to_uint8(torch.cat(rows)), columns=SHOWN), scale=2)
    marked = [overlay(images, artifact_segmenter.labels(images)) for images in rows[:2]]
    save_image(run_dir / "artifacts.png", image_grid(scenes.to_uint8(torch.cat([original, *marked])),
                                                     columns=SHOWN), scale=2)


def fd_chart(fd: dict) -> np.ndarray:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, values, colors = ["original"], [fd["original"]], ["#888888"]
    if fd["repaired"] is not None:
        names += ["repaired", f"random (n={len(fd['random'])})"]
        values += [fd["repaired"], fd["random_mean"]]
        colors += ["#55a868", "#c44e52"]
    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=100)
    ax.bar(names, values, color=colors)
    if fd["random"]:
        ax.errorbar([2], [fd["random_mean"]], yerr=[fd["random_std"] or 0], color="black", capsize=6)
        ax.scatter([2] * len(fd["random"]), fd["random"], color="black", s=10, zorder=3)
    ax.set_ylabel(f"{fd['name']} (lower is better)")
    ax.set_title(f"{fd['name']} over {fd['n']} latents")
    fig.tight_layout()
    picture = figure_array(fig)
    plt.close(fig)
    return picture


def write_repair_report(run_dir: Path, result: dict, layer: dict) -> None:
    from gandissect.report.html import picture, table, write_report

    fd, art, s = result["fd"], result["artifact_segmenter"], result["settings"]
    save_image(run_dir / "fd_chart.png", fd_chart(fd))
    rows = [["original", fd["original"], result["artifact_fraction"]["original"]]]
    if fd["repaired"] is not None:
        f = result["artifact_fraction"]
        rows += [["repaired", fd["repaired"], f["repaired"]],
                 *[[f"random {i} (units {units})", v, f["random"][i]]
                   for i, (units, v) in enumerate(zip(result["random_units"], fd["random"]))],
                 [f"random: mean +- std over {len(fd['random'])}",
                  f"{fd['random_mean']:.4f} +- {fd['random_std'] or 0:.4f}", float(np.mean(f["random"]))]]
    details = {u["unit"]: u for u in layer["units_detail"]}
    unit_rows = [[r["unit"], r["iou"], r["effect"], "yes" if r["unit"] in result["chosen_units"] else "",
                  picture(f"dissect/{details[r['unit']]['strip']}", width=560)]
                 for r in result["ranking"][:s["candidates"]]]
    held = art.get("held_out", {})
    sections = [
        ("Result", f"<p>{len(result['chosen_units'])} of {s['units_in_layer']} units of <code>{s['layer']}</code> "
                   f"ablated. {fd['name']} over {fd['n']} seeded latents against {fd['real']['n']} real scenes "
                   "(every generator draws the same latents):</p>"
                   + table(["generator", fd["name"], f"flagged pixels ({result['artifact_fraction']['n']} latents)"],
                           rows)
                   + picture("fd_chart.png", "Frechet distance: original, repaired, random ablations of as many "
                                             "units")),
        ("Before and after", picture("before_after.png", "rows: original, repaired, random ablation (same latents)")),
        ("Artifact maps", picture("artifacts.png", "rows: original; original with flagged pixels in red; repaired "
                                                   "with flagged pixels in red")
         + f"<p>Flagged: {art['method']} of the discriminator's fake logit"
           f"{' at ' + art['d_layer'] if art['d_layer'] else ''} after {art['finetune_steps']} fine-tuning steps, "
           f"above {art['threshold']:.4g}, calibrated to flag {art['target_flag_rate']:.2%} of real pixels "
           f"(measured: {art['calibration']['flag_rate']:.3%} on the {art['calibration']['n']} calibration scenes"
           + (f", {held['flag_rate']:.3%} on {held['n']} held-out scenes" if held else "") + ").</p>"),
        ("Units", f"<p>Rule: {s['k_rule']}. Top {s['candidates']} units by IoU with <i>artifact</i> "
                  "(effect = drop in the flagged share when that unit alone is ablated); full artifact dissection: "
                  "<a href='dissect/index.html'>dissect/</a>.</p>"
         + table(["unit", "IoU with artifact", "effect", "chosen", "top images (region outlined)"], unit_rows)),
    ]
    if "planted" in result:
        p = result["planted"]
        sections.insert(1, ("Planted artifacts", f"<p>Planted units {p['units']}: chosen {p['chosen']['units']} "
                            f"(precision {p['chosen']['precision']}, recall {p['chosen']['recall']}).</p>"))
    checkpoint = result["checkpoint"]
    link = (f"<a href='{checkpoint['path']}'>{checkpoint['path']}</a> (sha256 {checkpoint['sha256'][:16]}...)"
            if checkpoint.get("path") else checkpoint.get("note", ""))
    sections.append(("Files", f"<p>Numbers: <a href='repair.json'>repair.json</a>; repaired generator: {link}; "
                              "settings: <a href='config.yaml'>config.yaml</a>.</p>"))
    write_report(run_dir / "index.html", f"gandissect repair: {s['layer']} of {s['generator']}", sections)


def log_to_wandb(run_dir: Path, cfg: RepairConfig, result: dict) -> None:
    from gandissect.runs import wandb_run

    run = wandb_run(run_dir, cfg.wandb, cfg.name, to_dict(cfg))
    if run is None:
        return
    import wandb

    fd = result["fd"]
    logged = {f"fd/{name}": value for name, value in (("original", fd["original"]), ("repaired", fd["repaired"]),
                                                      ("random_mean", fd["random_mean"]),
                                                      ("random_std", fd["random_std"])) if value is not None}
    logged.update({f"artifact_fraction/{k}": v for k, v in result["artifact_fraction"].items()
                   if k in ("original", "repaired")})
    logged["units"] = wandb.Table(columns=["unit", "iou", "effect", "chosen"],
                                  data=[[r["unit"], r["iou"], r["effect"], r["unit"] in result["chosen_units"]]
                                        for r in result["ranking"][:result["settings"]["candidates"]]])
    for name in ("before_after", "artifacts", "fd_chart"):
        logged[f"images/{name}"] = wandb.Image(str(run_dir / f"{name}.png"))
    run.log(logged)
    run.finish()
