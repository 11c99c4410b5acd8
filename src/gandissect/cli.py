"""The ``gandissect`` command line.

    gandissect demo [--config experiments/scenes/demo.yaml]
    gandissect scenes --n 64 --seed 0 --out DIR [--size 64] [--class dome]
    gandissect train segmenter --config experiments/scenes/segmenter.yaml [--set trainer.max_steps=100]
    gandissect train gan --config experiments/scenes/gan.yaml
    gandissect eval segmenter --checkpoint PATH --n 1000 --seed 12345
    gandissect eval gan --checkpoint PATH --n 2000
    gandissect generate --checkpoint PATH --n 64 --seed 0 --out grid.png
    gandissect dissect --config experiments/scenes/dissect.yaml [--layers layer3,layer4] [--n 1000]
    gandissect repair --config experiments/scenes/repair.yaml [--set fd_n=2000]
    gandissect ace --config experiments/scenes/ace.yaml --class tree --layer layer4
    gandissect fid stats --data scenes --n 10000 --backbone scenes --out real.npz
    gandissect fid score --checkpoint PATH --stats real.npz --n 10000 [--backbone scenes]

Each command hands its arguments to one ``run_*`` function and prints the JSON result on stdout; progress bars
and logs go to stderr. Bad input (a missing file, an unknown key or class, a checkpoint of the wrong kind, a value
of the wrong type, an output path that cannot be written) ends with one line on stderr naming the problem and exit
status 2; inputs and output paths are checked before any work. ``gandissect --verbose <command>`` keeps the
libraries' own notes on stderr; ``gandissect --version`` prints the version.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import warnings
from pathlib import Path

from gandissect import __version__, defaults
from gandissect.config import (AceConfig, DemoConfig, DissectConfig, GANTrainConfig, RepairConfig,
                               SegmenterTrainConfig, check_run_name, check_seed, load_config)
from gandissect.core.runs import check_run_free, check_wandb_login, release_runs, runs_root
from gandissect.errors import BadValueError, GandissectError
from gandissect.io import check_writable_dir, check_writable_file, json_text


# Each command reads its config and checks where it will write first, and imports its step only then, so `--help`
# and a refused input are fast and nothing is computed for a run that cannot be saved.
def _run_dir(name: str) -> None:
    check_run_name(name)
    check_writable_dir(runs_root() / name, "run directory")
    check_run_free(runs_root() / name)  # another process's run under this name: refused before any work


def _checked(cfg):
    """A config command's checks before any work: its run directory can be written, W&B online has a login, Lightning
    accepts its devices settings."""
    _run_dir(cfg.name)
    check_wandb_login(cfg.wandb)
    if hasattr(cfg, "devices"):
        from gandissect.core.distributed import check_devices

        check_devices(cfg.devices)
    return cfg


def _scenes(args) -> dict:
    check_writable_dir(args.out, "--out")
    check_run_free(args.out)
    from gandissect.steps.evaluate import run_scenes

    return run_scenes(args.n, args.seed, args.size, args.out, args.class_name, args.stats_n)


def _train(args) -> dict:
    cfg = _checked(load_config(GANTrainConfig if args.model == "gan" else SegmenterTrainConfig, args.config, args.set))
    from gandissect.steps.train import train_gan, train_segmenter

    return train_gan(cfg) if args.model == "gan" else train_segmenter(cfg)


def _eval_segmenter(args) -> dict:
    _run_dir(args.name)
    from gandissect.steps.evaluate import run_eval_segmenter

    return run_eval_segmenter(args.checkpoint, args.n, args.seed, args.size, args.name)


def _eval_gan(args) -> dict:
    _run_dir(args.name)
    from gandissect.steps.evaluate import run_eval_gan

    return run_eval_gan(args.checkpoint, args.n, args.seed, args.real_seed, args.segmenter, args.name)


def _generate(args) -> dict:
    check_writable_file(args.out, "--out")
    if Path(args.out).suffix.lower() != ".png":
        raise BadValueError(f"--out {args.out}: expected a .png file name (the grid is a PNG; its record goes beside "
                            "it as .json)")
    check_writable_file(Path(args.out).with_suffix(".json"), "--out's record")
    from gandissect.steps.evaluate import run_generate

    return run_generate(args.checkpoint, args.n, args.seed, args.out, args.columns, args.scale)


def _fid_stats(args) -> dict:
    check_writable_file(args.out, "--out")
    _run_dir(args.name)
    from gandissect.steps.fid import run_fid_stats

    return run_fid_stats(args.data, args.n, args.out, args.seed, args.size, args.backbone, args.weights,
                         args.segmenter, args.batch_size, args.device, args.name)


def _fid_score(args) -> dict:
    _run_dir(args.name)
    from gandissect.steps.fid import run_fid_score

    return run_fid_score(args.checkpoint, args.stats, args.n, args.seed, args.backbone, args.weights,
                         args.segmenter, args.batch_size, args.device, args.name)


def _dissect(args) -> dict:
    overrides = list(args.set)
    if args.layers is not None:
        overrides.append(f"layers=[{args.layers}]")
    if args.n is not None:
        overrides.append(f"n={args.n}")
    cfg = _checked(load_config(DissectConfig, args.config, overrides))
    from gandissect.steps import dissect

    result = dissect.run_dissection(cfg)
    return dissect.summary(result, runs_root() / cfg.name) if result else {}  # {}: a process other than rank 0


def _ace(args) -> dict:
    overrides = list(args.set)
    if args.class_name:
        overrides.append(f"class_name={args.class_name}")
    if args.layer:
        overrides.append(f"layer={args.layer}")
    cfg = _checked(load_config(AceConfig, args.config, overrides))
    from gandissect.pipelines import run_ace_pipeline
    from gandissect.steps import intervene

    result = run_ace_pipeline(cfg)
    return intervene.summary(result) if result else {}


def _repair(args) -> dict:
    cfg = _checked(load_config(RepairConfig, args.config, list(args.set)))
    from gandissect.pipelines import run_repair_pipeline
    from gandissect.steps import repair

    result = run_repair_pipeline(cfg)
    return repair.summary(result, runs_root() / cfg.name) if result else {}


def _demo(args) -> dict:
    cfg = _checked(load_config(DemoConfig, args.config, args.set))
    from gandissect.demo import run_demo

    return run_demo(cfg)


class _Parser(argparse.ArgumentParser):
    """Every option's --help line shows its default (subcommand parsers are made of the parent's class)."""

    def add_argument(self, *args, **kwargs):
        action = super().add_argument(*args, **kwargs)
        if action.default not in (None, [], argparse.SUPPRESS) and action.help != argparse.SUPPRESS:
            action.help = f"{action.help or ''} (default: %(default)s)".strip()
        return action


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gandissect", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"gandissect {__version__}")
    parser.add_argument("--verbose", action="store_true", help="keep the libraries' own notes on stderr (Lightning's "
                                                               "tips and device lines, deprecation notes)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the main job on the built-in default and write runs/demo/")
    p.add_argument("--config", default=defaults.DEMO_CONFIG)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.set_defaults(func=_demo)

    p = sub.add_parser("dissect", help="which units of a generator's layers draw which classes (writes runs/<name>/)")
    p.add_argument("--config", default=defaults.DISSECT_CONFIG)
    p.add_argument("--layers", default=None, help="comma-separated layer names (overrides the config)")
    p.add_argument("--n", type=int, default=None, help="number of seeded latents (overrides the config)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.set_defaults(func=_dissect)

    p = sub.add_parser("ace", help="which units cause a class: learned intervention, ACE, removal curves, context")
    p.add_argument("--config", default=defaults.ACE_CONFIG)
    p.add_argument("--class", dest="class_name", default=None, help="class to cause or remove (overrides the config)")
    p.add_argument("--layer", default=None, help="layer to intervene on (overrides the config)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.set_defaults(func=_ace)

    p = sub.add_parser("repair", help="find the units that draw artifacts, ablate them, compare FDs (writes "
                                      "runs/<name>/)")
    p.add_argument("--config", default=defaults.REPAIR_CONFIG)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.set_defaults(func=_repair)

    p = sub.add_parser("scenes", help="draw scenes of the built-in world with their labels")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--class", dest="class_name", default=None, help="show only scenes containing this class")
    p.add_argument("--stats-n", type=int, default=1000, help="scenes used for the class statistics")
    p.set_defaults(func=_scenes)

    p = sub.add_parser("train", help="train a model")
    p.add_argument("model", choices=["segmenter", "gan"])
    p.add_argument("--config", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="evaluate a model on held-out scenes; prints JSON")
    eval_sub = p.add_subparsers(dest="model", required=True)
    p = eval_sub.add_parser("segmenter", help="per-class IoU against the world's exact labels")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=defaults.REAL_SEED)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--name", default="eval-segmenter", help="run directory name under runs/")
    p.set_defaults(func=_eval_segmenter)
    p = eval_sub.add_parser("gan", help="class pixel shares and FD-scenes, generated vs real scenes")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--n", type=int, default=2000, help="generated and real scenes, each")
    p.add_argument("--seed", type=int, default=0, help="latent seed")
    p.add_argument("--real-seed", type=int, default=defaults.REAL_SEED, help="world seed of the real scenes")
    p.add_argument("--segmenter", default=defaults.SCENE_SEGMENTER)
    p.add_argument("--name", default="eval-gan", help="run directory name under runs/")
    p.set_defaults(func=_eval_gan)

    p = sub.add_parser("generate", help="a grid of images from a generator for seeded latents")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="latent seed: the same seed gives the same images")
    p.add_argument("--out", required=True, help="PNG file; the seed and settings go beside it as .json")
    p.add_argument("--columns", type=int, default=8)
    p.add_argument("--scale", type=int, default=2, help="enlarge pixels this many times")
    p.set_defaults(func=_generate)

    p = sub.add_parser("fid", help="Frechet distance: real-data statistics (.npz) and generator scores")
    fid_sub = p.add_subparsers(dest="fid_command", required=True)
    stats = fid_sub.add_parser("stats", help="feature statistics of real images, saved as pytorch-fid's .npz")
    stats.add_argument("--data", default="scenes", help="'scenes' (the built-in world) or a folder of images")
    stats.add_argument("--n", type=int, default=10000)
    stats.add_argument("--seed", type=int, default=0, help="world seed (for --data scenes)")
    stats.add_argument("--size", type=int, default=64, help="scene size (for --data scenes)")
    stats.add_argument("--out", required=True, help="statistics file (.npz: mu, sigma)")
    stats.add_argument("--name", default="fid-stats", help="run directory name under runs/")
    score = fid_sub.add_parser("score", help="Frechet distance of a generator's images to saved statistics")
    score.add_argument("--checkpoint", required=True, help="generator checkpoint")
    score.add_argument("--stats", required=True, help="statistics file from `fid stats` or pytorch-fid")
    score.add_argument("--n", type=int, default=10000, help="generated images")
    score.add_argument("--seed", type=int, default=0, help="latent seed")
    score.add_argument("--name", default="fid-score", help="run directory name under runs/")
    for p in (stats, score):
        p.add_argument("--backbone", default="scenes",
                       help="scenes (FD-scenes), inception (FID, pytorch-fid's Inception) or package.module:factory")
        p.add_argument("--weights", default=None,
                       help="local pytorch-fid Inception weights file (default: pytorch-fid's download and cache)")
        p.add_argument("--segmenter", default=defaults.SCENE_SEGMENTER)
        p.add_argument("--batch-size", type=int, default=50)
        p.add_argument("--device", default=None, help="default: cuda where available, else cpu")
    stats.set_defaults(func=_fid_stats)
    score.set_defaults(func=_fid_score)
    return parser


def _warning_or_worse(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


def _quiet_libraries() -> None:
    """Lightning's tips and device lines and the deprecation notes meant for library developers, off stderr: what is
    left there is progress, gandissect's own warnings and real problems."""
    # a filter on the loggers Lightning's notes come from (not a level on its package logger, which its import resets)
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_warning_or_worse)  # adding it again changes nothing
    for category in (DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)


def _close_progress_bars() -> None:
    """End the progress bars a run stopped in the middle of, so that its error line stands on a line of its own."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.verbose:
        _quiet_libraries()
    try:
        for flag in ("seed", "real_seed"):
            if getattr(args, flag, None) is not None:
                check_seed(f"--{flag.replace('_', '-')}", getattr(args, flag))
        # stdout carries the JSON result alone: progress bars and logs (Lightning writes some to stdout) go to stderr
        with contextlib.redirect_stdout(sys.stderr):
            result = args.func(args)
    except GandissectError as err:
        _close_progress_bars()
        print(f"gandissect: error: {err}", file=sys.stderr)
        return 2
    finally:
        release_runs()
    print(json_text(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
