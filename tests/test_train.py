import json

import pytest

from gandissect.config import SegmenterTrainConfig, load_config
from gandissect.models.segmenter import SceneSegmenter
from gandissect.core.wandb_files import read_offline_history, read_offline_run
from gandissect.steps.train import train_segmenter

from .conftest import REPO


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Six real optimizer steps of the shipped config (narrowed) through the Lightning Trainer."""
    cfg = load_config(SegmenterTrainConfig, REPO / "experiments/scenes/segmenter.yaml", [
        "name=tiny", "model.widths=[8, 16]", "data.batch_size=4", "data.val_length=8", "data.num_workers=0",
        "trainer.max_steps=6", "trainer.val_check_interval=3", "trainer.log_every_n_steps=1",
    ])
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    results = train_segmenter(cfg, run_dir=run_dir)
    return run_dir, results


def test_training_writes_the_run_directory(trained):
    run_dir, results = trained
    assert results["steps"] == 6
    assert (run_dir / "config.yaml").read_text().count("max_steps: 6") == 1
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["val_miou"] == pytest.approx(results["val_miou"])
    assert set(saved["val_per_class_iou"]) == {"sky", "cloud", "mountain", "grass", "road", "water", "tree",
                                               "building", "roof", "dome", "door", "window"}
    model = SceneSegmenter.load(run_dir / "segmenter.safetensors")
    assert model.widths == (8, 16)
    assert (run_dir / "lightning" / "last.ckpt").exists()


def test_wandb_offline_run_lives_in_the_run_directory_and_holds_the_metrics(trained):
    run_dir, results = trained
    files = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1
    history = read_offline_history(run_dir)
    losses = [row["train/loss"] for row in history if "train/loss" in row]
    assert len(losses) == 6
    mious = [row["val/miou"] for row in history if "val/miou" in row]
    assert len(mious) == 2  # validation after steps 3 and 6
    assert mious[-1] == pytest.approx(results["val_miou"], rel=1e-6)
    assert any("val/iou/window" in row for row in history)
    images = [row["val/predictions"] for row in history if "val/predictions" in row]
    assert len(images) == 2 and images[0]["_type"] == "images/separated"
    media = run_dir.glob("wandb/offline-run-*/files/" + images[0]["filenames"][0])
    assert next(media).stat().st_size > 0  # the picture itself is in the run files
    logged = read_offline_run(run_dir)
    assert (logged["group"], logged["job_type"]) == ("tiny", "train")
    assert logged["summary"]["val_miou"] == pytest.approx(results["val_miou"]) and logged["summary"]["steps"] == 6
    (model,) = [artifact for artifact in logged["artifacts"] if artifact["type"] == "model"]
    assert model["name"] == "tiny-segmenter" and sorted(model["aliases"]) == ["latest", "step-6"]


def test_validation_iou_rises_with_training_from_a_fixed_seed(tmp_path):
    """A narrow segmenter trained 150 steps on 32-pixel scenes (seed 0): the validation mIoU measured after 150
    steps exceeds the one after 25 by a clear margin, and the training loss of the last 10 steps is below the
    first 10's."""
    cfg = load_config(SegmenterTrainConfig, None, [
        "model.widths=[8, 16]", "data.size=32", "data.batch_size=8", "data.val_length=64", "data.num_workers=0",
        "trainer.max_steps=150", "trainer.val_check_interval=25", "trainer.log_every_n_steps=1",
        "devices.accelerator=cpu"])
    train_segmenter(cfg, run_dir=tmp_path / "learning")
    history = read_offline_history(tmp_path / "learning")
    mious = [row["val/miou"] for row in history if "val/miou" in row]
    losses = [row["train/loss"] for row in history if "train/loss" in row]
    assert len(mious) == 6 and mious[-1] > mious[0] + 0.05, mious
    assert sum(losses[-10:]) < sum(losses[:10]), (losses[:10], losses[-10:])


def test_a_second_run_resumes_and_continues_the_step_count(tmp_path):
    def run(steps):
        cfg = load_config(SegmenterTrainConfig, None, [
            "model.widths=[8, 16]", "data.batch_size=2", "data.val_length=2", "data.num_workers=0",
            f"trainer.max_steps={steps}", "trainer.val_check_interval=3", "wandb.mode=disabled"])
        return train_segmenter(cfg, run_dir=tmp_path / "resumable")

    first = run(3)
    assert (first["steps"], first["resumed_from_step"]) == (3, 0)
    longer = run(6)
    assert (longer["steps"], longer["resumed_from_step"]) == (6, 3)
