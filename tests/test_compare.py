"""gandissect compare: the comparison's numbers are those of the dissections, ACE and repair runs it reads."""

import json
import statistics

import pytest

from gandissect.config import AceConfig, CompareConfig, DissectConfig, load_config
from gandissect.core.runs import release_runs
from gandissect.errors import GandissectError
from gandissect.pipelines import run_ace_pipeline
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
                                                        f"ace=[{two_models / 'pg-ace'}]"]))
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
    for name in ("categories.png", "best_iou.png", "index.html", "config.yaml"):
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
