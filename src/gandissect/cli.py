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

Bad input (a missing file, an unknown key or class, a checkpoint of the wrong kind) ends with one
line on stderr naming the problem and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from gandissect.errors import GandissectError


def _scenes(args) -> dict:
    import numpy as np

    from gandissect.data import scenes
    from gandissect.io import image_grid, save_image, write_json
    from gandissect.runs import start_run

    scenes.check_size(args.size)
    wanted = scenes.class_index(args.class_name) if args.class_name else None
    pairs, index = [], 0
    while len(pairs) < args.n:
        image, label = scenes.render_scene(args.seed, index, args.size)
        if wanted is None or (label == wanted).any():
            pairs.append((index, image, label))
        index += 1
        if index > 1000 * args.n:
            raise GandissectError(f"class {args.class_name!r} is too rare: found {len(pairs)} scenes in {index}")
    stats_n = max(args.n, args.stats_n)
    out = start_run("scenes", {"command": "scenes", "n": args.n, "seed": args.seed, "size": args.size,
                               "class": args.class_name, "stats_n": stats_n}, root=args.out)
    images = image_grid(np.stack([p[1] for p in pairs]))
    labels = image_grid(scenes.colorize(np.stack([p[2] for p in pairs])))
    gap = np.full((images.shape[0], 8, 3), 255, np.uint8)
    save_image(out / "scenes.png", np.concatenate([images, gap, labels], axis=1), scale=2)
    stats = scenes.world_statistics(args.seed, stats_n, args.size)
    stats["shown_indices"] = [p[0] for p in pairs]
    stats["legend"] = {name: scenes.LABEL_COLORS[i].tolist() for i, name in enumerate(scenes.CLASSES) if i}
    write_json(out / "statistics.json", stats)
    return {"out": str(out), "images": str(out / "scenes.png"), "statistics": str(out / "statistics.json")}


def _train(args) -> dict:
    from gandissect.config import GANTrainConfig, SegmenterTrainConfig, load_config
    from gandissect.train import train_gan, train_segmenter

    if args.model == "gan":
        return train_gan(load_config(GANTrainConfig, args.config, args.set))
    return train_segmenter(load_config(SegmenterTrainConfig, args.config, args.set))


def _eval(args) -> dict:
    from gandissect.io import write_json
    from gandissect.models.segmenter import SceneSegmenter, evaluate_segmenter
    from gandissect.runs import start_run

    segmenter = SceneSegmenter.load(args.checkpoint)
    run_dir = start_run(args.name, {"command": "eval segmenter", "checkpoint": str(args.checkpoint),
                                    "n": args.n, "seed": args.seed, "size": args.size})
    results = evaluate_segmenter(segmenter, args.seed, args.n, args.size)
    results["checkpoint"] = str(args.checkpoint)
    write_json(run_dir / "results.json", results)
    return results


def _eval_gan(args) -> dict:
    from gandissect.io import save_image, write_json
    from gandissect.models.progan import load_generator
    from gandissect.models.segmenter import SceneSegmenter
    from gandissect.quality import evaluate_generator, sample_grid, shares_chart
    from gandissect.runs import start_run

    generator = load_generator(args.checkpoint)
    segmenter = SceneSegmenter.load(args.segmenter)
    run_dir = start_run(args.name, {"command": "eval gan", "checkpoint": str(args.checkpoint), "n": args.n,
                                    "seed": args.seed, "real_seed": args.real_seed, "segmenter": args.segmenter})
    results = evaluate_generator(generator, segmenter, args.n, args.seed, args.real_seed)
    results["checkpoint"] = str(args.checkpoint)
    save_image(run_dir / "shares.png", shares_chart(results))
    save_image(run_dir / "samples.png", sample_grid(generator, args.seed), scale=2)
    write_json(run_dir / "results.json", results)
    return {**results, "run_dir": str(run_dir)}


def _generate(args) -> dict:
    from pathlib import Path

    from gandissect.io import save_image, write_json
    from gandissect.models.progan import load_generator
    from gandissect.quality import sample_grid

    generator = load_generator(args.checkpoint)
    out = Path(args.out)
    save_image(out, sample_grid(generator, args.seed, args.n, args.columns), scale=args.scale)
    record = {"checkpoint": str(args.checkpoint), "seed": args.seed, "n": args.n, "latent_indices": [0, args.n - 1],
              "latent_dim": generator.latent_dim, "resolution": generator.resolution, "image": str(out),
              "reproduce": f"gandissect generate --checkpoint {args.checkpoint} --n {args.n} --seed {args.seed}"}
    write_json(out.with_suffix(".json"), record)
    return record


def _fid_backbone(args):
    import torch

    from gandissect.fid import build_fd

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return build_fd(args.backbone, weights=args.weights, segmenter_path=args.segmenter).to(args.device)


def _fid_finish(run_dir, results: dict, caught) -> dict:
    """Say every warning (too few images for the features, a singular covariance) on stderr and in the results."""
    from gandissect.io import write_json

    results["warnings"] = [str(w.message) for w in caught]
    for message in results["warnings"]:
        print(f"gandissect: warning: {message}", file=sys.stderr)
    write_json(run_dir / "results.json", results)
    return {**results, "run_dir": str(run_dir)}


def _fid_stats(args) -> dict:
    import warnings

    from gandissect.fid import feed, folder_batches, save_statistics, scene_batches
    from gandissect.runs import start_run

    if args.data == "scenes":
        batches = scene_batches(args.seed, args.n, args.size, args.batch_size)
    else:
        batches = folder_batches(args.data, args.n, args.batch_size)
    metric = _fid_backbone(args)
    run_dir = start_run(args.name, {"command": "fid stats", "data": args.data, "n": args.n, "seed": args.seed,
                                    "size": args.size, "backbone": args.backbone, "weights": args.weights,
                                    "segmenter": args.segmenter, "out": str(args.out)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        feed(metric, batches, real=True, total=args.n, desc=f"{metric.name} statistics")
        mu, sigma = metric.statistics(real=True)
    save_statistics(args.out, mu, sigma, name=metric.name, count=args.n)
    results = {"metric": metric.name, "statistics": str(args.out), "n": args.n, "data": args.data,
               "seed": args.seed if args.data == "scenes" else None, "num_features": metric.num_features}
    return _fid_finish(run_dir, results, caught)


def _fid_score(args) -> dict:
    import warnings

    from gandissect.errors import BadValueError
    from gandissect.data.latents import generated_batches
    from gandissect.fid import feed, load_statistics
    from gandissect.models.progan import load_generator
    from gandissect.runs import start_run

    stats = load_statistics(args.stats)
    metric = _fid_backbone(args)
    generator = load_generator(args.checkpoint).eval().to(args.device)
    if stats["name"] is not None and stats["name"] != metric.name:
        raise BadValueError(f"statistics file {args.stats} holds {stats['name']} statistics; backbone "
                            f"{args.backbone!r} gives {metric.name}")
    try:
        metric.set_real_statistics(stats["mu"], stats["sigma"], count=stats["count"])
    except BadValueError as err:
        raise BadValueError(f"statistics file {args.stats}: {err}") from None
    run_dir = start_run(args.name, {"command": "fid score", "checkpoint": str(args.checkpoint),
                                    "stats": str(args.stats), "n": args.n, "seed": args.seed,
                                    "backbone": args.backbone, "weights": args.weights, "segmenter": args.segmenter})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        feed(metric, generated_batches(generator, args.seed, args.n, args.batch_size), real=False,
             total=args.n, desc=f"{metric.name} generated")
        value = float(metric.compute())
    results = {"metric": metric.name, "value": value, "n": args.n, "seed": args.seed,
               "latent_indices": [0, args.n - 1], "checkpoint": str(args.checkpoint), "stats": str(args.stats),
               "real_n": stats["count"]}
    return _fid_finish(run_dir, results, caught)


def _dissect(args) -> dict:
    from gandissect.config import DissectConfig, load_config
    from gandissect.dissect import run_dissection

    overrides = list(args.set)
    if args.layers:
        overrides.append(f"layers=[{args.layers}]")
    if args.n is not None:
        overrides.append(f"n={args.n}")
    cfg = load_config(DissectConfig, args.config, overrides)
    result = run_dissection(cfg)
    if not result:  # a DDP process other than rank 0
        return {}
    from gandissect.runs import runs_root

    return {"run_dir": str(runs_root() / cfg.name), "report": str(runs_root() / cfg.name / "index.html"),
            "wall_s": result["timing"]["wall_s"],
            "layers": {name: {"units": layer["units"], "interpretable_units": layer["interpretable_units"],
                              "per_class": layer["per_class"]} for name, layer in result["layers"].items()}}


def _ace(args) -> dict:
    from gandissect.config import AceConfig, load_config
    from gandissect.intervene import run_ace

    overrides = list(args.set)
    if args.class_name:
        overrides.append(f"class_name={args.class_name}")
    if args.layer:
        overrides.append(f"layer={args.layer}")
    cfg = load_config(AceConfig, args.config, overrides)
    with contextlib.redirect_stdout(sys.stderr):  # Lightning's progress bars write to stdout; it holds the JSON
        result = run_ace(cfg)
    if not result:  # a DDP process other than rank 0
        return {}
    removal = result["removal"]
    return {"run_dir": result["run_dir"], "report": f"{result['run_dir']}/index.html", "class": result["class"],
            "layer": result["layer"], "units_above_half": result["units_above_half"],
            "top_ace_units": result["rankings"]["ace"][:10], "top_iou_units": result["rankings"]["iou"][:10],
            "removal": {name: {k: v for k, v in r.items() if k != "curve"} for name, r in removal.items()},
            "ace_of_top_units": result["ace_of_top_units"], "context": result["context"][:6],
            "wall_s": result["timing"]["wall_s"]}


def _repair(args) -> dict:
    from gandissect.config import RepairConfig, load_config
    from gandissect.repair import run_repair

    cfg = load_config(RepairConfig, args.config, list(args.set))
    with contextlib.redirect_stdout(sys.stderr):  # Lightning's progress bars write to stdout; it holds the JSON
        result = run_repair(cfg)
    if not result:  # a DDP process other than rank 0
        return {}
    from gandissect.runs import runs_root

    run_dir = runs_root() / cfg.name
    fd = result["fd"]
    summary = {"run_dir": str(run_dir), "report": str(run_dir / "index.html"), "layer": cfg.layer,
               "chosen_units": result["chosen_units"], "fd_name": fd["name"], "fd_original": fd["original"],
               "fd_repaired": fd["repaired"], "fd_random": fd["random"], "fd_random_mean": fd["random_mean"],
               "fd_random_std": fd["random_std"], "artifact_fraction": result["artifact_fraction"],
               "checkpoint": result["checkpoint"].get("path") and str(run_dir / result["checkpoint"]["path"]),
               "wall_s": result["timing"]["wall_s"]}
    if "planted" in result:
        summary["planted"] = result["planted"]
    return summary


def _demo(args) -> dict:
    from gandissect.config import DemoConfig, load_config
    from gandissect.demo import run_demo

    return run_demo(load_config(DemoConfig, args.config, args.set))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gandissect", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the main job on the built-in default and write runs/demo/")
    p.add_argument("--config", default="experiments/scenes/demo.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.set_defaults(func=_demo)

    p = sub.add_parser("dissect", help="which units of a generator's layers draw which classes (writes runs/<name>/)")
    p.add_argument("--config", default="experiments/scenes/dissect.yaml")
    p.add_argument("--layers", default=None, help="comma-separated layer names (overrides the config)")
    p.add_argument("--n", type=int, default=None, help="number of seeded latents (overrides the config)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.set_defaults(func=_dissect)

    p = sub.add_parser("ace", help="which units cause a class: learned intervention, ACE, removal curves, context")
    p.add_argument("--config", default="experiments/scenes/ace.yaml")
    p.add_argument("--class", dest="class_name", default=None, help="class to cause or remove (overrides the config)")
    p.add_argument("--layer", default=None, help="layer to intervene on (overrides the config)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.set_defaults(func=_ace)

    p = sub.add_parser("repair", help="find the units that draw artifacts, ablate them, compare FDs (writes "
                                      "runs/<name>/)")
    p.add_argument("--config", default="experiments/scenes/repair.yaml")
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
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--name", default="eval-segmenter", help="run directory name under runs/")
    p.set_defaults(func=_eval)
    p = eval_sub.add_parser("gan", help="class pixel shares and FD-scenes, generated vs real scenes")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--n", type=int, default=2000, help="generated and real scenes, each")
    p.add_argument("--seed", type=int, default=0, help="latent seed")
    p.add_argument("--real-seed", type=int, default=12345, help="world seed of the real scenes")
    p.add_argument("--segmenter", default="checkpoints/scene_segmenter.safetensors")
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
        p.add_argument("--segmenter", default="checkpoints/scene_segmenter.safetensors")
        p.add_argument("--batch-size", type=int, default=50)
        p.add_argument("--device", default=None, help="default: cuda where available, else cpu")
    stats.set_defaults(func=_fid_stats)
    score.set_defaults(func=_fid_score)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except GandissectError as err:
        print(f"gandissect: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
