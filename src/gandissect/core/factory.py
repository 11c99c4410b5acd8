"""``package.module:function`` specs: how a user plugs in a generator or segmenter that gandissect does not ship."""

from __future__ import annotations

import importlib
import os
import re
import sys
from typing import Any, Callable

from gandissect.errors import ConfigError

_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def is_factory_spec(spec: object) -> bool:
    """True for ``package.module:function`` (a file path such as ``C:/x.pth`` or ``a/b.pth`` is not one)."""
    return isinstance(spec, str) and bool(_SPEC.match(spec))


def load_factory(spec: str, what: str) -> Callable[..., Any]:
    """The function ``spec`` names, or a ConfigError saying which part could not be found."""
    if not is_factory_spec(spec):
        raise ConfigError(f"{what} {spec!r}: expected package.module:function")
    module_name, function_name = spec.split(":")
    if os.getcwd() not in sys.path and "" not in sys.path:  # as `python -m` and uvicorn do: the working directory's
        sys.path.append(os.getcwd())                       # modules import, after the installed ones
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"{what} {spec!r}: cannot import {module_name} ({err}); is it installed or on "
                          "PYTHONPATH?") from None
    factory = getattr(module, function_name, None)
    if not callable(factory):
        raise ConfigError(f"{what} {spec!r}: {module_name} has no function {function_name!r}")
    return factory
