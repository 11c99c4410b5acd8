import contextlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHIPPED_SEGMENTER = REPO / "checkpoints" / "scene_segmenter.safetensors"

_WANDB_VARS = ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR",
               "WANDB_MODE", "WANDB_SILENT", "WANDB_CONSOLE")


@pytest.fixture(autouse=True)
def isolated_runs(tmp_path, monkeypatch):
    """Every test writes its runs under its own temporary folder and leaves W&B settings as it found them."""
    monkeypatch.setenv("GANDISSECT_RUNS", str(tmp_path / "runs"))
    for var in _WANDB_VARS:
        if var in os.environ:
            monkeypatch.setenv(var, os.environ[var])
        else:
            monkeypatch.delenv(var, raising=False)
    # monkeypatch restores each of these at teardown, also when wandb_environment() changed them meanwhile.
    yield tmp_path / "runs"
    from gandissect.core.runs import release_runs

    release_runs()  # the run directories steps called in this process took, as the end of a command would


def console_script() -> str:
    """The installed ``gandissect`` script beside this interpreter (the venv's), else on PATH."""
    here = Path(sys.executable).parent / "gandissect"
    found = str(here) if here.exists() else shutil.which("gandissect")
    if found is None:
        pytest.fail("the gandissect console script is not installed; run `pip install -e .`")
    return found


def run_cli(*args, cwd=REPO, env_runs=None) -> subprocess.CompletedProcess:
    """``gandissect ARGS`` in this process: the console script's own ``gandissect.cli:main``, its stdout and stderr
    captured and its exit status returned as a subprocess would. A fresh process would pay torch's and Lightning's
    imports (6-8 s on 2 cores) on every call; ``test_cli.py`` runs the installed script itself."""
    from gandissect.cli import main

    args = [str(arg) for arg in args]
    out, err = io.StringIO(), io.StringIO()
    saved_runs = os.environ.get("GANDISSECT_RUNS")
    if env_runs is not None:
        os.environ["GANDISSECT_RUNS"] = str(env_runs)
    try:
        with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                returncode = main(args)
            except SystemExit as stop:  # argparse's usage errors
                returncode = stop.code if isinstance(stop.code, int) else 1
    finally:
        if saved_runs is None:
            os.environ.pop("GANDISSECT_RUNS", None)
        else:
            os.environ["GANDISSECT_RUNS"] = saved_runs
    return subprocess.CompletedProcess(["gandissect", *args], returncode, out.getvalue(), err.getvalue())
