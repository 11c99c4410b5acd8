import hashlib
import json

from .conftest import REPO


def test_every_shipped_checkpoint_is_in_the_manifest_with_its_sha256():
    manifest = json.loads((REPO / "checkpoints" / "MANIFEST.json").read_text())
    shipped = sorted(p.name for p in (REPO / "checkpoints").glob("*.*") if p.name != "MANIFEST.json")
    assert shipped and sorted(manifest) == shipped
    for name, entry in manifest.items():
        digest = hashlib.sha256((REPO / "checkpoints" / name).read_bytes()).hexdigest()
        assert digest == entry["sha256"], f"{name} does not match its manifest entry"
        assert (REPO / entry["config"]).is_file()
        for field in ("command", "steps", "wall_time_s", "machine", "quality"):
            assert field in entry, f"{name}: manifest entry lacks {field}"


def test_shipped_scene_gan_loads_with_the_recorded_architecture():
    import torch

    from gandissect.models.progan import load_discriminator, load_generator

    g = load_generator(REPO / "checkpoints" / "scene_gan_generator.safetensors")
    d = load_discriminator(REPO / "checkpoints" / "scene_gan_discriminator.safetensors")
    assert (g.resolution, g.latent_dim, g.widths[3]) == (64, 128, 128)  # layer4: 128 units at 8x8
    with torch.no_grad():
        images = g(torch.randn(2, 128))
        assert images.shape == (2, 3, 64, 64) and d(images).shape == (2,)


def test_shipped_scene_stylegan2_loads_with_the_recorded_architecture():
    import torch

    from gandissect.models.generators import load_discriminator, load_generator
    from gandissect.models.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator

    g = load_generator(REPO / "checkpoints" / "scene_stylegan2_generator.safetensors")
    d = load_discriminator(REPO / "checkpoints" / "scene_stylegan2_discriminator.safetensors")
    assert isinstance(g, StyleGAN2Generator) and isinstance(d, StyleGAN2Discriminator)
    assert (g.resolution, g.latent_dim, g.channels[8]) == (64, 128, 128)  # convs.0-1: 128 units at 8x8
    with torch.no_grad():
        images = g(torch.randn(2, 128))
        assert images.shape == (2, 3, 64, 64) and d(images).shape == (2,)


def test_the_manifests_quality_figures_hold_when_recomputed_on_a_sample():
    """The recorded figures are recomputed on the first 100-200 of the same scenes and latents. Tolerances: the
    segmenter's mIoU within 0.01 of the recorded 1,000-scene value; each checked class's pixel share within 0.03
    (absolute) of the recorded 2,000-image share - about four standard errors of a 200-image mean for sky and
    grass, whose per-image shares vary the most."""
    from gandissect.models.generators import load_generator as load_any_generator
    from gandissect.models.segmenter import SceneSegmenter, evaluate_segmenter
    from gandissect.steps.evaluate import evaluate_generator

    manifest = json.loads((REPO / "checkpoints" / "MANIFEST.json").read_text())
    segmenter = SceneSegmenter.load(REPO / "checkpoints" / "scene_segmenter.safetensors")
    quality = manifest["scene_segmenter.safetensors"]["quality"]
    for variant, recorded in (("default", quality["held_out"]), ("town", quality["held_out_variants"]["town"])):
        measured = evaluate_segmenter(segmenter, 12345, 100, variant=variant, progress=False)
        assert abs(measured["miou"] - recorded["miou"]) <= 0.01, (variant, measured["miou"], recorded["miou"])

    for file, variant, classes in (("scene_gan_generator.safetensors", "default", 7),
                                   ("scene_stylegan2_generator.safetensors", "default", 7),
                                   ("scene_gan_town_generator.safetensors", "town", 5)):
        quality = manifest[file]["quality"]
        generator = load_any_generator(REPO / "checkpoints" / file)
        result = evaluate_generator(generator, segmenter, n=200, seed=0, real_seed=12345, variant=variant)
        checked = [c for c, v in quality["pixel_share"].items() if v["real"] >= 0.02]
        assert len(checked) == classes
        for name in checked:
            for side, key in (("real", "real_share"), ("generated", "generated_share")):
                recorded_share, share = quality["pixel_share"][name][side], result["classes"][name][key]
                assert abs(share - recorded_share) <= 0.03, (file, name, side, share, recorded_share)
