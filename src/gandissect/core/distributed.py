"""The one multi-process layer: who am I, wait for the others, share results, and the Trainer that starts them.

Every command that runs on several processes does so through a Lightning ``Trainer`` built by ``build_trainer``
from the ``devices`` settings (accelerator, devices, strategy, num_nodes, precision). Lightning's ``ddp`` starts
the other processes itself (by running the same command again) or, under an external launcher (torchrun, SLURM),
joins the ones the launcher started; either way the process group exists once the first Trainer pass has begun,
and it stays for the rest of the command. Outside it (one process) every helper here is a no-op.

The rule for files: rank 0 writes, the others read after a ``barrier`` (``rank_zero_first``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, TypeVar

import pytorch_lightning as pl
import torch
import torch.distributed as dist

from gandissect.config import DevicesConfig
from gandissect.errors import ConfigError

T = TypeVar("T")


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank (0 outside a multi-process run)."""
    return dist.get_rank() if _active() else 0


def world_size() -> int:
    """The number of processes (1 outside a multi-process run)."""
    return dist.get_world_size() if _active() else 1


def is_rank_zero() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def gather(obj: T) -> list[T]:
    """Every process's ``obj`` (any picklable object), in rank order, on every process."""
    if world_size() == 1:
        return [obj]
    gathered: list = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def gather_dicts(mine: dict) -> dict:
    """The union of every process's dict (each process measured its own share of the work)."""
    return {k: v for part in gather(mine) for k, v in part.items()}


def rank_zero_first(write: Callable[[], Any]) -> None:
    """Rank 0 calls ``write`` (e.g. saves a file); every process then waits until it is done, so the others can
    read what it wrote."""
    if is_rank_zero():
        write()
    barrier()


def my_share(items: list) -> list:
    """This process's part of ``items``: every ``world_size()``-th item from its rank on."""
    return items[rank()::world_size()]


def collective_device() -> torch.device:
    """Where tensors must be for a collective: NCCL gathers CUDA tensors only, gloo CPU ones."""
    if world_size() > 1 and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def build_trainer(devices: DevicesConfig, run_dir: str | Path, callbacks: list = (), logger=False,
                  **kwargs) -> pl.Trainer:
    """The Lightning Trainer of a gandissect command: the ``devices`` settings, outputs under ``run_dir``.

    Lightning reads an external launcher's environment (torchrun, SLURM) itself, so the same settings work on one
    machine and on a cluster."""
    options = {"enable_checkpointing": False, "enable_model_summary": False, **kwargs}
    return pl.Trainer(accelerator=devices.accelerator, devices=devices.devices, strategy=devices.strategy,
                      num_nodes=devices.num_nodes, precision=devices.precision, logger=logger,
                      default_root_dir=str(run_dir), callbacks=list(callbacks), **options)


def check_devices(devices: DevicesConfig) -> None:
    """Refuse in one line, before any work, ``devices`` settings Lightning cannot run here (an accelerator this machine
    lacks, an unknown precision, devices of the wrong type): a Trainer is built with them, quietly, and dropped."""
    from pytorch_lightning.utilities.exceptions import MisconfigurationException

    loggers = [logging.getLogger(name) for name in ("pytorch_lightning", "lightning_fabric", "lightning")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)  # its "GPU available: ..." lines come when the real Trainer is built
    try:
        build_trainer(devices, ".", enable_progress_bar=False)
    except (MisconfigurationException, TypeError, ValueError) as err:
        message = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"devices (accelerator={devices.accelerator!r}, devices={devices.devices!r}, "
                          f"strategy={devices.strategy!r}, "
                          f"precision={devices.precision!r}): {message}") from None
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
