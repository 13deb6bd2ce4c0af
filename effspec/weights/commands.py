"""`effspec convert-weights` and `effspec export` (registered by ``effspec.equivalence.commands``).

Nothing heavy is imported here: torch and TensorFlow load inside the handlers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from effspec.emit.options import add_backbone_options, positive_int
from effspec.emit.registry import BUILTIN_BACKENDS as FRAMEWORKS
from effspec.support.errors import UsageError

IMPORT_SOURCES = ("keras-applications", "timm", "torchvision")
EXPORT_FORMATS = ("onnx", "tflite", "torchscript", "saved_model")


def _batch(text: str) -> int | None:
    return None if text == "dynamic" else positive_int(text)


def _cmd_convert(args: argparse.Namespace) -> int:
    from effspec.weights.importer import Options, convert_file

    if args.application and args.source != "keras-applications":
        raise UsageError("--application goes with --from keras-applications")
    structural = args.source in ("timm", "torchvision")
    for flag, value in (("--model", args.model), ("--in-channels", args.in_channels), ("--force", args.force or None)):
        if value is not None and not structural:
            raise UsageError(f"{flag} goes with --from timm or --from torchvision")
    if (args.verify is not None or args.verify_size) and not structural:
        raise UsageError("--verify / --no-verify go with --from timm or --from torchvision")
    options = Options(
        application=args.application,
        model=args.model,
        force=args.force,
        verify=args.verify,
        in_channels=args.in_channels,
        verify_sizes=(args.verify_size, args.verify_size + 1) if args.verify_size else None,
    )
    from effspec.weights.locate import resolve_name

    source_path, implied = resolve_name(args.input)  # hf-hub:ORG/NAME, keras.applications:NAME, or a path
    if implied is not None and implied != args.source:
        raise UsageError(f"{args.input} is a {implied} checkpoint: pass --from {implied}")
    written, notes = convert_file(args.spec, args.source, args.target, source_path, Path(args.output), options=options)
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {written}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from effspec.weights.export import ExportOptions, export

    if args.quantize and args.format != "tflite":
        raise UsageError("--quantize int8 goes with --format tflite")
    if args.calibration and not args.quantize:
        raise UsageError("--calibration goes with --quantize int8")
    options = ExportOptions(
        format=args.format,
        weights=Path(args.weights) if args.weights else None,
        resolution=args.resolution,
        batch=args.batch,
        dynamic_size=args.dynamic_size,
        quantize=args.quantize,
        calibration=args.calibration or ("synthetic" if args.quantize else None),
        features=args.features,
        output_stride=args.output_stride or 32,
    )
    report = export(args.spec, Path(args.output), options)
    for line in report.lines:
        print(line)
    report.raise_if_failed()
    print(f"wrote {report.path}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert-weights",
        help="convert weights between the generated torch and Keras models, or import keras.applications, timm "
        "or torchvision checkpoints",
        description=(
            "Convert IN (weights of --from) into OUT (weights of the generated --to model). timm and torchvision "
            "checkpoints are mapped by structure, their conventions (padding, batch-norm eps, preprocessing) "
            "checked against the spec, and the result verified against the source model where it imports. "
            "OUT is written atomically, only when everything passed."
        ),
    )
    p.add_argument("spec", metavar="SPEC")
    p.add_argument(
        "--from",
        dest="source",
        choices=(*FRAMEWORKS, *IMPORT_SOURCES),
        required=True,
        help="framework of IN: torch/keras (generated models), keras-applications (.h5), timm or torchvision "
        "(.safetensors, .bin, .pth, .pth.tar; a state_dict, possibly under state_dict/state_dict_ema/model)",
    )
    p.add_argument("--to", dest="target", choices=FRAMEWORKS, required=True, help="framework of OUT")
    p.add_argument(
        "--application",
        metavar="NAME",
        help="with --from keras-applications: the keras.applications class (default: from the spec name, "
        "efficientnet-b3 -> EfficientNetB3)",
    )
    p.add_argument(
        "--model",
        metavar="NAME",
        help="with --from timm/torchvision: the source model (tf_efficientnet_b0, efficientnet_v2_s, ...); default: "
        "from the checkpoint, a config.json beside it or the path (timm), the spec name (torchvision)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="convert although the source's padding / batch-norm eps / normalization differ from the spec's",
    )
    p.add_argument(
        "--verify",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run source and converted models on seeded inputs (an even and an odd size); exit 1 above 1e-4 "
        "relative (default: on where the source framework imports)",
    )
    p.add_argument(
        "--verify-size",
        type=positive_int,
        metavar="N",
        help="--verify at N x N and (N+1) x (N+1) (default: the spec's resolution, at most 128, and one more)",
    )
    p.add_argument(
        "--in-channels",
        type=positive_int,
        metavar="N",
        help="adapt a 3-channel stem to the spec's N input channels (1: summed; more: repeated and rescaled)",
    )
    p.add_argument(
        "input",
        metavar="IN",
        help="weights file to read, or a published name found in its library's cache: hf-hub:timm/NAME "
        "(huggingface_hub) or keras.applications:EfficientNetB0 (Keras' weight cache)",
    )
    p.add_argument("output", metavar="OUT", help="file to write (torch .pt/.pth/.bin/.safetensors, Keras .weights.h5)")
    p.set_defaults(handler=_cmd_convert)

    p = sub.add_parser(
        "export",
        help="export the generated model as ONNX, TFLite, TorchScript or SavedModel, checked in its own runtime",
        description=(
            "ONNX and TorchScript from the torch model (NCHW input), TFLite and SavedModel from the Keras model "
            "(NHWC input). The artifact is run in its runtime against the framework model on seeded inputs; "
            "exit 1 above tolerance. OUT is written atomically and only when the export succeeded."
        ),
    )
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--format", choices=EXPORT_FORMATS, required=True)
    p.add_argument("--weights", metavar="FILE", help="torch (.pt/.safetensors/...) or Keras (.weights.h5) weights")
    p.add_argument("--resolution", type=positive_int, metavar="N", help="input size (default: the spec's)")
    p.add_argument("--batch", type=_batch, default=1, metavar="N|dynamic", help="batch size, or dynamic (default: 1)")
    p.add_argument(
        "--dynamic-size",
        action="store_true",
        help="dynamic height and width (onnx, torchscript, saved_model); TF SAME padding is then computed in the graph",
    )
    p.add_argument("--quantize", choices=("int8",), help="TFLite: full-integer int8 quantization")
    p.add_argument(
        "--calibration",
        metavar="DIR|synthetic",
        help="with --quantize: a folder of images (representative set), or synthetic (default)",
    )
    add_backbone_options(p, "export the backbone (build_model(features_only=True)): one output per level, named P1..P5")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="file (or folder for saved_model) to write")
    p.set_defaults(handler=_cmd_export)
