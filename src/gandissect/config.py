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
