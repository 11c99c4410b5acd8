import os
import shutil
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
