"""Masks a client paints: a PNG data URL of any size (painted pixels = alpha > 0, or non-black where the PNG has no
alpha) or a rectangular 2-D list of 0/1. Everything is checked; each problem is a BadValueError naming the field."""

from __future__ import annotations

import base64
import binascii
import io
import warnings

import numpy as np
import torch
from PIL import Image

from gandissect.errors import BadValueError

MAX_SIDE = 2048          # pixels (or list entries) per side
PNG_PREFIX = "data:image/png;base64,"


def decode_mask(mask, field: str) -> torch.Tensor:
    """(h, w) float tensor of 0/1."""
    if isinstance(mask, str):
        return _from_png(mask, field)
    if isinstance(mask, list):
        return _from_list(mask, field)
    raise BadValueError(f"{field}: expected a PNG data URL or a 2-D list of 0/1, got {type(mask).__name__}")


def _from_list(rows: list, field: str) -> torch.Tensor:
    if not rows or not all(isinstance(row, list) for row in rows):
        raise BadValueError(f"{field}: expected a non-empty 2-D list (a list of rows) of 0/1")
    width = len(rows[0])
    if width == 0 or any(len(row) != width for row in rows):
        raise BadValueError(f"{field}: rows of different lengths; expected a rectangular 2-D list of 0/1")
    if len(rows) > MAX_SIDE or width > MAX_SIDE:
        raise BadValueError(f"{field}: {len(rows)} x {width} is larger than {MAX_SIDE} x {MAX_SIDE}")
    try:
        values = np.array(rows)
    except (ValueError, TypeError, OverflowError):
        values = np.array([[None]])
    if values.ndim != 2 or values.dtype.kind not in "biuf":
        raise BadValueError(f"{field}: entries must be the numbers 0 or 1")
    if not np.isin(values, (0, 1)).all():
        raise BadValueError(f"{field}: entries must be 0 or 1, got {values[~np.isin(values, (0, 1))].flat[0]!r}")
    return torch.from_numpy(values.astype(np.float32))


def _from_png(url: str, field: str) -> torch.Tensor:
    if not url.startswith(PNG_PREFIX):
        raise BadValueError(f"{field}: expected a data URL starting with {PNG_PREFIX!r}")
    try:
        raw = base64.b64decode(url[len(PNG_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise BadValueError(f"{field}: the data URL is not valid base64") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
            if image.format != "PNG":
                raise BadValueError(f"{field}: expected a PNG image, got {image.format or 'an unknown format'}")
            if image.width > MAX_SIDE or image.height > MAX_SIDE:
                raise BadValueError(f"{field}: {image.width} x {image.height} px is larger than {MAX_SIDE} x "
                                    f"{MAX_SIDE}")
            image.load()
    except BadValueError:
        raise
    except Exception as err:  # PIL raises many kinds on damaged files
        raise BadValueError(f"{field}: not a readable PNG ({type(err).__name__})") from None
    if image.width == 0 or image.height == 0:
        raise BadValueError(f"{field}: the PNG is empty")
    if "A" in image.getbands():
        painted = np.asarray(image.getchannel("A")) > 0
    elif "transparency" in image.info:
        painted = np.asarray(image.convert("RGBA").getchannel("A")) > 0
    else:
        painted = np.asarray(image.convert("L")) > 0
    return torch.from_numpy(painted.astype(np.float32))
