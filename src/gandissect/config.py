"""Experiment configs: typed dataclasses read with OmegaConf (YAML plus ``key.sub=value`` overrides).

Each command declares its config as nested dataclasses with defaults. ``load_config`` merges a YAML file and the
command line's overrides onto that schema: values are checked and converted against the type hints
(``--set optim.lr=1e-3`` is a float, ``--set n=abc`` is refused), unknown keys are refused by name, and each
dataclass checks its own ranges in ``__post_init__``. Every problem is one ConfigError line.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from gandissect import defaults
from gandissect.errors import ConfigError

CHILD_PROCESS_STRATEGIES = ("ddp_spawn", "ddp_fork", "ddp_notebook")


def _positive(config, *names: str) -> None:
    bad = [f"{name}={getattr(config, name)}" for name in names if not getattr(config, name) >= 1]
    if bad:
        raise ConfigError(f"{', '.join(bad)}: expected a positive integer")


def _at_least_zero(config, *names: str) -> None:
    bad = [f"{name}={getattr(config, name)}" for name in names if not getattr(config, name) >= 0]
    if bad:
        raise ConfigError(f"{', '.join(bad)}: expected a number >= 0")


def _above_zero(config, *names: str) -> None:
    bad = [f"{name}={getattr(config, name)}" for name in names if not getattr(config, name) > 0]
    if bad:
        raise ConfigError(f"{', '.join(bad)}: expected a number > 0")


def _variant(config, name: str = "variant") -> None:
    if getattr(config, name) not in defaults.WORLD_VARIANTS:
        raise ConfigError(f"{name}={getattr(config, name)!r}: expected a world variant, one of "
                          f"{', '.join(defaults.WORLD_VARIANTS)}")


MAX_SEED = 2 ** 32 - 1  # world seeds go to numpy (non-negative only), latent seeds into torch's 64-bit seeds


def check_seed(name: str, value: int) -> None:
    if not 0 <= value <= MAX_SEED:
        raise ConfigError(f"{name}={value}: expected a seed from 0 to {MAX_SEED}")


def _check_seeds(config, prefix: str = "") -> None:
    """Every ``seed`` / ``*_seed`` value of a config and its sections."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            _check_seeds(value, f"{prefix}{f.name}.")
        elif (f.name == "seed" or f.name.endswith("_seed")) and isinstance(value, int):
            check_seed(prefix + f.name, value)


def check_run_name(name: str) -> None:
    if not name or not name.strip() or "/" in name or name in (".", ".."):
        raise ConfigError(f"name={name!r}: expected a run name (a folder name under runs/, not empty, no '/')")


@dataclass
class WandbConfig:
    mode: str = "offline"          # offline (files in the run directory), online, or disabled
    project: str = "gandissect"
    entity: str | None = None
    group: str | None = None       # runs to compare side by side; null: the generator's name, else the run's name

    def __post_init__(self):
        if self.mode not in ("offline", "online", "disabled"):
            raise ConfigError(f"wandb.mode must be offline, online or disabled, got {self.mode!r}")


@dataclass
class DevicesConfig:
    """Where a command runs, passed to ``pytorch_lightning.Trainer`` by ``core.distributed.build_trainer``:
    ``devices: 2, strategy: ddp`` splits the work over two processes, ``num_nodes`` over machines."""

    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: Any = "32-true"

    def __post_init__(self):
        if self.strategy.startswith(CHILD_PROCESS_STRATEGIES):
            raise ConfigError(f"devices.strategy {self.strategy!r} runs the work in child processes whose results "
                              "do not come back; use ddp (run from a script or the command line)")
        _positive(self, "num_nodes")


@dataclass
class TrainerConfig:
    """Steps and logging of a training run (where it runs: ``devices``)."""

    max_steps: int = 1000
    val_check_interval: int = 500
    log_every_n_steps: int = 25

    def __post_init__(self):
        _positive(self, "max_steps", "val_check_interval", "log_every_n_steps")


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

    def __post_init__(self):
        _positive(self, "batch_size", "val_length")
        _at_least_zero(self, "num_workers")


@dataclass
class OptimConfig:
    lr: float = 2e-3
    weight_decay: float = 1e-4

    def __post_init__(self):
        _above_zero(self, "lr")
        _at_least_zero(self, "weight_decay")


@dataclass
class SegmenterTrainConfig:
    name: str = "segmenter"
    seed: int = 0
    resume: bool = True  # continue from runs/<name>/lightning/last.ckpt when an earlier run left one
    model: SegmenterModelConfig = field(default_factory=SegmenterModelConfig)
    data: SegmenterDataConfig = field(default_factory=SegmenterDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    devices: DevicesConfig = field(default_factory=DevicesConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def __post_init__(self):
        check_run_name(self.name)


@dataclass
class GANModelConfig:
    arch: str = "progan"           # progan | stylegan2
    resolution: int = 64
    latent_dim: int = 128
    # progan: the channels of each generator / discriminator layer; stylegan2: of each resolution 4, 8, .., R
    g_widths: list[int] = field(default_factory=lambda: [128, 128, 128, 128, 64, 64, 32, 32, 16, 16])
    d_widths: list[int] = field(default_factory=lambda: [16, 16, 32, 32, 64, 64, 128, 128, 128, 128, 128])
    n_mlp: int = 8                 # stylegan2: layers of the mapping network

    def __post_init__(self):
        if self.arch not in ("progan", "stylegan2"):
            raise ConfigError(f"model.arch={self.arch!r}: expected progan or stylegan2")
        _positive(self, "n_mlp")


@dataclass
class GANDataConfig:
    batch_size: int = 32
    train_seed: int = 0
    num_workers: int = 1
    variant: str = "default"       # the world's variant (default, town, wild); also of the FD monitor's real scenes

    def __post_init__(self):
        _positive(self, "batch_size")
        _variant(self)
        _at_least_zero(self, "num_workers")


@dataclass
class GANLossConfig:
    r1_gamma: float = 1.0          # R1 penalty on real images (non-saturating loss + R1, as in StyleGAN2)
    r1_interval: int = 4           # lazy regularization: the penalty every r1_interval steps, scaled up to match
    ema_half_life: int = 10000     # images; half-life of the exponential moving average of G's weights
    ema_rampup: float = 0.05       # early on the half-life is at most this fraction of the images seen

    def __post_init__(self):
        _positive(self, "r1_interval")
        _above_zero(self, "ema_half_life")
        _at_least_zero(self, "r1_gamma", "ema_rampup")


@dataclass
class GANOptimConfig:
    g_lr: float = 2e-3
    d_lr: float = 2e-3
    betas: list[float] = field(default_factory=lambda: [0.0, 0.99])

    def __post_init__(self):
        _above_zero(self, "g_lr", "d_lr")
        if len(self.betas) != 2 or not all(0 <= beta < 1 for beta in self.betas):
            raise ConfigError(f"betas={list(self.betas)}: expected two numbers in [0, 1)")


@dataclass
class GANMonitorConfig:
    segmenter: str = defaults.SCENE_SEGMENTER  # its features give FD-scenes
    fd_every: int = 1000           # steps between FD-scenes evaluations of the EMA generator (0: none)
    fd_n: int = 1000               # generated images per evaluation
    fd_real_n: int = 2000          # real scenes for the reference statistics
    fd_real_seed: int = 2          # a world seed not used for training
    sample_every: int = 500        # steps between logged sample grids (fixed latents)
    sample_n: int = 64
    sample_seed: int = 0
    checkpoint_every: int = 500
    snapshot_every: int = 1000     # steps between generator snapshots in snapshots/ and as W&B artifacts (0: none)

    def __post_init__(self):
        _at_least_zero(self, "fd_every", "sample_every", "snapshot_every")
        _positive(self, "sample_n", "checkpoint_every")
        if self.fd_n < 2 or self.fd_real_n < 2:
            raise ConfigError(f"monitor.fd_n={self.fd_n}, monitor.fd_real_n={self.fd_real_n}: a Frechet distance "
                              "needs at least 2 images on each side")


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
    devices: DevicesConfig = field(default_factory=DevicesConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def __post_init__(self):
        check_run_name(self.name)


@dataclass
class DemoConfig:
    name: str = "demo"
    segmenter: str = defaults.SCENE_SEGMENTER
    n: int = 64
    seed: int = 12345
    size: int = 64
    stats_n: int = 500
    generator: str = defaults.SCENE_GAN_GENERATOR
    dissect_layer: str = "layer4"
    dissect_n: int = 1000          # latents for the dissection of the shipped GAN (0: skip it)
    ace_config: str | None = defaults.ACE_CONFIG        # the ACE of one class (null: skip it)
    ace_set: list[str] = field(default_factory=list)              # key=value overrides of that config
    repair_config: str | None = defaults.REPAIR_CONFIG  # the repair with FD (null: skip it)
    repair_set: list[str] = field(default_factory=list)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def __post_init__(self):
        check_run_name(self.name)
        _positive(self, "n", "stats_n")


@dataclass
class DissectConfig:
    name: str = "dissect"
    generator: str = defaults.SCENE_GAN_GENERATOR
    truncation: float | None = None  # StyleGAN2: pull w towards its average (0.7 is common); null: as saved
    allow_pickle: bool = False       # read a generator file holding pickled Python objects (runs its code)
    segmenter: str = defaults.SCENE_SEGMENTER
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
        check_run_name(self.name)
        if not 0 < self.quantile < 1:
            raise ConfigError(f"quantile={self.quantile}: expected a number between 0 and 1")
        if not 0 <= self.iou_threshold < 1:
            raise ConfigError(f"iou_threshold={self.iou_threshold}: expected a number from 0 up to (not including) 1")
        _positive(self, "n", "batch_size", "top_k", "save_every")
        if not self.layers or not all(name.strip() for name in self.layers):
            raise ConfigError(f"layers={list(self.layers)}: give at least one layer name")


@dataclass
class AceConfig:
    """``gandissect ace``: which units cause ``class_name`` at ``layer`` (intervention, ACE, removal curves)."""

    name: str = "ace"
    generator: str = defaults.SCENE_GAN_GENERATOR
    truncation: float | None = None  # StyleGAN2: pull w towards its average (0.7 is common); null: as saved
    allow_pickle: bool = False       # read a generator file holding pickled Python objects (runs its code)
    segmenter: str = defaults.SCENE_SEGMENTER
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
        check_run_name(self.name)
        if self.insertion not in ("mean", "quantile"):
            raise ConfigError(f"insertion must be mean or quantile, got {self.insertion!r}")
        _positive(self, "dissect_n", "constants_n", "n", "removal_units", "top_units", "steps", "batch_size",
                  "log_every")
        if not self.lam >= 0 or not self.lr > 0:
            raise ConfigError(f"lam must be >= 0 and lr > 0, got lam={self.lam}, lr={self.lr}")
        if not 0 <= self.init_value <= 1 or self.init_units < 0:
            raise ConfigError(f"init_value must be in [0, 1] and init_units >= 0, got {self.init_value}, "
                              f"{self.init_units}")


# --- the commands without a run config of their own: their flags, also as --config YAML keys and --set overrides ---
@dataclass
class ScenesConfig:
    """``gandissect scenes``: scenes of the world with their labels, written into ``out``."""

    n: int = 64
    seed: int = 0
    size: int = 64
    out: str | None = None         # output directory (required)
    class_name: str | None = None  # show only scenes containing this class
    stats_n: int = 1000            # scenes used for the class statistics
    variant: str = "default"       # the world's variant: default, town or wild

    def __post_init__(self):
        _variant(self)


@dataclass
class EvalSegmenterConfig:
    """``gandissect eval segmenter``: per-class IoU against the world's exact labels."""

    checkpoint: str | None = None  # the segmenter (required)
    n: int = 1000
    seed: int = defaults.REAL_SEED
    size: int = 64
    name: str = "eval-segmenter"
    variant: str = "default"

    def __post_init__(self):
        _variant(self)


@dataclass
class EvalGANConfig:
    """``gandissect eval gan``: class pixel shares and FD-scenes, generated vs real scenes."""

    checkpoint: str | None = None  # the generator (required)
    n: int = 2000                  # generated and real scenes, each
    seed: int = 0                  # latent seed
    real_seed: int = defaults.REAL_SEED
    segmenter: str = defaults.SCENE_SEGMENTER
    name: str = "eval-gan"
    variant: str = "default"       # the world variant of the real scenes (the one the GAN was trained on)

    def __post_init__(self):
        _variant(self)


@dataclass
class GenerateConfig:
    """``gandissect generate``: a grid of images of seeded latents."""

    checkpoint: str | None = None  # the generator (required)
    n: int = 64
    seed: int = 0
    out: str | None = None         # the PNG file (required); its record goes beside it as .json
    columns: int = 8
    scale: int = 2


@dataclass
class CompareConfig:
    """``gandissect compare``: dissections of several models (and ACE and repair runs of them) side by side."""

    name: str = "compare"
    dissections: list[str] = field(default_factory=list)  # dissect runs: names under runs/, directories or files
    generators: list[str] = field(default_factory=list)   # generators dissected here, all with the same settings:
    dissect: str = defaults.DISSECT_CONFIG                 # this dissect config,
    dissect_set: list[str] = field(default_factory=list)   # with these key=value overrides
    labels: list[str] = field(default_factory=list)        # one per dissection, then per generator (empty: names)
    ace: list[str] = field(default_factory=list)           # ACE runs, each matched to a model by its generator
    repairs: list[str] = field(default_factory=list)       # repair runs, likewise
    match_units: bool = False      # match each model's units to the previous model's (checkpoints of one model)
    match_n: int = 256             # shared latents whose activations are correlated
    match_seed: int = 5
    batch_size: int = 32
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def __post_init__(self):
        check_run_name(self.name)
        _positive(self, "match_n", "batch_size")
        if self.match_n < 2:
            raise ConfigError(f"match_n={self.match_n}: a correlation needs at least 2 latents")


@dataclass
class LayersConfig:
    """``gandissect layers``: the layers of a generator a user can dissect, with their shapes."""

    checkpoint: str | None = None  # the generator (required): a file of any format read, or package.module:function
    all: bool = False              # every submodule with a feature-map output, not only the generator's own layers
    allow_pickle: bool = False     # read a generator file holding pickled Python objects (runs its code)


@dataclass
class FidStatsConfig:
    """``gandissect fid stats``: feature statistics of real images, saved as pytorch-fid's .npz."""

    data: str = "scenes"           # scenes (the built-in world) or a folder of images
    n: int = 10000
    seed: int = 0                  # world seed (data: scenes)
    size: int = 64                 # scene size (data: scenes)
    variant: str = "default"       # world variant (data: scenes)
    out: str | None = None         # the statistics file (required)
    name: str = "fid-stats"
    backbone: str = "scenes"       # scenes (FD-scenes), inception (FID) or package.module:factory
    weights: str | None = None     # local pytorch-fid Inception weights
    segmenter: str = defaults.SCENE_SEGMENTER
    batch_size: int = 50
    device: str | None = None      # null: cuda where available, else cpu

    def __post_init__(self):
        _variant(self)


@dataclass
class FidScoreConfig:
    """``gandissect fid score``: the Frechet distance of a generator's images to saved statistics."""

    checkpoint: str | None = None  # the generator (required)
    stats: str | None = None       # the statistics file (required)
    n: int = 10000
    seed: int = 0                  # latent seed
    name: str = "fid-score"
    backbone: str = "scenes"
    weights: str | None = None
    segmenter: str = defaults.SCENE_SEGMENTER
    batch_size: int = 50
    device: str | None = None


ARTIFACT_MAPS = ("occlusion", "gradcam", "saliency", "grad_x_input", "integrated_gradients")
REPAIR_ROUTES = ("iou", "iou_effect", "unit_fd", "learned", "learned_soft", "multilayer")


@dataclass
class ArtifactConfig:
    """How the artifact segmenter is built from the GAN's discriminator (see gandissect.steps.artifacts)."""

    segmenter: str | None = None   # a ready artifact segmenter (.safetensors) to use instead of building one
    discriminator: str = defaults.SCENE_GAN_DISCRIMINATOR
    method: str = "occlusion"      # the fakeness map, one of ARTIFACT_MAPS (compared in bench/artifact_maps.py)
    d_layer: str = "layer3"        # the discriminator layer Grad-CAM reads (layer3: 32x32 for a 64px D)
    cell: int = 16                 # occlusion: the blurred window's side in pixels
    stride: int = 16               # occlusion: pixels between windows (< cell: overlapping windows, averaged)
    ig_steps: int = 16             # integrated_gradients: points on the path from the blurred image
    flag_rate: float = 0.01        # the share of real-image pixels the calibrated threshold flags
    calibration_n: int = 1000      # real scenes the threshold is calibrated on
    calibration_seed: int = 101
    check_n: int = 500             # held-out real scenes on which the flag rate is measured again
    check_seed: int = 102
    require_signal: bool = True    # refuse to choose units by a map that flags generated pixels no more than real
    finetune_steps: int = 200      # steps of D against the generator being repaired first (0: D as shipped)
    finetune_batch_size: int = 32
    finetune_lr: float = 0.002
    finetune_seed: int = 103

    def __post_init__(self):
        if self.method not in ARTIFACT_MAPS:
            raise ConfigError(f"artifact.method must be one of {', '.join(ARTIFACT_MAPS)}, got {self.method!r}")
        if not 0 < self.stride <= self.cell or self.ig_steps < 1:
            raise ConfigError(f"artifact: expected 0 < stride <= cell and ig_steps >= 1, got cell={self.cell}, "
                              f"stride={self.stride}, ig_steps={self.ig_steps}")
        if self.require_signal and self.check_n < 2:
            raise ConfigError(f"artifact.check_n={self.check_n}: require_signal compares the flagged shares of "
                              "check_n real and generated images; use check_n >= 2 or require_signal: false")
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

    def __post_init__(self):
        if not 0 < self.quantile < 1 or any(unit < 0 for unit in self.units):
            raise ConfigError(f"plant: expected 0 < quantile < 1 and unit numbers >= 0, got quantile={self.quantile}, "
                              f"units={list(self.units)}")
        _positive(self, "calibration_n")


@dataclass
class MultiLayerConfig:
    """Route ``multilayer``: the k units of ``layer`` by artifact IoU are ablated, then each of ``layers`` in turn
    is dissected again for the artifact class on the generator as repaired so far, and its top units ablated."""

    layers: list[str] = field(default_factory=lambda: ["layer6"])
    k: int | None = None           # units per later layer; null: round(4% of its units)

    def __post_init__(self):
        if not self.layers or (self.k is not None and self.k < 1):
            raise ConfigError(f"multilayer: expected at least one layer and k >= 1 or null; got layers="
                              f"{list(self.layers)}, k={self.k}")


@dataclass
class UnitFDConfig:
    """Route ``unit_fd``: per unit, the FD of its ``top`` images (by maximum activation) among ``n`` latents."""

    n: int = 2000
    seed: int = 3
    top: int = 200

    def __post_init__(self):
        _positive(self, "n", "top")
        if self.top > self.n:
            raise ConfigError(f"unit_fd.top={self.top} > unit_fd.n={self.n}: the top images are among the n")


@dataclass
class LearnedRepairConfig:
    """Routes ``learned`` / ``learned_soft``: the learned soft ablation alpha (see gandissect.steps.repair.learned)."""

    objective: str = "discriminator"   # discriminator (D's generator loss) | artifact (soft artifact probability)
    steps: int = 200
    lr: float = 0.01
    lam: float = 0.01
    batch_size: int = 16
    seed: int = 4                      # latent stream of the optimization batches
    init_value: float = 0.05           # the top k units by artifact IoU start at 1, the others here

    def __post_init__(self):
        if self.objective not in ("discriminator", "artifact"):
            raise ConfigError(f"learned.objective must be discriminator or artifact, got {self.objective!r}")
        _positive(self, "steps", "batch_size")
        if not self.lr > 0 or not self.lam >= 0 or not 0 <= self.init_value <= 1:
            raise ConfigError(f"learned: expected lr > 0, lam >= 0, 0 <= init_value <= 1; got {self.lr}, "
                              f"{self.lam}, {self.init_value}")


@dataclass
class EvaluationConfig:
    """How a repair is measured: bootstrap intervals, KID, precision/recall, the world's rules."""

    resamples: int = 200           # bootstrap resamples of the generated samples
    level: float = 0.95
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    k: int = 3                     # neighbours for precision/recall
    rules_n: int = 2000            # latents (of the FD's) whose segmentation is checked against the world's rules
    seed: int = 0

    def __post_init__(self):
        _positive(self, "resamples", "kid_subsets", "kid_subset_size", "k")
        if not 0 < self.level < 1 or self.rules_n < 0:
            raise ConfigError(f"evaluation: expected 0 < level < 1 and rules_n >= 0, got {self.level}, "
                              f"{self.rules_n}")


@dataclass
class RepairConfig:
    name: str = "repair"
    generator: str = defaults.SCENE_GAN_GENERATOR
    truncation: float | None = None  # StyleGAN2: pull w towards its average (0.7 is common); null: as saved
    allow_pickle: bool = False       # read a generator file holding pickled Python objects (runs its code)
    segmenter: str = defaults.SCENE_SEGMENTER   # the FD-scenes backbone
    layer: str = "layer4"
    k: int | None = None           # units to ablate; null: round(4% of the layer's units), as 20 of 512 in the paper
    candidates: int | None = None  # units (by artifact IoU) whose causal effect is measured; null: 4 * k
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
    real_variant: str = "default"  # the world variant of those scenes (the one the GAN was trained on)
    real_stats: str | None = None  # an existing pytorch-fid .npz instead (must match the backbone)
    routes: list[str] = field(default_factory=lambda: ["iou"])  # each evaluated; the first is saved (see README)
    random_draws: int = 10         # random ablations of k units, for the spread the measures gain by chance
    random_seed: int = 0
    batch_size: int = 50
    artifact: ArtifactConfig = field(default_factory=ArtifactConfig)
    plant: PlantConfig = field(default_factory=PlantConfig)
    unit_fd: UnitFDConfig = field(default_factory=UnitFDConfig)
    multilayer: MultiLayerConfig = field(default_factory=MultiLayerConfig)
    learned: LearnedRepairConfig = field(default_factory=LearnedRepairConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    devices: DevicesConfig = field(default_factory=DevicesConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def __post_init__(self):
        check_run_name(self.name)
        for key in ("k", "candidates"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)}: expected a positive integer, or null for the default")
        _positive(self, "dissect_n", "effect_n", "fd_n", "real_n", "batch_size")
        _variant(self, "real_variant")
        unknown = [route for route in self.routes if route not in REPAIR_ROUTES]
        if unknown or not self.routes or len(set(self.routes)) != len(self.routes):
            raise ConfigError(f"routes={list(self.routes)}: expected distinct routes among {', '.join(REPAIR_ROUTES)}")
        if self.random_draws < 1:
            raise ConfigError("random_draws must be at least 1: the random ablations are the repair's control")
        if self.fd_backbone not in ("auto", "scenes", "inception"):
            raise ConfigError(f"fd_backbone must be auto, scenes or inception, got {self.fd_backbone!r}")


def _one_line(err: OmegaConfBaseException) -> str:
    """OmegaConf's message without its 'full_key: ... object_type=...' lines, and the key it concerns."""
    key = getattr(err, "full_key", None)
    message = str(err).splitlines()[0]
    if isinstance(err, ConfigKeyError) and key:
        return f"unknown config key {key}"
    if "is not a subclass of" in message:  # a single value given for a whole section
        return f"a config section got a single value; expected a mapping of its keys ({message})"
    if "is not a ListConfig" in message:
        message = "expected a list, e.g. [1, 2]"
    if message.startswith("Incompatible value 'None' for field of type"):  # `--set name=` reads as null
        message = f"no value given (empty or null); expected a {message.rpartition(' of type ')[2]} value"
    if isinstance(err, ValidationError) and key:
        return f"{key}: {message}"
    return message


def _section_keys(cls, section: str) -> list[str]:
    """The keys a config section (``""``: the top level) accepts."""
    for part in filter(None, section.split(".")):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if part not in fields or fields[part].default_factory is dataclasses.MISSING:
            return []
        cls = type(fields[part].default_factory())
    return [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []


def load_config(cls, path: str | Path | None = None, overrides: list[str] = ()):
    """Read ``path`` (YAML) onto dataclass ``cls``, then apply ``key.sub=value`` overrides; returns a ``cls``.
    Seeds (``seed``, ``*_seed`` in any section) are checked here, for all configs at once."""
    layers = [OmegaConf.structured(cls)]
    where = f"{path}: " if path is not None else ""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML ({str(err).splitlines()[0]})") from None
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"config file {path}: expected a mapping of keys to values, got {type(data).__name__}")
        layers.append(OmegaConf.load(path) if data else OmegaConf.create({}))
    for assignment in overrides:
        key, equals, _ = assignment.partition("=")
        if not equals or not key.strip():
            raise ConfigError(f"override {assignment!r} must look like key.sub=value")
    try:
        layers.append(OmegaConf.from_dotlist(list(overrides)))
        merged = OmegaConf.merge(*layers)
        config = OmegaConf.to_object(merged)
        _check_seeds(config)
        return config
    except ConfigKeyError as err:
        known = ", ".join(_section_keys(cls, (getattr(err, "full_key", "") or "").rpartition(".")[0]))
        raise ConfigError(f"{where}{_one_line(err)}; expected one of: {known}") from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"{where}{_one_line(err)}") from None
    except ConfigError as err:
        raise ConfigError(f"{where}{err}") from None


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


@dataclass
class PaintLimitsConfig:
    """What one request to the paint server may hold; more is refused with a 4xx naming the field."""

    max_body_bytes: int = 2_000_000
    max_interventions: int = 32
    max_seeds: int = 16

    def __post_init__(self):
        _positive(self, "max_body_bytes", "max_interventions", "max_seeds")


@dataclass
class PaintConfig:
    """``gandissect paint``: the GANPaint server (and the rating page when ``rate_run`` names a repair run)."""

    generator: str = defaults.SCENE_GAN_GENERATOR
    truncation: float | None = None  # StyleGAN2: pull w towards its average (0.7 is common); null: as saved
    allow_pickle: bool = False       # read a generator file holding pickled Python objects (runs its code)
    segmenter: str = defaults.SCENE_SEGMENTER
    concepts: str = defaults.PAINT_CONCEPTS
    latent_stream: int = 0         # seed s of a request is latent s of this stream (as in a dissection of seed 0)
    host: str = "127.0.0.1"
    port: int = 8000               # 0: a free port (the URL is printed)
    batching: bool = True          # gather concurrent requests into one forward (false: one at a time, as GANPaint)
    max_batch: int = 32            # images per forward
    wait_ms: float = 2.0           # how long the first request of a batch waits for others
    cache_size: int = 1024         # plain samples kept per seed
    rate_run: str | None = None    # a repair run directory: serve /rate and append to its ratings.jsonl
    rate_seed: int = 777
    limits: PaintLimitsConfig = field(default_factory=PaintLimitsConfig)

    def __post_init__(self):
        _positive(self, "max_batch", "cache_size")
        _at_least_zero(self, "wait_ms")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port={self.port}: expected 0 (any free port) to 65535")


@dataclass
class PaintPrepareConfig:
    """``gandissect paint prepare``: the concepts file from a dissection of the paint layers and ACE runs."""

    name: str = "paint-prepare"
    generator: str = defaults.SCENE_GAN_GENERATOR
    truncation: float | None = None  # StyleGAN2: pull w towards its average (0.7 is common); null: as saved
    allow_pickle: bool = False       # read a generator file holding pickled Python objects (runs its code)
    segmenter: str = defaults.SCENE_SEGMENTER
    layers: list[str] = field(default_factory=lambda: ["layer4", "layer6"])  # the first is the default layer
    n: int = 2000                  # latents of the dissection (stream 0)
    ace_categories: list[str] = field(default_factory=lambda: ["object", "part"])  # classes ranked by ACE
    ace_layers: list[str] | None = None   # layers whose concepts get ACE rankings (null: all; others keep IoU)
    ace_set: list[str] = field(default_factory=list)    # key=value overrides of every ACE run's config
    keep: int = 30                 # units kept per concept (the strongest brush may use them all)
    out: str = defaults.PAINT_CONCEPTS
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def __post_init__(self):
        check_run_name(self.name)
        _positive(self, "n", "keep")
        if not self.layers:
            raise ConfigError("layers: give at least one layer to paint on")


@dataclass
class RateSummaryConfig:
    """``gandissect rate summary RUN``: the ratings of a repair run."""

    run: str | None = None         # the repair run directory holding ratings.jsonl
