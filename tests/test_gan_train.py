import json
import os
import subprocess
import sys

import pytest
import torch

from gandissect.config import GANTrainConfig, load_config
from gandissect.models.progan import load_discriminator, load_generator
from gandissect.core.runs import read_offline_history
from gandissect.steps.train import train_gan

from .conftest import REPO
from .gan_tiny import TINY


def tiny_config(*overrides):
    return load_config(GANTrainConfig, REPO / "experiments/scenes/gan.yaml", TINY + list(overrides))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Six real training steps (D and G updates) of the tiny GAN through the Lightning Trainer."""
    cfg = tiny_config("name=tiny-gan", "trainer.max_steps=6", "monitor.fd_every=3", "monitor.sample_every=3")
    run_dir = tmp_path_factory.mktemp("runs") / "tiny-gan"
    return run_dir, train_gan(cfg, run_dir=run_dir)


def test_training_steps_update_both_networks_and_the_ema(trained):
    run_dir, results = trained
    assert results["steps"] == 6 and results["images_seen"] == 24
    g, d = load_generator(run_dir / "generator.safetensors"), load_discriminator(run_dir / "discriminator.safetensors")
    assert g.widths == [16, 16, 16, 16, 8, 8, 8, 8] and d.widths == [8, 8, 8, 8, 8, 8, 16, 16, 16]
    ckpt = torch.load(run_dir / "lightning" / "last.ckpt", map_location="cpu", weights_only=False)
    state = ckpt["state_dict"]
    assert ckpt["global_step"] == 12  # Lightning counts the D and the G optimizer step
    # the EMA generator that was saved is the module's G_ema, and it differs from the raw G it averages
    assert torch.equal(g.layer4.conv.weight, state["G_ema.layer4.conv.weight"])
    assert not torch.equal(state["G.layer4.conv.weight"], state["G_ema.layer4.conv.weight"])
    assert results["fd_scenes"] > 0
    assert (run_dir / "samples.png").stat().st_size > 0


def test_wandb_offline_run_holds_losses_fd_and_sample_grids(trained):
    run_dir, results = trained
    history = read_offline_history(run_dir)
    d_losses = [row["train/d_loss"] for row in history if "train/d_loss" in row]
    assert len(d_losses) == 6 and all(v > 0 for v in d_losses)
    r1 = [row["train/r1"] for row in history if "train/r1" in row]
    assert len(set(r1)) == 2  # lazy R1 every 4 steps: new values at steps 0 and 4 (Lightning repeats the last)
    fds = [row["fd_scenes"] for row in history if "fd_scenes" in row]
    assert len(fds) == 2 and all(v > 0 for v in fds)  # after steps 3 and 6
    grids = [row["samples"] for row in history if "samples" in row]
    assert len(grids) == 2 and grids[0]["_type"] == "images/separated"


def test_resuming_continues_the_step_count(tmp_path):
    def run(steps):
        cfg = tiny_config(f"trainer.max_steps={steps}", "monitor.fd_every=0", "monitor.sample_every=0",
                          "wandb.mode=disabled")
        return train_gan(cfg, run_dir=tmp_path / "resumable")

    first = run(3)
    assert (first["steps"], first["resumed_from_step"]) == (3, 0)
    longer = run(5)
    assert (longer["steps"], longer["resumed_from_step"]) == (5, 3)
    assert longer["images_seen"] == 20


def test_two_process_ddp_run_logs_from_rank_zero_only(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
    done = subprocess.run([sys.executable, str(REPO / "tests" / "gan_ddp_script.py"), str(tmp_path / "ddp")],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line[len("RESULTS "):]) for line in done.stdout.splitlines() if line.startswith("RESULTS ")]
    assert len(results) == 2  # both processes finished
    assert all(r["world_size"] == 2 and r["steps"] == 4 and r["images_seen"] == 32 for r in results)
    assert results[0]["fd_scenes"] == pytest.approx(results[1]["fd_scenes"], rel=1e-12)  # synced metric
    runs = list((tmp_path / "ddp").glob("wandb/offline-run-*"))
    assert len(runs) == 1  # one W&B run, written by rank 0
    history = read_offline_history(tmp_path / "ddp")
    assert len([row for row in history if "train/d_loss" in row]) == 4
    assert len([row for row in history if "fd_scenes" in row]) == 2
