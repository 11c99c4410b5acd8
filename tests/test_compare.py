"""gandissect compare: the comparison's numbers are those of the dissections, ACE and repair runs it reads."""

import json
import statistics

import pytest
import torch

from gandissect.config import AceConfig, CompareConfig, DissectConfig, load_config
from gandissect.core.latents import seeded_latents
from gandissect.core.runs import release_runs
from gandissect.core.wandb_files import read_offline_run
from gandissect.errors import CheckpointError, GandissectError
from gandissect.models.generators import load_generator, save_generator
from gandissect.pipelines import run_ace_pipeline, run_compare_pipeline
from gandissect.steps.compare import run_compare
from gandissect.steps.dissect import run_dissection

from .conftest import REPO
from .test_generators import rosinality_file, tiny_stylegan2

PROGAN = str(REPO / "checkpoints" / "scene_gan_generator.safetensors")
SEGMENTER = str(REPO / "checkpoints" / "scene_segmenter.safetensors")


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """Dissections of the shipped ProGAN and a tiny StyleGAN2, and an ACE run of the ProGAN (runs/ of this module)."""
    runs = tmp_path_factory.mktemp("runs")
    g, d = tiny_stylegan2()
    stylegan = str(rosinality_file(runs / "sg2.pt", g, d))
    common = [f"segmenter={SEGMENTER}", "n=100", "batch_size=50", "wandb.mode=disabled"]
    run_dissection(load_config(DissectConfig, None, [*common, "name=pg", f"generator={PROGAN}", "layers=[layer4]"]),
                   runs / "pg")
    run_dissection(load_config(DissectConfig, None, [*common, "name=sg", f"generator={stylegan}",
                                                     "layers=[convs.1,convs.3]"]), runs / "sg")
    run_ace_pipeline(load_config(AceConfig, None, [f"segmenter={SEGMENTER}", f"generator={PROGAN}", "name=pg-ace",
                                                   "layer=layer4", "class_name=building", f"dissection={runs / 'pg'}",
                                                   "steps=2", "batch_size=4", "n=16", "constants_n=100",
                                                   "removal_units=20", "wandb.mode=disabled"]), runs / "pg-ace")
    release_runs()
    return runs


def test_the_comparison_holds_the_dissections_numbers(two_models, isolated_runs):
    out = run_compare(load_config(CompareConfig, None, ["name=cmp", f"dissections=[{two_models / 'pg'}, "
                                                        f"{two_models / 'sg'}]", "labels=[ProGAN, StyleGAN2]",
                                                        f"ace=[{two_models / 'pg-ace'}]", "wandb.mode=disabled"]))
    result = json.loads((isolated_runs / "cmp" / "compare.json").read_text())
    assert [m["label"] for m in result["models"]] == ["ProGAN", "StyleGAN2"]
    for model, run in zip(result["models"], ("pg", "sg")):
        dissection = json.loads((two_models / run / "dissect.json").read_text())
        assert model["n"] == 100 and list(model["layers"]) == list(dissection["layers"])
        for name, row in model["layers"].items():
            layer = dissection["layers"][name]
            assert (row["units"], row["interpretable"]) == (layer["units"], layer["interpretable_units"])
            assert row["per_class"] == layer["per_class"] and row["per_category"] == layer["per_category"]
            median = statistics.median(u["iou"] for u in layer["units_detail"])
            assert row["best_iou"]["median"] == pytest.approx(median, abs=1e-6)
            assert out["models"][model["label"]][name] == layer["interpretable_units"]
    ace = json.loads((two_models / "pg-ace" / "ace.json").read_text())
    (row,) = result["ace"]
    assert (row["model"], row["class"], row["layer"]) == ("ProGAN", "building", "layer4")
    assert (row["ace_at_5"], row["ace_at_20"]) == (ace["removal"]["ace"]["at_5"], ace["removal"]["ace"]["at_20"])
    assert (row["iou_at_20"]) == ace["removal"]["iou"]["at_20"]
    for name in ("categories.png", "classes.png", "best_iou.png", "index.html", "config.yaml"):
        assert (isolated_runs / "cmp" / name).stat().st_size > 0
    assert "StyleGAN2" in (isolated_runs / "cmp" / "index.html").read_text()


def test_compare_refuses_missing_runs_and_runs_of_other_generators(two_models, isolated_runs):
    pg, sg, ace = (str(two_models / name) for name in ("pg", "sg", "pg-ace"))
    with pytest.raises(GandissectError, match="dissection 'nope': no dissect.json there"):
        run_compare(load_config(CompareConfig, None, [f"dissections=[{pg}, nope]"]))
    with pytest.raises(GandissectError, match="ACE run .*pg-ace.* none of the dissections compared used \\(sg\\)"):
        run_compare(load_config(CompareConfig, None, [f"dissections=[{sg}]", f"ace=[{ace}]"]))
    with pytest.raises(GandissectError, match="one label per dissection"):
        run_compare(load_config(CompareConfig, None, [f"dissections=[{pg}, {sg}]", "labels=[a]"]))
    assert not (isolated_runs / "compare").exists()
    from gandissect.cli import _config, build_parser  # the flags' comma lists become the config's lists

    args = build_parser().parse_args(["compare", "--dissections", f"{pg},{sg}", "--labels", "a, b", "--name", "c2"])
    cfg = _config(args.config_class, args)
    assert (cfg.dissections, cfg.labels, cfg.name) == ([pg, sg], ["a", "b"], "c2")
    assert set(args.func(args)["models"]) == {"a", "b"}
    args = build_parser().parse_args(["compare", "--generators", f"{PROGAN},{PROGAN}", "--set", "match_units=true"])
    cfg = _config(args.config_class, args)
    assert cfg.generators == [PROGAN, PROGAN] and cfg.match_units and cfg.dissect == "experiments/scenes/dissect.yaml"


def permuted_progan(path):
    """The shipped ProGAN with layer4's units in another order: the same images, with the units renumbered."""
    g = load_generator(PROGAN)
    order = torch.randperm(128, generator=torch.Generator().manual_seed(0))
    state = g.state_dict()
    state["layer4.conv.weight"] = state["layer4.conv.weight"][order]
    state["layer4.wscale.b"] = state["layer4.wscale.b"][order]
    state["layer5.conv.weight"] = state["layer5.conv.weight"][:, order]
    g.load_state_dict(state)
    save_generator(g, path)
    return g, order


def test_units_are_matched_across_checkpoints_by_their_activations(two_models, isolated_runs, tmp_path):
    permuted, order = permuted_progan(tmp_path / "permuted.safetensors")
    z = seeded_latents(0, 4, 128)
    assert torch.allclose(permuted(z), load_generator(PROGAN)(z), atol=1e-5)
    settings = [f"segmenter={SEGMENTER}", "n=100", "batch_size=50", "layers=[layer4]"]
    cfg = load_config(CompareConfig, None, ["name=steps", f"dissections=[{two_models / 'pg'}]",
                                            f"generators=[{tmp_path / 'permuted.safetensors'}]",
                                            f"dissect={REPO / 'experiments/scenes/dissect.yaml'}",
                                            "labels=[before, after]", "match_units=true", "match_n=64"])
    cfg.dissect_set = settings  # as a YAML list; on the command line: --set 'dissect_set=["layers=[layer4]"]'
    run_compare_pipeline(cfg)
    result = json.loads((isolated_runs / "steps" / "compare.json").read_text())
    made = isolated_runs / "steps" / "dissect-1-permuted" / "dissect.json"
    before = json.loads((two_models / "pg" / "dissect.json").read_text())["layers"]["layer4"]
    after = json.loads(made.read_text())["layers"]["layer4"]
    assert after["per_class"] == before["per_class"]  # the same units, numbered otherwise
    (pair,) = result["matches"]
    assert (pair["earlier"], pair["later"]) == ("before", "after")
    layer = pair["layers"]["layer4"]
    interpretable = [u["unit"] for u in after["units_detail"] if u["interpretable"]]
    assert layer["interpretable"] == len(interpretable) > 0
    for row in layer["units"]:  # unit u of the permuted model is unit order[u] of the original
        assert row["match"] == int(order[row["unit"]]) and row["correlation"] > 0.999 and row["same_concept"]
    assert layer["same_concept"] == len(interpretable)
    assert (isolated_runs / "steps" / "matches.png").stat().st_size > 0
    logged = read_offline_run(isolated_runs / "steps")  # the comparison's W&B run, for the dashboard
    assert (logged["group"], logged["job_type"]) == ("steps", "compare")
    summary = logged["summary"]
    assert summary["after/layer4/interpretable_units"] == after["interpretable_units"] == \
        summary["before/interpretable_units"]
    assert summary["after/units/tree"] == after["per_class"].get("tree", 0)
    assert summary["before -> after/layer4/share_same_concept"] == 1.0
    used = {a["metadata"]["file"] for a in logged["artifacts"] if a["used"] and a["type"] == "model"}
    assert used == {PROGAN, str(tmp_path / "permuted.safetensors")}
    mtime = made.stat().st_mtime
    release_runs()
    run_compare_pipeline(cfg)  # the dissection made the first time is reused
    assert made.stat().st_mtime == mtime
    missing = load_config(CompareConfig, None, ["name=steps2", f"generators=[{PROGAN}, {tmp_path / 'none.pt'}]",
                                                f"dissect={REPO / 'experiments/scenes/dissect.yaml'}"])
    with pytest.raises(CheckpointError, match="generator not found: .*none.pt"):
        run_compare_pipeline(missing)
    for settings, message in ((["labels=[a, b]"], "give one label per dissection and generator \\(1\\)"),
                              (["match_units=true"], "give at least two models")):
        with pytest.raises(GandissectError, match=message):  # refused before any dissection
            run_compare_pipeline(load_config(CompareConfig, None, ["name=steps2", f"generators=[{PROGAN}]",
                                                                   *settings]))
    assert not (isolated_runs / "steps2").exists()


@pytest.mark.parametrize("name", ["layers", "datasets", "training"])
def test_the_comparison_configs_read_shipped_checkpoints_with_one_dissection_setting(name):
    cfg = load_config(CompareConfig, REPO / "experiments" / "compare" / f"{name}.yaml")
    assert cfg.generators and len(cfg.labels) == len(cfg.generators)
    assert all((REPO / generator).is_file() for generator in cfg.generators), cfg.generators
    dissect = load_config(DissectConfig, REPO / cfg.dissect, cfg.dissect_set)
    assert dissect.n == 2000 and len(dissect.layers) == 9


def test_the_help_shows_list_defaults_as_none(capsys):
    from gandissect.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["compare", "--help"])
    text = capsys.readouterr().out
    assert "MISSING" not in text and "(default: none)" in text
