"""What every torch-side source reports: the conventions its checkpoint was trained with, compared
field by field with the spec."""

from __future__ import annotations

from dataclasses import dataclass

from effspec.core import ir


@dataclass(frozen=True)
class Conventions:
    """What a source model computes and expects beyond its weights (None: not known)."""

    model: str  # e.g. "timm tf_efficientnet_b0"
    padding: str | None = None  # "same" (TensorFlow SAME) or "symmetric"
    eps: float | None = None  # batch-norm epsilon
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resize: int | None = None  # eval: resize the shorter side to this
    crop: int | None = None  # then center-crop to this
    interpolation: str | None = None

    def preprocessing(self) -> str:
        parts = []
        if self.mean is not None and self.std is not None:
            parts.append(
                f"normalize (p - mean) / std with mean {_floats(self.mean)}, std {_floats(self.std)} (p in 0..1)"
            )
        else:
            parts.append("input normalization unknown")
        if self.crop is not None:
            resize = f"resize to {self.resize}" if self.resize else "resize"
            interpolation = f" ({self.interpolation})" if self.interpolation else ""
            parts.append(f"eval: {resize}{interpolation}, center-crop {self.crop}")
        return f"{self.model} expects: " + "; ".join(parts)


def _floats(values: tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def _yaml_float(value: float) -> str:
    text = f"{value:.1e}" if value < 1e-2 else f"{value:g}"
    mantissa, _, exponent = text.partition("e")
    return f"{mantissa}e{int(exponent)}" if exponent else text


def model_paddings(model: ir.Model) -> set[str]:
    """The spec's padding mode ("same" or "symmetric")."""
    return {model.padding}


def model_eps(model: ir.Model) -> float:
    return model.batch_norm.eps


def differences(model: ir.Model, conventions: Conventions) -> tuple[list[str], list[str]]:
    """(what differs, in words; the spec fields to set), empty when the spec matches what is known."""
    differ: list[str] = []
    defaults: list[str] = []
    fields: list[str] = []
    paddings = model_paddings(model)
    if conventions.padding is not None and paddings != {conventions.padding}:
        spec = "/".join(sorted(paddings))
        differ.append(f"padding {conventions.padding} (spec: {spec})")
        defaults.append(f"padding: {conventions.padding}")
    if conventions.eps is not None and abs(model_eps(model) - conventions.eps) > 1e-12:
        differ.append(f"batch-norm eps {conventions.eps:g} (spec: {model_eps(model):g})")
        defaults.append(f"batch_norm: {{eps: {_yaml_float(conventions.eps)}}}")
    if defaults:
        fields.append("defaults: {" + ", ".join(defaults) + "}")
    if conventions.mean is not None and conventions.std is not None:
        same = len(conventions.mean) == len(model.mean) and all(
            abs(a - b) < 1e-4
            for a, b in zip((*conventions.mean, *conventions.std), (*model.mean, *model.std), strict=True)
        )
        if not same and len(conventions.mean) == len(model.mean):
            differ.append(f"input mean {_floats(conventions.mean)} / std {_floats(conventions.std)}")
            fields.append(f"input: {{mean: {_floats(conventions.mean)}, std: {_floats(conventions.std)}}}")
    return differ, fields
