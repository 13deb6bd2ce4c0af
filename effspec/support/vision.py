"""Importing torchvision and timm: the one place that does it (the torch data path, the generated
``train.py``, every ``effspec search`` trial and the timm / torchvision weight sources call these).

Why this exists: a torchvision wheel built for another torch (the registry's CUDA torchvision next to
a CPU torch, as on the README's install) loads none of its compiled operators, and its
``torchvision._meta_registrations`` module then fails at import time ("operator torchvision::nms
does not exist"), which makes ``import torchvision`` (and ``import timm``, which imports it) fail.
effspec uses only torchvision's pure-Python parts (datasets, transforms, AutoAugment/RandAugment,
model definitions), which work without those operators. So: try the plain import first (a
matching install is left untouched); only when it fails on a missing ``torchvision::`` operator,
forget the half-imported modules, put an empty stand-in for ``torchvision._meta_registrations``
in ``sys.modules`` before importing torchvision again, and carry on without compiled operators.
"""

from __future__ import annotations

import sys
import types
from typing import Any

_META = "torchvision._meta_registrations"


def import_torchvision() -> Any:
    """``import torchvision``, working around a torchvision whose compiled operators do not load.

    Raises ImportError (or the original error) when torchvision is missing or broken otherwise."""
    try:
        import torchvision
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
        for name in [name for name in sys.modules if name == "torchvision" or name.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules.setdefault(_META, types.ModuleType(_META))
        import torchvision
    return torchvision


def import_timm() -> Any:
    """``import timm`` (which imports torchvision) through :func:`import_torchvision`."""
    import_torchvision()
    import timm

    return timm
