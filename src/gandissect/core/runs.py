"""Run directories and identity: ``runs/<name>/`` holds the resolved config, the JSON results and the W&B files;
a model is identified by its file's sha256 (or its weights' digest when it was not read from a file).

One run directory, one owner: ``start_run`` takes an exclusive OS file lock (``flock``) on ``runs/<name>/.lock``,
with the owner's PID written inside, and holds it until the command ends (``release_runs``) or the process dies
(the OS drops the lock with the process, so a killed run never leaves a stale lock). A second run under the same
name refuses with one line naming that PID (``RunBusyError``) and writes nothing; the command line checks this
before any work too (``check_run_free``). Under several processes only the launching process (rank 0) takes the
lock and writes the config: the processes it starts share its run directory.

The settings of a finished run are never changed by a later one: an attempt writes its resolved config to
``config.running.yaml``, and ``finish_run`` renames that to ``config.yaml`` only once the attempt has succeeded. So
``config.yaml`` always describes the results beside it; a failed or killed attempt leaves its own settings in
``config.running.yaml`` (the next attempt replaces it). Resuming an interrupted run does not read either file:
the dissection compares the settings saved with its tally, training resumes from its Lightning checkpoint.

The JSON files are the source of truth; W&B is the dashboard. W&B runs offline by default, with every file it
writes (run data, cache, settings) kept inside the run directory, so nothing needs an
account or a network; ``wandb sync runs/<name>/wandb/offline-run-*`` uploads a run later. The run's W&B id is kept
in ``wandb_id.txt``, so a rerun under the same name continues the same W&B run instead of adding another.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import netrc
import os
import struct
import platform
import secrets
import string
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from gandissect.config import WandbConfig, to_dict
from gandissect.core.factory import is_factory_spec, load_factory
from gandissect.errors import ConfigError, GandissectError
from gandissect.io import sha256_file, write_text, write_yaml

if TYPE_CHECKING:  # torch is imported where it is used: the command line imports this module for --help
    import torch


def runs_root() -> Path:
    return Path(os.environ.get("GANDISSECT_RUNS", "runs"))


LOCK_FILE = ".lock"
CONFIG_FILE = "config.yaml"
RUNNING_CONFIG_FILE = "config.running.yaml"

_held: dict[Path, int] = {}  # run directories this process owns (resolved path -> descriptor of the locked file)


class RunBusyError(GandissectError):
    """Another process owns the run directory."""


def launch_rank_zero() -> bool:
    """Whether this process owns the run directories it writes: the only process, or rank 0 of several. Read from
    the launchers' environment (torchrun sets RANK, SLURM SLURM_PROCID, Lightning's ddp LOCAL_RANK and NODE_RANK in
    the processes it starts), because a run directory is taken before any process group exists."""
    if os.environ.get("RANK"):
        return int(os.environ["RANK"]) == 0
    return all(int(os.environ.get(key) or 0) == 0
               for key in ("LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"))


def _busy(run_dir: Path, fd: int) -> RunBusyError:
    holder = b""
    for _ in range(50):  # the owner writes its PID right after taking the lock
        holder = os.pread(fd, 32, 0).strip()
        if holder:
            break
        time.sleep(0.01)
    pid = holder.decode(errors="replace") or "unknown"
    return RunBusyError(f"run directory {run_dir} is in use by another gandissect run (PID {pid}); wait for it to "
                        "end or use another name")


def check_run_free(run_dir: str | Path) -> None:
    """Refuse at once, writing nothing, when another process owns ``run_dir``; ``start_run`` takes it later."""
    run_dir = Path(run_dir)
    if not launch_rank_zero() or run_dir.resolve() in _held:
        return
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:  # no lock file: nobody has run here yet
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # shared: two checks at once do not refuse each other
    except BlockingIOError:
        raise _busy(run_dir, fd) from None
    finally:
        os.close(fd)


def lock_run(run_dir: str | Path) -> None:
    """Make ``run_dir`` this process's (see the module docstring); again for a directory it owns is a no-op."""
    run_dir = Path(run_dir)
    if not launch_rank_zero() or run_dir.resolve() in _held:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    for attempt in range(20):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if attempt == 19:  # a check_run_free holds it for an instant only; an owner for its whole run
                error = _busy(run_dir, fd)
                os.close(fd)
                raise error from None
            time.sleep(0.01)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[run_dir.resolve()] = fd


def release_runs() -> None:
    """Give up every run directory this process owns (the command line does this when a command ends)."""
    while _held:
        os.close(_held.popitem()[1])


def start_run(name: str, config, root: str | Path | None = None) -> Path:
    """Take the run directory (``runs/<name>/`` unless ``root`` is given; ``RunBusyError`` when another process
    has it) and save this attempt's resolved config (a config dataclass or a plain dict) as config.running.yaml
    before any work starts; ``finish_run`` makes it the run's config.yaml once the attempt has succeeded."""
    run_dir = Path(root) if root is not None else runs_root() / name
    lock_run(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if launch_rank_zero():
        write_yaml(run_dir / RUNNING_CONFIG_FILE, config if isinstance(config, dict) else to_dict(config))
    return run_dir


def finish_run(run_dir: str | Path) -> None:
    """The attempt succeeded: its config.running.yaml becomes the run's config.yaml (in one rename)."""
    running = Path(run_dir) / RUNNING_CONFIG_FILE
    if launch_rank_zero() and running.exists():
        os.replace(running, Path(run_dir) / CONFIG_FILE)


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
    if module is None and is_factory_spec(path):  # no file to hash: the module the factory builds now
        module = load_factory(path, "model")()
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


WANDB_ID_FILE = "wandb_id.txt"


def wandb_environment(run_dir: Path, settings: WandbConfig) -> None:
    """Point every W&B directory into the run directory and set its mode.

    Its data and artifact directories go under ``wandb/`` beside the runs: the staging area there keeps a copy of
    every table a run logs (``wandb/artifacts/staging/tmp*``), which ``wandb sync`` uploads later."""
    base = run_dir.resolve()
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        os.environ[var] = str(base)
    for var in ("WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        os.environ[var] = str(base / "wandb")
    os.environ["WANDB_MODE"] = settings.mode
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")


def wandb_id(run_dir: Path) -> str:
    """The W&B run id of this run directory: made by its first run and kept in wandb_id.txt, so that a rerun under
    the same name continues that W&B run instead of adding another."""
    path = run_dir / WANDB_ID_FILE
    saved = path.read_text().strip() if path.is_file() else ""
    if saved:
        return saved
    made = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # as W&B makes them
    if launch_rank_zero():
        write_text(path, made + "\n")
    return made


def finish_wandb(run, run_dir: Path) -> None:
    """End a W&B run and remove the empty folders W&B leaves in its artifact staging area (a staged file is kept:
    ``wandb sync`` uploads it)."""
    run.finish()
    if not launch_rank_zero():  # the processes Lightning started have no W&B run of their own
        return
    for staging in (run_dir / "wandb" / "artifacts" / "staging", run_dir / "artifacts" / "staging"):
        if not staging.is_dir():
            continue
        for folder in staging.glob("tmp*"):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        for folder in (staging, staging.parent):  # artifacts/staging, then artifacts, when nothing is left there
            if not any(folder.iterdir()):
                folder.rmdir()


def wandb_logger(run_dir: Path, settings: WandbConfig, name: str, config: dict):
    """A Lightning WandbLogger for this run (the run directory's W&B run, resumed), or None when W&B is disabled.

    ``WandbLogger(offline=True)`` refuses ``log_model``; setting WANDB_MODE=offline and leaving
    ``offline=False`` gives the same offline run without that restriction.
    """
    if settings.mode == "disabled":
        return None
    from pytorch_lightning.loggers import WandbLogger

    wandb_environment(run_dir, settings)
    return WandbLogger(name=name, project=settings.project, entity=settings.entity, save_dir=str(run_dir),
                       config=config, offline=False, id=wandb_id(run_dir), resume="allow")


def wandb_run(run_dir: Path, settings: WandbConfig, name: str, config: dict):
    """A plain ``wandb`` run for commands that are not trained by Lightning (the run directory's W&B run, resumed;
    None when disabled)."""
    if settings.mode == "disabled":
        return None
    import wandb

    wandb_environment(run_dir, settings)
    return wandb.init(project=settings.project, entity=settings.entity, name=name, dir=str(run_dir),
                      config=config, reinit="finish_previous", id=wandb_id(run_dir), resume="allow")


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
