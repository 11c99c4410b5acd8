import gandissect  # noqa: F401  (sets up torchvision before anything imports it)

import pytest
import torch
import torch.nn as nn

from gandissect.errors import BadValueError, GandissectError
from gandissect.models.progan import ProGANGenerator
from gandissect.core.hooks import NetHook, UnknownLayerError, layer_names

UNITS = 8  # every generator layer is 8 units wide; layer3/layer4 are 8x8, layer5/layer6 16x16


@pytest.fixture
def gen() -> ProGANGenerator:
    torch.manual_seed(0)
    return ProGANGenerator(resolution=32, widths=[UNITS] * 8, latent_dim=6).eval()


@pytest.fixture
def z() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 6)


@pytest.fixture
def mlp() -> nn.Sequential:
    torch.manual_seed(2)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Sigmoid(), nn.Linear(5, 3))


def unedited(gen: nn.Module, z: torch.Tensor, layer: str) -> torch.Tensor:
    with NetHook(gen, [layer]) as hook:
        hook(z)
        return hook.retained[layer]


def test_layer_names(gen, mlp):
    assert layer_names(mlp) == ["0", "1", "2", "3", "4"]
    names = layer_names(gen)
    assert "" not in names and {"layer1", "layer8", "output_32x32", "layer1.conv"} <= set(names)


def test_retains_several_layers_like_running_the_prefix(mlp, gen, z):
    x = torch.randn(3, 4)
    expected_out = mlp(x)
    hook = NetHook(mlp, ["2", "0", "3"])
    hook.add_layer("0")  # already hooked: no-op
    assert hook.layers == ["2", "0", "3"]
    hook.retained["stale"] = torch.zeros(1)  # each call starts from an empty dict
    assert torch.equal(hook(x), expected_out)
    assert set(hook.retained) == {"0", "2", "3"}
    for name in hook.layers:
        assert torch.allclose(hook.retained[name], mlp[:int(name) + 1](x))

    expected_img = gen(z)
    hook = NetHook(gen, ["layer2", "layer5"])
    assert torch.equal(hook(z), expected_img)
    x = z.view(2, -1, 1, 1)
    for i in range(1, 6):
        x = getattr(gen, f"layer{i}")(x)
        if i == 2:
            assert torch.allclose(hook.retained["layer2"], x)
    assert hook.retained["layer5"].shape == (2, UNITS, 16, 16)
    assert torch.allclose(hook.retained["layer5"], x)


def test_edit_rule_per_unit_alpha_spatial_mask_per_unit_value(gen, z):
    r = unedited(gen, z, "layer4")
    torch.manual_seed(3)
    a, m, k = torch.rand(UNITS), torch.rand(8, 8), torch.randn(UNITS)
    hook = NetHook(gen)
    hook.edit("layer4", a, mask=m, value=k)
    hook(z)
    am = a.view(1, -1, 1, 1) * m.view(1, 1, 8, 8)
    expected = (1 - am) * r + am * k.view(1, -1, 1, 1)
    assert not torch.allclose(expected, r)
    assert torch.allclose(hook.retained["layer4"], expected, atol=1e-6)


def test_edit_ablates_units_and_takes_full_value_and_batch_masks(gen, z):
    r = unedited(gen, z, "layer3")
    hook = NetHook(gen, ["layer3"])
    ablate = torch.zeros(UNITS)
    ablate[[0, 3]] = 1.0
    hook.edit("layer3", ablate)
    hook(z)
    out = hook.retained["layer3"]
    assert r[:, [0, 3]].abs().sum() > 0 and torch.all(out[:, [0, 3]] == 0)
    keep = [1, 2, 4, 5, 6, 7]
    assert torch.equal(out[:, keep], r[:, keep])

    hook.edit("layer3", 1.0)  # scalar alpha, everywhere: every unit is zero
    hook(z)
    assert torch.all(hook.retained["layer3"] == 0)

    k = torch.randn(2, UNITS, 8, 8)
    hook.edit("layer3", 0.25, value=k)
    hook(z)
    assert torch.allclose(hook.retained["layer3"], 0.75 * r + 0.25 * k, atol=1e-6)

    m = torch.rand(2, 1, 8, 8)
    hook.edit("layer3", 1.0, mask=m, value=3.0)
    hook(z)
    with_n1hw = hook.retained["layer3"]
    assert torch.allclose(with_n1hw, (1 - m) * r + m * 3.0, atol=1e-6)
    hook.edit("layer3", 1.0, mask=m[:, 0], value=3.0)  # (N, H, W) means the same
    hook(z)
    assert torch.equal(hook.retained["layer3"], with_n1hw)


def test_edit_rank2_output(mlp):
    x = torch.randn(3, 4)
    r = mlp[:3](x)
    a, k = torch.rand(5), torch.randn(5)
    hook = NetHook(mlp)
    hook.edit("2", a, value=k)
    hook(x)
    assert torch.allclose(hook.retained["2"], (1 - a) * r + a * k, atol=1e-6)
    hook.edit("2", a, mask=torch.ones(3, 5), value=k)
    with pytest.raises(BadValueError, match="'2'"):
        hook(x)


def test_edit_changes_output_and_gradients_reach_alpha(gen, z):
    base = gen(z)
    alpha = torch.full((UNITS,), 0.5, requires_grad=True)
    hook = NetHook(gen, ["layer6"])
    hook.edit("layer3", alpha, value=2.0)
    out = hook(z)
    assert hook.layers == ["layer6", "layer3"]
    assert not torch.allclose(out, base)
    assert hook.retained["layer6"].requires_grad  # retained tensors are not detached
    out.square().sum().backward()
    assert alpha.grad is not None and alpha.grad.abs().sum() > 0
    assert gen.layer1.conv.weight.grad.abs().sum() > 0  # the unedited part (1 - a) * r still carries gradients


def test_remove_restores_model_bit_exactly(gen, z):
    base = gen(z)
    hook = NetHook(gen, ["layer2", "output_32x32"], stop_after=None)
    hook.edit("layer5", torch.rand(UNITS), mask=torch.rand(16, 16), value=torch.randn(UNITS))
    edited = hook(z)
    assert not torch.equal(edited, base)
    hook.remove()
    assert hook.layers == [] and all(not m._forward_hooks for m in gen.modules())
    assert torch.equal(gen(z), base)

    with NetHook(gen, ["layer1"]) as hook:
        hook.edit("layer7", 1.0)
        assert not torch.equal(hook(z), base)
    assert all(not m._forward_hooks for m in gen.modules())
    assert torch.equal(gen(z), base)


def test_unknown_layer_and_wrong_sizes(gen, z):
    with pytest.raises(UnknownLayerError) as err:
        NetHook(gen, ["layer1", "layer99"])
    message = str(err.value)
    assert "'layer99'" in message and "layer1" in message and "layer2" in message and "output_32x32" in message
    assert isinstance(err.value, GandissectError)
    hook = NetHook(gen)
    with pytest.raises(UnknownLayerError, match="layer1"):
        hook.edit("nope", 1.0)
    with pytest.raises(UnknownLayerError):
        NetHook(gen, stop_after="")

    hook.edit("layer3", torch.ones(5))
    with pytest.raises(BadValueError, match=r"'layer3'.*5 entries, expected 8"):
        hook(z)
    hook.edit("layer3", 1.0, value=torch.ones(UNITS + 1))
    with pytest.raises(BadValueError, match=r"'layer3'.*9 entries, expected 8"):
        hook(z)
    hook.edit("layer3", 1.0, value=torch.ones(2, UNITS, 4, 4))
    with pytest.raises(BadValueError, match="does not broadcast"):
        hook(z)


def test_stop_after_computes_only_early_layers(gen, z):
    full = unedited(gen, z, "layer3")
    calls = []
    counters = [gen.layer4.register_forward_hook(lambda *_: calls.append(4)),
                gen.output_32x32.register_forward_hook(lambda *_: calls.append("out"))]
    try:
        hook = NetHook(gen, ["layer2"], stop_after="layer3")
        assert hook.layers == ["layer2", "layer3"]
        assert hook(z) is None
        assert calls == []
        assert set(hook.retained) == {"layer2", "layer3"}
        assert torch.equal(hook.retained["layer3"], full)
        hook.remove()
        gen(z)
        assert calls == [4, "out"]
    finally:
        for handle in counters:
            handle.remove()


def test_clear_edit_restores_unedited_output(gen, z):
    base = gen(z)
    r3, r5 = unedited(gen, z, "layer3"), unedited(gen, z, "layer5")
    hook = NetHook(gen)
    hook.edit("layer3", 1.0, value=1.0)
    hook.edit("layer5", 0.5)
    hook(z)
    assert not torch.equal(hook.retained["layer3"], r3)
    hook.clear_edit("layer3")
    hook(z)
    assert torch.equal(hook.retained["layer3"], r3)
    assert torch.allclose(hook.retained["layer5"], 0.5 * r5)
    hook.clear_edit()
    out = hook(z)
    assert torch.equal(hook.retained["layer5"], r5)
    assert torch.equal(out, base)
