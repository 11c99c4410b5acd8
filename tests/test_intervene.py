"""Intervention: a planted tree unit has a large ACE and a random unit none, alpha stays in [0, 1] while the
optimization lowers its loss, ablating no unit changes nothing, and `gandissect ace` runs end to end."""

import json
import os
import random
import subprocess
import sys

import pytest
import torch

import gandissect  # noqa: F401
from gandissect.cli import main
from gandissect.config import AceConfig, load_config
from gandissect.data import scenes
from gandissect.core.latents import seeded_latents
from gandissect.core.hooks import ablate, insert
from gandissect.metrics.intervention import ace, class_weighted_means, removal_curve
from gandissect.steps.intervene import InterventionModule
from gandissect.models.planted import PlantedTreePainter, tree_texture
from gandissect.models.progan import load_generator
from gandissect.models.segmenter import SceneSegmenter
from gandissect.core.wandb_files import read_offline_history, read_offline_run

from .conftest import REPO, SHIPPED_SEGMENTER, console_script

SHIPPED_GAN = REPO / "checkpoints" / "scene_gan_generator.safetensors"
TREE = scenes.CLASSES.index("tree")
PLANTED = 128  # index of the planted unit in the `planted` layer


@pytest.fixture(scope="module")
def models():
    generator = load_generator(SHIPPED_GAN).eval().requires_grad_(False)
    segmenter = SceneSegmenter.load(SHIPPED_SEGMENTER).eval().requires_grad_(False)
    planted = PlantedTreePainter(generator, tree_texture()).eval()
    constants = class_weighted_means(planted, segmenter, "planted", TREE, seed=0, n=64)
    return generator, segmenter, planted, constants


def test_a_planted_unit_has_a_large_ace_and_a_random_unit_one_near_zero(models):
    _, segmenter, planted, constants = models
    assert 0.3 < constants[PLANTED] < 1.0  # its cells are tree, but so are the GAN's own trees where it is 0
    planted_effect = ace(planted, segmenter, "planted", [PLANTED], TREE, constants, seed=5, n=32)
    assert planted_effect["ace"] > 0.5, planted_effect
    assert planted_effect["ablated"] < planted_effect["original"]  # its block of trees is gone

    random_unit = random.Random(0).randrange(PLANTED)
    random_effect = ace(planted, segmenter, "planted", [random_unit], TREE, constants, seed=5, n=32)
    assert abs(random_effect["ace"]) < 0.03, (random_unit, random_effect)

    # removing: ablating the planted unit first removes the pasted trees; a random order removes little
    curve = removal_curve(planted, segmenter, "planted", [PLANTED, random_unit], TREE, seed=5, n=16, max_units=2)
    curve_random = removal_curve(planted, segmenter, "planted", [random_unit], TREE, seed=5, n=16, max_units=1)
    assert curve[0] > 0.5 and abs(curve_random[0]) < 0.1, (curve, curve_random)


def test_ablating_or_inserting_the_empty_set_changes_nothing_bit_exactly(models):
    generator, _, _, _ = models
    z = seeded_latents(3, 8, generator.latent_dim)
    with torch.no_grad():
        original = generator(z).clamp(-1, 1)
        assert torch.equal(ablate(generator, "layer4", z, [], 128), original)
        cell = torch.zeros(8, 8)
        cell[3, 4] = 1
        assert torch.equal(insert(generator, "layer4", z, [], torch.rand(128) * 5, region=cell), original)
        # and one unit does change the image: the comparison above is not blind
        assert not torch.equal(ablate(generator, "layer4", z, [0, 1, 2], 128), original)


def _alpha_recorder():
    import pytorch_lightning as pl

    class AlphaRecorder(pl.Callback):
        def __init__(self):
            self.seen: list[torch.Tensor] = []

        def on_train_batch_end(self, trainer, module, *args, **kwargs):
            self.seen.append(module.alpha.detach().clone())

    return AlphaRecorder()


def test_the_optimization_keeps_alpha_in_the_unit_cube_and_lowers_its_loss(models, tmp_path):
    import pytorch_lightning as pl

    _, segmenter, planted, constants = models
    cfg = load_config(AceConfig, None, ["steps=12", "batch_size=4", "lr=0.1", "lam=0.01", "seed=7"])
    init = torch.full((PLANTED + 1,), 0.5)
    module = InterventionModule(planted, segmenter, "planted", TREE, constants, init, cfg)
    recorder = _alpha_recorder()
    trainer = pl.Trainer(max_steps=cfg.steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                         callbacks=[recorder])
    trainer.fit(module)
    assert len(recorder.seen) == cfg.steps
    seen = torch.stack(recorder.seen)
    assert seen.min() >= 0 and seen.max() <= 1
    assert (seen == 0).any() and (seen == 1).any()  # the clamp was needed: Adam's steps left the cube
    losses = module.losses
    assert sum(losses[-3:]) / 3 < losses[0], losses
    alpha = module.alpha.detach()
    assert alpha[PLANTED] == 1 and int(alpha.argmax()) == PLANTED, alpha  # the planted unit is the top ACE unit


@pytest.fixture(scope="module")
def ace_run(tmp_path_factory):
    """`gandissect ace` on a tiny config: it dissects layer4 itself (no dissection run of that name exists)."""
    runs = tmp_path_factory.mktemp("ace-cli") / "runs"
    settings = ["name=tiny", "dissection=no-such-run", "dissect_n=64", "constants_n=64", "n=16", "steps=6",
                "batch_size=4", "removal_units=5", "top_units=3", "log_every=1", "init_units=3",
                f"generator={SHIPPED_GAN}", f"segmenter={SHIPPED_SEGMENTER}", "wandb.mode=offline"]
    command = [console_script(), "ace", "--config", str(REPO / "experiments/scenes/ace.yaml"), "--class", "tree",
               "--layer", "layer4"] + [arg for s in settings for arg in ("--set", s)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ, "GANDISSECT_RUNS": str(runs)})
    return done, runs / "tiny"


def test_the_ace_command_writes_its_run_logs_to_wandb_and_keeps_the_ranking(ace_run):
    done, run_dir = ace_run
    assert done.returncode == 0, done.stderr[-2000:]
    printed = json.loads(done.stdout)
    result = json.loads((run_dir / "ace.json").read_text())
    assert printed["class"] == "tree" and printed["run_dir"] == str(run_dir)
    assert sorted(result["rankings"]["ace"]) == list(range(128)) and len(result["alpha"]) == 128
    assert all(0 <= a <= 1 for a in result["alpha"])
    assert len(result["removal"]["iou"]["curve"]) == len(result["removal"]["ace"]["curve"]) == 5
    assert result["context"] and sum(row["cells"] for row in result["context"]) == 16
    for name in ("ace.json", "index.html", "removal.png", "edits.png", "config.yaml"):
        assert (run_dir / name).exists(), name

    # the ranking is kept in the ACE run's own ace.json, which names the dissection it used; that is left as it was
    ranking = result["ranking"]
    assert ranking["name"] == "tree-ace" and ranking["units"] == result["rankings"]["ace"]
    assert ranking["alpha"] == sorted(ranking["alpha"], reverse=True)
    assert result["settings"]["dissection"] == str(run_dir / "dissect" / "dissect.json")
    dissection = json.loads((run_dir / "dissect" / "dissect.json").read_text())
    assert "rankings" not in dissection["layers"]["layer4"]

    rows = read_offline_history(run_dir)
    logged = set().union(*rows)
    for key in ("train/loss", "train/ace", "train/alpha_norm", "train/units_above_half", "removal/plot",
                "removal/curves", "context", "grid/before", "grid/after"):
        assert key in logged, (key, sorted(logged))
    assert sum("train/loss" in row for row in rows) >= 5

    # made for comparing: group, job type, flat config, the removal figures as its summary, the generator it read
    logged = read_offline_run(run_dir)
    assert (logged["group"], logged["job_type"]) == ("scene_gan_generator", "ace")
    assert (logged["config"]["layer"], logged["config"]["class_name"], logged["config"]["generator_sha256"]) == \
        ("layer4", "tree", result["settings"]["generator_sha256"])
    summary = logged["summary"]
    for ranking in ("iou", "ace"):
        assert summary[f"removal/{ranking}_at_5"] == result["removal"][ranking]["at_5"]
        assert f"removal/{ranking}_at_20" not in summary  # 5 units removed: no figure at 20
        assert summary[f"ace/{ranking}_top_units"] == result["ace_of_top_units"][ranking]["ace"]
    (used,) = [artifact for artifact in logged["artifacts"] if artifact["type"] == "model"]
    assert (used["name"], used["type"], used["used"]) == ("scene_gan_generator", "model", True)


@pytest.mark.parametrize("option, value, expected", [
    ("--class", "unicorn", "this segmenter has: sky, cloud"),
    ("--layer", "layer99", "this model has: layer1"),
])
def test_a_bad_class_or_layer_stops_with_the_valid_names(option, value, expected, capsys, isolated_runs):
    code = main(["ace", "--config", str(REPO / "experiments/scenes/ace.yaml"), option, value,
                 "--set", f"generator={SHIPPED_GAN}", "--set", f"segmenter={SHIPPED_SEGMENTER}"])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and value in err and len(err.strip().splitlines()) == 1, err
    assert not isolated_runs.exists() or not any(isolated_runs.iterdir())  # nothing written for a refused run


def test_two_ddp_processes_learn_alpha_and_write_one_result(tmp_path):
    script = REPO / "tests" / "ace_ddp_script.py"
    subprocess.run([sys.executable, str(script), str(tmp_path / "ddp")], check=True, cwd=REPO, timeout=300,
                   capture_output=True)
    result = json.loads((tmp_path / "ddp" / "ace.json").read_text())
    assert result["timing"]["processes"] == 2
    assert all(0 <= a <= 1 for a in result["alpha"]) and sorted(result["rankings"]["ace"]) == list(range(128))
    assert result["ranking"]["units"] == result["rankings"]["ace"]
    assert result["settings"]["dissection"] == str(tmp_path / "ddp" / "dissect" / "dissect.json")
