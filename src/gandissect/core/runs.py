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
import netrc
import os
import platform
import re
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
    """End a W&B run and remove the empty folders W&B leaves in its artifact staging and cache areas (a staged file is
    kept: ``wandb sync`` uploads it)."""
    run.finish()
    if not launch_rank_zero():  # the processes Lightning started have no W&B run of their own
        return
    for artifacts in (run_dir / "wandb" / "artifacts", run_dir / "artifacts"):
        for folder in (artifacts / "staging", artifacts / "tmp"):
            if not folder.is_dir():
                continue
            for tmp in folder.glob("tmp*"):
                if tmp.is_dir() and not any(tmp.iterdir()):
                    tmp.rmdir()
            if not any(folder.iterdir()):
                folder.rmdir()
        if artifacts.is_dir() and not any(artifacts.iterdir()):
            artifacts.rmdir()


# --- what a W&B run carries, so that runs can be filtered, grouped and compared in the dashboard ---------------------
JOB_TYPES = ("train", "dissect", "ace", "repair", "compare", "paint-prepare", "demo")
SNAPSHOTS_DIR = "snapshots"       # runs/<train run>/snapshots/generator-step<N>.safetensors
GENERATOR_FILE = "generator.safetensors"
# the settings a dashboard filters by, lifted to the top level of the W&B config when a step's config has them
FLAT_KEYS = ("layer", "layers", "class_name", "n", "seed", "dissect_n", "quantile", "iou_threshold", "k", "routes",
             "fd_n", "truncation", "segmenter", "variant", "real_variant")


def model_name(path: str | Path) -> str:
    """How W&B names a model file (the default group of the runs that read it, and its artifact's name): the file's
    stem (``scene_gan_generator``), or ``<run>-<stem>`` for a file a gandissect run wrote under a generic name
    (``runs/scene-gan/generator.safetensors`` is ``scene-gan-generator``); a training run's snapshots are versions
    of its generator, so the training run and the dissections of any of its checkpoints share one group."""
    path = Path(path)
    if path.parent.name == SNAPSHOTS_DIR:
        path = path.parent.parent / GENERATOR_FILE
    folder = path.parent
    ran_here = (folder / CONFIG_FILE).is_file() or (folder / RUNNING_CONFIG_FILE).is_file()
    name = f"{folder.name}-{path.stem}" if ran_here else path.stem
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)  # the characters W&B allows in artifact names


def checkpoint_arch(path: str | Path) -> str | None:
    """The architecture a gandissect checkpoint records (``progan-generator``, ``scene-segmenter``, ...); None for
    other files."""
    if Path(path).suffix != ".safetensors" or not Path(path).is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return (f.metadata() or {}).get("gandissect_arch")


def flat_config(cfg) -> dict:
    """The keys runs are filtered and compared by in the W&B dashboard, flat: ``generator``, ``generator_sha256`` and
    ``arch`` of the generator file the step reads (or trains), and whichever of FLAT_KEYS its config has."""
    config = cfg if isinstance(cfg, dict) else to_dict(cfg)
    flat = {key: config[key] for key in FLAT_KEYS if key in config}
    generator = config.get("generator")
    if isinstance(generator, str) and Path(generator).is_file():
        arch = checkpoint_arch(generator)  # progan-generator: "progan", as a training run's model.arch says
        flat.update(generator=generator, generator_sha256=sha256_file(generator),
                    arch=arch.removesuffix("-generator") if arch else None)
    elif generator:
        flat["generator"] = generator  # a factory: no file to hash
    model = config.get("model")
    if isinstance(model, dict):  # a training run: what it trains
        flat.update({key: model[key] for key in ("arch", "resolution", "latent_dim") if key in model})
    if isinstance(config.get("trainer"), dict):
        flat["max_steps"] = config["trainer"].get("max_steps")
    if isinstance(config.get("data"), dict):  # a training run: its batches and its world
        flat.update({key: config["data"][key] for key in ("batch_size", "variant") if key in config["data"]})
    return flat


def wandb_config(cfg) -> dict:
    """A step's W&B config: its whole (nested) config, with the flat keys of ``flat_config`` at the top level."""
    return {**to_dict(cfg), **flat_config(cfg)}


def default_group(cfg) -> str:
    """The W&B group of a step's run when ``wandb.group`` is not set: the model it reads (``model_name`` of its
    ``generator``), else the run's name."""
    generator = getattr(cfg, "generator", None)
    return model_name(generator) if generator else cfg.name


def _run_settings(cfg, job_type: str, group: str | None) -> dict:
    if job_type not in JOB_TYPES:
        raise ValueError(f"job_type {job_type!r}: expected one of {', '.join(JOB_TYPES)}")
    return {"name": cfg.name, "project": cfg.wandb.project, "entity": cfg.wandb.entity, "job_type": job_type,
            "group": cfg.wandb.group or group or default_group(cfg), "config": wandb_config(cfg)}


def wandb_logger(run_dir: Path, cfg, job_type: str, group: str | None = None):
    """A Lightning WandbLogger for step config ``cfg`` (the run directory's W&B run, resumed), or None when W&B is
    disabled. The group is ``cfg.wandb.group``, else ``group``, else ``default_group(cfg)``.

    ``WandbLogger(offline=True)`` refuses ``log_model``; setting WANDB_MODE=offline and leaving
    ``offline=False`` gives the same offline run without that restriction.
    """
    if cfg.wandb.mode == "disabled":
        return None
    from pytorch_lightning.loggers import WandbLogger

    wandb_environment(run_dir, cfg.wandb)
    return WandbLogger(save_dir=str(run_dir), offline=False, id=wandb_id(run_dir), resume="allow",
                       **_run_settings(cfg, job_type, group))


def wandb_run(run_dir: Path, cfg, job_type: str, group: str | None = None):
    """A plain ``wandb`` run for step config ``cfg``, for commands that are not trained by Lightning (the run
    directory's W&B run, resumed; None when disabled). The group as in ``wandb_logger``."""
    if cfg.wandb.mode == "disabled":
        return None
    import wandb

    wandb_environment(run_dir, cfg.wandb)
    return wandb.init(dir=str(run_dir), reinit="finish_previous", id=wandb_id(run_dir), resume="allow",
                      **_run_settings(cfg, job_type, group))


def _model_artifact(path: Path, name: str | None, metadata: dict | None):
    import wandb

    artifact = wandb.Artifact(name or model_name(path), type="model",
                              metadata={"file": str(path), "sha256": sha256_file(path), "arch": checkpoint_arch(path),
                                        **(metadata or {})})
    # a reference, not a copy: the run files stay small; the checksum still tells versions apart
    artifact.add_reference(path.resolve().as_uri(), name=path.name if path.parent.name != SNAPSHOTS_DIR
                           else GENERATOR_FILE)
    return artifact


def log_model_artifact(run, path: str | Path, name: str | None = None, aliases: list[str] = (),
                       metadata: dict | None = None):
    """Record the model file at ``path`` as an output of ``run``: a W&B artifact of type ``model`` (named
    ``model_name(path)`` unless ``name`` is given) with its sha256 and architecture in the metadata."""
    return run.log_artifact(_model_artifact(Path(path), name, metadata), aliases=list(aliases))


def use_model_artifact(run, path: str | Path | None):
    """Record the model file at ``path`` as an input of ``run`` (W&B lineage: this run used that checkpoint);
    nothing for a generator that is not a file (a factory)."""
    if run is None or path is None or not Path(path).is_file():
        return None
    artifact = _model_artifact(Path(path), None, None)
    if not run.offline:
        return run.use_artifact(artifact)
    # W&B refuses use_artifact offline; for a new artifact use_artifact logs it marked "use after commit", which is
    # what this writes offline, and `wandb sync` then links the run to the artifact as its input.
    return run._log_artifact(artifact, is_user_created=True, use_after_commit=True)


def set_summary(run, values: dict) -> None:
    """The run's summary metrics (what the dashboard's runs table shows and compares), without the None values."""
    run.summary.update({key: value for key, value in values.items() if value is not None})
