"""Generators beyond our ProGAN: StyleGAN2 (rosinality layout), pytorch_GAN_zoo ProGAN, NVIDIA pickles and
factories - loaded from files of the real key names made here (random weights, nothing downloaded), with recorded
edits for layers whose ablation cannot be folded into the weights."""

import argparse
import json

import pytest
import torch

import gandissect  # noqa: F401
from gandissect.config import AceConfig, DissectConfig, RepairConfig, load_config
from gandissect.core.hooks import apply_unit_scales, fold_ablation, scaled_units, unit_alpha, unit_parameters
from gandissect.errors import CheckpointError, ConfigError
from gandissect.models import generators, legacy, stylegan2
from gandissect.pipelines import run_ace_pipeline, run_repair_pipeline
from gandissect.steps.dissect import run_dissection

from .conftest import REPO

CHANNELS = {4: 16, 8: 16, 16: 8, 32: 8}


class Settings:
    """A pickled object of a class, as some training scripts store next to the weights."""


def tiny_stylegan2(seed: int = 0) -> tuple[stylegan2.StyleGAN2Generator, stylegan2.StyleGAN2Discriminator]:
    torch.manual_seed(seed)
    g = stylegan2.StyleGAN2Generator(32, latent_dim=32, n_mlp=2, channels=CHANNELS)
    with torch.no_grad():  # rosinality starts noise strengths at 0; trained ones are not
        for name, p in g.named_parameters():
            if name.endswith("noise.weight"):
                p.fill_(0.1)
    return g.eval(), stylegan2.StyleGAN2Discriminator(32, CHANNELS).eval()


def rosinality_file(path, g, d, **extra):
    """A file as rosinality's train.py writes it: g, d, g_ema state dicts, optimizer states and the argparse
    Namespace of its settings (no latent_avg: its convert_weight.py adds one)."""
    state = {k: v for k, v in g.state_dict().items() if k != "latent_avg"}
    torch.save({"g": state, "d": d.state_dict(), "g_ema": state, "g_optim": {}, "d_optim": {},
                "args": argparse.Namespace(size=32, latent=32, n_mlp=2, channel_multiplier=2), **extra}, path)
    return path


def test_rosinality_checkpoint_loads_key_for_key_and_infers_its_shape(tmp_path):
    g, d = tiny_stylegan2()
    path = rosinality_file(tmp_path / "550000.pt", g, d, latent_avg=torch.randn(32))
    loaded = generators.load_generator(path)
    assert isinstance(loaded, stylegan2.StyleGAN2Generator)
    assert (loaded.resolution, loaded.latent_dim, loaded.n_mlp, loaded.channels) == (32, 32, 2, CHANNELS)
    z = torch.randn(4, 32)
    assert torch.equal(loaded(z), g(z))
    assert torch.equal(loaded(z), loaded(z))  # fixed noise buffers: a latent gives one image
    assert torch.equal(generators.load_discriminator(path)(g(z)), d(g(z)))
    # truncation pulls w towards the file's latent_avg
    truncated = generators.load_generator(path, truncation=0.0)
    assert torch.allclose(truncated(z)[0], truncated(z)[1])
    assert not torch.allclose(loaded(z)[0], loaded(z)[1])
    layers = {row["layer"]: row for row in generators.describe_layers(loaded) if row["dissectable"]}
    assert list(layers) == ["conv1"] + [f"convs.{i}" for i in range(6)]
    assert (layers["convs.0"]["units"], layers["convs.0"]["height"]) == (16, 8)
    assert (layers["convs.5"]["units"], layers["convs.5"]["height"]) == (8, 32)


def test_rosinality_problems_are_named(tmp_path):
    g, d = tiny_stylegan2()
    state = {k: v for k, v in g.state_dict().items() if k != "latent_avg"}
    broken = dict(state)
    del broken["convs.3.noise.weight"]
    broken["convs.1.activate.bias"] = torch.zeros(5)
    torch.save({"g_ema": broken}, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match=r"missing keys: convs\.3\.noise\.weight.*mis-shaped keys: "
                                              r"convs\.1\.activate\.bias \(file \(5,\), model \(16,\)\)"):
        generators.load_generator(tmp_path / "broken.pt")
    torch.save({"g_ema": state, "opts": Settings()}, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError) as refused:
        generators.load_generator(tmp_path / "pickled.pt")
    message = str(refused.value)
    assert "pickled.pt" in message and "Settings" in message and "run any code" in message
    assert "allow_pickle=true" in message and "\n" not in message
    assert isinstance(generators.load_generator(tmp_path / "pickled.pt", allow_pickle=True),
                      stylegan2.StyleGAN2Generator)
    torch.save({"weights": {"a": torch.zeros(2)}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no generator layout gandissect reads"):
        generators.load_generator(tmp_path / "other.pt")


def test_a_stylegan2_ablation_is_recorded_and_reloads_to_the_hooked_output(tmp_path):
    """Noise is added to every channel after the modulated conv, so zeroing a unit's weights leaves noise: the
    edit is recorded with the weights, and load_generator re-applies it."""
    g, _ = tiny_stylegan2()
    assert unit_parameters(g, "convs.0") is None
    scales = {"convs.0": 1 - unit_alpha([1, 5, 9], 16)}
    edited, how = apply_unit_scales(g, scales)
    assert how == {"convs.0": "recorded"}
    generators.save_generator(edited, tmp_path / "repaired.safetensors")
    reloaded = generators.load_generator(tmp_path / "repaired.safetensors")
    z = torch.randn(6, 32)
    with torch.no_grad(), scaled_units(g, scales) as hook:
        hooked = hook(z)
    assert torch.equal(reloaded(z), hooked) and not torch.equal(reloaded(z), g(z))
    assert generators.describe(reloaded)["recorded_edits"] == {"convs.0": 3}
    # a second ablation of the same layer multiplies into the recorded one
    twice = fold_ablation(reloaded, "convs.0", [2])
    assert torch.equal(twice.convs[0].gandissect_unit_scale, 1 - unit_alpha([1, 2, 5, 9], 16))


def test_ganzoo_progan_state_dicts_load_and_fold(tmp_path):
    torch.manual_seed(0)
    zoo = legacy.GANZooGenerator(latent_dim=16, depths=[16, 16, 8])
    state = zoo.state_dict()
    assert {"formatLayer.module.weight", "groupScale0.0.module.bias", "scaleLayers.1.0.module.weight",
            "toRGBLayers.2.module.weight"} <= set(state)
    torch.save({"avgG": state, "netG": {k: v * 0 for k, v in state.items()}}, tmp_path / "zoo.pth")
    loaded = generators.load_generator(tmp_path / "zoo.pth")  # avgG preferred over netG
    z = torch.randn(3, 16)
    assert loaded.resolution == 16 and torch.equal(loaded(z), zoo.eval()(z))
    torch.save(state, tmp_path / "bare.pth")
    assert torch.equal(generators.load_generator(tmp_path / "bare.pth")(z), zoo(z))
    scales = {"scaleLayers.0.1": 1 - unit_alpha([0, 3], 16)}
    folded, how = apply_unit_scales(loaded, scales)
    with torch.no_grad(), scaled_units(loaded, scales) as hook:
        assert how == {"scaleLayers.0.1": "folded"} and torch.equal(folded(z), hook(z))


def test_nvidia_pickles_need_their_packages_and_an_explicit_flag(tmp_path, monkeypatch):
    (tmp_path / "network-snapshot.pkl").write_bytes(b"\x80\x04N.")
    with pytest.raises(CheckpointError, match="needs NVIDIA's dnnlib and torch_utils"):
        generators.load_generator(tmp_path / "network-snapshot.pkl")
    for package in ("dnnlib", "torch_utils"):  # stand-ins: importable, as they are with NVIDIA's repository
        (tmp_path / "pkgs" / package).mkdir(parents=True)
        (tmp_path / "pkgs" / package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    with pytest.raises(CheckpointError, match="can run any code.*allow_pickle=true"):
        generators.load_generator(tmp_path / "network-snapshot.pkl")
    with pytest.raises(CheckpointError, match="holds no G_ema module"):
        generators.load_generator(tmp_path / "network-snapshot.pkl", allow_pickle=True)


def test_factory_generators_are_checked_against_the_contract():
    g = generators.load_generator("tests.factory_models:generator")
    assert (g.latent_dim, g.resolution) == (16, 32)  # from z_dim, and measured
    with pytest.raises(ConfigError, match="cannot import no_such_package"):
        generators.load_generator("no_such_package.models:make")
    with pytest.raises(ConfigError, match="has no function 'missing'"):
        generators.load_generator("tests.factory_models:missing")
    with pytest.raises(ConfigError, match="returned a int; expected a torch.nn.Module"):
        generators.load_generator("tests.factory_models:not_a_module")
    with pytest.raises(ConfigError, match="truncation=0.5: generator .* has no mapping network"):
        generators.load_generator("tests.factory_models:generator", truncation=0.5)


# --- every step on every kind of generator ---------------------------------------------------------------------------
SEGMENTER = str(REPO / "checkpoints" / "scene_segmenter.safetensors")
SHIPPED_STYLEGAN2 = REPO / "checkpoints" / "scene_stylegan2_generator.safetensors"
REPAIR_TINY = ["dissect_n=100", "effect_n=16", "fd_n=64", "real_n=64", "batch_size=32", "k=2", "candidates=4",
               "routes=[iou]", "random_draws=2", "artifact.calibration_n=32", "artifact.check_n=32",
               "artifact.finetune_steps=0", "artifact.require_signal=false", "evaluation.resamples=20",
               "evaluation.rules_n=32", "evaluation.kid_subsets=4", "wandb.mode=disabled"]


def _sources(tmp_path):
    g, d = tiny_stylegan2()
    rosinality = rosinality_file(tmp_path / "rosinality.pt", g, d)
    torch.manual_seed(0)
    zoo = legacy.GANZooGenerator(latent_dim=16, depths=[16, 16, 8, 8]).state_dict()
    torch.save({"avgG": zoo}, tmp_path / "zoo.pth")
    torch.manual_seed(0)
    stylegan2.StyleGAN2Discriminator(32, CHANNELS).save(tmp_path / "d32.safetensors")
    shipped_d = REPO / "checkpoints" / "scene_stylegan2_discriminator.safetensors"
    return {  # generator, the layer dissected, the discriminator of the repair
        "rosinality": (str(rosinality), "convs.1", str(rosinality)),
        "ganzoo": (str(tmp_path / "zoo.pth"), "scaleLayers.0.1", str(tmp_path / "d32.safetensors")),
        "factory": ("tests.factory_models:generator", "block1", "tests.factory_models:discriminator"),
        "shipped-stylegan2": (str(SHIPPED_STYLEGAN2), "convs.1", str(shipped_d)),
    }


def _most_common_class(generator) -> str:
    from gandissect.core.latents import seeded_latents
    from gandissect.models.segmenter import SceneSegmenter

    segmenter = SceneSegmenter.load(SEGMENTER)
    with torch.no_grad():
        labels = segmenter.labels(generator(seeded_latents(0, 16, generator.latent_dim)).clamp(-1, 1))[:, 0]
    return segmenter.classes[int(labels.flatten().bincount().argmax())]


@pytest.mark.parametrize("kind", ["rosinality", "ganzoo", "factory", "shipped-stylegan2"])
def test_dissect_ace_and_repair_run_on_every_kind_of_generator(kind, tmp_path, isolated_runs):
    if kind == "shipped-stylegan2" and not SHIPPED_STYLEGAN2.is_file():
        pytest.fail(f"{SHIPPED_STYLEGAN2} is missing")
    generator, layer, discriminator = _sources(tmp_path)[kind]
    common = [f"generator={generator}", f"segmenter={SEGMENTER}", "wandb.mode=disabled"]
    dissection = run_dissection(load_config(DissectConfig, None, [*common, "name=d", f"layers=[{layer}]", "n=100",
                                                                  "batch_size=50"]))
    units = dissection["layers"][layer]["units_detail"]
    widths = {row["layer"]: row["units"] for row in generators.describe_layers(generators.load_generator(generator))}
    assert len(units) == widths[layer] and all(0 <= unit["iou"] <= 1 for unit in units)
    present = _most_common_class(generators.load_generator(generator))  # random weights draw what they draw
    ace = run_ace_pipeline(load_config(AceConfig, None, [*common, "name=a", f"layer={layer}", f"class_name={present}",
                                                         f"dissection={isolated_runs / 'd'}", "steps=2",
                                                         "batch_size=4", "n=16", "constants_n=100",
                                                         "removal_units=3"]))
    assert sorted(ace["rankings"]["ace"]) == list(range(len(units)))
    repair = run_repair_pipeline(load_config(RepairConfig, None, [*common, "name=r", f"layer={layer}",
                                                                  f"artifact.discriminator={discriminator}",
                                                                  *REPAIR_TINY]))
    chosen = repair["chosen_units"]
    assert len(chosen) == 2 and repair["fd"]["n"] == 64
    record = json.loads((isolated_runs / "r" / "repair.json").read_text())["checkpoint"]
    if kind == "factory":  # not a gandissect architecture: the units are in repair.json, no checkpoint
        assert record["path"] is None and "cannot save" in record["note"]
        return
    assert record["edits"] == {layer: "folded" if kind == "ganzoo" else "recorded"}
    repaired = generators.load_generator(isolated_runs / "r" / record["path"])
    original = generators.load_generator(generator)
    z = torch.randn(4, original.latent_dim)
    with torch.no_grad(), scaled_units(original, {layer: 1 - unit_alpha(chosen, len(units))}) as hook:
        assert torch.equal(repaired(z), hook(z))


def test_factory_specs_are_told_apart_from_paths():
    from gandissect.core.factory import is_factory_spec

    assert is_factory_spec("tests.factory_models:generator")
    assert not is_factory_spec("C:/models/g.pth") and not is_factory_spec("runs/x/generator.safetensors")
