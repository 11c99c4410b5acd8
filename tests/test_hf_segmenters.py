"""Real-world segmenters through transformers (SegFormer, UperNet, Mask2Former): tiny random configs saved in the
test and read back through ``segmenter: hf:<directory>`` (nothing is downloaded), the segmenter protocol, the
errors of a bad ``segmenter:`` value, and dissection + ACE of a generator in the official LSUN ProGAN layout."""

import json
import os
import subprocess

import pytest
import torch

import gandissect  # noqa: F401  (the torchvision fix transformers needs on CPU-only torch)
from gandissect.config import AceConfig, DissectConfig, RepairConfig, load_config
from gandissect.core.latents import seeded_latents
from gandissect.errors import ConfigError
from gandissect.models.hf_segmenters import ADE20K_CLASSES, ModelUnavailableError
from gandissect.models.progan import ProGANGenerator, load_generator
from gandissect.models.segmenter import SceneSegmenter, class_index, load_segmenter
from gandissect.pipelines import run_ace_pipeline
from gandissect.steps.dissect import run_dissection
from gandissect.steps.repair.run import check_segmenter

from .conftest import REPO, console_script

transformers = pytest.importorskip("transformers")

# the official 256px layout's shape at 64 px and 1/32 of its widths: 512 units at layer4 become 16
SMALL_OFFICIAL_WIDTHS = [16, 16, 16, 16, 8, 8, 4, 4, 4, 4]


def _segformer():
    return transformers.SegformerForSemanticSegmentation(transformers.SegformerConfig(
        num_labels=150, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 1, 1],
        decoder_hidden_size=16))


def _upernet():
    backbone = transformers.ConvNextConfig(hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1],
                                           out_features=["stage1", "stage2", "stage3", "stage4"])
    return transformers.UperNetForSemanticSegmentation(transformers.UperNetConfig(
        backbone_config=backbone, hidden_size=16, auxiliary_in_channels=16, num_labels=150))


def _mask2former():
    backbone = transformers.SwinConfig(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4,
                                       out_features=["stage1", "stage2", "stage3", "stage4"])
    return transformers.Mask2FormerForUniversalSegmentation(transformers.Mask2FormerConfig(
        backbone_config=backbone, num_labels=150, hidden_dim=32, num_queries=8, encoder_feedforward_dim=32,
        dim_feedforward=32, mask_feature_size=32, feature_size=32, decoder_layers=2, encoder_layers=1,
        num_attention_heads=2))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each kind saved with save_pretrained; SegFormer also with an image processor config (0..255 statistics, a
    fixed 32x32 input), as the public ADE20K checkpoints are."""
    root, dirs = tmp_path_factory.mktemp("hf"), {}
    for kind, build in (("segformer", _segformer), ("upernet", _upernet), ("mask2former", _mask2former)):
        torch.manual_seed(0)
        dirs[kind] = root / kind
        build().save_pretrained(dirs[kind])
    (dirs["segformer"] / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [127.5, 127.5, 127.5], "image_std": [51.0, 51.0, 51.0], "do_resize": True,
         "size": {"height": 32, "width": 32}}))
    return dirs


@pytest.mark.parametrize("kind", ["segformer", "upernet", "mask2former"])
def test_an_adapter_follows_the_segmenter_protocol(saved, kind):
    segmenter = load_segmenter(f"hf:{saved[kind]}")
    assert segmenter.classes == ADE20K_CLASSES and len(segmenter.classes) == 151
    assert class_index(segmenter, "wall") == 1 and class_index(segmenter, "flag") == 150
    assert segmenter.categories["sky"] == "stuff" and segmenter.categories["bed"] == "object"
    assert set(segmenter.categories.values()) == {"object", "stuff"}

    images = (torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1).requires_grad_(True)
    labels = segmenter.labels(images)
    assert labels.shape == (2, 1, 48, 48) and labels.dtype == torch.int64
    assert labels.min() >= 1 and labels.max() <= 150
    probs = segmenter.probs(images)
    assert probs.shape == (2, 151, 48, 48) and probs.dtype == torch.float32
    assert torch.all(probs[:, 0] == 0) and torch.allclose(probs.sum(dim=1), torch.ones(2, 48, 48), atol=1e-5)
    # labels and probs agree, apart from (rare) near-ties between the chunked and the whole-batch upsampling
    assert (probs.argmax(dim=1, keepdim=True) == labels).float().mean() > 0.99
    top = int(labels.flatten().mode().values)
    probs[:, top].mean().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_the_saved_preprocessing_is_used(saved):
    segformer = load_segmenter(f"hf:{saved['segformer']}")
    assert segformer.input_size(48, 48) == (32, 32)                       # the processor's fixed size
    assert torch.allclose(segformer.mean.flatten(), torch.full((3,), 0.5))  # 0..255 statistics rescaled
    assert torch.allclose(segformer.std.flatten(), torch.full((3,), 0.2))
    upernet = load_segmenter(f"hf:{saved['upernet']}")  # no processor config: ImageNet statistics, own size
    assert upernet.input_size(48, 48) == (48, 48)
    assert torch.allclose(upernet.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))


def tiny_scene_segmenter():
    """A factory for ``segmenter: tests.test_hf_segmenters:tiny_scene_segmenter``."""
    return SceneSegmenter(widths=(4, 8), input_size=16)


def not_a_segmenter():
    return torch.nn.Linear(2, 2)


def test_a_factory_spec_gives_the_users_segmenter():
    segmenter = load_segmenter("tests.test_hf_segmenters:tiny_scene_segmenter")
    assert isinstance(segmenter, SceneSegmenter) and segmenter.widths == (4, 8) and not segmenter.training


@pytest.mark.parametrize("spec, expected", [
    ("hf:nobody/no-such-segformer", ["segmenter hf:nobody/no-such-segformer: model 'nobody/no-such-segformer' is not",
                                     "hf download nobody/no-such-segformer", "segmenter=hf:DIR"]),
    ("hf:", ["segmenter 'hf:': expected hf:<model id or local directory>"]),
    ("models/segformer.pt", ["segmenter 'models/segformer.pt': not found; expected a scene-segmenter .safetensors",
                             "hf:<model id or local directory>", "package.module:factory"]),
    ("tests.test_hf_segmenters:not_a_segmenter", ["the factory's segmenter lacks classes, categories, labels, probs"]),
    ("tests.no_such_module:factory", ["cannot import tests.no_such_module"]),
])
def test_a_bad_segmenter_value_is_one_line_naming_it(spec, expected):
    with pytest.raises((ConfigError, ModelUnavailableError)) as caught:
        load_segmenter(spec)
    message = str(caught.value)
    assert "\n" not in message and all(part in message for part in expected), message


def test_an_empty_directory_is_named_as_such(tmp_path):
    with pytest.raises(ModelUnavailableError, match="the directory holds no model config"):
        load_segmenter(f"hf:{tmp_path}")


def test_the_command_line_refuses_an_unavailable_model_in_one_line_before_any_work(tmp_path):
    done = subprocess.run([console_script(), "dissect", "--set", "segmenter=hf:nobody/no-such-segformer", "--n", "8"],
                          capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "GANDISSECT_RUNS": str(tmp_path / "runs"), "HF_HUB_OFFLINE": "1"})
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "hf download nobody/no-such-segformer" in lines[0], lines
    assert not (tmp_path / "runs").exists()


def test_a_repair_with_another_segmenter_needs_fid_and_no_world_rules():
    cfg = load_config(RepairConfig, None, ["segmenter=hf:nvidia/segformer-b0-finetuned-ade-512-512"])
    with pytest.raises(ConfigError, match="inception_weights=<pytorch-fid weights file> .FID. and evaluation.rules_n"):
        check_segmenter(cfg, "scenes")
    with pytest.raises(ConfigError, match="scene world's rules"):
        check_segmenter(cfg, "inception")
    check_segmenter(load_config(RepairConfig, None, ["segmenter=hf:x", "evaluation.rules_n=0"]), "inception")
    check_segmenter(load_config(RepairConfig, None, []), "scenes")  # the scene segmenter: as before


def _official_file(tmp_path) -> str:
    """A generator saved as an official GAN-dissection state dict (.pth of layerN.conv.weight / wscale.b tensors)."""
    torch.manual_seed(0)
    generator = ProGANGenerator(resolution=64, widths=SMALL_OFFICIAL_WIDTHS, latent_dim=16)
    path = tmp_path / "churchoutdoor_lsun.pth"
    torch.save(generator.state_dict(), path)
    return str(path)


def test_dissection_and_ace_of_an_official_layout_generator_with_a_segformer(saved, tmp_path):
    checkpoint, spec = _official_file(tmp_path), f"hf:{saved['segformer']}"
    generator, segmenter = load_generator(checkpoint), load_segmenter(spec)
    with torch.no_grad():
        labels = segmenter.labels(generator(seeded_latents(0, 8, generator.latent_dim)).clamp(-1, 1))
    drawn = segmenter.classes[int(labels.flatten().mode().values)]  # a class this random pair does produce

    dcfg = load_config(DissectConfig, None, ["name=lsun-dissect", f"generator={checkpoint}", f"segmenter={spec}",
                                             "layers=[layer4]", "n=32", "batch_size=16", "top_k=2",
                                             "wandb.mode=disabled"])
    result = run_dissection(dcfg, tmp_path / "dissect")
    layer = result["layers"]["layer4"]
    assert layer["shape"] == [16, 8, 8] and len(result["classes"]) == 150
    assert result["categories"]["sky"] == "stuff" and result["settings"]["segmenter"] == spec
    assert result["settings"]["segmenter_sha256"].startswith("module ")  # the weights' digest
    assert len(layer["iou_by_class"][drawn]) == 16 and max(layer["iou_by_class"][drawn]) > 0

    acfg = load_config(AceConfig, None, ["name=lsun-ace", f"generator={checkpoint}", f"segmenter={spec}",
                                         "layer=layer4", f"class_name={drawn}", f"dissection={tmp_path / 'dissect'}",
                                         "constants_n=16", "n=8", "steps=2", "batch_size=4", "removal_units=2",
                                         "top_units=2", "init_units=2", "log_every=1", "wandb.mode=disabled"])
    ace = run_ace_pipeline(acfg, tmp_path / "ace")
    assert ace["ranking"]["name"] == f"{drawn}-ace" and sorted(ace["ranking"]["units"]) == list(range(16))
    assert json.loads((tmp_path / "ace" / "ace.json").read_text())["settings"]["segmenter"] == spec
