"""How well a scene GAN matches the world: per-class pixel shares and FD-scenes, real vs generated.

Both sides are labelled by the same segmenter, so a class the segmenter misreads is misread on both
sides and the comparison stays fair. The bar a shipped GAN must pass: every class covering at least
``min_share`` of real pixels has a generated share within ``tolerance`` (relative) of the real one.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from gandissect.data import scenes
from gandissect.data.latents import generated_batches
from gandissect.fid import scenes_fd
from gandissect.io import figure_array, image_grid


def generate(generator, seed: int, n: int, batch_size: int = 100, start: int = 0) -> torch.Tensor:
    """Images (n, 3, R, R) in [-1, 1] for latents start..start+n-1 of stream ``seed``."""
    return torch.cat(list(generated_batches(generator, seed, n, batch_size, start)))


def sample_grid(generator, seed: int, n: int = 64, columns: int = 8) -> np.ndarray:
    return image_grid(scenes.to_uint8(generate(generator, seed, n)), columns=columns)


@torch.no_grad()
def evaluate_generator(generator, segmenter, n: int = 2000, seed: int = 0, real_seed: int = 12345,
                       batch_size: int = 100, min_share: float = 0.02, tolerance: float = 0.35) -> dict:
    """Per-class pixel shares of n generated and n real scenes (both segmented), and FD-scenes."""
    classes = segmenter.classes
    counts = {"real": torch.zeros(len(classes), dtype=torch.float64),
              "generated": torch.zeros(len(classes), dtype=torch.float64)}
    fd = scenes_fd(segmenter)
    real_data = torch.utils.data.DataLoader(scenes.SceneDataset(real_seed, n, generator.resolution),
                                            batch_size=batch_size)
    for start, (real, _) in zip(tqdm(range(0, n, batch_size), desc="real vs generated", leave=False), real_data):
        fake = generate(generator, seed, len(real), batch_size, start=start)
        for side, images in (("real", real), ("generated", fake)):
            labels = segmenter(images).argmax(dim=1)
            counts[side] += torch.bincount(labels.flatten(), minlength=len(classes)).double()
            fd.update(images, real=side == "real")
    shares = {side: (c / c.sum()).tolist() for side, c in counts.items()}
    rows = {}
    for i, name in enumerate(classes):
        if i == 0:
            continue
        real_share, gen_share = shares["real"][i], shares["generated"][i]
        relative = (gen_share - real_share) / real_share if real_share > 0 else None
        checked = real_share >= min_share
        rows[name] = {"real_share": real_share, "generated_share": gen_share, "relative_difference": relative,
                      "checked": checked, "within_tolerance": (abs(relative) <= tolerance) if checked else None}
    return {
        "n": n, "seed": seed, "real_seed": real_seed, "min_share": min_share, "tolerance": tolerance,
        "fd_scenes": float(fd.compute()),
        "classes": rows,
        "passes": all(r["within_tolerance"] for r in rows.values() if r["checked"]),
    }


def shares_chart(result: dict) -> np.ndarray:
    """Bar chart of real vs generated pixel share per class, as an (H, W, 3) uint8 picture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["classes"])
    real = [100 * result["classes"][c]["real_share"] for c in names]
    gen = [100 * result["classes"][c]["generated_share"] for c in names]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=100)
    ax.bar(x - 0.2, real, 0.4, label=f"real ({result['n']})", color="#4c72b0")
    ax.bar(x + 0.2, gen, 0.4, label=f"generated ({result['n']})", color="#dd8452")
    ax.set_xticks(x, names, rotation=30)
    ax.set_ylabel("pixel share (%)")
    ax.set_title(f"class pixel shares by the scene segmenter; FD-scenes {result['fd_scenes']:.3f}")
    ax.legend()
    return figure_array(fig)
