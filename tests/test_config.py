import pytest

from gandissect.cli import main
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


def test_values_are_converted_and_checked_against_the_type_hints():
    cfg = load_config(SegmenterTrainConfig, None, ["optim.lr=1e-3", "trainer.max_steps=12"])
    assert cfg.optim.lr == 0.001 and isinstance(cfg.optim.lr, float) and cfg.trainer.max_steps == 12
    with pytest.raises(ConfigError, match="optim.lr: Value 'abc' of type 'str' could not be converted to Float"):
        load_config(SegmenterTrainConfig, None, ["optim.lr=abc"])
    with pytest.raises(ConfigError, match="model.widths: expected a list"):
        load_config(SegmenterTrainConfig, None, ["model.widths=3"])
    with pytest.raises(ConfigError, match="devices.strategy 'ddp_spawn' runs the work in child processes"):
        load_config(SegmenterTrainConfig, None, ["devices.strategy=ddp_spawn"])
    with pytest.raises(ConfigError, match="must look like key.sub=value"):
        load_config(SegmenterTrainConfig, None, ["trainer.max_steps"])


@pytest.mark.parametrize("command, override, expected", [
    ("dissect", "n=abc", "n: Value 'abc' of type 'str' could not be converted to Integer"),
    ("dissect", "n=-5", "n=-5: expected a positive integer"),
    ("dissect", "n=64.5", "n: Value '64.5' of type 'float' could not be converted to Integer"),
    ("dissect", "name=", "name"),
    ("dissect", "layers=[]", "layers=[]: give at least one layer name"),
    ("repair", "k=0", "k=0: expected a positive integer, or null for the default"),
    ("repair", "devices.num_nodes=0", "num_nodes=0: expected a positive integer"),
    ("ace", "lr=fast", "lr: Value 'fast' of type 'str' could not be converted to Float"),
    ("train gan", "optim.g_lr=x", "optim.g_lr: Value 'x'"),
])
def test_a_bad_override_is_one_line_and_exit_2(command, override, expected, capsys, isolated_runs):
    config = {"dissect": "dissect.yaml", "repair": "repair.yaml", "ace": "ace.yaml", "train gan": "gan.yaml"}[command]
    code = main([*command.split(), "--config", str(REPO / "experiments/scenes" / config), "--set", override])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "", captured
    assert expected in captured.err and len(captured.err.strip().splitlines()) == 1, captured.err
    assert not isolated_runs.exists() or not any(isolated_runs.iterdir())  # nothing written for a refused run


def test_an_override_of_the_learning_rate_reaches_the_optimizer_as_a_float():
    from gandissect.steps.train import SegmenterModule

    cfg = load_config(SegmenterTrainConfig, REPO / "experiments/scenes/segmenter.yaml", ["optim.lr=1e-3"])
    module = SegmenterModule(cfg.model.widths, cfg.data.size, cfg.optim.lr, cfg.optim.weight_decay, 10)
    optimizer = module.configure_optimizers()["optimizer"]
    assert optimizer.param_groups[0]["initial_lr"] == 0.001
