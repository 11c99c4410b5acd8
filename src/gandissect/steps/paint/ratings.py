"""The paper's human study, built in: which image of one latent looks more realistic, the repaired generator's or
the original's (or a random ablation's)?

``RatingSession`` reads a repair run directory (repair.json, repaired_generator.safetensors), shows pairs in random
order and appends each answer as one JSON line to the run's ``ratings.jsonl`` (one ``write`` of a whole line on a file
opened for appending, under a lock, then fsync: a line is there whole or not at all). ``summarize`` turns the file
into the preference for the repaired image over each alternative with a 95% Clopper-Pearson interval.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from scipy.stats import beta

from gandissect.core.hooks import fold_ablation
from gandissect.core.latents import seeded_latents
from gandissect.errors import BadValueError
from gandissect.models.generators import load_generator
from gandissect.steps.paint.engine import png_url, to_uint8

ALTERNATIVES = ("original", "random")
RATINGS = "ratings.jsonl"


def read_repair_run(run_dir: str | Path) -> dict:
    run_dir = Path(run_dir)
    path = run_dir / "repair.json"
    if not path.is_file():
        raise BadValueError(f"{run_dir} is not a repair run directory (no repair.json; run `gandissect repair`)")
    found = json.loads(path.read_text())
    missing = [k for k in ("settings", "random_units", "checkpoint") if k not in found]
    if missing:
        raise BadValueError(f"{path} lacks {', '.join(missing)}; expected the repair.json `gandissect repair` writes")
    repaired = (found["checkpoint"] or {}).get("path")
    if not repaired or not (run_dir / repaired).is_file():
        raise BadValueError(f"{run_dir} has no repaired generator ({repaired or 'none saved'}); rate a run whose "
                            "default route chose units")
    return found


class RatingSession:
    """Pairs (repaired vs an alternative, sides at random) for latents of stream ``seed``, and their answers."""

    def __init__(self, run_dir: str | Path, seed: int = 777, max_open: int = 10000):
        self.run_dir = Path(run_dir)
        found = read_repair_run(self.run_dir)
        settings = found["settings"]
        original = load_generator(settings["generator"]).eval()
        self.generators = {"repaired": load_generator(self.run_dir / found["checkpoint"]["path"]).eval(),
                           "original": original,
                           "random": fold_ablation(original, settings["layer"], found["random_units"][0]).eval()}
        self.latent_stream = seed
        self.rng = np.random.default_rng(seed)
        self.open: OrderedDict[str, dict] = OrderedDict()
        self.max_open = max_open
        self.lock = threading.Lock()

    @torch.no_grad()
    def image(self, which: str, index: int) -> np.ndarray:
        z = seeded_latents(self.latent_stream, 1, self.generators[which].latent_dim, start=index)
        return to_uint8(self.generators[which](z))[0].numpy()

    def pair(self) -> dict:
        with self.lock:
            index = int(self.rng.integers(0, 2**31 - 1))
            alternative = ALTERNATIVES[int(self.rng.integers(0, 2))]
            repaired_side = "left" if self.rng.integers(0, 2) == 0 else "right"
            pair_id = secrets.token_hex(8)
            self.open[pair_id] = {"latent": index, "alternative": alternative, "repaired_side": repaired_side}
            while len(self.open) > self.max_open:
                self.open.popitem(last=False)
        sides = {repaired_side: "repaired", ("right" if repaired_side == "left" else "left"): alternative}
        return {"pair": pair_id, "left": png_url(self.image(sides["left"], index)),
                "right": png_url(self.image(sides["right"], index))}

    def answer(self, pair_id: str, choice: str) -> dict:
        with self.lock:
            shown = self.open.pop(pair_id)  # KeyError: unknown or already answered
            line = {"time": round(time.time(), 3), "pair": pair_id, **shown, "choice": choice,
                    "preferred_repaired": choice == shown["repaired_side"]}
            append_line(self.run_dir / RATINGS, line)
        return {"recorded": True, "ratings": str(self.run_dir / RATINGS)}


def append_line(path: Path, record: dict) -> None:
    data = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def binomial_interval(successes: int, n: int, level: float = 0.95) -> tuple[float | None, float | None]:
    """Clopper-Pearson (exact) interval of a proportion."""
    if n == 0:
        return None, None
    tail = (1 - level) / 2
    low = 0.0 if successes == 0 else float(beta.ppf(tail, successes, n - successes + 1))
    high = 1.0 if successes == n else float(beta.ppf(1 - tail, successes + 1, n - successes))
    return low, high


def summarize(run_dir: str | Path) -> dict:
    """Preference for the repaired image over each alternative, from the run's ratings.jsonl."""
    path = Path(run_dir) / RATINGS
    if not path.is_file():
        raise BadValueError(f"{path} not found: no ratings yet (serve them with `gandissect paint --rate {run_dir}`)")
    counts = {name: [0, 0] for name in ALTERNATIVES}
    skipped = 0
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        try:
            record = json.loads(text)
            counts[record["alternative"]][0] += bool(record["preferred_repaired"])
            counts[record["alternative"]][1] += 1
        except (json.JSONDecodeError, KeyError, TypeError):
            skipped += 1
    out = {"ratings": str(path), "skipped_lines": skipped, "paper": {"original": 0.724, "random": 0.499}}
    for name, (wins, n) in counts.items():
        low, high = binomial_interval(wins, n)
        out[f"over_{name}"] = {"answers": n, "preferred_repaired": wins,
                               "share": round(wins / n, 4) if n else None,
                               "ci95": [round(low, 4), round(high, 4)] if n else None}
    return out
