import subprocess
import sys

import torch


def test_lightning_torchmetrics_and_fid_import_after_gandissect():
    code = ("import gandissect, pytorch_lightning, torchmetrics, torchvision, pytorch_fid.inception;"
            "print(torchvision.__version__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_fallback_only_where_torchvision_ops_are_missing():
    import torchvision.extension

    from gandissect import _compat

    # Matching torch and torchvision: native ops load and the fallback stays unused.
    # CPU torch with a CUDA torchvision: ops cannot load, and the fallback schemas were declared.
    assert (_compat._torchvision_schemas is None) == torchvision.extension._has_ops()
    if _compat._torchvision_schemas is not None:
        assert torch.version.cuda is None
