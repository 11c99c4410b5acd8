import pytest

from gandissect.config import SegmenterTrainConfig, load_config, to_dict
from gandissect.errors import ConfigError

from .conftest import REPO


def test_shipped_config_loads_and_overrides_apply():
    cfg = load_config(SegmenterTrainConfig, REPO / "experiments/scenes/segmenter.yaml",
                      ["trainer.max_steps=7", "model.widths=[8, 16]", "wandb.mode=disabled"])
    assert cfg.trainer.max_steps == 7 and cfg.model.widths == [8, 16] and cfg.wandb.mode == "disabled"
    assert to_dict(cfg)["data"]["batch_size"] == 32


def test_unknown_keys_are_named_with_the_expected_ones(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  batchsize: 8\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown config key data.batchsize; expected one of: size, batch_s"):
        load_config(SegmenterTrainConfig, path)
    path.write_text("nmae: x\n")
    with pytest.raises(ConfigError, match="unknown config key nmae; expected one of: name, seed"):
        load_config(SegmenterTrainConfig, path)
    with pytest.raises(ConfigError, match="unknown config key optim.momentum"):
        load_config(SegmenterTrainConfig, None, ["optim.momentum=0.9"])


def test_bad_files_and_values(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(SegmenterTrainConfig, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [1, 2\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(SegmenterTrainConfig, bad)
    with pytest.raises(ConfigError, match="wandb.mode must be offline, online or disabled, got 'cloud'"):
        load_config(SegmenterTrainConfig, None, ["wandb.mode=cloud"])
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(SegmenterTrainConfig, None, ["data=3"])
