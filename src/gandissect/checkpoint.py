"""Weights files: safetensors with a small JSON header saying what architecture they hold.

A gandissect checkpoint is an ordinary ``.safetensors`` file whose metadata carries
``gandissect_arch`` (e.g. ``scene-segmenter``) and ``gandissect_config`` (the constructor arguments as
JSON), so a model can be rebuilt from the file alone and a file of the wrong kind is refused with a
message that says what it holds and what was expected.
"""

from __future__ import annotations

import json
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
        raise CheckpointError(f"checkpoint {path} is corrupt or not a safetensors file ({err})") from None
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
    return config, tensors


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
