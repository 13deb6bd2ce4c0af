"""torchvision state dicts: efficientnet_b0..b7, efficientnet_v2_s/m/l, mobilenet_v2, mobilenet_v3_*.

The model is ``--model``, else named after the spec (``efficientnet-b3`` -> ``efficientnet_b3``,
``efficientnetv2-s`` -> ``efficientnet_v2_s``). torchvision pads symmetrically everywhere; its batch-norm
eps is 1e-5 for EfficientNet V1 and MobileNetV2, 1e-3 for EfficientNetV2 and MobileNetV3.
Preprocessing comes from the weights' ``transforms()`` where torchvision imports.
"""

from __future__ import annotations

import re

from effspec.core import ir
from effspec.support.errors import UsageError
from effspec.weights.files import Checkpoint
from effspec.weights.sources.base import Conventions

NAME = "torchvision"
EXAMPLE = "efficientnet_v2_s"
_EPS = (("efficientnet_v2_", 1e-3), ("efficientnet_b", 1e-5), ("mobilenet_v3_", 1e-3), ("mobilenet_v2", 1e-5))
_MODELS = re.compile(r"^(efficientnet_b[0-7]|efficientnet_v2_[sml]|mobilenet_v2|mobilenet_v3_(large|small))$")


def _import():
    from effspec.support.vision import import_torchvision

    try:
        return import_torchvision().models
    except Exception:  # noqa: BLE001 - any import failure means "not available here"
        return None


def identify(model: ir.Model, checkpoint: Checkpoint, requested: str | None) -> tuple[str | None, str]:
    if requested:
        if not _MODELS.match(requested):
            raise UsageError(
                f"unknown torchvision model {requested!r}: expected efficientnet_b0..b7, "
                "efficientnet_v2_s/m/l, mobilenet_v2 or mobilenet_v3_large/small"
            )
        return requested, "--model"
    name = model.name.replace("efficientnetv2-", "efficientnet_v2_").replace("-", "_")
    name = re.sub(r"^mobilenetv(\d)", r"mobilenet_v\1", name)
    return (name, "the spec name") if _MODELS.match(name) else (None, "")


def conventions(name: str, checkpoint: Checkpoint) -> Conventions:
    eps = next(value for prefix, value in _EPS if name.startswith(prefix))
    mean = std = interpolation = None
    resize = crop = None
    models = _import()
    if models is not None:
        try:
            weights = models.get_model_weights(name)
            transforms = next(iter(weights)).transforms()
            mean, std = tuple(transforms.mean), tuple(transforms.std)
            resize, crop = int(transforms.resize_size[0]), int(transforms.crop_size[0])
            interpolation = str(transforms.interpolation.value)
        except Exception:  # noqa: BLE001 - preprocessing is informative only
            pass
    return Conventions(
        model=f"torchvision {name}",
        padding="symmetric",
        eps=eps,
        mean=mean,
        std=std,
        resize=resize,
        crop=crop,
        interpolation=interpolation,
    )


def build(name: str, num_classes: int, in_channels: int):
    models = _import()
    if models is None:
        return None
    if in_channels != 3:
        raise UsageError("torchvision models take 3 input channels")
    return models.get_model(name, weights=None, num_classes=num_classes).eval()
