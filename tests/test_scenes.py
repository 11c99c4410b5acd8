import numpy as np
import pytest
import torch

from gandissect.data import scenes
from gandissect.errors import GandissectError

C = {name: i for i, name in enumerate(scenes.CLASSES)}


def test_same_seed_and_index_give_the_same_scene():
    a_img, a_lab = scenes.render_scene(3, 17)
    b_img, b_lab = scenes.render_scene(3, 17)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    assert not np.array_equal(a_img, scenes.render_scene(3, 18)[0])
    assert not np.array_equal(a_img, scenes.render_scene(4, 17)[0])


@pytest.mark.parametrize("size", [32, 64, 128, 256])
def test_sizes_and_every_pixel_labelled(size):
    image, label = scenes.render_scene(0, 1, size)
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    assert label.shape == (size, size) and label.dtype == np.int64
    assert label.min() >= 1 and label.max() < len(scenes.CLASSES)


def test_bad_size_and_class_name_are_refused_with_the_valid_choices():
    with pytest.raises(GandissectError, match="power of two from 32 to 256, got 48"):
        scenes.render_scene(0, 0, 48)
    with pytest.raises(GandissectError, match="unknown class 'trees'.*tree, building"):
        scenes.class_index("trees")
    assert scenes.class_index("dome") == C["dome"]


def _scene_batch(n=150, seed=5):
    pairs = [scenes.render_scene(seed, i) for i in range(n)]
    return np.stack([p[0] for p in pairs]).astype(float) / 255, np.stack([p[1] for p in pairs])


def test_pixel_colours_agree_with_their_labels():
    images, labels = _scene_batch()
    mean = {name: images[labels == C[name]].mean(axis=0) for name in scenes.CLASSES[1:]}
    r, g, b = 0, 1, 2
    assert mean["sky"][b] > mean["sky"][r] + 0.2
    assert mean["water"][b] > mean["water"][r] + 0.2
    assert mean["grass"][g] > max(mean["grass"][r], mean["grass"][b]) + 0.1
    assert mean["tree"][g] > mean["tree"][r]
    assert mean["cloud"].min() > 0.8          # white
    assert mean["window"].sum() < mean["building"].sum()  # windows are darker than walls on average
    assert abs(mean["road"][r] - mean["road"][b]) < 0.1    # grey


def _neighbours_below(labels, cls):
    """Labels of the pixel directly below each pixel of class ``cls`` (within the image)."""
    below = labels[:, 1:, :][labels[:, :-1, :] == cls]
    return set(np.unique(below).tolist())


def test_objects_stand_in_context():
    _, labels = _scene_batch()
    sky_like = {C["sky"], C["cloud"], C["mountain"]}
    ground = {C["grass"], C["road"], C["water"]}
    # Windows sit inside walls: around a window there is only the building or things drawn in front of it.
    around = set()
    for dy, dx in [(0, 1), (1, 0), (0, -1), (-1, 0)]:
        shifted = np.roll(labels, (dy, dx), axis=(1, 2))[:, 1:-1, 1:-1]
        around |= set(np.unique(shifted[labels[:, 1:-1, 1:-1] == C["window"]]).tolist())
    assert around <= {C["window"], C["building"], C["door"], C["roof"], C["dome"], C["tree"]}
    assert C["building"] in around
    # Domes rest on buildings: below a dome there is never sky or ground.
    assert not _neighbours_below(labels, C["dome"]) & (sky_like | ground)
    # Doors stand on the ground; trees grow from the ground, never out of the sky.
    assert _neighbours_below(labels, C["door"]) & ground
    assert not _neighbours_below(labels, C["door"]) & sky_like
    with_trees = [lab for lab in labels if (lab == C["tree"]).any()]
    lowest_tree = np.array([np.nonzero(lab == C["tree"])[0].max() for lab in with_trees])
    lowest_sky = np.array([np.nonzero(np.isin(lab, list(sky_like)))[0].max() for lab in with_trees])
    # A tree's base can be hidden behind a nearer building, so allow a rare exception.
    assert (lowest_tree > lowest_sky).mean() >= 0.95


def test_world_statistics_add_up():
    stats = scenes.world_statistics(0, 50)
    shares = [c["pixel_share"] for c in stats["classes"].values()]
    assert abs(sum(shares) - 1) < 1e-9
    assert stats["classes"]["sky"]["presence_rate"] == 1.0
    assert set(stats["classes"]) == set(scenes.CLASSES[1:])
    assert all(stats["classes"][c]["category"] in ("object", "part", "stuff") for c in stats["classes"])


def test_dataset_and_datamodule_give_normalised_tensors():
    data = scenes.ScenesDataModule(batch_size=4, train_length=8, val_length=4)
    images, labels = next(iter(data.train_dataloader()))
    assert images.shape == (4, 3, 64, 64) and images.dtype == torch.float32
    assert labels.shape == (4, 64, 64) and labels.dtype == torch.int64
    assert images.min() >= -1 and images.max() <= 1
    val_images, _ = next(iter(data.val_dataloader()))
    expected = scenes.to_tensor(scenes.render_scene(1, 0)[0])
    assert torch.equal(val_images[0], expected)
    with pytest.raises(GandissectError, match="must differ"):
        scenes.ScenesDataModule(train_seed=1, val_seed=1)


def test_parent_labels_mark_parts_as_part_of_the_building():
    label = torch.tensor([[[C["window"], C["sky"]], [C["door"], C["tree"]]]])
    both = scenes.labels_with_parents(label)
    assert both.shape == (1, 2, 2, 2)
    assert both[0, 1].tolist() == [[C["building"], 0], [C["building"], 0]]


def test_the_default_world_is_unchanged_by_the_variants():
    """Scene (3, 17) of the default world as it was drawn before the variants existed (sha256 of image + labels):
    every shipped checkpoint was trained on these scenes."""
    import hashlib

    image, label = scenes.render_scene(3, 17)
    assert hashlib.sha256(image.tobytes() + label.tobytes()).hexdigest() == \
        "a409dd642adfd544de4f88e8bb9050ea7ef00840ff6ac9e662790a89f933f088"
    assert np.array_equal(scenes.render_scene(3, 17, variant="default")[0], image)


def test_variants_are_deterministic_worlds_with_other_priors():
    from gandissect import defaults

    assert tuple(scenes.VARIANTS) == defaults.WORLD_VARIANTS
    for variant in ("town", "wild"):
        a, b = scenes.render_scene(0, 5, variant=variant), scenes.render_scene(0, 5, variant=variant)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        assert not np.array_equal(a[0], scenes.render_scene(0, 5)[0])
    stats = {v: scenes.world_statistics(0, 80, 32, v)["classes"] for v in defaults.WORLD_VARIANTS}
    share = {v: {c: s["pixel_share"] for c, s in stats[v].items()} for v in stats}
    assert share["town"]["building"] > 1.5 * share["default"]["building"] > 2 * share["wild"]["building"]
    assert share["wild"]["tree"] > 1.5 * share["default"]["tree"] > 2 * share["town"]["tree"]
    assert share["wild"]["mountain"] > share["default"]["mountain"] > share["town"]["mountain"]
    dataset = scenes.SceneDataset(0, 3, 32, variant="town")
    assert torch.equal(dataset[2][1], torch.from_numpy(scenes.render_scene(0, 2, 32, "town")[1]))
    with pytest.raises(GandissectError, match="world variant 'city': expected one of default, town, wild"):
        scenes.render_scene(0, 0, variant="city")


def test_the_variant_reaches_the_commands_that_draw_scenes():
    from gandissect.config import EvalGANConfig, GANTrainConfig, RepairConfig, ScenesConfig, load_config
    from gandissect.errors import ConfigError

    assert load_config(GANTrainConfig, None, ["data.variant=wild"]).data.variant == "wild"
    for cls, key in ((ScenesConfig, "variant"), (EvalGANConfig, "variant"), (RepairConfig, "real_variant"),
                     (GANTrainConfig, "data.variant")):
        with pytest.raises(ConfigError, match=f"{key.split('.')[-1]}='city': expected a world variant"):
            load_config(cls, None, [f"{key}=city"])
    from gandissect.cli import _config, build_parser

    args = build_parser().parse_args(["scenes", "--out", "x", "--variant", "town", "--n", "4", "--size", "32"])
    cfg = _config(args.config_class, args)
    assert cfg.variant == "town"


def test_scenes_of_a_variant_are_drawn_with_its_statistics(tmp_path):
    import json

    from gandissect.steps.evaluate import run_scenes

    out = run_scenes(4, 0, 32, tmp_path / "town", stats_n=20, variant="town")
    stats = json.loads(open(out["statistics"]).read())
    assert stats["variant"] == "town"
    assert stats["classes"]["building"]["pixel_share"] == scenes.world_statistics(0, 20, 32, "town")["classes"][
        "building"]["pixel_share"]


def test_a_town_scene_is_pinned():
    """The town variant's scene (3, 17) (sha256 of image + labels): the shipped town GAN was trained on these."""
    import hashlib

    image, label = scenes.render_scene(3, 17, variant="town")
    assert hashlib.sha256(image.tobytes() + label.tobytes()).hexdigest() == \
        "376422148e4f7a50e9e29fb6862d1ec4c4b74811cea9a533714706343f798989"


def test_a_repair_of_a_variant_draws_its_real_scenes_from_that_variant(monkeypatch, tmp_path):
    """The artifact segmenter (fine-tuning, calibration, signal) and the real statistics of a repair with
    real_variant=town read town scenes only."""
    from gandissect.config import RepairConfig, load_config
    from gandissect.metrics.fid import scenes_fd
    from gandissect.metrics.real_stats import real_statistics
    from gandissect.models.generators import load_generator
    from gandissect.models.segmenter import SceneSegmenter
    from gandissect.steps.artifacts import build_artifact_segmenter

    from .conftest import REPO

    drawn, draw = [], scenes.render_scene
    monkeypatch.setattr(scenes, "render_scene", lambda seed, index, size=64, variant="default":
                        drawn.append(variant) or draw(seed, index, size, variant))
    cfg = load_config(RepairConfig, None, ["real_variant=town", "artifact.calibration_n=4", "artifact.check_n=2",
                                           "artifact.finetune_steps=1", "artifact.finetune_batch_size=2",
                                           "batch_size=2"])
    build_artifact_segmenter(cfg, load_generator(REPO / "checkpoints" / "scene_gan_generator.safetensors"))
    fd = scenes_fd(SceneSegmenter.load(REPO / "checkpoints" / "scene_segmenter.safetensors"))
    real = real_statistics(fd, 64, 12345, 4, 2, tmp_path, None, variant="town")
    assert "_town_seed12345_" in real.path.name
    assert len(drawn) == 2 + 4 + 4 + 2 + 4 and set(drawn) == {"town"}
