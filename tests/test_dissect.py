"""Dissection: a planted unit is found, an interrupted run resumes to the same result, 2 processes = 1 process."""

import json
import subprocess
import sys

import pytest
import torch

import gandissect  # noqa: F401
from gandissect.config import DissectConfig, load_config
from gandissect.data import scenes
from gandissect.core.latents import seeded_latents
from gandissect.steps.dissect import run_dissection
from gandissect.errors import GandissectError
from gandissect.models.planted import PlantedTreeShare
from gandissect.models.progan import load_generator
from gandissect.models.segmenter import SceneSegmenter
from gandissect.core.wandb_files import read_offline_history, read_offline_run, read_offline_table

from .conftest import REPO, SHIPPED_SEGMENTER, run_cli

SHIPPED_GAN = REPO / "checkpoints" / "scene_gan_generator.safetensors"
TREE = scenes.CLASSES.index("tree")


def _config(name, **values):
    overrides = [f"name={name}", f"generator={SHIPPED_GAN}", f"segmenter={SHIPPED_SEGMENTER}", "wandb.mode=disabled",
                 "batch_size=32", "top_k=4"]
    overrides += [f"{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in values.items()]
    return load_config(DissectConfig, None, overrides)


@pytest.fixture(scope="module")
def shipped():
    return load_generator(SHIPPED_GAN).eval(), SceneSegmenter.load(SHIPPED_SEGMENTER)


def _tree_ious(generator, segmenter, tmp_path, quantile):
    cfg = _config(f"planted{generator.factor}", layers=["planted"], n=128, quantile=quantile)
    layer = run_dissection(cfg, tmp_path / cfg.name / str(quantile), generator=generator,
                           segmenter=segmenter)["layers"]["planted"]
    return layer["units_detail"][7], layer["iou_by_class"]["tree"]


def test_planted_tree_unit_is_the_top_tree_unit(shipped, tmp_path):
    generator, segmenter = shipped
    with torch.no_grad():
        images = generator(seeded_latents(0, 128, generator.latent_dim)).clamp(-1, 1)
        share = float((segmenter.labels(images) == TREE).any(dim=1).float().mean())
    assert 0.005 < share < 0.2  # the shipped GAN draws trees
    # the quantile at which a perfect tree unit covers the tree pixels: just below 1 - share, so that the
    # threshold falls on the unit's zeros and not on its ones
    matched = round(1 - 1.02 * share, 5)

    # at the segmentation's resolution, with the threshold matched to the tree share, the mask is the tree mask
    unit7, tree_iou = _tree_ious(PlantedTreeShare(generator, segmenter, 1), segmenter, tmp_path, matched)
    assert unit7["label"] == "tree" and unit7["iou"] >= 0.95, unit7
    assert max(range(16), key=tree_iou.__getitem__) == 7 and sorted(tree_iou)[-2] < 0.5

    # downsampled 2x, bilinear upsampling cannot redraw thin trunks and branches: the best any threshold
    # reaches on these images is ~0.75 (see the issue note); the unit is still by far the top tree unit
    planted2 = PlantedTreeShare(generator, segmenter, 2)
    unit7, tree_iou = _tree_ious(planted2, segmenter, tmp_path, matched)
    assert unit7["label"] == "tree" and unit7["iou"] >= 0.65, unit7
    assert max(range(16), key=tree_iou.__getitem__) == 7 and sorted(tree_iou)[-2] < 0.5


class Crash(Exception):
    pass


def _crash_callback(phase, batches):
    import pytorch_lightning as pl

    class _Crash(pl.Callback):
        seen = 0

        def on_validation_batch_end(self, trainer, module, *args, **kwargs):
            if module.phase == phase:
                self.seen += 1
                if self.seen == batches:
                    raise Crash(f"simulated crash in the {phase} pass")

    return _Crash()


@pytest.mark.parametrize("phase", ["quantile", "iou"])
def test_an_interrupted_run_resumes_to_the_same_result(tmp_path, phase):
    settings = dict(layers=["layer3", "layer5"], n=160, save_every=2)
    whole = run_dissection(_config("whole", **settings), tmp_path / "whole")
    generator = load_generator(SHIPPED_GAN).eval()
    with pytest.raises(Crash):
        run_dissection(_config("cut", **settings), tmp_path / "cut", generator=generator,
                       callbacks=[_crash_callback(phase, 3)])
    assert not any(m._forward_hooks for m in generator.modules())  # the crash left no hooks behind
    tally = torch.load(tmp_path / "cut" / "tally.pt", weights_only=True)
    assert tally["phase"] == phase and tally["done"] == [0, 1]  # saved after 2 batches, crashed in the 3rd
    assert not (tmp_path / "cut" / "dissect.json").exists()
    resumed = run_dissection(_config("cut", **settings), tmp_path / "cut", generator=generator)
    for name in settings["layers"]:
        assert resumed["layers"][name]["units_detail"] == whole["layers"][name]["units_detail"]
        assert resumed["layers"][name]["iou_by_class"] == whole["layers"][name]["iou_by_class"]
    # a finished run reruns from its tally without computing anything again
    again = run_dissection(_config("cut", **settings), tmp_path / "cut", generator=generator,
                           callbacks=[_crash_callback("iou", 1)])
    assert again["layers"] == resumed["layers"]
    # other settings on the same run directory are refused by name instead of mixing tallies
    config_before = (tmp_path / "cut" / "config.yaml").read_text()
    with pytest.raises(GandissectError, match="other settings"):
        run_dissection(_config("cut", layers=["layer3"], n=96), tmp_path / "cut", generator=generator)
    with pytest.raises(GandissectError, match="other settings"):  # other weights: the file's, not this module's
        run_dissection(_config("cut", **settings), tmp_path / "cut")
    assert (tmp_path / "cut" / "config.yaml").read_text() == config_before  # a refused run writes nothing


def test_two_ddp_processes_give_the_same_counts_and_labels_as_one(tmp_path):
    from . import dissect_ddp_script

    dissect_ddp_script.main(str(tmp_path / "p1"), 1)  # the one-process reference runs here, the DDP pair apart
    subprocess.run([sys.executable, dissect_ddp_script.__file__, str(tmp_path / "p2"), "2"], check=True, cwd=REPO,
                   timeout=300)
    # one batch for two processes: the second has nothing to do and the run still completes
    tiny = [json.loads((tmp_path / f"p{d}-tiny" / "dissect.json").read_text()) for d in (1, 2)]
    assert tiny[0]["layers"]["layer4"]["units_detail"] == tiny[1]["layers"]["layer4"]["units_detail"]
    one, two = (torch.load(tmp_path / f"p{d}" / "tally.pt", weights_only=True) for d in (1, 2))
    assert one["phase"] == two["phase"] == "done"
    for key, counts in one["states"]["iou"].items():
        for name, value in counts.items():
            assert torch.equal(value, two["states"]["iou"][key][name]), (key, name)
    assert all(torch.equal(one["thresholds"][k], two["thresholds"][k]) for k in one["thresholds"])
    assert all(torch.equal(one["top"][k][1], two["top"][k][1]) for k in one["top"])
    a, b = (json.loads((tmp_path / f"p{d}" / "dissect.json").read_text()) for d in (1, 2))
    assert b["settings"]["processes"] == 2
    assert a["layers"]["layer4"]["units_detail"] == b["layers"]["layer4"]["units_detail"]
    assert a["layers"]["layer4"]["interpretable_units"] > 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_started_by_torchrun_give_the_one_process_dissection(tmp_path):
    """Two single-process "nodes" on the loopback address (torchrun --nnodes 2, gloo), as an external launcher
    starts a run on a cluster: the dissection must equal the one-process one."""
    from . import dissect_nodes_script

    script = dissect_nodes_script.__file__
    dissect_nodes_script.main(str(tmp_path / "one"), 1)
    port = _free_port()
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node",
                               "1", "--node_rank", str(rank), "--master_addr", "127.0.0.1", "--master_port",
                               str(port), str(script), str(tmp_path / "two"), "2"],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    logs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    one, two = (json.loads((tmp_path / name / "dissect.json").read_text()) for name in ("one", "two"))
    assert one["settings"]["processes"] == 1 and two["settings"]["processes"] == 2
    assert one["layers"]["layer4"]["units_detail"] == two["layers"]["layer4"]["units_detail"]
    assert one["layers"]["layer4"]["iou_by_class"] == two["layers"]["layer4"]["iou_by_class"]


def test_dissect_command_writes_json_report_strips_chart_and_wandb(isolated_runs):
    run = run_cli("dissect", "--config", "experiments/scenes/dissect.yaml", "--layers", "layer3,layer4",
                  "--n", "64", "--set", "name=cli-dissect", "--set", "top_k=3")
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads(run.stdout[run.stdout.index("{"):])
    run_dir = isolated_runs / "cli-dissect"
    result = json.loads((run_dir / "dissect.json").read_text())
    assert result["settings"]["n"] == 64 and result["settings"]["layers"] == ["layer3", "layer4"]
    for name in ("layer3", "layer4"):
        layer = result["layers"][name]
        assert layer["shape"] == [128, 8, 8] and len(layer["units_detail"]) == 128
        assert summary["layers"][name]["interpretable_units"] == layer["interpretable_units"]
        assert sum(layer["per_class"].values()) == layer["interpretable_units"]
        unit = layer["units_detail"][0]
        assert set(unit) >= {"unit", "label", "category", "iou", "threshold", "top_images", "strip", "interpretable"}
        assert len(unit["top_images"]) == 3 and (run_dir / unit["strip"]).is_file()
        assert (run_dir / layer["chart"]).is_file()
    assert "strips/layer4/unit127.png" in (run_dir / "index.html").read_text()
    assert (run_dir / "chart_layers.png").is_file()
    assert (run_dir / "config.yaml").is_file()
    rows = read_offline_history(run_dir)
    assert rows and rows[0]["layer4/interpretable_units"] == result["layers"]["layer4"]["interpretable_units"]
    assert rows[0]["units"]["_type"] == "table-file"
    # made for comparing: group, job type, flat config, summary, the unit table and the generator it read
    layers = result["layers"].values()
    logged = read_offline_run(run_dir)
    assert (logged["group"], logged["job_type"]) == ("scene_gan_generator", "dissect")
    assert logged["config"]["generator_sha256"] == result["settings"]["generator_sha256"]
    assert (logged["config"]["layers"], logged["config"]["n"], logged["config"]["arch"]) == \
        (["layer3", "layer4"], 64, "progan")
    summary = logged["summary"]
    assert summary["interpretable_units"] == sum(layer["interpretable_units"] for layer in layers)
    assert summary["layer3/interpretable_units"] == result["layers"]["layer3"]["interpretable_units"]
    assert {c: summary[f"units/{c}"] for c in result["classes"]} == \
        {c: sum(layer["per_class"].get(c, 0) for layer in layers) for c in result["classes"]}
    table = read_offline_table(run_dir, "units")
    assert table["columns"] == ["layer", "unit", "label", "category", "iou", "threshold", "interpretable",
                                "top_images"]
    layer4 = result["layers"]["layer4"]["units_detail"]
    assert len(table["data"]) == 256 and all(row[-1]["_type"] == "image-file" for row in table["data"])
    assert [row[4] for row in table["data"][128:]] == [u["iou"] for u in layer4]
    assert [row[-1]["path"].rpartition("/")[2] for row in table["data"][128:]] == \
        [u["strip"].rpartition("/")[2] for u in layer4]  # each unit's own top-images strip
    (used,) = [artifact for artifact in logged["artifacts"] if artifact["type"] == "model"]
    assert (used["name"], used["type"], used["used"]) == ("scene_gan_generator", "model", True)
    assert used["metadata"]["sha256"] == result["settings"]["generator_sha256"]

    bad = run_cli("dissect", "--layers", "layer99", "--n", "32")
    assert bad.returncode == 2 and not (isolated_runs / "dissect").exists()  # nothing written for a bad layer
    assert "unknown layer 'layer99'" in bad.stderr and "layer4" in bad.stderr and len(bad.stderr.splitlines()) == 1
