"""Experiment configs: YAML files read into dataclasses, with unknown keys refused by name.

Each command declares its config as nested dataclasses with defaults. ``load_config`` reads a YAML
file, applies ``key.sub=value`` overrides from the command line, and checks every key, so a typo
such as ``batchsize`` stops the run before it starts instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gandissect.errors import ConfigError


@dataclass
class WandbConfig:
    mode: str = "offline"          # offline (files in the run directory), online, or disabled
    project: str = "gandissect"
    entity: str | None = None

    def __post_init__(self):
        if self.mode not in ("offline", "online", "disabled"):
            raise ConfigError(f"wandb.mode must be offline, online or disabled, got {self.mode!r}")


@dataclass
class TrainerConfig:
    """Passed to ``pytorch_lightning.Trainer`` as they are."""

    max_steps: int = 1000
    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"
    precision: Any = "32-true"
    val_check_interval: int = 500
    log_every_n_steps: int = 25


@dataclass
class SegmenterModelConfig:
    widths: list[int] = field(default_factory=lambda: [32, 64, 96, 128])


@dataclass
class SegmenterDataConfig:
    size: int = 64
    batch_size: int = 32
    train_seed: int = 0
    val_seed: int = 1
    val_length: int = 256
    num_workers: int = 1


@dataclass
class OptimConfig:
    lr: float = 2e-3
    weight_decay: float = 1e-4


@dataclass
class SegmenterTrainConfig:
    name: str = "segmenter"
    seed: int = 0
    resume: bool = True  # continue from runs/<name>/lightning/last.ckpt when an earlier run left one
    model: SegmenterModelConfig = field(default_factory=SegmenterModelConfig)
    data: SegmenterDataConfig = field(default_factory=SegmenterDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class GANModelConfig:
    resolution: int = 64
    latent_dim: int = 128
    g_widths: list[int] = field(default_factory=lambda: [128, 128, 128, 128, 64, 64, 32, 32, 16, 16])
    d_widths: list[int] = field(default_factory=lambda: [16, 16, 32, 32, 64, 64, 128, 128, 128, 128, 128])


@dataclass
class GANDataConfig:
    batch_size: int = 32
    train_seed: int = 0
    num_workers: int = 1


@dataclass
class GANLossConfig:
    r1_gamma: float = 1.0          # R1 penalty on real images (non-saturating loss + R1, as in StyleGAN2)
    r1_interval: int = 4           # lazy regularization: the penalty every r1_interval steps, scaled up to match
    ema_half_life: int = 10000     # images; half-life of the exponential moving average of G's weights
    ema_rampup: float = 0.05       # early on the half-life is at most this fraction of the images seen


@dataclass
class GANOptimConfig:
    g_lr: float = 2e-3
    d_lr: float = 2e-3
    betas: list[float] = field(default_factory=lambda: [0.0, 0.99])


@dataclass
class GANMonitorConfig:
    segmenter: str = "checkpoints/scene_segmenter.safetensors"  # its features give FD-scenes
    fd_every: int = 1000           # steps between FD-scenes evaluations of the EMA generator (0: none)
    fd_n: int = 1000               # generated images per evaluation
    fd_real_n: int = 2000          # real scenes for the reference statistics
    fd_real_seed: int = 2          # a world seed not used for training
    sample_every: int = 500        # steps between logged sample grids (fixed latents)
    sample_n: int = 64
    sample_seed: int = 0
    checkpoint_every: int = 500


@dataclass
class GANTrainConfig:
    name: str = "scene-gan"
    seed: int = 0
    resume: bool = True
    model: GANModelConfig = field(default_factory=GANModelConfig)
    data: GANDataConfig = field(default_factory=GANDataConfig)
    loss: GANLossConfig = field(default_factory=GANLossConfig)
    optim: GANOptimConfig = field(default_factory=GANOptimConfig)
    monitor: GANMonitorConfig = field(default_factory=GANMonitorConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class DemoConfig:
    name: str = "demo"
    segmenter: str = "checkpoints/scene_segmenter.safetensors"
    n: int = 64
    seed: int = 12345
    size: int = 64
    stats_n: int = 500
    generator: str = "checkpoints/scene_gan_generator.safetensors"
    dissect_layer: str = "layer4"
    dissect_n: int = 1000          # latents for the dissection of the shipped GAN (0: skip it)
    ace_config: str | None = "experiments/scenes/ace.yaml"        # the ACE of one class (null: skip it)
    ace_set: list[str] = field(default_factory=list)              # key=value overrides of that config
    repair_config: str | None = "experiments/scenes/repair.yaml"  # the repair with FD (null: skip it)
    repair_set: list[str] = field(default_factory=list)
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class DevicesConfig:
    """Passed to ``pytorch_lightning.Trainer``: ``devices: 2, strategy: ddp`` splits the work over processes."""

    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"


@dataclass
class DissectConfig:
    name: str = "dissect"
    generator: str = "checkpoints/scene_gan_generator.safetensors"
    segmenter: str = "checkpoints/scene_segmenter.safetensors"
    layers: list[str] = field(default_factory=lambda: ["layer4"])
    n: int = 10000                 # seeded latents 0..n-1 of stream `seed`
    seed: int = 0
    batch_size: int = 32
    quantile: float = 0.99         # per-unit threshold: this quantile of the unit's values over all samples
    iou_threshold: float = 0.04    # a unit is interpretable for its best class when IoU > this
    top_k: int = 8                 # top-activating images kept (and drawn) per unit
    save_every: int = 25           # batches between saved tallies (what an interrupted run resumes from)
    resume: bool = True            # continue from runs/<name>/tally.pt when an earlier run left one
    devices: DevicesConfig = field(default_factory=DevicesConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def __post_init__(self):
        if not 0 < self.quantile < 1:
            raise ConfigError(f"quantile must be between 0 and 1, got {self.quantile}")
        if self.n < 1 or self.batch_size < 1 or self.top_k < 1 or self.save_every < 1:
            raise ConfigError("n, batch_size, top_k and save_every must be positive")
        if isinstance(self.layers, str):
            self.layers = [name.strip() for name in self.layers.split(",") if name.strip()]
        if not self.layers:
            raise ConfigError("layers: give at least one layer name")
        if self.devices.strategy in ("ddp_spawn", "ddp_fork", "ddp_notebook", "ddp_spawn_find_unused_parameters_true"):
            raise ConfigError(f"devices.strategy {self.devices.strategy!r} runs the passes in child processes whose "
                              "tallies do not come back; use ddp (run from a script or the command line)")


@dataclass
class AceConfig:
    """``gandissect ace``: which units cause ``class_name`` at ``layer`` (intervention, ACE, removal curves)."""

    name: str = "ace"
    generator: str = "checkpoints/scene_gan_generator.safetensors"
    segmenter: str = "checkpoints/scene_segmenter.safetensors"
    layer: str = "layer4"
    class_name: str = "tree"
    dissection: str = "dissect"    # a run name under runs/ or a run directory holding dissect.json for `layer`
    dissect_n: int = 1000          # latents of the dissection run when `dissection` lacks the layer
    dissect_seed: int = 0
    insertion: str = "mean"        # insertion constant: mean (class-weighted mean of r_u) or quantile (0.99)
    constants_n: int = 1000        # dissection latents the class-weighted means are measured on
    n: int = 500                   # held-out latents for the ACE, the removal curves and the context table
    eval_seed: int = 2             # their latent stream (neither the dissection's nor the optimization's)
    removal_units: int = 30        # removal curves for the top 1..removal_units units
    top_units: int = 20            # units inserted for the context table and the reported ACE
    lam: float = 0.001             # weight of ||alpha||_2^2
    lr: float = 0.01
    steps: int = 500
    batch_size: int = 16
    seed: int = 1                  # latent stream of the optimization batches
    init_units: int = 20           # top IoU units that start at alpha = 1 ...
    init_value: float = 0.05       # ... the others start here
    log_every: int = 10
    devices: DevicesConfig = field(default_factory=DevicesConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def __post_init__(self):
        if self.insertion not in ("mean", "quantile"):
            raise ConfigError(f"insertion must be mean or quantile, got {self.insertion!r}")
        positive = ("dissect_n", "constants_n", "n", "removal_units", "top_units", "steps", "batch_size", "log_every")
        bad = [f"{k}={getattr(self, k)}" for k in positive if not getattr(self, k) >= 1]
        if bad:
            raise ConfigError(f"{', '.join(bad)}: expected a positive integer")
        if not self.lam >= 0 or not self.lr > 0:
            raise ConfigError(f"lam must be >= 0 and lr > 0, got lam={self.lam}, lr={self.lr}")
        if not 0 <= self.init_value <= 1 or self.init_units < 0:
            raise ConfigError(f"init_value must be in [0, 1] and init_units >= 0, got {self.init_value}, "
                              f"{self.init_units}")
        if self.devices.strategy.startswith(("ddp_spawn", "ddp_fork", "ddp_notebook")):
            raise ConfigError(f"devices.strategy {self.devices.strategy!r} is not supported; use ddp")


@dataclass
class ArtifactConfig:
    """How the artifact segmenter is built from the GAN's discriminator (see gandissect.repair)."""

    discriminator: str = "checkpoints/scene_gan_discriminator.safetensors"
    method: str = "gradcam"        # gradcam (of D's fake logit at d_layer) | saliency (input gradient)
    d_layer: str = "layer3"        # the discriminator layer Grad-CAM reads (layer3: 32x32 for a 64px D)
    flag_rate: float = 0.01        # the share of real-image pixels the calibrated threshold flags
    calibration_n: int = 1000      # real scenes the threshold is calibrated on
    calibration_seed: int = 101
    check_n: int = 500             # held-out real scenes on which the flag rate is measured again
    check_seed: int = 102
    finetune_steps: int = 200      # steps of D against the generator being repaired first (0: D as shipped)
    finetune_batch_size: int = 32
    finetune_lr: float = 0.002
    finetune_seed: int = 103

    def __post_init__(self):
        if self.method not in ("gradcam", "saliency"):
            raise ConfigError(f"artifact.method must be gradcam or saliency, got {self.method!r}")
        if not 0 < self.flag_rate < 1:
            raise ConfigError(f"artifact.flag_rate must be between 0 and 1, got {self.flag_rate}")
        if self.calibration_n < 1 or self.check_n < 0 or self.finetune_steps < 0:
            raise ConfigError("artifact.calibration_n must be positive, check_n and finetune_steps not negative")


@dataclass
class PlantConfig:
    """Planted artifacts: units of the repaired layer made to paint a checkerboard blotch where they fire."""

    units: list[int] = field(default_factory=list)   # empty: repair the generator as it is
    quantile: float = 0.97         # a planted unit paints where its upsampled map exceeds this quantile
    calibration_n: int = 512


@dataclass
class RepairConfig:
    name: str = "repair"
    generator: str = "checkpoints/scene_gan_generator.safetensors"
    segmenter: str = "checkpoints/scene_segmenter.safetensors"   # the FD-scenes backbone
    layer: str = "layer4"
    k: int = 0                     # units to ablate; 0: round(4% of the layer's units), as 20 of 512 in the paper
    candidates: int = 0            # units (by artifact IoU) whose causal effect is measured; 0: 4 * k
    dissect_n: int = 1000          # latents of the artifact-class dissection
    dissect_seed: int = 0
    effect_n: int = 256            # latents on which each candidate's ablation effect is measured
    effect_seed: int = 1
    fd_n: int = 10000              # seeded latents every variant draws for its FD
    fd_seed: int = 2
    fd_backbone: str = "auto"      # auto: inception when inception_weights is given, else scenes (FD-scenes)
    inception_weights: str | None = None
    real_n: int = 10000            # real scenes of world real_seed for the real statistics
    real_seed: int = 12345
    real_stats: str | None = None  # an existing pytorch-fid .npz instead (must match the backbone)
    random_draws: int = 3          # random ablations of k units, for the spread FD gains by chance
    random_seed: int = 0
    batch_size: int = 50
    artifact: ArtifactConfig = field(default_factory=ArtifactConfig)
    plant: PlantConfig = field(default_factory=PlantConfig)
    devices: DevicesConfig = field(default_factory=DevicesConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def __post_init__(self):
        if self.k < 0 or self.candidates < 0:
            raise ConfigError("k and candidates must not be negative (0 picks the default)")
        if min(self.dissect_n, self.effect_n, self.fd_n, self.real_n, self.batch_size) < 1:
            raise ConfigError("dissect_n, effect_n, fd_n, real_n and batch_size must be positive")
        if self.random_draws < 1:
            raise ConfigError("random_draws must be at least 1: the random ablations are the repair's control")
        if self.fd_backbone not in ("auto", "scenes", "inception"):
            raise ConfigError(f"fd_backbone must be auto, scenes or inception, got {self.fd_backbone!r}")
        if self.devices.strategy.startswith(("ddp_spawn", "ddp_fork", "ddp_notebook")):
            raise ConfigError(f"devices.strategy {self.devices.strategy!r} runs the FD pass in child processes whose "
                              "results do not come back; use ddp (run from a script or the command line)")


def _from_dict(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown config key {prefix}{unknown[0]}; expected one of: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        key = f"{where}.{name}" if where else name
        kwargs[name] = _from_dict(hint, value, key) if dataclasses.is_dataclass(hint) else value
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{where or 'config'}: {err}") from None


def _set_override(data: dict, assignment: str) -> None:
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like key.sub=value")
    key, raw = assignment.split("=", 1)
    *parents, leaf = key.strip().split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {assignment!r}: {part} is not a section")
    node[leaf] = yaml.safe_load(raw)


def load_config(cls, path: str | Path | None = None, overrides: list[str] = ()):
    """Read ``path`` (YAML) into dataclass ``cls``, then apply ``key=value`` overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML ({str(err).splitlines()[0]})") from None
    for assignment in overrides:
        _set_override(data, assignment)
    try:
        return _from_dict(cls, data, "")
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}" if path else str(err)) from None


def to_dict(config) -> dict:
    return dataclasses.asdict(config)
