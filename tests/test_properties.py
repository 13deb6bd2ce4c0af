"""Property-based tests: the compiler over the whole space of valid specs, not only the shipped ones.

A hypothesis strategy draws random VALID specs over every field of the schema (both block kinds,
expansion 1..6, kernels 1/3/5/7, stride 1/2, SE on/off per stage, every activation, both paddings,
divisor and round_limit, compound and explicit scaling, ``extends``), small enough to build in well
under a second (channels 8..64, resolution 32..96). For each spec:

- the compiler never fails internally (a clean ``SpecError`` for a spatial collapse is allowed);
- IR params == torch params == ``PARAMS`` == Keras trainable params;
- IR MACs == the MACs forward hooks count on the torch model;
- torch and Keras agree, through effspec's own weight conversion, at an odd and an even size.

The default run is ``DEFAULT_EXAMPLES`` examples with a fixed seed and no example database, so it is
the same run on every machine. ``EFFSPEC_PROPERTY_EXAMPLES=2000`` runs more (and
``EFFSPEC_PROPERTY_SEED`` picks another seed). Every failure found becomes a named regression test in
``tests/test_regressions.py``.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import yaml
from torch_helpers import count_macs, randomize_batch_norm

from effspec.core import ir
from effspec.emit.pipeline import build, emit
from effspec.support.errors import SpecError

hypothesis = pytest.importorskip("hypothesis")
torch = pytest.importorskip("torch")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("keras")

from hypothesis import HealthCheck, event, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from effspec.weights.convert import set_keras_weights, torch_to_keras  # noqa: E402
from effspec.weights.manifest import build_manifest  # noqa: E402

DEFAULT_EXAMPLES = 10
EXAMPLES = int(os.environ.get("EFFSPEC_PROPERTY_EXAMPLES", DEFAULT_EXAMPLES))
SEED = int(os.environ.get("EFFSPEC_PROPERTY_SEED", "20261125"))

#: torch float32 vs Keras float32 on the same weights: max |difference| / (1 + max |logit|). Random
#: deep nets of this size agree to ~1e-6 of their scale; a wrong layer is off by O(1).
LOGITS_TOLERANCE = 1e-3

ACTIVATIONS = ["swish", "silu", "relu", "relu6", "gelu", "hard_swish", "hard_sigmoid", "mish"]
_COUNTER = itertools.count()
RUFF = str(Path(sys.executable).with_name("ruff"))


class Written(float):
    """A float that the spec file writes in one of the forms people use (YAML 1.2 core schema):
    ``50e-2``, ``50E-2``, ``+0.5``, ``.5``, ``5.`` or plain ``0.5``; each reads back as the same float."""

    form: int

    def __new__(cls, value: float, form: int) -> Written:
        written = super().__new__(cls, value)
        written.form = form
        return written

    def text(self) -> str:
        value, cents = float(self), round(float(self) * 100)
        sign = "-" if value < 0 else ""
        if self.form == 0 and cents / 100 == value:
            return f"{cents}e-2"
        if self.form == 1 and cents / 100 == value:
            return f"{cents}E-2"
        if self.form == 2 and value >= 0:
            return f"+{value!r}"
        if self.form == 3 and repr(abs(value)).startswith("0."):
            return sign + repr(abs(value))[1:]  # .5
        if self.form == 4 and value.is_integer():
            return f"{int(value)}."  # 5.
        return repr(value)


class _SpecDumper(yaml.SafeDumper):
    pass


def _represent(dumper: yaml.SafeDumper, value: Written) -> yaml.ScalarNode:
    text = value.text()  # tagged as PyYAML's YAML 1.1 resolver reads it, so that it is written plain
    return dumper.represent_scalar(dumper.resolve(yaml.ScalarNode, text, (True, False)), text)


_SpecDumper.add_representer(Written, _represent)


def dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_SpecDumper, sort_keys=False)


def _floats(low: float, high: float) -> st.SearchStrategy[float]:
    """Round numbers, written as people write them (``Written``), never NaN or infinite."""
    values = st.integers(int(low * 100), int(high * 100)).map(lambda v: v / 100)
    return st.builds(Written, values, st.integers(0, 5))


def _kernels(draw: st.DrawFn, block: str) -> int | list[int]:
    if block == "mbconv" and draw(st.integers(0, 3)) == 0:  # a mixed depthwise conv (MixNet)
        return draw(st.lists(st.sampled_from([3, 5, 7, 9]), min_size=2, max_size=4))
    return draw(st.sampled_from([1, 3, 5, 7]))


def _expansion(draw: st.DrawFn) -> float:
    """Mostly whole numbers, sometimes MobileNetV3's fractional kind."""
    return draw(st.one_of(st.integers(1, 6), st.sampled_from([2.3, 2.5, 3.67, 4.5])))


def _block_fields(draw: st.DrawFn, block: str) -> dict[str, Any]:
    """The fields a stage and a per-block override share, each drawn or left out."""
    fields: dict[str, Any] = {}
    optional = {
        "se_ratio": lambda: draw(st.sampled_from([0.0, 0.125, 0.25, 0.5])),
        "activation": lambda: draw(st.sampled_from(ACTIVATIONS)),
        "expansion_in": lambda: draw(st.integers(8, 48)),
        "expand_conv": lambda: draw(st.booleans()),
        "expand_groups": lambda: draw(st.sampled_from([1, 2])),
        "project_groups": lambda: draw(st.sampled_from([1, 2])),
        "residual": lambda: draw(st.booleans()),
    }
    for name, value in optional.items():
        if draw(st.integers(0, 3)) == 0:
            fields[name] = value()
    return fields


@st.composite
def stages(draw: st.DrawFn) -> dict[str, Any]:
    block = draw(st.sampled_from(["mbconv", "fused_mbconv"]))
    stage: dict[str, Any] = {
        "block": block,
        "repeats": draw(st.integers(1, 3)),
        "kernel": _kernels(draw, block),
        "stride": draw(st.sampled_from([1, 2])),
        "expansion": _expansion(draw),
        "channels": draw(st.integers(8, 64)),
        **_block_fields(draw, block),
    }
    if draw(st.integers(0, 4)) == 0:
        stage["scale_depth"] = False
    if draw(st.integers(0, 2)) == 0:  # per-block overrides
        overrides = []
        for _ in range(draw(st.integers(1, stage["repeats"]))):
            override = _block_fields(draw, block)
            if draw(st.booleans()):
                override["kernel"] = _kernels(draw, block)
            if draw(st.booleans()):
                override["expansion"] = _expansion(draw)
            overrides.append(override)
        stage["blocks"] = overrides
    return stage


@st.composite
def scalings(draw: st.DrawFn) -> dict[str, Any] | None:
    kind = draw(st.sampled_from(["none", "compound", "explicit"]))
    if kind == "none":
        return None
    regularization = {}
    if draw(st.booleans()):
        regularization["dropout"] = draw(_floats(0, 0.5))
    if draw(st.booleans()):
        regularization["drop_path_rate"] = draw(_floats(0, 0.5))
    if kind == "compound":
        return {
            "method": "compound",
            "phi": draw(_floats(-1, 1.5)),
            "alpha": draw(_floats(1, 1.3)),
            "beta": draw(_floats(1, 1.3)),
            "gamma": draw(_floats(1, 1.2)),
            "resolution_divisor": draw(st.sampled_from([1, 8])),
            **regularization,
        }
    return {
        "method": "explicit",
        "width": draw(_floats(0.5, 1.6)),
        "depth": draw(_floats(0.5, 1.6)),
        "resolution": draw(st.integers(32, 96)),
        **regularization,
    }


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    channels = draw(st.integers(1, 4))
    spec: dict[str, Any] = {
        "name": draw(st.from_regex(r"[a-z][a-z0-9]{0,30}(-[a-z0-9]{1,10}){0,3}", fullmatch=True)),
        "description": draw(st.text(max_size=20)),
        "input": {
            "resolution": draw(st.integers(32, 96)),
            "channels": channels,
            "mean": [draw(_floats(0, 1)) for _ in range(channels)],
            "std": [draw(_floats(0.1, 1)) for _ in range(channels)],
        },
        "defaults": {
            "activation": draw(st.sampled_from(ACTIVATIONS)),
            "batch_norm": {
                "eps": Written(draw(st.sampled_from([1e-5, 1e-3])), draw(st.integers(0, 5))),
                "momentum": draw(_floats(0.9, 0.99)),
            },
            "padding": draw(st.sampled_from(["same", "symmetric"])),
            "se_ratio": draw(st.sampled_from([0.0, 0.125, 0.25])),
            "drop_path_rate": draw(_floats(0, 0.3)),
            "channel_divisor": draw(st.sampled_from([1, 4, 8])),
            "round_limit": draw(st.sampled_from([0.0, 0.9])),
            "repeat_rounding": draw(st.sampled_from(["ceil", "round"])),
            "squeeze_excite": {
                "gate": draw(st.sampled_from(["sigmoid", "hard_sigmoid"])),
                "activation": draw(st.sampled_from([None, *ACTIVATIONS])),
                "width_from": draw(st.sampled_from(["input", "expanded"])),
                "divisor": draw(st.sampled_from([1, 4, 8])),
            },
        },
        "stem": {
            "channels": draw(st.integers(8, 32)),
            "kernel": draw(st.sampled_from([1, 3, 5])),
            "stride": draw(st.sampled_from([1, 2])),
            "activation": draw(st.sampled_from([None, *ACTIVATIONS])),
            "scale_width": draw(st.booleans()),
        },
        "stages": draw(st.lists(stages(), min_size=1, max_size=4)),
        "head": {
            "channels": draw(st.sampled_from([0, 8, 16, 24, 40, 64])),
            "scale_width": draw(st.booleans()),
            "min_channels": draw(st.sampled_from([None, 16, 48])),
            "activation": draw(st.sampled_from([None, *ACTIVATIONS])),
            "dropout": draw(_floats(0, 0.5)),
            "num_classes": draw(st.integers(2, 10)),
        },
    }
    if draw(st.booleans()):
        spec["head"]["pooled_conv"] = {
            "channels": draw(st.integers(8, 48)),
            "activation": draw(st.sampled_from([None, *ACTIVATIONS])),
        }
    scaling = draw(scalings())
    if scaling is not None:
        spec["scaling"] = scaling
    return spec


def write_spec(spec: dict[str, Any], directory: Path, use_extends: bool) -> Path:
    """The spec as one file, or as a base plus a child that overrides its stages and head."""
    path = directory / f"spec{next(_COUNTER)}.yaml"
    if not use_extends:
        path.write_text(dump(spec), encoding="utf-8")
        return path
    base = {**spec, "name": "prop-base", "stages": [spec["stages"][0]], "head": {"channels": 8}}
    base_path = path.with_name(f"base-{path.name}")
    base_path.write_text(dump(base), encoding="utf-8")
    child = {"extends": base_path.name, "name": spec["name"], "stages": spec["stages"], "head": spec["head"]}
    path.write_text(dump(child), encoding="utf-8")
    return path


def load_generated(model: ir.Model, backend: str, directory: Path) -> ModuleType:
    """Emit ``model`` for ``backend`` into ``directory``, check that every file is formatted and
    lint-clean as it comes out, and import its model.py."""
    files = emit(model, [backend])[f"{backend}/{model.python_name}"]
    path = directory / f"{backend}_{next(_COUNTER)}.py"
    path.write_text(files["model.py"], encoding="utf-8")
    train = path.with_name(f"{path.stem}_train.py")
    train.write_text(files["train.py"], encoding="utf-8")
    for command in (["format", "--isolated", "--check"], ["check", "--isolated", "--select", "E,F,W,I,B,UP"]):
        result = subprocess.run([RUFF, *command, str(path), str(train)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    module_spec = importlib.util.spec_from_file_location(f"_property_{path.stem}", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module  # dataclasses resolve annotations through sys.modules
    module_spec.loader.exec_module(module)
    return module


def check_spec(path: Path, directory: Path) -> str:
    """The four properties for one spec file (raises AssertionError on a violation); returns what
    happened, for hypothesis' statistics."""
    try:
        compiled = build(path)
    except SpecError as exc:  # a clean, located user error (e.g. the map collapses before a stride)
        assert exc.exit_code == 2 and str(exc).count("\n") == 0 and ": error: " in str(exc)
        return f"clean spec error: {exc.message.split(',')[0][:40]}"
    model = compiled.model
    torch_module = load_generated(model, "torch", directory)
    keras_module = load_generated(model, "keras", directory)

    torch.manual_seed(0)
    net = torch_module.build_model()
    randomize_batch_norm(net)
    net.eval()
    params = sum(p.numel() for p in net.parameters())
    assert params == model.params == torch_module.PARAMS == compiled.report.total.params
    x = torch.zeros(1, model.input.channels, model.resolution, model.resolution)
    assert count_macs(net, x) == model.macs == torch_module.MACS

    keras_net = keras_module.build_model()
    trainable = sum(int(np.prod(v.shape)) for v in keras_net.trainable_weights)
    assert trainable == model.params == keras_module.PARAMS

    manifest = build_manifest(model)
    state = {key: value.detach().numpy() for key, value in net.state_dict().items()}
    set_keras_weights(manifest, keras_net, torch_to_keras(manifest, state))
    rng = np.random.default_rng(0)
    for size in (33, 40):  # one odd, one even: TF SAME pads differently
        images = rng.standard_normal((2, model.input.channels, size, size)).astype(np.float32)
        with torch.no_grad():
            expected = net(torch.from_numpy(images)).numpy()
        got = np.asarray(keras_net(images.transpose(0, 2, 3, 1), training=False))
        error = np.abs(got - expected).max() / (1.0 + np.abs(expected).max())
        assert error <= LOGITS_TOLERANCE, f"torch and Keras differ by {error:.2e} of scale at {size}x{size}"
    keras.backend.clear_session(free_memory=False)  # names restart; a gc pass per example costs ~1 s
    return "compiled and checked"


@seed(SEED)
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(spec=specs(), use_extends=st.booleans())
def test_random_valid_specs_compile_count_and_agree(
    spec: dict[str, Any], use_extends: bool, tmp_path_factory: pytest.TempPathFactory
) -> None:
    directory = tmp_path_factory.mktemp("property")
    event(check_spec(write_spec(spec, directory, use_extends), directory))
