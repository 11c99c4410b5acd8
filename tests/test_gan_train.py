import json
import os
import subprocess
import sys

import pytest
import torch

from gandissect.config import GANTrainConfig, load_config
from gandissect.models.progan import load_discriminator, load_generator
from gandissect.core.wandb_files import read_offline_history, read_offline_run
from gandissect.data import scenes
from gandissect.io import sha256_file
from gandissect.steps.train import train_gan

import pytorch_lightning as pl  # noqa: E402 (after gandissect, whose import makes torchvision's importable)

from .conftest import REPO
from .gan_tiny import TINY


def tiny_config(*overrides):
    return load_config(GANTrainConfig, REPO / "experiments/scenes/gan.yaml", TINY + list(overrides))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Six real training steps (D and G updates) of the tiny GAN through the Lightning Trainer."""
    cfg = tiny_config("name=tiny-gan", "trainer.max_steps=6", "monitor.fd_every=3", "monitor.sample_every=3",
                      "monitor.snapshot_every=2")
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
    assert (run_dir / "samples.png").stat().st_size > 0


def test_the_reported_fd_is_the_saved_generators_fd_recomputed_independently(trained):
    """FD-scenes of the saved EMA generator, recomputed here from its file, the monitor's latents (seed
    sample_seed + 1) and its real scenes (seed fd_real_seed), equals the number training reported and logged."""
    from gandissect.core.latents import generate
    from gandissect.data.images import scene_batches
    from gandissect.metrics.fid import scenes_fd
    from gandissect.models.segmenter import SceneSegmenter

    run_dir, results = trained
    mon = tiny_config().monitor
    fd = scenes_fd(SceneSegmenter.load(mon.segmenter))
    for real in scene_batches(mon.fd_real_seed, mon.fd_real_n, 32, batch_size=100):
        fd.update(real, real=True)
    fd.update(generate(load_generator(run_dir / "generator.safetensors"), mon.sample_seed + 1, mon.fd_n), real=False)
    assert float(fd.compute()) == pytest.approx(results["fd_scenes"], rel=1e-5)
    logged = [row["fd_scenes"] for row in read_offline_history(run_dir) if "fd_scenes" in row]
    assert logged[-1] == pytest.approx(results["fd_scenes"], rel=1e-5) and logged[0] != logged[-1]


def test_the_discriminator_loss_teaches_d_to_score_real_scenes_above_generated_ones():
    """40 steps of the training loss (non-saturating + lazy R1) against a fixed untrained generator: on held-out
    images D's held-out loss falls and its score gap (real minus generated) grows."""
    from gandissect.core.latents import generate
    from gandissect.data.images import scene_batches
    from gandissect.models.losses import discriminator_loss
    from gandissect.models.progan import ProGANDiscriminator, ProGANGenerator
    from gandissect.steps.artifacts import finetune_discriminator

    torch.manual_seed(0)
    model = tiny_config().model
    G = ProGANGenerator(model.resolution, model.g_widths, model.latent_dim).eval()
    D = ProGANDiscriminator(model.resolution, model.d_widths)
    real = next(scene_batches(seed=7, n=64, size=model.resolution, batch_size=64))
    fake = generate(G, seed=7, n=64)

    def measure(d):
        with torch.no_grad():
            loss, parts = discriminator_loss(d.eval(), real, fake)
        return float(loss), float(parts["real_score"] - parts["fake_score"])

    loss_before, gap_before = measure(D)
    loss_after, gap_after = measure(finetune_discriminator(D, G, steps=40, batch_size=8, lr=2e-3, seed=3))
    measured = {"loss": (loss_before, loss_after), "gap": (gap_before, gap_after)}
    assert loss_after < loss_before - 0.3 and gap_after > gap_before + 1.0, measured


def test_wandb_offline_run_holds_losses_fd_and_sample_grids(trained):
    run_dir, results = trained
    history = read_offline_history(run_dir)
    d_losses = [row["train/d_loss"] for row in history if "train/d_loss" in row]
    assert len(d_losses) == 6
    r1 = [row["train/r1"] for row in history if "train/r1" in row]
    assert len(set(r1)) == 2  # lazy R1 every 4 steps: new values at steps 0 and 4 (Lightning repeats the last)
    fds = [row["fd_scenes"] for row in history if "fd_scenes" in row]
    assert len(fds) == 2  # after steps 3 and 6
    grids = [row["samples"] for row in history if "samples" in row]
    assert len(grids) == 2 and grids[0]["_type"] == "images/separated"


def test_generator_snapshots_are_kept_every_n_steps_and_logged_as_versions_of_one_model(trained):
    run_dir, results = trained
    snapshots = sorted((run_dir / "snapshots").iterdir())
    assert [p.name for p in snapshots] == [f"generator-step{n}.safetensors" for n in (2, 4, 6)]
    first, last = (load_generator(p) for p in (snapshots[0], snapshots[-1]))
    assert not torch.equal(first.layer4.conv.weight, last.layer4.conv.weight)  # the EMA generator of its step
    assert torch.equal(last.layer4.conv.weight, load_generator(run_dir / "generator.safetensors").layer4.conv.weight)

    logged = read_offline_run(run_dir)
    assert (logged["group"], logged["job_type"]) == ("tiny-gan-generator", "train")
    assert (logged["config"]["arch"], logged["config"]["max_steps"]) == ("progan", 6)
    assert logged["summary"]["fd_scenes"] == pytest.approx(results["fd_scenes"]) and logged["summary"]["steps"] == 6
    models = [a for a in logged["artifacts"] if a["type"] == "model"]
    assert {a["name"] for a in models} == {"tiny-gan-generator"}  # snapshots and the final one: versions of one model
    # W&B gives every version it logs "latest" (the server keeps it on the newest)
    assert [sorted(a["aliases"]) for a in models] == [["latest", f"step-{n}"] for n in (2, 4, 6, 6)]
    assert [a["metadata"]["sha256"] for a in models] == [sha256_file(p) for p in snapshots] + \
        [sha256_file(run_dir / "generator.safetensors")]


class RealBatches(pl.Callback):
    """The real images of every training batch, in the order the run read them."""

    def __init__(self):
        self.images = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.images.append(batch[0].clone())


def test_resuming_continues_the_step_count_the_scene_stream_and_keeps_the_earlier_snapshots(tmp_path):
    def run(steps):
        cfg = tiny_config(f"trainer.max_steps={steps}", "monitor.fd_every=0", "monitor.sample_every=0",
                          "monitor.snapshot_every=2", "wandb.mode=disabled")
        batches = RealBatches()
        return train_gan(cfg, run_dir=tmp_path / "resumable", callbacks=[batches]), batches.images, cfg

    (first, read_first, cfg), (longer, read_after, _) = run(3), run(5)
    assert (first["steps"], first["resumed_from_step"]) == (3, 0)
    assert (longer["steps"], longer["resumed_from_step"]) == (5, 3)
    assert longer["images_seen"] == 20
    assert sorted(p.name for p in (tmp_path / "resumable" / "snapshots").iterdir()) == \
        ["generator-step2.safetensors", "generator-step4.safetensors"]
    # one stream of scenes across both runs: steps 0-2 read scenes 0..3B-1, the resumed steps 3-4 the next 2B
    assert (len(read_first), len(read_after)) == (3, 2)
    world = torch.stack([scenes.to_tensor(scenes.render_scene(cfg.data.train_seed, i, cfg.model.resolution)[0])
                         for i in range(5 * cfg.data.batch_size)])
    assert torch.equal(torch.cat(read_first + read_after), world)


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


def test_the_stylegan2_config_trains_through_the_same_module(tmp_path):
    """experiments/scenes/stylegan2.yaml, shrunk: the same Lightning module trains a StyleGAN2 with fresh noise while
    its EMA copy keeps the fixed buffers, and the saved generator has the average w that truncation needs."""
    from gandissect.models.generators import load_discriminator as load_any_discriminator
    from gandissect.models.generators import load_generator as load_any_generator
    from gandissect.models.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator

    cfg = load_config(GANTrainConfig, REPO / "experiments/scenes/stylegan2.yaml",
                      TINY + ["model.g_widths=[16, 16, 8, 8]", "model.d_widths=[16, 16, 8, 8]", "model.n_mlp=2",
                              "name=tiny-sg2", "trainer.max_steps=3", "monitor.fd_every=0", "monitor.sample_every=0"])
    results = train_gan(cfg, run_dir=tmp_path / "tiny-sg2")
    assert results["steps"] == 3
    g = load_any_generator(tmp_path / "tiny-sg2" / "generator.safetensors")
    d = load_any_discriminator(tmp_path / "tiny-sg2" / "discriminator.safetensors")
    assert isinstance(g, StyleGAN2Generator) and isinstance(d, StyleGAN2Discriminator)
    assert g.channels == {4: 16, 8: 16, 16: 8, 32: 8} and not g.random_noise
    assert g.latent_avg.abs().sum() > 0
    state = torch.load(tmp_path / "tiny-sg2" / "lightning" / "last.ckpt", map_location="cpu",
                       weights_only=False)["state_dict"]
    assert not torch.equal(state["G.convs.0.conv.weight"], state["G_ema.convs.0.conv.weight"])
    z = torch.randn(2, 8)
    assert torch.equal(g(z), g(z))


def test_a_stylegan2_config_with_the_wrong_number_of_widths_is_refused():
    from gandissect.errors import ConfigError
    from gandissect.steps.train import build_gan

    cfg = load_config(GANTrainConfig, REPO / "experiments/scenes/stylegan2.yaml", ["model.g_widths=[16, 16]"])
    with pytest.raises(ConfigError, match=r"model.g_widths: a 64px StyleGAN2 takes one width per resolution "
                                          r"\[4, 8, 16, 32, 64\]; got \[16, 16\]"):
        build_gan(cfg.model)
