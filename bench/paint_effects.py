"""What the brushes do: on seeded scenes with random rectangular strokes, each concept's share of the painted area
before and after remove and draw at each strength; and the context effect (drawing a door into a building wall
against into the sky).

Runs the paint engine directly (no HTTP) with the shipped concepts file; every edit of one concept, action and
strength over all scenes runs as one batch. Prints JSON on stdout (tables on stderr).

    python bench/paint_effects.py [--n 200] [--layer layer4]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="scenes")
    parser.add_argument("--layer", default="layer4")
    parser.add_argument("--concepts", default=str(REPO / "checkpoints/scene_gan_paint_concepts.json"))
    args = parser.parse_args()

    from gandissect.models.progan import load_generator
    from gandissect.models.segmenter import SceneSegmenter
    from gandissect.steps.paint.concepts import STRENGTHS, load_concepts
    from gandissect.steps.paint.engine import Job, PaintEngine, Stroke

    concepts = load_concepts(args.concepts)
    segmenter = SceneSegmenter.load(REPO / "checkpoints/scene_segmenter.safetensors")
    engine = PaintEngine(load_generator(REPO / "checkpoints/scene_gan_generator.safetensors"), segmenter,
                         batching=False, layers=[args.layer])
    classes = list(segmenter.classes)
    rng = np.random.default_rng(0)
    masks = []
    for _ in range(args.n):  # a rectangle of 16 to 40 px a side, anywhere in the 64 x 64 scene
        mask = torch.zeros(64, 64)
        height, width = rng.integers(16, 41, size=2)
        top, left = rng.integers(0, 64 - height + 1), rng.integers(0, 64 - width + 1)
        mask[top:top + height, left:left + width] = 1
        masks.append(mask)

    def shares(concept: dict, action: str, n_units: int, seeds, regions) -> tuple[np.ndarray, np.ndarray]:
        values = concept["draw_values"][:n_units] if action == "draw" else [0.0] * n_units
        index = classes.index(concept["name"])
        jobs = [Job([seed], [Stroke(concept["name"], args.layer, action, index, concept["units"][:n_units], values,
                                    region)]) for seed, region in zip(seeds, regions)]
        for start in range(0, len(jobs), 32):
            engine.run(jobs[start:start + 32])
        before, after = [], []
        for job, region in zip(jobs, regions):
            result, inside = job.results[0], region.bool()
            before.append(float((result["original_labels"] == index).any(0)[inside].float().mean()))
            after.append(float((result["labels"] == index).any(0)[inside].float().mean()))
        return np.array(before), np.array(after)

    table = {}
    counts = concepts["layers"][args.layer]["strengths"]["units"]
    for concept in [c for c in concepts["concepts"] if c["layer"] == args.layer]:
        row = {}
        for action in ("remove", "draw"):
            for strength in STRENGTHS:
                before, after = shares(concept, action, counts[strength], range(args.n), masks)
                row[f"{action}_{strength}"] = {"before": round(float(before.mean()), 4),
                                               "after": round(float(after.mean()), 4)}
        table[concept["name"]] = row
        print(f"{concept['name']:9s} " + "  ".join(f"{k}: {v['before']:.3f}->{v['after']:.3f}" for k, v in row.items()),
              file=sys.stderr, flush=True)

    # context: door drawn into a 12 x 12 px patch that is all building wall, or all sky, of the same scenes
    door = next(c for c in concepts["concepts"] if c["layer"] == args.layer and c["name"] == "door")
    plain = [Job([seed], []) for seed in range(4 * args.n)]
    for start in range(0, len(plain), 32):
        engine.run(plain[start:start + 32])
    context = {}
    for where in ("building", "sky"):
        index, seeds, regions = classes.index(where), [], []
        for job in plain:
            labels = job.results[0]["original_labels"][0]  # the predicted class (a wall pixel is "building")
            solid = torch.nn.functional.avg_pool2d((labels == index).float()[None, None], 12, stride=4)[0, 0]
            spots = torch.nonzero(solid == 1)
            if len(spots):
                top, left = (spots[len(spots) // 2] * 4).tolist()
                region = torch.zeros(64, 64)
                region[top:top + 12, left:left + 12] = 1
                seeds.append(job.seeds[0])
                regions.append(region)
            if len(seeds) == args.n:
                break
        before, after = shares(door, "draw", counts["high"], seeds, regions)
        context[f"door_into_{where}"] = {"scenes": len(seeds), "door_before": round(float(before.mean()), 4),
                                         "door_after": round(float(after.mean()), 4)}
    print(json.dumps({"layer": args.layer, "scenes": args.n, "strength_units": counts, "shares_inside_stroke": table,
                      "context": context}, indent=2))


if __name__ == "__main__":
    main()
