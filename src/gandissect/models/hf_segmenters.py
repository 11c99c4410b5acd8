"""Real-world segmenters through the ``transformers`` package: SegFormer, UperNet and Mask2Former on ADE20K.

``segmenter: hf:<model id or local directory>`` loads one of these with ``from_pretrained(..., local_files_only=True)``
(a saved directory, or a model already in the Hugging Face cache; nothing is downloaded at run time) and wraps it in
``HFSegmenter``, which follows gandissect's segmenter protocol:

- classes: index 0 is "no label", the model's labels are 1..L (ADE20K: the 150 classes of the SceneParsing
  benchmark, ``ADE20K_CLASSES``), so ``probs()`` has L + 1 channels with an all-zero channel 0 and
  ``class_index`` and the dissection's tallies agree on every index;
- ``labels()`` is (N, 1, H, W) at the images' resolution: ADE20K's 150 classes carry no part-of relation (its
  part level is a separate annotation no benchmark model predicts), so K = 1;
- ``probs()`` is differentiable with respect to the images (the learned intervention's gradient runs through it).

Preprocessing is the one the model was trained with, read from its saved ``preprocessor_config.json`` (mean and
std, the input size); where it has none, ImageNet's mean and std at the images' own size. Images in [-1, 1] go to
[0, 1], are resized to the model's input size (bilinear, antialiased when shrinking) and normalized; the model's
logits are upsampled (bilinear) back to the images' resolution before the softmax or the argmax.

Categories. ADE20K itself gives none. We use the split of the ADE20K panoptic benchmark (the ADE20K instance
track's 100 classes with instance masks are "things", the other 50 "stuff"; the same ``isthing`` flags as
Detectron2's / Mask2Former's ADE20K-150 panoptic metadata): things are ``object``, the rest ``stuff``. No ADE20K
class is ``part``. Class names are the first name of each entry of ADE20K's ``objectInfo150`` list, as in the
``id2label`` of the public SegFormer / UperNet ADE20K configs. A model whose config names its labels keeps its own
names; those that are ADE20K names get their category, the others ``object``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gandissect.errors import CheckpointError, ConfigError

# (name, category) of ADE20K's 150 classes in the benchmark's order (model label i is class i + 1 here)
_S, _O = "stuff", "object"
ADE20K = (
    ("wall", _S), ("building", _S), ("sky", _S), ("floor", _S), ("tree", _S), ("ceiling", _S), ("road", _S),
    ("bed", _O), ("windowpane", _O), ("grass", _S), ("cabinet", _O), ("sidewalk", _S), ("person", _O),
    ("earth", _S), ("door", _O), ("table", _O), ("mountain", _S), ("plant", _S), ("curtain", _O), ("chair", _O),
    ("car", _O), ("water", _S), ("painting", _O), ("sofa", _O), ("shelf", _O), ("house", _S), ("sea", _S),
    ("mirror", _O), ("rug", _S), ("field", _S), ("armchair", _O), ("seat", _O), ("fence", _O), ("desk", _O),
    ("rock", _S), ("wardrobe", _O), ("lamp", _O), ("bathtub", _O), ("railing", _O), ("cushion", _O), ("base", _S),
    ("box", _O), ("column", _O), ("signboard", _O), ("chest of drawers", _O), ("counter", _O), ("sand", _S),
    ("sink", _O), ("skyscraper", _S), ("fireplace", _O), ("refrigerator", _O), ("grandstand", _S), ("path", _S),
    ("stairs", _O), ("runway", _S), ("case", _O), ("pool table", _O), ("pillow", _O), ("screen door", _O),
    ("stairway", _S), ("river", _S), ("bridge", _S), ("bookcase", _O), ("blind", _S), ("coffee table", _O),
    ("toilet", _O), ("flower", _O), ("book", _O), ("hill", _S), ("bench", _O), ("countertop", _O), ("stove", _O),
    ("palm", _O), ("kitchen island", _O), ("computer", _O), ("swivel chair", _O), ("boat", _O), ("bar", _S),
    ("arcade machine", _O), ("hovel", _S), ("bus", _O), ("towel", _O), ("light", _O), ("truck", _O), ("tower", _S),
    ("chandelier", _O), ("awning", _O), ("streetlight", _O), ("booth", _O), ("television receiver", _O),
    ("airplane", _O), ("dirt track", _S), ("apparel", _O), ("pole", _O), ("land", _S), ("bannister", _O),
    ("escalator", _S), ("ottoman", _O), ("bottle", _O), ("buffet", _S), ("poster", _S), ("stage", _S), ("van", _O),
    ("ship", _O), ("fountain", _O), ("conveyer belt", _S), ("canopy", _S), ("washer", _O), ("plaything", _O),
    ("swimming pool", _S), ("stool", _O), ("barrel", _O), ("basket", _O), ("waterfall", _S), ("tent", _S),
    ("bag", _O), ("minibike", _O), ("cradle", _S), ("oven", _O), ("ball", _O), ("food", _O), ("step", _O),
    ("tank", _S), ("trade name", _O), ("microwave", _O), ("pot", _O), ("animal", _O), ("bicycle", _O), ("lake", _S),
    ("dishwasher", _O), ("screen", _O), ("blanket", _S), ("sculpture", _O), ("hood", _O), ("sconce", _O),
    ("vase", _O), ("traffic light", _O), ("tray", _O), ("ashcan", _O), ("fan", _O), ("pier", _S), ("crt screen", _S),
    ("plate", _O), ("monitor", _O), ("bulletin board", _O), ("shower", _S), ("radiator", _O), ("glass", _O),
    ("clock", _O), ("flag", _O),
)
ADE20K_CLASSES = ("-",) + tuple(name for name, _ in ADE20K)
ADE20K_CATEGORIES = dict(ADE20K)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
UPSAMPLE_CHUNK = 8  # images whose full-resolution logits are made at once in labels(): (8, 151, 512, 512) is 1.2 GB


class ModelUnavailableError(CheckpointError):
    """A ``hf:`` model that is neither a local directory nor in the cache; the message says how to provide it."""


def import_transformers(spec: str = "hf:"):
    """``transformers``, imported on first use (it takes seconds), after the CPU-torch torchvision fix it needs."""
    from gandissect._compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    try:
        import transformers
    except ImportError as err:
        raise ConfigError(f"segmenter {spec}: needs the transformers package ({err}); install it with "
                          "pip install 'gandissect[hf]'") from None
    return transformers


def _label_names(config, count: int) -> tuple[tuple[str, ...], dict[str, str]]:
    """(classes, categories) for a model with ``count`` labels: its own names where its config has them, ADE20K's
    for an unnamed 150-label model."""
    id2label = {int(k): str(v).strip() for k, v in (getattr(config, "id2label", None) or {}).items()}
    named = [id2label.get(i, "") for i in range(count)]
    if all(not name or re.fullmatch(r"LABEL_\d+", name) for name in named):
        if count == len(ADE20K):
            return ADE20K_CLASSES, dict(ADE20K_CATEGORIES)
        named = [f"class{i + 1}" for i in range(count)]
    names, seen = [], set()
    for i, name in enumerate(named):  # class_index needs distinct names
        name = name or f"class{i + 1}"
        names.append(name if name not in seen else f"{name} ({i + 1})")
        seen.add(names[-1])
    return ("-", *names), {name: ADE20K_CATEGORIES.get(name, "object") for name in names}


def _preprocessor_file(source: str) -> Path | None:
    """The saved ``preprocessor_config.json`` of a local directory or a cached model, if there is one."""
    if Path(source).is_dir():
        path = Path(source) / "preprocessor_config.json"
        return path if path.is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(source, "preprocessor_config.json")
    except Exception:  # an id the hub library refuses: then there is no cached file either
        return None
    return Path(found) if isinstance(found, str) else None


def preprocessing(source: str) -> dict:
    """Mean, std (of images in [0, 1]) and input size (None: the images' own) the model was trained with."""
    path = _preprocessor_file(source)
    settings = json.loads(path.read_text()) if path is not None else {}
    mean, std = settings.get("image_mean", IMAGENET_MEAN), settings.get("image_std", IMAGENET_STD)
    if max(mean) > 1:  # some processors keep 0..255 statistics and rescale the images instead
        mean, std = [m / 255 for m in mean], [s / 255 for s in std]
    size = settings.get("size") if settings.get("do_resize", True) else None
    if isinstance(size, int):
        size = {"shortest_edge": size}
    return {"mean": list(mean), "std": list(std), "size": size}


class HFSegmenter(nn.Module):
    """A ``transformers`` semantic-segmentation model in gandissect's segmenter protocol (see the module notes)."""

    def __init__(self, model: nn.Module, classes: tuple[str, ...], categories: dict[str, str], mean, std,
                 size: dict | None = None, source: str = ""):
        super().__init__()
        self.model = model.eval()
        self.classes, self.categories = tuple(classes), dict(categories)
        self.size, self.source = size, source
        self.kind = model.config.model_type
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """The size the model sees images of ``height`` x ``width`` at."""
        size = self.size or {}
        if "height" in size and "width" in size:
            return int(size["height"]), int(size["width"])
        if "shortest_edge" in size:
            scale = size["shortest_edge"] / min(height, width)
            return round(height * scale), round(width * scale)
        return height, width

    def _pixel_values(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() + 1) / 2
        size = self.input_size(*x.shape[-2:])
        if size != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=size[0] < x.shape[-2])
        return (x - self.mean) / self.std

    def low_res_scores(self, images: torch.Tensor) -> torch.Tensor:
        """(N, L, h, w) class scores at the model's output resolution: logits, or for Mask2Former the log of its
        semantic probabilities (each query's class probability times its mask probability, normalized)."""
        out = self.model(pixel_values=self._pixel_values(images))
        if self.kind != "mask2former":
            return out.logits
        classes = out.class_queries_logits.softmax(dim=-1)[..., :-1]  # the last one is "no object"
        semantic = torch.einsum("nqc,nqhw->nchw", classes, out.masks_queries_logits.sigmoid())
        return (semantic / semantic.sum(dim=1, keepdim=True).clamp_min(1e-8)).clamp_min(1e-8).log()

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """(N, L, H, W) class scores upsampled (bilinear) to the images' resolution."""
        return F.interpolate(self.low_res_scores(images), size=images.shape[-2:], mode="bilinear",
                             align_corners=False)

    def probs(self, images: torch.Tensor) -> torch.Tensor:
        """(N, L + 1, H, W): channel 0 ("no label") is zero, channels 1..L the model's softmax."""
        p = self.scores(images).softmax(dim=1)
        return torch.cat([p.new_zeros(p.shape[0], 1, *p.shape[2:]), p], dim=1)

    @torch.no_grad()
    def labels(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) int64: 1 + the model's argmax at every pixel."""
        low = self.low_res_scores(images)
        parts = [F.interpolate(chunk, size=images.shape[-2:], mode="bilinear", align_corners=False).argmax(dim=1)
                 for chunk in low.split(UPSAMPLE_CHUNK)]
        return (torch.cat(parts) + 1).unsqueeze(1)

    def extra_repr(self) -> str:
        return f"source={self.source!r}, kind={self.kind}, classes={len(self.classes) - 1}, size={self.size}"


def load_hf_segmenter(source: str) -> HFSegmenter:
    """The model ``source`` (a local directory or a Hugging Face model id already in the cache) as an HFSegmenter,
    or a ModelUnavailableError saying how to provide it."""
    spec = f"hf:{source}"
    transformers = import_transformers(spec)
    try:
        config = transformers.AutoConfig.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as err:
        if Path(source).is_dir():
            raise ModelUnavailableError(f"segmenter {spec}: the directory holds no model config ({_first_line(err)}); "
                                        "expected a directory written by save_pretrained") from None
        raise ModelUnavailableError(
            f"segmenter {spec}: model {source!r} is not a local directory and not in the Hugging Face cache, and "
            f"nothing is downloaded at run time: on a machine with network run `hf download {source}` (older "
            "huggingface_hub: `huggingface-cli download`) and copy its cache (~/.cache/huggingface, or HF_HOME) here, "
            "or save the model with save_pretrained(DIR) and use segmenter=hf:DIR") from None
    auto = (transformers.AutoModelForUniversalSegmentation if config.model_type == "mask2former"
            else transformers.AutoModelForSemanticSegmentation)
    try:
        model = auto.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ModelUnavailableError(f"segmenter {spec}: cannot load its weights ({_first_line(err)}); expected a "
                                    "semantic-segmentation model (SegFormer, UperNet, Mask2Former) saved with "
                                    "save_pretrained") from None
    count = (model.config.num_labels if config.model_type != "mask2former"
             else model.class_predictor.out_features - 1)
    classes, categories = _label_names(model.config, count)
    settings = preprocessing(source)
    return HFSegmenter(model, classes, categories, settings["mean"], settings["std"], settings["size"], spec).eval()


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
