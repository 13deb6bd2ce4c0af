"""`effspec export`: deployable artifacts that check themselves in their own runtime.

ONNX and TorchScript come from the generated torch model (NCHW input, like the torch model); TFLite
and SavedModel from the generated Keras model (NHWC). ``--weights`` takes any file convert-weights
reads (torch or Keras): it is converted through the manifest as needed; without it the model keeps
its seeded initialization.

At a fixed size, TensorFlow SAME padding is exported static: the model is lowered at the export
resolution, so the compiler decides every strided SAME conv's padding there (``ir.SamePadding``) and
the generated torch model runs it as fixed padding, so the graph holds no shape arithmetic; Keras'
``padding="same"`` is static in TF graphs of a fixed shape. ``--dynamic-size`` keeps the per-call
padding (TorchScript, SavedModel).

ONNX is written for onnxruntime's CPU execution provider: batch norms folded into the convs and
constants folded by the exporter, then onnxruntime's hardware-independent (basic) graph optimizations
applied and saved, so the file holds only standard ONNX ops and loads anywhere.

Each artifact is written to a temporary sibling, run in its runtime (onnxruntime, the LiteRT
interpreter or TF's, torch.jit, TF) against the framework model on seeded inputs, and renamed over OUT
only when it is within tolerance: a failed export leaves no OUT and never clobbers an existing one.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from effspec.core import ir  # noqa: E402
from effspec.emit.pipeline import build  # noqa: E402
from effspec.support.errors import CheckFailed, UsageError  # noqa: E402
from effspec.weights.convert import keras_to_torch, set_keras_weights, torch_to_keras  # noqa: E402
from effspec.weights.files import (  # noqa: E402
    KERAS_SUFFIX,
    TORCH_SUFFIXES,
    atomic_output,
    check_hdf5,
    check_output,
    existing_file,
    load_keras_file,
    load_torch_file,
)
from effspec.weights.generated import load_model_module  # noqa: E402
from effspec.weights.manifest import build_manifest  # noqa: E402

#: Accepted file endings per format (the first is the usual one); torchscript files go by all three.
SUFFIXES = {"onnx": (".onnx",), "tflite": (".tflite",), "torchscript": (".pt", ".ts", ".torchscript")}
TOLERANCE = {"onnx": 1e-4, "torchscript": 1e-4, "saved_model": 1e-4, "tflite": 1e-3}
CHECK_BATCH = 2  # images in the self-check when the batch is dynamic
CALIBRATION_IMAGES = 32


@dataclass(frozen=True)
class ExportOptions:
    format: str
    weights: Path | None = None
    resolution: int | None = None
    batch: int | None = 1  # None: dynamic
    dynamic_size: bool = False
    quantize: str | None = None
    calibration: str | None = None
    features: bool = False  # the backbone (build_model(features_only=True)): one output per level
    output_stride: int = 32  # with ``features``


@dataclass
class ExportReport:
    path: Path
    lines: list[str] = field(default_factory=list)
    failure: str | None = None

    def raise_if_failed(self) -> None:
        if self.failure:
            raise CheckFailed(self.failure)


def export(spec: str | Path, output: Path, options: ExportOptions) -> ExportReport:
    fmt = options.format
    if options.features and fmt == "tflite":
        raise UsageError("--features: the backbone exports as onnx, torchscript or saved_model")
    if options.output_stride != 32 and not options.features:
        raise UsageError(f"--output-stride {options.output_stride}: add --features (it sets the backbone's)")
    if options.dynamic_size and fmt == "tflite":
        raise UsageError("--dynamic-size: TFLite needs a fixed height and width; drop it or pick another format")
    if fmt in SUFFIXES and output.suffix.lower() not in SUFFIXES[fmt]:
        raise UsageError(f"{output}: a {fmt} file ends in {' or '.join(SUFFIXES[fmt])}")
    check_output(output, directory=fmt == "saved_model")
    if options.calibration and options.calibration != "synthetic" and not Path(options.calibration).is_dir():
        raise UsageError(f"--calibration {options.calibration}: not a folder of images (or 'synthetic')")
    model = build(spec).model
    resolution = options.resolution or model.resolution
    if resolution != model.resolution and not options.dynamic_size:
        model = build(spec, resolution).model  # lowered there: every shape and TF SAME padding fixed
    images = _check_images(model, resolution, options)
    state, source = _weights(model, options.weights, images)
    report = ExportReport(output)
    batch = "dynamic" if options.batch is None else str(options.batch)
    size = "dynamic" if options.dynamic_size else f"{resolution}x{resolution}"
    report.lines.append(f"{model.name} as {fmt}: weights {source}; batch {batch}, size {size}")
    if options.features:
        levels = load_model_module(model, "torch").feature_info(output_stride=options.output_stride)
        described = ", ".join(f"{level.name} ({level.module}, /{level.reduction})" for level in levels)
        report.lines.append(f"backbone at output stride {options.output_stride}, outputs {described}")
    try:
        if fmt in ("onnx", "torchscript"):
            _export_torch(model, state, output, images, options, report, resolution)
        else:
            _export_keras(model, state, output, images, options, report, resolution)
    except _Abort:
        report.lines.append(f"nothing written: {output} is {'unchanged' if output.exists() else 'not created'}")
    return report


# weights ------------------------------------------------------------------------------------------


def _weights(model: ir.Model, path: Path | None, images: np.ndarray) -> tuple[dict[str, np.ndarray], str]:
    """A canonical (torch) state dict from any file convert-weights reads, or the seeded init, whose
    batch norms are calibrated on ``images`` (the self-check's)."""
    manifest = build_manifest(model)
    if path is None:
        import torch

        torch.manual_seed(0)
        net = load_model_module(model, "torch").build_model(dropout=0.0, drop_path_rate=0.0)
        generator = torch.Generator().manual_seed(1)
        norms = [module for module in net.modules() if isinstance(module, torch.nn.BatchNorm2d)]
        with torch.no_grad():  # batch norms that do something, so the self-check exercises them
            for module in norms:
                for tensor, low, high in ((module.weight, 0.5, 1.5), (module.bias, -0.2, 0.2)):
                    tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)
                module.reset_running_stats()
            momenta = [module.momentum for module in norms]
            for module in norms:
                module.momentum = None  # a cumulative average: one batch sets the statistics
            # The statistics each batch norm measures on the self-check's images, as a trained model's
            # are measured on its data: every layer's output stays of order one, and float rounding
            # grows with depth the way it does in a trained model. Made-up statistics (mean 0, variance
            # 1 on activations that are not) let a deep model (V2-S) grow its activations layer by layer
            # and amplify rounding past any fixed budget (rel 1e-3 between two correct runtimes).
            net.train()(torch.from_numpy(images))
            for module, momentum in zip(norms, momenta, strict=True):
                module.momentum = momentum
        state = {k: v.detach().numpy().copy() for k, v in net.eval().state_dict().items()}
        return state, "seeded random weights, batch-norm statistics measured on the check images (no --weights)"
    existing_file(path)
    if path.name.endswith(KERAS_SUFFIX):
        check_hdf5(path)
        net = _keras_net(model, None)
        state = keras_to_torch(manifest, load_keras_file(net, path))
    elif path.suffix in TORCH_SUFFIXES:
        state = load_torch_file(path)
        torch_to_keras(manifest, state)  # names and shapes checked against the manifest
    else:
        raise UsageError(f"{path}: --weights takes torch ({', '.join(TORCH_SUFFIXES)}) or Keras ({KERAS_SUFFIX}) files")
    return state, str(path)


# inputs -------------------------------------------------------------------------------------------


def _check_images(model: ir.Model, resolution: int, options: ExportOptions) -> np.ndarray:
    """NCHW float32 images: the calibration set when quantizing, else seeded normalized noise."""
    batch = options.batch or CHECK_BATCH
    channels = model.input.channels
    if options.quantize:
        if options.calibration and options.calibration != "synthetic":
            images = _folder_images(Path(options.calibration), model, resolution)
        else:
            generator = np.random.default_rng(0)
            images = generator.standard_normal((CALIBRATION_IMAGES, channels, resolution, resolution))
        if options.batch is not None:  # whole batches only: a fixed-batch model takes nothing else
            images = images[: max(options.batch, len(images) // options.batch * options.batch)]
            if len(images) < options.batch:
                images = np.concatenate([images] * -(-options.batch // len(images)))[: options.batch]
        return images.astype(np.float32)
    generator = np.random.default_rng(0)
    return generator.standard_normal((batch, channels, resolution, resolution)).astype(np.float32)


def _folder_images(folder: Path, model: ir.Model, resolution: int) -> np.ndarray:
    """Up to CALIBRATION_IMAGES images under ``folder``: resized, 0..1, normalized with the spec's mean/std."""
    from effspec.support.images import IMAGE_EXTENSIONS, Undecodable, open_image, report_undecodable

    try:
        import PIL  # noqa: F401
    except ImportError as exc:
        raise UsageError("--calibration DIR needs Pillow (pip install pillow); or use --calibration synthetic") from exc
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise UsageError(f"--calibration {folder}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    mode = "L" if model.input.channels == 1 else "RGB"
    mean = np.array(model.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.array(model.std, dtype=np.float32).reshape(-1, 1, 1)
    images = []
    for path in files:  # the trainers' decoding policy (imagefiles): an undecodable file is skipped, named
        if len(images) == CALIBRATION_IMAGES:
            break
        try:
            image = open_image(path.read_bytes(), mode)
        except (Undecodable, OSError) as exc:
            report_undecodable(str(path), exc, "skipped")
            continue
        pixels = np.asarray(image.resize((resolution, resolution)), dtype=np.float32) / 255.0
        pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        images.append((pixels - mean) / std)
    if not images:
        raise UsageError(f"--calibration {folder}: no image decodes")
    return np.stack(images)


def _compare_outputs(report: ExportReport, options: ExportOptions, artifact, reference, names: list[str]) -> None:
    """The classifier's logits, or each level of the backbone (``names``) in turn."""
    if not options.features:
        _compare(report, options.format, artifact, reference)
        return
    artifacts = artifact if isinstance(artifact, list | tuple) else [artifact]
    if len(artifacts) != len(reference):
        report.failure = f"{options.format} export has {len(artifacts)} outputs, expected {len(reference)}: {names}"
        return
    for name, ours, theirs in zip(names, artifacts, reference, strict=True):
        _compare(report, options.format, ours, theirs)
        report.lines[-1] = f"{name}: {report.lines[-1]}"


def _backbone_args(options: ExportOptions | None) -> dict[str, Any]:
    if options is None or not options.features:
        return {}
    return {"features_only": True, "output_stride": options.output_stride}


def _numpy(outputs):
    """A tensor as an array, a list of them (the backbone's maps) as a list of arrays."""
    if isinstance(outputs, list | tuple):
        return [output.detach().numpy() for output in outputs]
    return outputs.detach().numpy()


def _compare(report: ExportReport, fmt: str, artifact: np.ndarray, reference: np.ndarray) -> None:
    artifact, reference = np.asarray(artifact, np.float64), np.asarray(reference, np.float64)
    max_abs = float(np.max(np.abs(artifact - reference)))
    rel = max_abs / (float(np.max(np.abs(reference))) or 1.0)
    tolerance = TOLERANCE[fmt]
    verdict = "ok" if rel <= tolerance else "FAILED"  # NaN fails too
    report.lines.append(
        f"self-check in its runtime, {len(reference)} images: max abs {max_abs:.2e}, rel {rel:.2e} "
        f"(tolerance {tolerance:g}) {verdict}"
    )
    if not rel <= tolerance:
        report.failure = f"{fmt} export differs from the framework model: rel {rel:.2e} > {tolerance:g}"


# torch: ONNX, TorchScript -------------------------------------------------------------------------


def _torch_net(model: ir.Model, state: dict[str, np.ndarray], options: ExportOptions | None = None):
    import torch

    backbone = _backbone_args(options)  # it loads the classification state dict as it is
    net = load_model_module(model, "torch").build_model(dropout=0.0, drop_path_rate=0.0, **backbone)
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    return net.eval()


def _export_torch(model, state, output, images, options, report, resolution) -> None:
    import torch

    per_call = sum(isinstance(layer.padding, ir.SamePadding) for layer in model.layers)
    if options.dynamic_size and options.format == "onnx" and per_call:
        raise UsageError(
            f"--dynamic-size: {model.name} pads TF SAME by the input size's parity in {per_call} strided convs, which "
            "ONNX cannot express exactly (its integer division truncates); export at a fixed --resolution, or use "
            "torchscript / saved_model for dynamic sizes"
        )
    net = _torch_net(model, state, options)
    with torch.no_grad():
        reference = _numpy(net(torch.from_numpy(images)))
    names = [level.name for level in net.feature_info] if options.features else ["logits"]
    if not options.dynamic_size and per_call:
        report.lines.append(f"TF SAME padding static at {resolution}x{resolution} in {per_call} strided convs")
    example = torch.from_numpy(images)
    with atomic_output(output) as temporary:
        if options.format == "onnx":
            _write_onnx(net, example, temporary, options, names)
            artifact = _run_onnx(temporary, images)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                scripted = torch.jit.script(net) if options.dynamic_size else torch.jit.trace(net, example)
            scripted.save(str(temporary))
            loaded = torch.jit.load(str(temporary))
            with torch.no_grad():
                artifact = _numpy(loaded(torch.from_numpy(images)))
        _compare_outputs(report, options, artifact, reference, names)
        if report.failure:
            raise _Abort
    report.lines.append(f"input {_layout('NCHW', options, model, resolution)} float32")


class _Abort(Exception):
    """Leave the temporary artifact unrenamed (atomic_output removes it); the report says why."""


def _layout(order: str, options: ExportOptions, model: ir.Model, resolution: int) -> str:
    batch = "N" if options.batch is None else str(options.batch)
    size = "H" if options.dynamic_size else str(resolution)
    width = "W" if options.dynamic_size else str(resolution)
    dims = {"N": batch, "C": str(model.input.channels), "H": size, "W": width}
    return f"{order} ({', '.join(dims[axis] for axis in order)})"


def _write_onnx(net, example, path: Path, options: ExportOptions, names: list[str]) -> None:
    import torch

    axes: dict[int, str] = {}
    if options.batch is None:
        axes[0] = "batch"
    if options.dynamic_size:
        axes.update({2: "height", 3: "width"})
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (example,),
            str(path),
            input_names=["images"],
            output_names=names,
            dynamic_axes={"images": axes, **{name: {0: "batch"} if 0 in axes else {} for name in names}}
            if axes
            else None,
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    _optimize_onnx(path)


#: The opset written: 13, 17 and 18 gave the same graph after optimization and ran B0 alike (docs/deploy.md).
ONNX_OPSET = 17


def _optimize_onnx(path: Path) -> None:
    """Rewrite ``path`` as onnxruntime would run it, in standard ONNX ops only: its basic
    (hardware-independent) optimizations (constant folding: the pad amounts; identities removed;
    conv + batch norm folded), then each constant zero ``Pad`` folded into the ``Conv`` it feeds
    (ONNX convs pad asymmetrically, so TF SAME is the conv's own padding; onnxruntime keeps them
    apart). The extended optimizations (fused activations, NCHWc layouts) are left to the session:
    saved, they are hardware specific."""
    import tempfile

    import onnx
    import onnxruntime
    from onnx import numpy_helper

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    with tempfile.TemporaryDirectory(prefix="effspec-onnx-") as folder:
        options.optimized_model_filepath = str(Path(folder) / "basic.onnx")
        onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        model = onnx.load(options.optimized_model_filepath)
    graph = model.graph
    constants = {tensor.name: tensor for tensor in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    folded = []
    for pad in graph.node:
        if pad.op_type != "Pad" or pad.input[1] not in constants or len(consumers.get(pad.output[0], [])) != 1:
            continue
        (conv,) = consumers[pad.output[0]]
        mode = next((a.s for a in pad.attribute if a.name == "mode"), b"constant")
        value = constants.get(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else None
        amounts = numpy_helper.to_array(constants[pad.input[1]]).tolist()  # begins of every axis, then ends
        rank = len(amounts) // 2
        if conv.op_type != "Conv" or mode != b"constant" or (value is not None and numpy_helper.to_array(value).any()):
            continue
        if any(amounts[:2]) or any(amounts[rank : rank + 2]) or min(amounts) < 0:
            continue  # pads batch or channels, or crops
        pads = next((a for a in conv.attribute if a.name == "pads"), None)
        current = list(pads.ints) if pads is not None else [0] * (2 * (rank - 2))
        spatial = amounts[2:rank] + amounts[rank + 2 :]
        merged = [a + b for a, b in zip(current, spatial, strict=True)]
        if pads is not None:
            conv.attribute.remove(pads)
        conv.attribute.append(onnx.helper.make_attribute("pads", merged))
        conv.input[0] = pad.input[0]
        folded.append(pad)
    for pad in folded:
        graph.node.remove(pad)
    used = {name for node in graph.node for name in node.input}
    for tensor in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(tensor)
    domains = {node.domain for node in graph.node} | {""}  # onnxruntime declares all of its own
    for opset in [o for o in model.opset_import if o.domain not in domains]:
        model.opset_import.remove(opset)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _run_onnx(path: Path, images: np.ndarray) -> np.ndarray:
    try:
        import onnxruntime
    except ImportError as exc:
        raise UsageError("the ONNX self-check needs onnxruntime (pip install onnxruntime)") from exc
    from effspec.support.cpus import usable_cpus

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = usable_cpus()  # the CPUs this process may use, not the machine's
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: images})
    return outputs if len(outputs) > 1 else outputs[0]


# Keras: TFLite, SavedModel ------------------------------------------------------------------------


def _keras_net(model: ir.Model, shape: tuple[Any, ...] | None):
    module = load_model_module(model, "keras")
    kwargs = {"input_shape": shape} if shape is not None else {}
    return module.build_model(dropout=0.0, drop_path_rate=0.0, **kwargs)


def _export_keras(model, state, output, images, options, report, resolution) -> None:
    import keras
    import tensorflow as tf

    manifest = build_manifest(model)
    channels = model.input.channels
    size = None if options.dynamic_size else resolution
    net = _keras_net(model, (size, size, channels))
    set_keras_weights(manifest, net, torch_to_keras(manifest, state))
    names = ["logits"]
    if options.features:  # the backbone, with the classification model's weights layer by name
        from effspec.weights.generated import keras_backbone

        module = load_model_module(model, "keras")
        net = keras_backbone(module, net, options.output_stride, (size, size, channels))
        names = list(net.output_names)
    nhwc = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
    reference = net(nhwc, training=False)
    if options.features:
        reference = [keras.ops.convert_to_numpy(output) for output in reference]
    else:
        reference = keras.ops.convert_to_numpy(reference)
    inputs = keras.Input(batch_shape=(options.batch, size, size, channels), name="images")
    outputs = net(inputs, training=False)
    if options.features:  # serving outputs named by level
        outputs = dict(zip(names, outputs, strict=True))
    wrapped = keras.Model(inputs, outputs, name=net.name)
    directory = options.format == "saved_model"
    with atomic_output(output, directory=directory) as temporary:
        if directory:
            signature = tf.TensorSpec((options.batch, size, size, channels), tf.float32, name="images")
            with contextlib.redirect_stdout(io.StringIO()):
                wrapped.export(str(temporary), format="tf_saved_model", input_signature=[signature], verbose=False)
            loaded = tf.saved_model.load(str(temporary))
            served = loaded.serve(tf.constant(nhwc))
            artifact = [served[name].numpy() for name in names] if options.features else served.numpy()
            _compare_outputs(report, options, artifact, reference, names)
        else:
            converter = tf.lite.TFLiteConverter.from_keras_model(wrapped)
            if options.quantize:
                calibration = nhwc

                def representative():
                    for image in calibration:
                        yield [image[None]]

                converter.optimizations = [tf.lite.Optimize.DEFAULT]
                converter.representative_dataset = representative
                converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            with contextlib.redirect_stdout(io.StringIO()):
                flatbuffer = converter.convert()
            temporary.write_bytes(flatbuffer)
            artifact, runtime = _run_tflite(temporary, nhwc)
            report.lines.append(f"runtime: {runtime}")
            if options.quantize:
                agreement = float(np.mean(artifact.argmax(-1) == reference.argmax(-1)))
                calibration_name = options.calibration or "synthetic"
                report.lines.append(
                    f"int8: top-1 agreement with the fp32 model {agreement:.1%} on {len(nhwc)} calibration images "
                    f"({calibration_name}); max abs logit difference {np.max(np.abs(artifact - reference)):.3g}"
                )
            else:
                _compare(report, "tflite", artifact, reference)
        if report.failure:
            raise _Abort
    report.lines.append(f"input {_layout('NHWC', options, model, resolution)} float32")


def _run_tflite(path: Path, images: np.ndarray) -> tuple[np.ndarray, str]:
    try:
        from ai_edge_litert.interpreter import Interpreter

        runtime = "ai-edge-litert"
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter  # noqa: N806
        runtime = "tf.lite.Interpreter (ai-edge-litert not installed)"
    interpreter = Interpreter(model_path=str(path))
    detail = interpreter.get_input_details()[0]
    outputs = []
    fixed = int(detail["shape"][0])
    step = fixed if fixed > 0 and list(detail["shape_signature"])[0] != -1 else len(images)
    for start in range(0, len(images), step):
        chunk = images[start : start + step]
        if tuple(detail["shape"]) != chunk.shape:
            interpreter.resize_tensor_input(detail["index"], list(chunk.shape))
        interpreter.allocate_tensors()
        interpreter.set_tensor(detail["index"], chunk)
        interpreter.invoke()
        outputs.append(np.array(interpreter.get_tensor(interpreter.get_output_details()[0]["index"])))
    return np.concatenate(outputs), runtime
