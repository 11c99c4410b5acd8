"""The ``gandissect`` command line.

    gandissect demo [--config experiments/scenes/demo.yaml] [--n 16]
    gandissect scenes --n 64 --seed 0 --out DIR [--size 64] [--class dome]
    gandissect train segmenter --config experiments/scenes/segmenter.yaml [--set trainer.max_steps=100]
    gandissect train gan --config experiments/scenes/gan.yaml [--seed 1]
    gandissect eval segmenter --checkpoint PATH --n 1000 --seed 12345
    gandissect eval gan --checkpoint PATH --n 2000
    gandissect generate --checkpoint PATH --n 64 --seed 0 --out grid.png
    gandissect dissect --config experiments/scenes/dissect.yaml [--layers layer3,layer4] [--n 1000]
    gandissect repair --config experiments/scenes/repair.yaml [--n 2000] [--layer layer4]
    gandissect ace --config experiments/scenes/ace.yaml --class tree --layer layer4 [--n 200]
    gandissect fid stats --data scenes --n 10000 --backbone scenes --out real.npz
    gandissect fid score --checkpoint PATH --stats real.npz --n 10000 [--backbone scenes]
    gandissect paint [--config experiments/scenes/paint.yaml] [--port 8000] [--rate RUN]
    gandissect paint prepare [--config experiments/scenes/paint_prepare.yaml]
    gandissect rate summary RUN

Every command reads a config: ``--config FILE`` (YAML) and ``--set key=value`` overrides on the command's config
dataclass (``gandissect.config``), then its flags. The flags common to the commands have the same names everywhere
and set a key of that config: ``--n``, ``--seed``, ``--out``, ``--layer`` / ``--layers``, ``--checkpoint`` (the
generator of dissect, ace, repair and demo), ``--name`` (the run directory under runs/); ``--help`` lists each
command's flags with the key they set or their default. A flag wins over ``--set``, which wins over the file.

Each command hands its config to one ``run_*`` function and prints the JSON result on stdout; progress bars and
logs go to stderr. Bad input (a missing file, an unknown key or class, a checkpoint of the wrong kind, a value of
the wrong type, an output path that cannot be written, a run directory another run is using) ends with one line
on stderr naming the problem and exit status 2; inputs and output paths are checked before any work.
``gandissect --verbose <command>`` keeps the libraries' own notes on stderr; ``gandissect --version`` prints the
version.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import sys
import warnings
from pathlib import Path

from gandissect import __version__, defaults
from gandissect.config import (AceConfig, CompareConfig, DemoConfig, DissectConfig, EvalGANConfig, EvalSegmenterConfig,
                               FidScoreConfig, FidStatsConfig, GANTrainConfig, GenerateConfig, LayersConfig,
                               PaintConfig, PaintPrepareConfig, RateSummaryConfig, RepairConfig, ScenesConfig,
                               SegmenterTrainConfig, check_run_name, check_seed, load_config)
from gandissect.core.runs import check_run_free, check_wandb_login, release_runs, runs_root
from gandissect.errors import BadValueError, ConfigError, GandissectError
from gandissect.io import check_writable_dir, check_writable_file, json_text


# Each command reads its config and checks where it will write first, and imports its step only then, so `--help`
# and a refused input are fast and nothing is computed for a run that cannot be saved.
LIST_FLAGS = {"layers", "dissections", "generators", "labels", "ace", "repairs"}  # flags taking comma-separated lists


def _config(cls, args):
    """The command's config: its --config file, the --set overrides, then the flags given (each sets one key)."""
    overrides = list(args.set)
    for key in args.flag_keys:
        value = getattr(args, key)
        if value is None:
            continue
        if key in LIST_FLAGS:  # --layers layer3,layer4
            items = [item.strip() for item in value.split(",") if item.strip()]
            overrides.append(f"{key}=[{', '.join(json.dumps(item) for item in items)}]")
        else:  # a JSON string is a YAML string: a path with ':' or '#' stays a string
            overrides.append(f"{key}={json.dumps(value) if isinstance(value, str) else value}")
    return load_config(cls, args.config, overrides)


def _required(cfg, **flags: str) -> None:
    missing = [flag for key, flag in flags.items() if getattr(cfg, key) is None]
    if missing:
        keys = ", ".join(key for key, flag in flags.items() if flag in missing)
        raise ConfigError(f"{', '.join(missing)} required (or {keys} in --config / --set)")


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
    cfg = _config(ScenesConfig, args)
    _required(cfg, out="--out")
    check_writable_dir(cfg.out, "--out")
    check_run_free(cfg.out)
    from gandissect.steps.evaluate import run_scenes

    return run_scenes(cfg.n, cfg.seed, cfg.size, cfg.out, cfg.class_name, cfg.stats_n, cfg.variant)


def _train(args) -> dict:
    cfg = _checked(_config(GANTrainConfig if args.model == "gan" else SegmenterTrainConfig, args))
    from gandissect.steps.train import train_gan, train_segmenter

    return train_gan(cfg) if args.model == "gan" else train_segmenter(cfg)


def _eval_segmenter(args) -> dict:
    cfg = _config(EvalSegmenterConfig, args)
    _required(cfg, checkpoint="--checkpoint")
    _run_dir(cfg.name)
    from gandissect.steps.evaluate import run_eval_segmenter

    return run_eval_segmenter(cfg.checkpoint, cfg.n, cfg.seed, cfg.size, cfg.name, cfg.variant)


def _eval_gan(args) -> dict:
    cfg = _config(EvalGANConfig, args)
    _required(cfg, checkpoint="--checkpoint")
    _run_dir(cfg.name)
    from gandissect.steps.evaluate import run_eval_gan

    return run_eval_gan(cfg.checkpoint, cfg.n, cfg.seed, cfg.real_seed, cfg.segmenter, cfg.name, cfg.variant)


def _generate(args) -> dict:
    cfg = _config(GenerateConfig, args)
    _required(cfg, checkpoint="--checkpoint", out="--out")
    check_writable_file(cfg.out, "--out")
    if Path(cfg.out).suffix.lower() != ".png":
        raise BadValueError(f"--out {cfg.out}: expected a .png file name (the grid is a PNG; its record goes beside "
                            "it as .json)")
    check_writable_file(Path(cfg.out).with_suffix(".json"), "--out's record")
    from gandissect.steps.evaluate import run_generate

    return run_generate(cfg.checkpoint, cfg.n, cfg.seed, cfg.out, cfg.columns, cfg.scale)


def _fid_stats(args) -> dict:
    cfg = _config(FidStatsConfig, args)
    _required(cfg, out="--out")
    check_writable_file(cfg.out, "--out")
    _run_dir(cfg.name)
    from gandissect.steps.fid import run_fid_stats

    return run_fid_stats(cfg.data, cfg.n, cfg.out, cfg.seed, cfg.size, cfg.backbone, cfg.weights, cfg.segmenter,
                         cfg.batch_size, cfg.device, cfg.name, cfg.variant)


def _fid_score(args) -> dict:
    cfg = _config(FidScoreConfig, args)
    _required(cfg, checkpoint="--checkpoint", stats="--stats")
    _run_dir(cfg.name)
    from gandissect.steps.fid import run_fid_score

    return run_fid_score(cfg.checkpoint, cfg.stats, cfg.n, cfg.seed, cfg.backbone, cfg.weights, cfg.segmenter,
                         cfg.batch_size, cfg.device, cfg.name)


def _dissect(args) -> dict:
    cfg = _checked(_config(DissectConfig, args))
    from gandissect.steps import dissect

    result = dissect.run_dissection(cfg)
    return dissect.summary(result, runs_root() / cfg.name) if result else {}  # {}: a process other than rank 0


def _ace(args) -> dict:
    cfg = _checked(_config(AceConfig, args))
    from gandissect.pipelines import run_ace_pipeline
    from gandissect.steps import intervene

    result = run_ace_pipeline(cfg)
    return intervene.summary(result) if result else {}


def _repair(args) -> dict:
    cfg = _checked(_config(RepairConfig, args))
    from gandissect.pipelines import run_repair_pipeline
    from gandissect.steps import repair

    result = run_repair_pipeline(cfg)
    return repair.summary(result, runs_root() / cfg.name) if result else {}


def _demo(args) -> dict:
    cfg = _checked(_config(DemoConfig, args))
    from gandissect.demo import run_demo

    return run_demo(cfg)


def _paint_prepare(args) -> dict:
    cfg = _checked(_config(PaintPrepareConfig, args))
    check_writable_file(cfg.out, "--out")
    from gandissect.pipelines import run_paint_prepare

    return run_paint_prepare(cfg)


def _paint(args) -> None:
    cfg = _config(PaintConfig, args)
    from gandissect.steps.paint.server import serve

    def announce(url: str) -> None:  # one JSON line on the real stdout at once (other commands print theirs at the end)
        print(json.dumps({"url": url, "rate": f"{url}rate" if cfg.rate_run else None}), file=sys.__stdout__,
              flush=True)
        print(f"gandissect: serving {url} (Ctrl-C stops)", file=sys.stderr, flush=True)
    serve(cfg, announce, log_level="info" if args.verbose else "warning")


def _rate_summary(args) -> dict:
    cfg = _config(RateSummaryConfig, args)
    _required(cfg, run="RUN")
    from gandissect.steps.paint.ratings import summarize

    return summarize(cfg.run)


class _Parser(argparse.ArgumentParser):
    """Every option's --help line shows its default (subcommand parsers are made of the parent's class)."""

    def add_argument(self, *args, **kwargs):
        action = super().add_argument(*args, **kwargs)
        if action.default not in (None, [], argparse.SUPPRESS) and action.help != argparse.SUPPRESS:
            action.help = f"{action.help or ''} (default: %(default)s)".strip()
        return action


def _compare(args) -> dict:
    cfg = _checked(_config(CompareConfig, args))
    if not cfg.dissections and not cfg.generators:
        raise ConfigError("compare: give the dissections with --dissections A,B or the generators with --generators "
                          "X,Y (or dissections: / generators: in --config)")
    from gandissect.pipelines import run_compare_pipeline

    return run_compare_pipeline(cfg)


def _layers(args) -> dict:
    cfg = _config(LayersConfig, args)
    _required(cfg, checkpoint="--checkpoint")
    from gandissect.models.generators import describe, describe_layers, load_generator

    generator = load_generator(cfg.checkpoint, allow_pickle=cfg.allow_pickle)
    rows = [row for row in describe_layers(generator) if cfg.all or row["dissectable"]]
    for row in rows:  # the table for a person on stderr; JSON on stdout
        print(f"{row['layer']:<24} {row['units']:>5} units  {row['height']}x{row['width']}", file=sys.stderr)
    return {"checkpoint": cfg.checkpoint, **describe(generator), "layers": rows}


def _command(sub, name: str, help: str, cls, func, config_default: str | None = None,
             config_required: bool = False) -> argparse.ArgumentParser:
    """A subcommand of config ``cls``: --config, --set, and (with ``_flag``) its flags."""
    p = sub.add_parser(name, help=help, description=help)
    if config_required:
        p.add_argument("--config", required=True, help="YAML config file")
    else:
        p.add_argument("--config", default=config_default, help="YAML config file (keys of the flags below, and more)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.set_defaults(func=func, config_class=cls, flag_keys=[], reads_a_file=config_required or bool(config_default))
    return p


def _flag(p: argparse.ArgumentParser, flag: str, key: str, help: str, type=str, required: bool = False) -> None:
    """A flag that sets config key ``key``. Its help shows the dataclass's default where the command has no config
    file by default, else the key it overrides. ``required``: a value must come from the flag, --config or --set."""
    if required:
        note = "required"
    elif not p.get_default("reads_a_file"):
        field = {f.name: f for f in dataclasses.fields(p.get_default("config_class"))}[key]
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default
        note = f"default: {'none' if default in (None, []) else default}"
    else:
        note = f"overrides {key} of the config"
    flags = flag.split("|")
    p.add_argument(*flags, dest=key, type=type, default=None, metavar=flags[0].lstrip("-").upper().replace("-", "_"),
                   help=f"{help} ({note})".lstrip(" "))
    p.get_default("flag_keys").append(key)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gandissect", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"gandissect {__version__}")
    parser.add_argument("--verbose", action="store_true", help="keep the libraries' own notes on stderr (Lightning's "
                                                               "tips and device lines, deprecation notes)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = _command(sub, "demo", "run the main job on the built-in default and write runs/demo/", DemoConfig, _demo,
                 defaults.DEMO_CONFIG)
    _flag(p, "--n", "n", "scenes drawn and segmented", int)
    _flag(p, "--seed", "seed", "world seed of those scenes", int)
    _flag(p, "--checkpoint", "generator", "generator to dissect, intervene on and repair")
    _flag(p, "--layer", "dissect_layer", "layer to dissect, intervene on and repair")
    _flag(p, "--name", "name", "run directory name under runs/")

    p = _command(sub, "dissect", "which units of a generator's layers draw which classes (writes runs/<name>/)",
                 DissectConfig, _dissect, defaults.DISSECT_CONFIG)
    _flag(p, "--layers|--layer", "layers", "comma-separated layer names")
    _flag(p, "--n", "n", "number of seeded latents", int)
    _flag(p, "--seed", "seed", "latent seed", int)
    _flag(p, "--checkpoint", "generator", "generator to dissect")
    _flag(p, "--name", "name", "run directory name under runs/")

    p = _command(sub, "ace", "which units cause a class: learned intervention, ACE, removal curves, context",
                 AceConfig, _ace, defaults.ACE_CONFIG)
    _flag(p, "--class", "class_name", "class to cause or remove")
    _flag(p, "--layer", "layer", "layer to intervene on")
    _flag(p, "--n", "n", "held-out latents for the ACE, the removal curves and the context table", int)
    _flag(p, "--seed", "seed", "latent seed of the optimization batches", int)
    _flag(p, "--checkpoint", "generator", "generator to intervene on")
    _flag(p, "--name", "name", "run directory name under runs/")

    p = _command(sub, "repair", "find the units that draw artifacts, ablate them, compare FDs (writes runs/<name>/)",
                 RepairConfig, _repair, defaults.REPAIR_CONFIG)
    _flag(p, "--n", "fd_n", "seeded latents every variant draws for its FD", int)
    _flag(p, "--seed", "fd_seed", "latent seed of those latents", int)
    _flag(p, "--layer", "layer", "layer to repair")
    _flag(p, "--checkpoint", "generator", "generator to repair")
    _flag(p, "--name", "name", "run directory name under runs/")

    p = _command(sub, "scenes", "draw scenes of the built-in world with their labels", ScenesConfig, _scenes)
    _flag(p, "--n", "n", "", int)
    _flag(p, "--seed", "seed", "world seed", int)
    _flag(p, "--size", "size", "", int)
    _flag(p, "--out", "out", "output directory", required=True)
    _flag(p, "--class", "class_name", "show only scenes containing this class")
    _flag(p, "--stats-n", "stats_n", "scenes used for the class statistics", int)
    _flag(p, "--variant", "variant", "world variant: default, town or wild")

    p = sub.add_parser("train", help="train a model")
    train_sub = p.add_subparsers(dest="model", required=True)
    for model, cls, what in (("segmenter", SegmenterTrainConfig, "the scene segmenter"),
                             ("gan", GANTrainConfig, "a GAN (ProGAN or StyleGAN2) on the scene world")):
        p = _command(train_sub, model, f"train {what} (writes runs/<name>/)", cls, _train, config_required=True)
        _flag(p, "--seed", "seed", "seed of the weights' initialization and the data order", int)
        _flag(p, "--name", "name", "run directory name under runs/")

    p = sub.add_parser("eval", help="evaluate a model on held-out scenes; prints JSON")
    eval_sub = p.add_subparsers(dest="model", required=True)
    p = _command(eval_sub, "segmenter", "per-class IoU against the world's exact labels", EvalSegmenterConfig,
                 _eval_segmenter)
    _flag(p, "--checkpoint", "checkpoint", "segmenter checkpoint", required=True)
    _flag(p, "--n", "n", "", int)
    _flag(p, "--seed", "seed", "world seed", int)
    _flag(p, "--size", "size", "", int)
    _flag(p, "--variant", "variant", "world variant: default, town or wild")
    _flag(p, "--name", "name", "run directory name under runs/")
    p = _command(eval_sub, "gan", "class pixel shares and FD-scenes, generated vs real scenes", EvalGANConfig,
                 _eval_gan)
    _flag(p, "--checkpoint", "checkpoint", "generator checkpoint", required=True)
    _flag(p, "--n", "n", "generated and real scenes, each", int)
    _flag(p, "--seed", "seed", "latent seed", int)
    _flag(p, "--real-seed", "real_seed", "world seed of the real scenes", int)
    _flag(p, "--variant", "variant", "world variant of the real scenes: default, town or wild")
    _flag(p, "--segmenter", "segmenter", "")
    _flag(p, "--name", "name", "run directory name under runs/")

    p = _command(sub, "compare", "dissections of several models, layers or checkpoints side by side (writes "
                                 "runs/<name>/)", CompareConfig, _compare)
    _flag(p, "--dissections", "dissections", "dissect runs (names under runs/ or directories), comma-separated")
    _flag(p, "--generators", "generators", "generators to dissect (with the --config's dissect settings) and compare, "
                                           "comma-separated")
    _flag(p, "--labels", "labels", "one label per dissection, then per generator, comma-separated")
    _flag(p, "--ace", "ace", "ACE runs of those generators, comma-separated")
    _flag(p, "--repairs", "repairs", "repair runs of those generators, comma-separated")
    _flag(p, "--name", "name", "run directory name under runs/")

    p = _command(sub, "layers", "the layers of a generator (any format gandissect reads) with units and size",
                 LayersConfig, _layers)
    _flag(p, "--checkpoint", "checkpoint", "generator: a checkpoint file or package.module:function", required=True)
    p.add_argument("--all", dest="all", action="store_const", const=True, default=None,
                   help="every submodule with a feature-map output, not only the generator's own layers")
    p.get_default("flag_keys").append("all")

    p = _command(sub, "generate", "a grid of images from a generator for seeded latents", GenerateConfig, _generate)
    _flag(p, "--checkpoint", "checkpoint", "generator checkpoint", required=True)
    _flag(p, "--n", "n", "", int)
    _flag(p, "--seed", "seed", "latent seed: the same seed gives the same images", int)
    _flag(p, "--out", "out", "PNG file; the seed and settings go beside it as .json", required=True)
    _flag(p, "--columns", "columns", "", int)
    _flag(p, "--scale", "scale", "enlarge pixels this many times", int)

    p = sub.add_parser("fid", help="Frechet distance: real-data statistics (.npz) and generator scores")
    fid_sub = p.add_subparsers(dest="fid_command", required=True)
    stats = _command(fid_sub, "stats", "feature statistics of real images, saved as pytorch-fid's .npz",
                     FidStatsConfig, _fid_stats)
    _flag(stats, "--data", "data", "'scenes' (the built-in world) or a folder of images")
    _flag(stats, "--n", "n", "", int)
    _flag(stats, "--seed", "seed", "world seed (for --data scenes)", int)
    _flag(stats, "--size", "size", "scene size (for --data scenes)", int)
    _flag(stats, "--variant", "variant", "world variant (for --data scenes): default, town or wild")
    _flag(stats, "--out", "out", "statistics file (.npz: mu, sigma)", required=True)
    _flag(stats, "--name", "name", "run directory name under runs/")
    score = _command(fid_sub, "score", "Frechet distance of a generator's images to saved statistics",
                     FidScoreConfig, _fid_score)
    _flag(score, "--checkpoint", "checkpoint", "generator checkpoint", required=True)
    _flag(score, "--stats", "stats", "statistics file from `fid stats` or pytorch-fid", required=True)
    _flag(score, "--n", "n", "generated images", int)
    _flag(score, "--seed", "seed", "latent seed", int)
    _flag(score, "--name", "name", "run directory name under runs/")
    for p in (stats, score):
        _flag(p, "--backbone", "backbone",
              "scenes (FD-scenes), inception (FID, pytorch-fid's Inception) or package.module:factory")
        _flag(p, "--weights", "weights", "local pytorch-fid Inception weights file (none: pytorch-fid's download)")
        _flag(p, "--segmenter", "segmenter", "")
        _flag(p, "--batch-size", "batch_size", "", int)
        _flag(p, "--device", "device", "none: cuda where available, else cpu")

    # `gandissect paint` serves; `gandissect paint prepare` makes the concepts file it serves
    p = _command(sub, "paint", "GANPaint in the browser: paint concepts into generated scenes (serves until Ctrl-C; "
                               "prints the URL)", PaintConfig, _paint, defaults.PAINT_CONFIG)
    _flag(p, "--port", "port", "port to listen on (0: any free port)", int)
    _flag(p, "--host", "host", "address to listen on")
    _flag(p, "--rate", "rate_run", "a repair run directory: also serve the rating page /rate")
    _flag(p, "--checkpoint", "generator", "generator to paint with")
    _flag(p, "--concepts", "concepts", "concepts file (from `gandissect paint prepare`)")
    paint_sub = p.add_subparsers(dest="paint_command", required=False)
    p = _command(paint_sub, "prepare", "make the concepts file of `gandissect paint`: dissection, ACE, brush strengths",
                 PaintPrepareConfig, _paint_prepare, defaults.PAINT_PREPARE_CONFIG)
    _flag(p, "--layers|--layer", "layers", "comma-separated layers to paint on (the first is the default)")
    _flag(p, "--n", "n", "latents of the dissection", int)
    _flag(p, "--checkpoint", "generator", "generator to prepare")
    _flag(p, "--out", "out", "concepts file to write")
    _flag(p, "--name", "name", "run directory name under runs/")

    rate = sub.add_parser("rate", help="the human study of a repair, rated at `gandissect paint --rate RUN`")
    rate_sub = rate.add_subparsers(dest="rate_command", required=True)
    p = _command(rate_sub, "summary", "preference for the repaired images over the original and random ablations, "
                 "with 95% intervals", RateSummaryConfig, _rate_summary)
    p.add_argument("run", nargs="?", default=None, metavar="RUN", help="repair run directory (with ratings.jsonl)")
    p.get_default("flag_keys").append("run")
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
    if result is not None:  # None: a server, which announced itself
        print(json_text(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
