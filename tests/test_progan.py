import pytest
import torch

from gandissect.errors import BadValueError, CheckpointError
from gandissect.models.progan import (ProGANDiscriminator, ProGANGenerator, layer_resolution, load_discriminator,
                                      load_generator, num_layers)

OFFICIAL_WIDTHS = [512, 512, 512, 512, 512, 512, 256, 256, 128, 128, 64, 64, 32, 32]


def official_state_dict() -> dict[str, torch.Tensor]:
    """Random tensors with exactly the keys and shapes of the GAN-dissection LSUN ProGAN (256px) files."""
    state, c_in = {}, 512
    for i, width in enumerate(OFFICIAL_WIDTHS, start=1):
        kernel = 4 if i == 1 else 3
        state[f"layer{i}.conv.weight"] = torch.randn(width, c_in, kernel, kernel)
        state[f"layer{i}.wscale.b"] = torch.randn(width)
        c_in = width
    state["output_256x256.conv.weight"] = torch.randn(3, 32, 1, 1)
    state["output_256x256.wscale.b"] = torch.randn(3)
    return state


@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_generator_and_discriminator_shapes(resolution):
    g = ProGANGenerator(resolution, widths=[16] * num_layers(resolution), latent_dim=8)
    d = ProGANDiscriminator(resolution, widths=[8] * (num_layers(resolution) + 1))
    sizes = {}
    hooks = [getattr(g, name).register_forward_hook(
        lambda m, i, o, name=name: sizes.__setitem__(name, tuple(o.shape))) for name in g.layer_names]
    images = g(torch.randn(3, 8))
    for h in hooks:
        h.remove()
    assert images.shape == (3, 3, resolution, resolution)
    assert d(images).shape == (3,)
    assert g.layer_names[-1] == f"output_{resolution}x{resolution}"
    for i in range(1, num_layers(resolution) + 1):
        r = layer_resolution(i)
        assert sizes[f"layer{i}"] == (3, 16, r, r)
    assert sizes["layer4"][-1] == 8 and sizes[f"layer{num_layers(resolution)}"][-1] == resolution


def test_official_256px_layout_loads_with_inferred_widths(tmp_path):
    state = official_state_dict()
    g = load_generator(state)
    assert (g.resolution, g.widths, g.latent_dim) == (256, OFFICIAL_WIDTHS, 512)
    assert torch.equal(g.layer4.conv.weight, state["layer4.conv.weight"])
    with torch.no_grad():
        assert g(torch.randn(1, 512)).shape == (1, 3, 256, 256)
    # the same tensors as a .pth file behind a DataParallel-style prefix, as some published files are
    path = tmp_path / "churchoutdoor_lsun.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    assert torch.equal(load_generator(path).output_256x256.wscale.b, state["output_256x256.wscale.b"])


def test_bad_state_dicts_are_refused_with_every_key_named():
    state = official_state_dict()
    del state["layer7.wscale.b"]
    state["layer3.extra"] = torch.zeros(1)
    state["layer9.wscale.b"] = torch.zeros(5)
    with pytest.raises(CheckpointError) as err:
        load_generator(state)
    message = str(err.value)
    assert "missing keys: layer7.wscale.b" in message
    assert "unexpected keys: layer3.extra" in message
    assert "layer9.wscale.b (file (5,), model (128,))" in message
    with pytest.raises(CheckpointError, match="output_RxR"):
        load_generator({"layer1.conv.weight": torch.zeros(4, 4, 4, 4)})


def test_own_checkpoints_round_trip_and_wrong_kinds_are_refused(tmp_path):
    g = ProGANGenerator(32, widths=[8] * 8, latent_dim=4)
    d = ProGANDiscriminator(32, widths=[4] * 9)
    g.save(tmp_path / "g.safetensors")
    d.save(tmp_path / "d.safetensors")
    z = torch.randn(2, 4)
    with torch.no_grad():
        assert torch.equal(load_generator(tmp_path / "g.safetensors")(z), g(z))
        assert torch.equal(load_discriminator(tmp_path / "d.safetensors")(g(z)), d(g(z)))
    with pytest.raises(CheckpointError, match="holds a 'progan-discriminator' model; expected 'progan-generator'"):
        load_generator(tmp_path / "d.safetensors")
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="broken.pth is corrupt"):
        load_generator(tmp_path / "broken.pth")


def test_bad_sizes_are_refused():
    with pytest.raises(BadValueError, match="resolution must be one of 32, 64"):
        ProGANGenerator(48)
    with pytest.raises(BadValueError, match="has 10 layers; got 3 widths"):
        ProGANGenerator(64, widths=[8, 8, 8])
    with pytest.raises(BadValueError, match="latents must have 4 channels"):
        ProGANGenerator(32, widths=[8] * 8, latent_dim=4)(torch.randn(2, 5))
