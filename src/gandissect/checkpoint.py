"""Weights files: safetensors with a small JSON header saying what architecture they hold.

A gandissect checkpoint is an ordinary ``.safetensors`` file whose metadata carries
``gandissect_arch`` (e.g. ``scene-segmenter``) and ``gandissect_config`` (the constructor arguments as
JSON), so a model can be rebuilt from the file alone and a file of the wrong kind is refused with a
message that says what it holds and what was expected.
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open, save_file

from gandissect.errors import CheckpointError
from gandissect.io import atomic_path


def save_checkpoint(path: str | Path, arch: str, config: dict, state_dict: dict[str, torch.Tensor]) -> Path:
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    meta = {"gandissect_arch": arch, "gandissect_config": json.dumps(config, sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def read_checkpoint(path: str | Path, expected_arch: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config, tensors) of a checkpoint file, or a CheckpointError naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        if _text_hint(path):
            raise CheckpointError(f"checkpoint {path} is not a safetensors file{_text_hint(path)}; expected a "
                                  f"{expected_arch!r} checkpoint written by gandissect") from None
        raise CheckpointError(f"checkpoint {path} is corrupt or not a safetensors file ({_first_line(err)})") from None
    arch = meta.get("gandissect_arch")
    if arch is None:
        raise CheckpointError(f"checkpoint {path} has no gandissect_arch metadata; expected a {expected_arch!r} "
                              "checkpoint written by gandissect")
    if arch != expected_arch:
        raise CheckpointError(f"checkpoint {path} holds a {arch!r} model; expected {expected_arch!r}")
    try:
        config = json.loads(meta.get("gandissect_config", "{}"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"checkpoint {path} has unreadable gandissect_config metadata ({err})") from None
    check_finite(tensors, path)
    return config, tensors


def read_state_dict(path: str | Path, what: str = "checkpoint", allow_pickle: bool = False) -> dict:
    """A PyTorch state dict file (.pth / .pt), checked to hold finite tensors. Loaded with ``weights_only`` (tensors,
    plain containers and ``argparse.Namespace``, which rosinality's files carry); other Python objects are refused
    with a one-line error naming the risk unless ``allow_pickle`` (then the file is unpickled as it is)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    # torch.save writes a zip archive (or, before torch 1.6, a pickle); anything else gets torch's multi-line advice
    if magic != b"PK\x03\x04" and magic[:1] != b"\x80":
        raise CheckpointError(f"{what} {path} is corrupt or not a PyTorch state dict file{_text_hint(path)}; expected "
                              "a .pth/.pt file from torch.save or a .safetensors checkpoint written by gandissect")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            loaded = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if allow_pickle or not found:
            raise CheckpointError(f"{what} {path} is corrupt or not a PyTorch state dict ({_first_line(err)})") \
                from None
        raise CheckpointError(f"{what} {path} holds pickled Python objects ({found.group(1)}), and unpickling can run "
                              "any code the file holds; pass allow_pickle=true (--set allow_pickle=true) only for a "
                              "file you trust") from None
    except Exception as err:  # torch raises many types for a corrupt file
        raise CheckpointError(f"{what} {path} is corrupt or not a PyTorch state dict ({_first_line(err)})") from None
    if not isinstance(loaded, dict):
        raise CheckpointError(f"{what} {path} holds a {type(loaded).__name__}, not a state dict")
    state = loaded["state_dict"] if isinstance(loaded.get("state_dict"), dict) else loaded
    check_finite({k: v for k, v in state.items() if isinstance(v, torch.Tensor)}, path, what)
    return loaded


def check_finite(tensors: dict[str, torch.Tensor], source: str | Path, what: str = "checkpoint") -> None:
    """Refuse weights holding NaN or Inf: they give black images and NaN statistics without any error."""
    bad = [key for key, tensor in tensors.items()
           if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if bad:
        listed = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise CheckpointError(f"{what} {source} holds non-finite values (NaN or Inf) in {listed}")


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _text_hint(path: Path) -> str:
    """' (it is a text file beginning ...)' when ``path`` holds text, such as a YAML config given by mistake."""
    with open(path, "rb") as f:
        text = f.read(256).decode("utf-8", errors="ignore")  # a character cut at byte 256 is dropped
    if not text.strip() or not all(c.isprintable() or c.isspace() for c in text):
        return ""
    first = text.strip().splitlines()[0][:40]
    return f" (it is a text file beginning {first!r}{', a config?' if path.suffix in ('.yaml', '.yml') else ''})"


def load_state_checked(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Load tensors into module, listing missing, unexpected and mis-shaped keys in one error."""
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    shapes = sorted(f"{k} (file {tuple(tensors[k].shape)}, model {tuple(own[k].shape)})"
                    for k in set(own) & set(tensors) if tensors[k].shape != own[k].shape)
    problems = [f"{label}: {', '.join(keys)}" for label, keys in
                (("missing keys", missing), ("unexpected keys", extra), ("mis-shaped keys", shapes)) if keys]
    if problems:
        raise CheckpointError(f"checkpoint {source} does not fit {type(module).__name__}; " + "; ".join(problems))
    module.load_state_dict(tensors)
