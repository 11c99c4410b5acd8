"""The ``gandissect`` command line.

    gandissect demo [--config experiments/scenes/demo.yaml]
    gandissect scenes --n 64 --seed 0 --out DIR [--size 64] [--class dome]
    gandissect train segmenter --config experiments/scenes/segmenter.yaml [--set trainer.max_steps=100]
    gandissect eval segmenter --checkpoint PATH --n 1000 --seed 12345

Bad input (a missing file, an unknown key or class, a checkpoint of the wrong kind) ends with one
line on stderr naming the problem and exit status 2.
"""

from __future__ import annotations

import argparse
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
    from gandissect.config import SegmenterTrainConfig, load_config
    from gandissect.train import train_segmenter

    cfg = load_config(SegmenterTrainConfig, args.config, args.set)
    return train_segmenter(cfg)


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

    p = sub.add_parser("scenes", help="draw scenes of the built-in world with their labels")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--class", dest="class_name", default=None, help="show only scenes containing this class")
    p.add_argument("--stats-n", type=int, default=1000, help="scenes used for the class statistics")
    p.set_defaults(func=_scenes)

    p = sub.add_parser("train", help="train a model")
    p.add_argument("model", choices=["segmenter"])
    p.add_argument("--config", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="evaluate a model on held-out scenes; prints JSON")
    p.add_argument("model", choices=["segmenter"])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--name", default="eval-segmenter", help="run directory name under runs/")
    p.set_defaults(func=_eval)
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
