"""Run directories and identity: ``runs/<name>/`` holds the resolved config, the JSON results and the W&B files;
a model is identified by its file's sha256 (or its weights' digest when it was not read from a file).

The JSON files are the source of truth; W&B is the dashboard. W&B runs offline by default, with
every file it writes (run data, cache, settings) kept inside the run directory, so nothing needs an
account or a network; ``wandb sync runs/<name>/wandb/offline-run-*`` uploads a run later.
"""

from __future__ import annotations

import hashlib
import json
import netrc
import os
import struct
import platform
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from gandissect.config import WandbConfig, to_dict
from gandissect.errors import ConfigError
from gandissect.io import sha256_file, write_yaml

if TYPE_CHECKING:  # torch is imported where it is used: the command line imports this module for --help
    import torch


def runs_root() -> Path:
    return Path(os.environ.get("GANDISSECT_RUNS", "runs"))


def start_run(name: str, config, root: str | Path | None = None) -> Path:
    """Create the run directory (``runs/<name>/`` unless ``root`` is given) and save the resolved config
    (a config dataclass or a plain dict) there before any work starts."""
    run_dir = Path(root) if root is not None else runs_root() / name
    run_dir.mkdir(parents=True, exist_ok=True)
    write_yaml(run_dir / "config.yaml", config if isinstance(config, dict) else to_dict(config))
    return run_dir


def module_digest(module: torch.nn.Module) -> str:
    """sha256 of a module's state dict (names and values): identifies weights that were not read from a file."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def model_identity(path: str | Path | None, module: torch.nn.Module | None = None) -> str:
    """How a run records which weights it used: the sha256 of the file at ``path``, or ``module <digest>`` for
    a module handed over in memory (which takes precedence)."""
    return f"module {module_digest(module)}" if module is not None else sha256_file(path)


def machine_description() -> str:
    import torch  # here, not at the top: the command line imports this module and answers --help without torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (GPU)"
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads"


def check_wandb_login(settings: WandbConfig) -> None:
    """W&B online needs an API key (WANDB_API_KEY, or the netrc entry ``wandb login`` writes): without one, refuse
    before any work, not at the end of the run. Looks only, without the network."""
    if settings.mode != "online" or os.environ.get("WANDB_API_KEY"):
        return
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        login = netrc.netrc(os.environ.get("NETRC")).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        login = None
    if not login:
        raise ConfigError(f"wandb.mode=online: no W&B login found (no WANDB_API_KEY, no netrc entry for {host}); "
                          "run `wandb login`, or use wandb.mode=offline and `wandb sync` the run later")


def wandb_environment(run_dir: Path, settings: WandbConfig) -> None:
    """Point every W&B directory into the run directory and set its mode."""
    base = str(run_dir.resolve())
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        os.environ[var] = base
    os.environ["WANDB_MODE"] = settings.mode
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")


def wandb_logger(run_dir: Path, settings: WandbConfig, name: str, config: dict):
    """A Lightning WandbLogger for this run, or None when W&B is disabled.

    ``WandbLogger(offline=True)`` refuses ``log_model``; setting WANDB_MODE=offline and leaving
    ``offline=False`` gives the same offline run without that restriction.
    """
    if settings.mode == "disabled":
        return None
    from pytorch_lightning.loggers import WandbLogger

    wandb_environment(run_dir, settings)
    return WandbLogger(name=name, project=settings.project, entity=settings.entity, save_dir=str(run_dir),
                       config=config, offline=False)


def wandb_run(run_dir: Path, settings: WandbConfig, name: str, config: dict):
    """A plain ``wandb`` run for commands that are not trained by Lightning (None when disabled)."""
    if settings.mode == "disabled":
        return None
    import wandb

    wandb_environment(run_dir, settings)
    return wandb.init(project=settings.project, entity=settings.entity, name=name, dir=str(run_dir),
                      config=config, reinit="finish_previous")


def read_offline_history(run_dir: str | Path) -> list[dict]:
    """The logged rows (``run.log`` calls) of the offline W&B run(s) under ``run_dir``, oldest first.

    W&B writes its records in a LevelDB-style log: a 7-byte file header, then 32 KiB blocks of
    chunks, each chunk with a 7-byte header (checksum, length, type: full / first / middle / last)
    around a serialized protobuf ``Record``. Reading it back lets tests and users check what was
    logged without an account or the W&B server.
    """
    from wandb.proto import wandb_internal_pb2

    block, rows = 32 * 1024, []
    for path in sorted(Path(run_dir).glob("**/offline-run-*/run-*.wandb")):
        data = path.read_bytes()
        if data[:4] != b":W&B":
            raise ValueError(f"{path} is not a W&B run file")
        pos, pending, records = 7, b"", []
        while pos + 7 <= len(data):
            left = block - pos % block
            if left < 7:  # the rest of a block too short for a header is padding
                pos += left
                continue
            _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
            if kind == 0 and length == 0:
                pos += left
                continue
            chunk = data[pos + 7:pos + 7 + length]
            pos += 7 + length
            if kind == 1:
                records.append(chunk)
            elif kind == 2:
                pending = chunk
            elif kind == 3:
                pending += chunk
            elif kind == 4:
                records.append(pending + chunk)
        for raw in records:
            record = wandb_internal_pb2.Record()
            record.ParseFromString(raw)
            if record.WhichOneof("record_type") != "history":
                continue
            row: dict = {}
            for item in record.history.item:
                *parents, leaf = list(item.nested_key) or [item.key]  # images etc. arrive as nested keys
                node = row
                for part in parents:
                    node = node.setdefault(part, {})
                node[leaf] = json.loads(item.value_json)
            rows.append(row)
    return rows
