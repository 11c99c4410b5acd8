import os
from pathlib import Path

import pytest
import torch

from gandissect.checkpoint import save_checkpoint
from gandissect.data import scenes
from gandissect.errors import CheckpointError, GandissectError
from gandissect.models.segmenter import SceneSegmenter, Segmenter, class_index, evaluate_segmenter

from .conftest import SHIPPED_SEGMENTER

C = {name: i for i, name in enumerate(scenes.CLASSES)}


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return SceneSegmenter(widths=(8, 16)).eval()


def _images(n=2, size=64, seed=3):
    return torch.stack([scenes.to_tensor(scenes.render_scene(seed, i, size)[0]) for i in range(n)])


def test_follows_the_segmenter_protocol(small):
    assert isinstance(small, Segmenter)
    images = _images().requires_grad_(True)
    probs = small.probs(images)
    assert probs.shape == (2, len(scenes.CLASSES), 64, 64) and probs.dtype == torch.float32
    assert torch.allclose(probs.sum(dim=1), torch.ones(2, 64, 64), atol=1e-5)
    probs[:, C["tree"]].mean().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0  # differentiable w.r.t. the images
    labels = small.labels(images.detach())
    assert labels.shape == (2, 2, 64, 64) and labels.dtype == torch.int64
    parts = labels[:, 0] == C["window"]
    assert (labels[:, 1][parts] == C["building"]).all()
    assert small.features(images.detach()).shape == (2, 16)
    assert small.categories["dome"] == "part" and small.classes[0] == "-"


@pytest.mark.parametrize("size", [32, 128])
def test_segments_other_resolutions_at_their_own_size(small, size):
    assert small.labels(_images(1, size)).shape == (1, 2, size, size)


def test_class_index_names_the_classes(small):
    assert class_index(small, "door") == C["door"]
    with pytest.raises(GandissectError, match="unknown class 'doors'; this segmenter has: sky, cloud"):
        class_index(small, "doors")


def test_checkpoint_round_trip_is_exact(small, tmp_path):
    path = small.save(tmp_path / "seg.safetensors")
    loaded = SceneSegmenter.load(path)
    images = _images()
    assert torch.equal(small(images), loaded(images))
    assert loaded.widths == (8, 16) and loaded.classes == small.classes


def test_missing_and_corrupt_checkpoints_name_the_file(tmp_path, small):
    with pytest.raises(CheckpointError, match=f"checkpoint not found: {tmp_path / 'nope.safetensors'}"):
        SceneSegmenter.load(tmp_path / "nope.safetensors")
    good = small.save(tmp_path / "good.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:500])
    with pytest.raises(CheckpointError, match=f"{truncated} is corrupt or not a safetensors file"):
        SceneSegmenter.load(truncated)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(os.urandom(256))
    with pytest.raises(CheckpointError, match="corrupt"):
        SceneSegmenter.load(junk)


def test_checkpoint_of_another_architecture_is_refused(tmp_path, small):
    other = save_checkpoint(tmp_path / "g.safetensors", "progan-generator", {}, {"w": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="holds a 'progan-generator' model; expected 'scene-segmenter'"):
        SceneSegmenter.load(other)


def test_missing_and_misshaped_keys_are_listed(tmp_path, small):
    state = small.state_dict()
    del state["head.bias"]
    state["head.weight"] = torch.zeros(3, 8, 1, 1)
    state["extra.weight"] = torch.zeros(1)
    bad = save_checkpoint(tmp_path / "bad.safetensors", SceneSegmenter.ARCH, small.config(), state)
    with pytest.raises(CheckpointError) as err:
        SceneSegmenter.load(bad)
    message = str(err.value)
    assert str(bad) in message
    assert "missing keys: head.bias" in message
    assert "unexpected keys: extra.weight" in message
    assert "head.weight (file (3, 8, 1, 1), model (13, 8, 1, 1))" in message


def test_a_failed_save_leaves_the_earlier_checkpoint_intact(tmp_path, small):
    path = small.save(tmp_path / "seg.safetensors")
    before = path.read_bytes()
    with pytest.raises(Exception):
        save_checkpoint(path, SceneSegmenter.ARCH, {}, {"w": "not a tensor"})
    assert path.read_bytes() == before
    assert [p.name for p in Path(tmp_path).iterdir()] == ["seg.safetensors"]  # no temporary left behind


def test_shipped_segmenter_is_accurate_on_held_out_scenes():
    segmenter = SceneSegmenter.load(SHIPPED_SEGMENTER)
    result = evaluate_segmenter(segmenter, seed=777, n=200, progress=False)
    # The full measurement (1,000 scenes, seed 12345) is in checkpoints/MANIFEST.json; this is a guard.
    assert result["miou"] >= 0.98, result["per_class_iou"]
    assert min(result["per_class_iou"].values()) >= 0.95, result["per_class_iou"]
