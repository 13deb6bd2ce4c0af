"""timm checkpoints (``model.safetensors``, ``pytorch_model.bin``, ``.pth``, train checkpoints).

The model is identified by ``--model``, else by the checkpoint's ``arch`` entry (timm's train
checkpoints), a ``config.json`` beside the file (the Hugging Face hub layout) or a timm model name in
the path (``models--timm--tf_efficientnet_b0.ns_jft_in1k/...``). Conventions follow timm's naming:
``tf_*`` models were ported from TensorFlow (TF SAME padding, batch-norm eps 1e-3), the others use
symmetric padding and eps 1e-5. Preprocessing comes from the model's pretrained config.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from effspec.core import ir
from effspec.support.errors import UsageError
from effspec.weights.files import Checkpoint
from effspec.weights.sources.base import Conventions

NAME = "timm"
EXAMPLE = "tf_efficientnet_b0"
_FAMILIES = r"(efficientnet|efficientnetv2|mobilenetv\d|mnasnet|semnasnet|mixnet|tinynet|fbnetc|spnasnet|lcnet)"
_PATTERN = re.compile(rf"^(tf_)?{_FAMILIES}[a-z0-9_]*(\.[a-z0-9_]+)?$")


def _import():
    from effspec.support.vision import import_timm

    try:
        return import_timm()
    except Exception:  # noqa: BLE001 - any import failure means "not available here"
        return None


def _config_json(path: Path) -> dict[str, Any]:
    """The Hugging Face config.json beside a checkpoint, as hostile input: a regular file of at most
    1 MB whose ``architecture`` and ``pretrained_cfg.tag`` look like a timm name, and whose
    pretrained_cfg values have the expected types and ranges; anything else is ignored (read as {})."""
    candidate = path.parent / "config.json"
    if not candidate.is_file() or candidate.stat().st_size > 1_000_000:
        return {}
    try:
        data = json.loads(candidate.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return {}
    if not isinstance(data, dict) or not isinstance(data.get("architecture"), str):
        return {}
    cfg = data.get("pretrained_cfg") if isinstance(data.get("pretrained_cfg"), dict) else {}
    tag = cfg.get("tag")
    name = data["architecture"] + (f".{tag}" if isinstance(tag, str) and tag else "")
    if not _PATTERN.match(name) or len(name) > 200:
        return {}
    return {"architecture": data["architecture"], "pretrained_cfg": _clean_cfg(cfg)}


def _clean_cfg(cfg: dict[str, Any]) -> dict[str, Any]:
    """The pretrained_cfg entries conventions() reads, each kept only when well formed."""
    clean: dict[str, Any] = {}
    if isinstance(cfg.get("tag"), str):
        clean["tag"] = cfg["tag"]
    size = cfg.get("input_size")
    if isinstance(size, list) and size and all(type(v) is int and 1 <= v <= 8192 for v in size):
        clean["input_size"] = size
    crop_pct = cfg.get("crop_pct")
    if type(crop_pct) in (int, float) and 0.05 <= crop_pct <= 1:
        clean["crop_pct"] = crop_pct
    for key in ("mean", "std"):
        values = cfg.get(key)
        if isinstance(values, list) and 1 <= len(values) <= 64 and all(type(v) in (int, float) for v in values):
            if all(math.isfinite(v) and (key == "mean" or v > 0) for v in values):
                clean[key] = values
    if cfg.get("interpolation") in ("bilinear", "bicubic", "nearest", "lanczos"):
        clean["interpolation"] = cfg["interpolation"]
    return clean


def _from_path(path: Path) -> str | None:
    for part in [path.name.removesuffix(path.suffix), *(p.name for p in path.resolve().parents)]:
        part = part.removeprefix("models--timm--")
        if _PATTERN.match(part):
            return part
    return None


def identify(model: ir.Model, checkpoint: Checkpoint, requested: str | None) -> tuple[str | None, str]:
    """(timm model name, possibly with a .tag; or None) and how it was found."""
    if requested:
        return requested, "--model"
    arch = checkpoint.meta.get("arch")
    if isinstance(arch, str) and arch:
        return arch, "the checkpoint's arch entry"
    config = _config_json(checkpoint.path)
    architecture = config.get("architecture")
    if isinstance(architecture, str) and architecture:
        tag = (
            (config.get("pretrained_cfg") or {}).get("tag") if isinstance(config.get("pretrained_cfg"), dict) else None
        )
        return (f"{architecture}.{tag}" if tag else architecture), "config.json"
    found = _from_path(checkpoint.path)
    return found, ("the file path" if found else "")


def conventions(name: str, checkpoint: Checkpoint) -> Conventions:
    base = name.split(".")[0]
    tf_port = base.startswith("tf_")
    cfg: dict[str, Any] = {}
    config = _config_json(checkpoint.path)
    if isinstance(config.get("pretrained_cfg"), dict) and config.get("architecture") == base:
        cfg = config["pretrained_cfg"]
    else:
        timm = _import()
        if timm is not None:
            try:
                found = timm.models.get_pretrained_cfg(name)
            except Exception:  # noqa: BLE001 - unknown tag: no config, not an error
                found = None
            cfg = found.to_dict() if found is not None else {}
    size = cfg.get("input_size")
    crop = int(size[-1]) if isinstance(size, list | tuple) and size else None
    crop_pct = cfg.get("crop_pct")
    resize = int(crop / crop_pct) if crop and isinstance(crop_pct, int | float) and crop_pct > 0 else None
    mean, std = cfg.get("mean"), cfg.get("std")
    return Conventions(
        model=f"timm {name}",
        padding="same" if tf_port else "symmetric",
        eps=1e-3 if tf_port else 1e-5,
        mean=tuple(float(v) for v in mean) if mean else None,
        std=tuple(float(v) for v in std) if std else None,
        resize=resize,
        crop=crop,
        interpolation=cfg.get("interpolation"),
    )


def build(name: str, num_classes: int, in_channels: int):
    """The timm model with random weights (None when timm does not import here)."""
    timm = _import()
    if timm is None:
        return None
    base = name.split(".")[0]
    if not timm.is_model(base):
        raise UsageError(f"timm has no model named {base!r}")
    return timm.create_model(base, pretrained=False, num_classes=num_classes, in_chans=in_channels).eval()
