"""Artifact maps: every method gives a non-negative, differentiable map; occlusion equals its formula; the signal
test separates a map that flags generated images more than real ones from one that does not; a repair refuses to
choose units by a map without signal; multi-layer unit scales fold into the weights exactly."""

import pytest
import torch

import gandissect  # noqa: F401
from gandissect.config import ARTIFACT_MAPS, RepairConfig, load_config
from gandissect.core.hooks import fold_unit_scales, scaled_units, unit_alpha
from gandissect.core.latents import seeded_latents
from gandissect.errors import BadValueError
from gandissect.metrics.roc import roc_auc
from gandissect.models.artifact_segmenter import ArtifactSegmenter, flag_signal, gaussian_blur, window_starts
from gandissect.models.progan import load_discriminator, load_generator
from gandissect.steps.repair.run import check_signal

from .conftest import REPO

SHIPPED_D = REPO / "checkpoints" / "scene_gan_discriminator.safetensors"


@pytest.fixture(scope="module")
def discriminator():
    return load_discriminator(SHIPPED_D)


@pytest.mark.parametrize("method", ARTIFACT_MAPS)
def test_every_map_is_non_negative_and_differentiable(discriminator, method):
    segmenter = ArtifactSegmenter(discriminator, method, cell=16, stride=8, ig_steps=4)
    images = torch.rand(4, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        fakeness = segmenter.fakeness(images)
    assert fakeness.shape == (4, 64, 64) and bool((fakeness >= 0).all()) and float(fakeness.max()) > 0
    segmenter.threshold.fill_(float(fakeness.flatten().quantile(0.9)))
    images.requires_grad_(True)
    segmenter.probs(images)[:, 1].mean().backward()
    assert images.grad is not None and float(images.grad.abs().sum()) > 0


def test_occlusion_is_the_realness_gain_of_blurring_each_window(discriminator):
    images = torch.rand(4, 3, 64, 64) * 2 - 1
    whole = ArtifactSegmenter(discriminator, "occlusion", cell=64, stride=64)
    with torch.no_grad():
        gain = torch.relu(discriminator(gaussian_blur(images)) - discriminator(images))
        assert torch.allclose(whole.fakeness(images), gain.view(4, 1, 1).expand(4, 64, 64), atol=1e-6)
        # four windows of 32 px: the top-left quarter's value is the gain of blurring that quarter alone
        quarters = ArtifactSegmenter(discriminator, "occlusion", cell=32, stride=32).fakeness(images)
        occluded = images.clone()
        occluded[:, :, :32, :32] = gaussian_blur(images)[:, :, :32, :32]
        expected = torch.relu(discriminator(occluded) - discriminator(images))
    assert torch.allclose(quarters[:, 5, 7], expected, atol=1e-6)
    assert window_starts(64, 16, 24) == [0, 24, 48]  # the last window lies flush with the edge


def test_the_signal_test_needs_more_flags_on_generated_images_than_noise_explains():
    real = torch.full((200,), 0.01) + torch.linspace(-0.005, 0.005, 200)
    strong = flag_signal(real, real * 3)
    assert strong["has_signal"] and strong["ratio"] == pytest.approx(3.0)
    assert strong["real_se"] == pytest.approx(float(real.std()) / 200 ** 0.5)
    same = flag_signal(real, real.flip(0))
    assert not same["has_signal"] and same["ratio"] == pytest.approx(1.0)
    fewer = flag_signal(real, real * 0.5)
    assert not fewer["has_signal"]


def test_a_repair_refuses_to_choose_units_by_a_map_without_signal():
    record = {"method": "gradcam", "signal": {**flag_signal(torch.full((8,), 0.01), torch.full((8,), 0.01)),
                                              "n": 8}}
    for routes in ("[iou]", "[unit_fd,iou_effect]"):
        with pytest.raises(BadValueError, match="no signal"):
            check_signal(load_config(RepairConfig, None, [f"routes={routes}"]), record)
    with pytest.raises(BadValueError, match="learned"):
        check_signal(load_config(RepairConfig, None, ["routes=[learned]", "learned.objective=artifact"]), record)
    check_signal(load_config(RepairConfig, None, ["routes=[unit_fd,learned]"]), record)  # D's score, not the map
    check_signal(load_config(RepairConfig, None, ["routes=[iou]", "artifact.require_signal=false"]), record)


def test_unit_scales_of_several_layers_fold_into_the_weights_exactly():
    generator = load_generator(REPO / "checkpoints" / "scene_gan_generator.safetensors")
    scales = {"layer4": 1 - unit_alpha([3, 9, 40], 128), "layer6": 1 - unit_alpha([1, 2], 64)}
    z = seeded_latents(5, 6, generator.latent_dim)
    with torch.no_grad():
        with scaled_units(generator, scales) as hook:
            hooked = hook(z)
        assert torch.equal(fold_unit_scales(generator, scales)(z), hooked)
        assert not torch.equal(hooked, generator(z))


def test_roc_auc_is_the_share_of_positive_negative_pairs_ordered_right():
    negatives, positives = torch.randn(40), torch.randn(30) + 0.7
    pairs = (positives.view(-1, 1) > negatives.view(1, -1)).double().mean()
    assert roc_auc(negatives, positives) == pytest.approx(float(pairs))
    assert roc_auc([0.0, 1.0], [1.0, 2.0]) == pytest.approx(0.875)  # one tie counts half: (3 + 0.5) / 4
