"""Image batches in [-1, 1] for the metrics: scenes of the built-in world, or a folder of image files."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from gandissect.data import scenes
from gandissect.errors import BadValueError


def _batched(items: list, batch_size: int, load) -> Iterator[torch.Tensor]:
    for start in range(0, len(items), batch_size):
        yield torch.stack([load(item) for item in items[start:start + batch_size]])


def scene_batches(seed: int, n: int, size: int = 64, batch_size: int = 50,
                  share: tuple[int, int] = (0, 1), variant: str = "default") -> Iterator[torch.Tensor]:
    """Scenes 0..n-1 of world ``seed`` as image batches in [-1, 1]; ``share=(rank, processes)`` keeps every
    ``processes``-th scene from ``rank`` on, one process's part of the work."""
    rank, processes = share
    dataset = scenes.SceneDataset(seed, n, size, variant=variant)
    return _batched(list(range(rank, n, processes)), batch_size, lambda i: dataset[i][0])


IMAGE_EXTENSIONS = {"bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp"}  # pytorch-fid's


def _read_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as err:  # PIL's kinds for an unreadable, truncated or broken file
        raise BadValueError(f"image {path} cannot be read ({err})") from None


def folder_batches(folder: str | Path, n: int, batch_size: int = 50) -> Iterator[torch.Tensor]:
    """The first ``n`` images of a folder (sorted by name, pytorch-fid's extensions) as batches in [-1, 1].
    They must all have one size, as in pytorch-fid. Every image is decoded once here, before the batches are drawn,
    so a broken or odd-sized one stops a command before its work, with one line naming the file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BadValueError(f"--data is 'scenes' or a folder of images; {folder} is neither")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS)
    if len(files) < n:
        raise BadValueError(f"{folder} holds {len(files)} images; {n} were asked for")
    files = files[:n]
    first_size = _read_image(files[0]).size if files else None
    for path in files[1:]:
        size = _read_image(path).size
        if size != first_size:
            raise BadValueError(f"{path} is {size[0]}x{size[1]}, {files[0].name} {first_size[0]}x{first_size[1]}: "
                                "the images of a folder must share one size")
    return _batched(files, batch_size, lambda path: scenes.to_tensor(np.asarray(_read_image(path))))
