import hashlib
import json

from .conftest import REPO


def test_every_shipped_checkpoint_is_in_the_manifest_with_its_sha256():
    manifest = json.loads((REPO / "checkpoints" / "MANIFEST.json").read_text())
    shipped = sorted(p.name for p in (REPO / "checkpoints").glob("*.safetensors"))
    assert shipped and sorted(manifest) == shipped
    for name, entry in manifest.items():
        digest = hashlib.sha256((REPO / "checkpoints" / name).read_bytes()).hexdigest()
        assert digest == entry["sha256"], f"{name} does not match its manifest entry"
        assert (REPO / entry["config"]).is_file()
        for field in ("command", "steps", "wall_time_s", "machine", "quality"):
            assert field in entry, f"{name}: manifest entry lacks {field}"


def test_shipped_scene_gan_loads_and_its_recorded_quality_passes_the_bar():
    import torch

    from gandissect.models.progan import load_discriminator, load_generator

    manifest = json.loads((REPO / "checkpoints" / "MANIFEST.json").read_text())
    g = load_generator(REPO / "checkpoints" / "scene_gan_generator.safetensors")
    d = load_discriminator(REPO / "checkpoints" / "scene_gan_discriminator.safetensors")
    assert (g.resolution, g.latent_dim, g.widths[3]) == (64, 128, 128)  # layer4: 128 units at 8x8
    with torch.no_grad():
        images = g(torch.randn(2, 128))
        assert images.shape == (2, 3, 64, 64) and d(images).shape == (2,)
    quality = manifest["scene_gan_generator.safetensors"]["quality"]
    checked = {k: v for k, v in quality["pixel_share"].items() if v["real"] >= 0.02}
    assert len(checked) == 7 and all(abs(v["relative_difference"]) <= 0.35 for v in checked.values())
    assert quality["passes_share_bar"] is True
