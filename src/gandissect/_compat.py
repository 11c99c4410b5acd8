"""Make ``import torchvision`` work where torch is a CPU-only build and torchvision a CUDA build.

On such a machine torchvision's compiled ops cannot load, and its import then fails with
"operator torchvision::nms does not exist" - which also breaks ``import torchmetrics`` and
``import pytorch_lightning``, since both import torchvision when it is installed. Declaring the two
op schemas that torchvision's import registers fake kernels for lets the rest of torchvision import;
its compiled ops (nms, roi_align, image decoding) stay unavailable, and gandissect does not use them.

Where torch and torchvision match, the first import succeeds and nothing here runs.

``import gandissect`` only installs ``FirstTorchvisionImport``, which runs the check when torchvision (or a library
that imports it) is first imported: the package itself imports no torch, so ``gandissect --help`` answers at once.
"""

from __future__ import annotations

import importlib.abc
import sys

_torchvision_schemas = None  # kept alive: the op definitions last as long as this library object


def ensure_torchvision_importable() -> None:
    global _torchvision_schemas
    if "torchvision" in sys.modules or _torchvision_schemas is not None:
        return
    try:
        import torchvision  # noqa: F401
        return
    except ModuleNotFoundError:
        return
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
    import torch

    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    _torchvision_schemas = torch.library.Library("torchvision", "DEF")
    _torchvision_schemas.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _torchvision_schemas.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import torchvision  # noqa: F401,F811


class FirstTorchvisionImport(importlib.abc.MetaPathFinder):
    """An import hook that finds nothing itself: on the first import of one of ``NAMES`` it removes itself and runs
    ``ensure_torchvision_importable``, then lets the import proceed as usual."""

    NAMES = {"torchvision", "torchmetrics", "pytorch_lightning", "lightning", "lightning_fabric", "pytorch_fid"}

    def find_spec(self, name, path=None, target=None):
        if name in self.NAMES:
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            ensure_torchvision_importable()
        return None


def ensure_torchvision_importable_on_first_use() -> None:
    if "torchvision" in sys.modules:
        ensure_torchvision_importable()
    elif not any(isinstance(finder, FirstTorchvisionImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, FirstTorchvisionImport())
