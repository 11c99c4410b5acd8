"""gandissect: dissect a GAN generator, find the units that draw each object, and repair it."""

from gandissect._compat import ensure_torchvision_importable_on_first_use

ensure_torchvision_importable_on_first_use()

__version__ = "0.1.0"
