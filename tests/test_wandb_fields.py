"""What every W&B run carries for comparing runs (group, job type, flat config, summary, model artifacts), read back
from the offline run files. The steps' own runs are checked where their tests already make them (test_dissect,
test_intervene, test_repair, test_gan_train, test_paint_api); here the helpers, on a run made in a second."""

import shutil

import pytest

from gandissect.config import DissectConfig, GANTrainConfig, load_config
from gandissect.core.runs import (finish_wandb, flat_config, log_model_artifact, model_name, set_summary, start_run,
                                  use_model_artifact, wandb_run)
from gandissect.core.wandb_files import read_offline_run
from gandissect.io import sha256_file

from .conftest import REPO

SHIPPED_GAN = REPO / "checkpoints" / "scene_gan_generator.safetensors"


def test_a_run_carries_group_job_type_flat_config_summary_and_model_artifacts(tmp_path):
    cfg = DissectConfig(name="fields", generator=str(SHIPPED_GAN), layers=["layer4"], n=64)
    run_dir = tmp_path / "fields"
    run = wandb_run(run_dir, cfg, "dissect")
    set_summary(run, {"interpretable_units": 7, "units/tree": 2, "missing": None})
    use_model_artifact(run, cfg.generator)
    log_model_artifact(run, SHIPPED_GAN, name="made-here", aliases=["latest", "step-3"], metadata={"step": 3})
    finish_wandb(run, run_dir)

    logged = read_offline_run(run_dir)
    assert logged["group"] == "scene_gan_generator" and logged["job_type"] == "dissect"
    config = logged["config"]
    assert config["generator"] == str(SHIPPED_GAN) and config["generator_sha256"] == sha256_file(SHIPPED_GAN)
    assert config["arch"] == "progan" and config["layers"] == ["layer4"] and config["n"] == 64
    assert config["quantile"] == cfg.quantile and config["iou_threshold"] == cfg.iou_threshold
    assert config["devices"]["devices"] == 1  # the nested config is kept beside the flat keys
    assert logged["summary"]["interpretable_units"] == 7 and logged["summary"]["units/tree"] == 2
    assert "missing" not in logged["summary"]
    used, made = logged["artifacts"]
    assert (used["name"], used["type"], used["used"]) == ("scene_gan_generator", "model", True)
    assert used["metadata"]["sha256"] == sha256_file(SHIPPED_GAN) and used["metadata"]["arch"] == "progan-generator"
    assert [e["ref"] for e in used["entries"]] == [SHIPPED_GAN.resolve().as_uri()]  # a reference, not a copy
    assert (made["name"], sorted(made["aliases"]), made["used"], made["metadata"]["step"]) == \
        ("made-here", ["latest", "step-3"], False, 3)
    assert not (run_dir / "artifacts").exists()  # no empty folder left by W&B's artifact cache


def test_the_group_is_set_from_the_config_and_the_job_type_is_checked(tmp_path):
    cfg = load_config(DissectConfig, None, [f"generator={SHIPPED_GAN}", "wandb.group=layers-study", "name=grouped"])
    run = wandb_run(tmp_path / "grouped", cfg, "dissect")
    finish_wandb(run, tmp_path / "grouped")
    assert read_offline_run(tmp_path / "grouped")["group"] == "layers-study"
    with pytest.raises(ValueError, match="job_type 'dissection': expected one of train, dissect, ace"):
        wandb_run(tmp_path / "other", cfg, "dissection")


def test_model_names_give_a_training_run_and_its_checkpoints_one_name(tmp_path):
    assert model_name(SHIPPED_GAN) == "scene_gan_generator"
    run_dir = start_run("my-gan", GANTrainConfig(name="my-gan"), root=tmp_path / "my-gan")
    (run_dir / "snapshots").mkdir()
    for path in (run_dir / "generator.safetensors", run_dir / "snapshots" / "generator-step1000.safetensors"):
        shutil.copy(SHIPPED_GAN, path)
        assert model_name(path) == "my-gan-generator"
    assert model_name(tmp_path / "a folder" / "my gan:v2.pth") == "my_gan_v2"  # only W&B's characters


def test_a_training_config_is_flattened_to_what_it_trains():
    flat = flat_config(load_config(GANTrainConfig, REPO / "experiments/scenes/gan.yaml"))
    assert flat == {"seed": 0, "arch": "progan", "resolution": 64, "latent_dim": 128, "max_steps": 6000,
                    "batch_size": 32, "variant": "default"}
    assert flat_config(load_config(GANTrainConfig, REPO / "experiments/scenes/gan-town.yaml"))["variant"] == "town"


def test_a_dissection_of_a_snapshot_uses_the_artifact_version_training_logged(tmp_path):
    """Same name and same manifest (reference and checksum): W&B resolves both to one version, so the lineage graph
    runs from the training run through the snapshot to the dissection."""
    train_dir = start_run("my-gan", GANTrainConfig(name="my-gan"), root=tmp_path / "my-gan")
    snapshot = train_dir / "snapshots" / "generator-step2.safetensors"
    snapshot.parent.mkdir()
    shutil.copy(SHIPPED_GAN, snapshot)
    training = wandb_run(train_dir, GANTrainConfig(name="my-gan"), "train", group=model_name(snapshot))
    log_model_artifact(training, snapshot, name=model_name(train_dir / "generator.safetensors"), aliases=["step-2"])
    finish_wandb(training, train_dir)
    cfg = DissectConfig(name="of-snapshot", generator=str(snapshot))
    dissection = wandb_run(tmp_path / "of-snapshot", cfg, "dissect")
    use_model_artifact(dissection, cfg.generator)
    finish_wandb(dissection, tmp_path / "of-snapshot")

    (made,) = read_offline_run(train_dir)["artifacts"]
    used_run = read_offline_run(tmp_path / "of-snapshot")
    (used,) = used_run["artifacts"]
    assert used_run["group"] == read_offline_run(train_dir)["group"] == "my-gan-generator"
    assert used["used"] and not made["used"] and used["name"] == made["name"] == "my-gan-generator"
    assert [(e["path"], e["ref"], e["digest"]) for e in used["entries"]] == \
        [(e["path"], e["ref"], e["digest"]) for e in made["entries"]]
