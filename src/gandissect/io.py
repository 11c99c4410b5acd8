"""Atomic file output: a result file is either the old good one or the new complete one, never half."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import yaml
from PIL import Image

from gandissect.errors import BadValueError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes owner-only files; results are ordinary files
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def json_text(obj) -> str:
    """JSON with every NaN or infinity written as null: most JSON parsers refuse the NaN and Infinity tokens."""
    return json.dumps(_finite(obj), indent=2, sort_keys=False, allow_nan=False)


def _finite(obj):
    if isinstance(obj, float):  # numpy's float64 is a float too
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: _finite(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(value) for value in obj]
    return obj


def write_json(path: str | Path, obj) -> Path:
    return write_text(path, json_text(obj) + "\n")


def write_yaml(path: str | Path, obj) -> Path:
    return write_text(path, yaml.safe_dump(obj, sort_keys=False))


def check_writable_dir(path: str | Path, what: str = "output directory", shown: str | Path | None = None) -> Path:
    """Refuse in one line a directory that cannot be made or written, before any work: a probe file is created and
    removed in it, or in its nearest existing parent when it does not exist yet (which is then left as it was).
    ``shown``: the path the user gave, named in the message (default: ``path``)."""
    path = Path(path)
    shown = path if shown is None else shown
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "" if Path(shown) == existing else f": {existing}"
        raise BadValueError(f"{what} {shown}{where} is a file, not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".gandissect-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise BadValueError(f"{what} {shown} cannot be written ({err.strerror}: {existing})") from None
    return path


def check_writable_file(path: str | Path, what: str = "output file") -> Path:
    """Refuse in one line a file path that cannot be written (see ``check_writable_dir``)."""
    path = Path(path)
    if path.is_dir():
        raise BadValueError(f"{what} {path} is a directory; expected a file name")
    check_writable_dir(path.parent, what, shown=path)
    return path


def save_image(path: str | Path, image: np.ndarray, scale: int = 1) -> Path:
    """Save an (H, W, 3) uint8 array as PNG, optionally enlarged with nearest-neighbour pixels."""
    picture = Image.fromarray(image)
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")
    return Path(path)


def image_grid(images: np.ndarray, columns: int = 8, pad: int = 1) -> np.ndarray:
    """(N, H, W, 3) uint8 -> one (rows*H, columns*W, 3) picture with a white border between tiles."""
    n, h, w, _ = images.shape
    columns = min(columns, n)
    rows = -(-n // columns)
    grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), 255, np.uint8)
    for i, tile in enumerate(images):
        r, c = divmod(i, columns)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = tile
    return grid


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def figure_array(fig) -> np.ndarray:
    """A matplotlib figure as an (H, W, 3) uint8 picture; the figure is closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.canvas.draw()
    picture = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return picture
