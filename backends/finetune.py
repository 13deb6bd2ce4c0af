"""Fine-tuning, for both trainers: ``--init`` (start from a checkpoint), freezing and the learning-rate
multiplier of pretrained layers. The framework-neutral part; each runtime's ``finetune`` module applies
it to its model (``backends/torch/runtime/finetune.py``, ``backends/keras/runtime/finetune.py``).

``--init`` reads any file ``effspec convert-weights`` reads, through the same readers, importers and
conventions check (``effspec.weights``): the generated torch and Keras files, the trainers' checkpoints
and final weights, timm / torchvision checkpoints and keras.applications files. Every file becomes the
canonical state (torch names and layouts, the weight manifest's), which each trainer then loads. A name
instead of a path resolves through the library's own cache: ``hf-hub:timm/NAME`` through
huggingface_hub, ``keras.applications:EfficientNetB0`` through Keras' weight cache (``~/.keras/models``
or ``$KERAS_HOME/models``); nothing is fetched when the network is off (``HF_HUB_OFFLINE=1``).

Loading is exact: every tensor but the classifier must be present with its shape, else the run exits 2
listing the mismatched tensors. The classifier is re-initialized (and reported) when its class count
differs from the run's, when the file has none, or with ``--new-classifier``.

Freezing works on the canonical layer names' sections (``stem``, ``blocks.<stage>``, ``head``): a
frozen layer's parameters do not train and its batch norms run in inference mode (statistics fixed).

Nothing here imports torch or TensorFlow at module level: ``add_finetune_flags`` runs on the compile path.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from effspec.weights.locate import HF_PREFIX, KERAS_APPLICATIONS_PREFIX, InitError, resolve_name

if TYPE_CHECKING:
    import numpy as np

    from effspec.core import ir
    from effspec.weights.manifest import Manifest

INIT_FORMATS = ("auto", "torch", "keras", "timm", "torchvision", "keras-applications")
#: The layers that train during --freeze-epochs (besides the classifier with --unfreeze-head-conv).
CLASSIFIER = "classifier"
HEAD_CONV = ("head", "pooled_conv")  # canonical layer-name prefixes of the head conv, its BN, the pooled conv
_LISTED = 8  # mismatched tensors named in an error


# flags --------------------------------------------------------------------------------------------


def add_finetune_flags(parser: argparse.ArgumentParser) -> None:
    """The fine-tuning flags, the same in both trainers (``add_recipe_flags`` calls this)."""
    group = parser.add_argument_group("fine-tuning (docs/finetune.md)")
    group.add_argument(
        "--init",
        metavar="FILE|NAME",
        default=None,
        help="start from these weights: a generated model's torch or Keras file, a training checkpoint, a timm / "
        "torchvision checkpoint or a keras.applications .h5 (converted as convert-weights does); or a published "
        f"name: {HF_PREFIX}timm/tf_efficientnet_b0.ns_jft_in1k (huggingface_hub's cache), "
        f"{KERAS_APPLICATIONS_PREFIX}EfficientNetB0 (Keras' weight cache). The classifier is new when the class "
        "count differs; every other tensor must load",
    )
    group.add_argument(
        "--init-format",
        choices=INIT_FORMATS,
        default="auto",
        help="what --init holds; auto: told by its suffix and tensor names",
    )
    group.add_argument(
        "--init-spec",
        metavar="SPEC",
        default=None,
        help="the spec model.py was generated from, when --init needs it (Keras, timm, torchvision or "
        "keras.applications files) and it is not at model.py's SPEC_PATH",
    )
    group.add_argument(
        "--init-model",
        metavar="NAME",
        default=None,
        help="with a timm/torchvision --init: the source model, as convert-weights --model",
    )
    group.add_argument(
        "--force",
        action="store_true",
        help="--init although the source's padding / batch-norm eps / normalization differ from the spec's",
    )
    group.add_argument(
        "--new-classifier", action="store_true", help="re-initialize the classifier even when its class count fits"
    )
    group.add_argument(
        "--freeze-epochs",
        type=int,
        default=0,
        metavar="E",
        help="train only the classifier for the first E epochs, then everything (frozen layers' batch norms in "
        "inference mode; --resume continues in the right phase)",
    )
    group.add_argument(
        "--unfreeze-head-conv",
        action="store_true",
        help="during --freeze-epochs, train the head conv (and pooled conv) too",
    )
    group.add_argument(
        "--freeze-stages",
        type=int,
        default=None,
        metavar="K",
        help="freeze the stem and the first K stages for the whole run (0: the stem only)",
    )
    group.add_argument(
        "--freeze-bn",
        action="store_true",
        help="every batch norm in inference mode with its scale and offset fixed (keras.io's advice for small data)",
    )
    group.add_argument(
        "--lr-pretrained",
        type=float,
        default=1.0,
        metavar="MULT",
        help="learning-rate multiplier of every layer but the classifier (e.g. 0.1: the new head learns 10x faster)",
    )


#: The fine-tuning flags' values when not given (a namespace built without them checks as these).
DEFAULTS: dict[str, Any] = {
    "init": None,
    "init_format": "auto",
    "init_spec": None,
    "init_model": None,
    "force": False,
    "new_classifier": False,
    "freeze_epochs": 0,
    "unfreeze_head_conv": False,
    "freeze_stages": None,
    "freeze_bn": False,
    "lr_pretrained": 1.0,
}


def check_finetune_args(args: argparse.Namespace) -> None:
    """Ranges and combinations of the fine-tuning flags (raises InitError)."""
    flags = argparse.Namespace(**{name: getattr(args, name, default) for name, default in DEFAULTS.items()})
    if flags.freeze_epochs < 0:
        raise InitError(f"--freeze-epochs must be at least 0, got {flags.freeze_epochs}")
    if flags.freeze_stages is not None and flags.freeze_stages < 0:
        raise InitError(f"--freeze-stages must be at least 0, got {flags.freeze_stages}")
    if not 0.0 <= flags.lr_pretrained < float("inf"):
        raise InitError(f"--lr-pretrained must be a finite number >= 0, got {flags.lr_pretrained}")
    if flags.unfreeze_head_conv and not flags.freeze_epochs:
        raise InitError("--unfreeze-head-conv goes with --freeze-epochs")
    if flags.init is None:
        for name in ("init_format", "init_spec", "init_model", "force", "new_classifier"):
            if getattr(flags, name) != DEFAULTS[name]:
                raise InitError(f"--{name.replace('_', '-')} goes with --init")


# freezing -----------------------------------------------------------------------------------------


def section(layer: str) -> str:
    """'stem', 'blocks.<stage>' or the layer's own name (head, pooled_conv, classifier): from a canonical
    (``blocks.3.1.depthwise.conv``) or a Keras flat name (``blocks_3_1_depthwise_conv``)."""
    parts = layer.replace("_", ".").split(".")
    if parts[0] == "blocks" and len(parts) > 1 and parts[1].isdigit():
        return f"blocks.{parts[1]}"
    if layer.startswith("pooled_conv"):
        return "pooled_conv"
    return parts[0]


@dataclass(frozen=True)
class Phase:
    """Which layers train at an epoch; ``frozen(layer)`` answers for a canonical or Keras layer name."""

    classifier_only: bool  # --freeze-epochs: the first epochs train the classifier (+ head conv)
    head_conv: bool  # ... and the head conv
    stages: int | None  # --freeze-stages: the stem and this many stages, the whole run
    batch_norm: bool  # --freeze-bn

    def frozen(self, layer: str, is_batch_norm: bool) -> bool:
        where = section(layer)
        if self.batch_norm and is_batch_norm:
            return True
        if self.stages is not None and (
            where == "stem" or (where.startswith("blocks.") and int(where.split(".")[1]) < self.stages)
        ):
            return True
        if self.classifier_only:
            if where == CLASSIFIER:
                return False
            return not (self.head_conv and where in HEAD_CONV)
        return False

    @property
    def freezes(self) -> bool:
        return self.classifier_only or self.stages is not None or self.batch_norm

    def describe(self) -> str:
        parts = []
        if self.classifier_only:
            parts.append("only the classifier" + (" and head conv" if self.head_conv else "") + " trains")
        if self.stages is not None:
            parts.append(f"stem and first {self.stages} stage(s) frozen")
        if self.batch_norm:
            parts.append("every batch norm frozen")
        return "; ".join(parts) or "everything trains"


def phase_at(args: argparse.Namespace, epoch: int) -> Phase:
    """The freezing in force during ``epoch`` (0-based): a function of the epoch, so --resume restores it."""
    return Phase(
        classifier_only=epoch < args.freeze_epochs,
        head_conv=bool(args.unfreeze_head_conv),
        stages=args.freeze_stages,
        batch_norm=bool(args.freeze_bn),
    )


def lr_scale(args: argparse.Namespace, layer: str) -> float:
    """--lr-pretrained for every layer but the classifier."""
    return 1.0 if section(layer) == CLASSIFIER else float(args.lr_pretrained)


# the spec -----------------------------------------------------------------------------------------

_REGISTERED: dict[str, ir.Model] = {}


def register_model(model: ir.Model) -> None:
    """``effspec train`` compiled the spec already: --init uses that model."""
    _REGISTERED[model.spec_sha256] = model


def spec_model(net: ModuleType, args: argparse.Namespace) -> ir.Model:
    """The IR of the spec ``net`` (a generated model.py) was generated from, checked by its hash: the one
    ``effspec train`` registered, --init-spec, model.py's SPEC_PATH (from the working directory or the
    folders above model.py) or the shipped spec of that name."""
    from effspec.emit.pipeline import build
    from effspec.support.errors import EffspecError
    from effspec.support.paths import shipped_spec

    sha = getattr(net, "SPEC_SHA256", None)
    if sha in _REGISTERED:
        return _REGISTERED[sha]
    candidates: list[Path] = []
    if args.init_spec:
        candidates.append(Path(args.init_spec))
    spec_path = getattr(net, "SPEC_PATH", None)
    if spec_path:
        candidates.append(Path(spec_path))
        here = Path(getattr(net, "__file__", "") or ".").resolve().parent
        candidates += [folder / spec_path for folder in here.parents]
    shipped = shipped_spec(getattr(net, "SPEC_NAME", "") or "")
    if shipped is not None:
        candidates.append(Path(shipped))
    tried = []
    for candidate in candidates:
        if not candidate.is_file():
            continue
        try:
            model = build(candidate).model
        except EffspecError as exc:
            if args.init_spec and candidate == Path(args.init_spec):
                raise InitError(f"--init-spec: {exc}") from None
            continue
        if model.spec_sha256 == sha:
            _REGISTERED[sha] = model
            return model
        tried.append(str(candidate))
    differing = f" ({', '.join(tried)} differ from it)" if tried else ""
    raise InitError(
        f"--init {args.init}: reading it needs the spec model.py was generated from (sha256 {str(sha)[:12]}...), "
        f"not found at SPEC_PATH {spec_path!r}{differing}: pass --init-spec SPEC"
    )


def with_classes(model: ir.Model, classes: int) -> ir.Model:
    """The same model with ``classes`` classifier outputs."""
    head = model.head
    classifier = dataclasses.replace(head.classifier, out_channels=classes)
    return dataclasses.replace(model, head=dataclasses.replace(head, classifier=classifier, num_classes=classes))


# reading ------------------------------------------------------------------------------------------


@dataclass
class Source:
    """A file as the canonical state (torch names and layouts)."""

    path: Path
    kind: str  # one of INIT_FORMATS but auto
    state: dict[str, np.ndarray]
    fresh: tuple[str, ...] = ()  # canonical layer names the file did not supply (the importer's fresh init)
    notes: tuple[str, ...] = ()


def detect_format(path: Path) -> str:
    """torch / keras / keras-applications / timm / torchvision, from the suffix and the tensor names."""
    if path.suffix == ".h5":
        return "keras" if path.name.endswith(".weights.h5") and _generated_keras(path) else "keras-applications"
    if path.is_dir() and (path / "checkpoint.json").is_file():
        return "keras"
    from effspec.weights.files import read_checkpoint

    tensors = read_checkpoint(path).tensors
    names = list(tensors)
    if "stem.conv.weight" in names:  # the canonical names (timm: conv_stem, torchvision: features.0.0)
        return "torch"
    if any(name.startswith("features.") for name in names):
        return "torchvision"
    return "timm"


def _generated_keras(path: Path) -> bool:
    """A Keras 3 weights file of a generated model, not of a keras.applications model: those keep
    their input Rescaling layer (and a legacy Keras 2 .h5 has no ``layers`` group)."""
    try:
        import h5py

        with h5py.File(path, "r") as handle:
            if "layers" not in handle:
                return False
            names = list(handle["layers"].keys())
    except (OSError, ValueError, KeyError, TypeError):
        return True  # the generated reader names the damage
    return not any(name.startswith("rescaling") for name in names)


def _keras_file_classes(path: Path) -> int | None:
    """The classifier width a generated Keras weights file holds (its only Dense kernel), if it says."""
    try:
        import h5py

        with h5py.File(path, "r") as handle:
            layers = handle.get("layers")
            if layers is None:
                return None
            shapes = [
                layers[name]["vars"]["0"].shape
                for name in layers
                if name.startswith("dense") and "vars" in layers[name] and "0" in layers[name]["vars"]
            ]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    kernels = [shape for shape in shapes if len(shape) == 2]
    return int(kernels[0][1]) if len(kernels) == 1 else None


def _keras_checkpoint_weights(directory: Path) -> Path:
    """The weights file a Keras trainer checkpoint directory names."""
    import json

    record = json.loads((directory / "checkpoint.json").read_text(encoding="utf-8"))
    name = record.get("weights") if isinstance(record, dict) else None
    if not isinstance(name, str) or "/" in name or not (directory / name).is_file():
        raise InitError(f"--init {directory}: checkpoint.json names no weights file in the folder")
    return directory / name


def read_source(args: argparse.Namespace, net: ModuleType, backend: str) -> Source:
    """--init as the canonical state; every failure an InitError naming the file."""
    from effspec.support.errors import EffspecError

    path, implied = resolve_name(args.init)
    kind = args.init_format if args.init_format != "auto" else implied
    try:
        if not path.exists():
            raise InitError(f"--init {args.init}: no such file")
        kind = kind or detect_format(path)
        if kind == "torch":
            return _torch_source(path)
        model = spec_model(net, args)
        if kind == "keras":
            return _keras_source(model, path)
        if kind == "keras-applications":
            return _application_source(model, path, args)
        return _structural_source(model, path, kind, args)
    except EffspecError as exc:  # ConversionError, CheckFailed: the importers' one-line messages
        text = str(exc)
        raise InitError(f"--init: {text}" if text.startswith(str(path)) else f"--init {args.init}: {text}") from None


def _torch_source(path: Path) -> Source:
    from effspec.weights.files import read_checkpoint

    checkpoint = read_checkpoint(path)
    notes = (f"weights from the checkpoint's {checkpoint.key!r} entry",) if checkpoint.key else ()
    return Source(path, "torch", dict(checkpoint.tensors), notes=notes)


def _keras_source(model: ir.Model, path: Path) -> Source:
    from effspec.weights.convert import keras_to_torch
    from effspec.weights.files import load_keras_file
    from effspec.weights.generated import load_model_module
    from effspec.weights.manifest import build_manifest

    if path.is_dir():
        raise InitError(
            f"--init {path}: a Keras trainer checkpoint holds optimizer state too; use the run's model.weights.h5"
        )
    classes = _keras_file_classes(path) or model.head.num_classes
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    built = load_model_module(model, "keras").build_model(num_classes=classes, dropout=0.0, drop_path_rate=0.0)
    layers = load_keras_file(built, path)
    return Source(path, "keras", keras_to_torch(build_manifest(with_classes(model, classes)), layers))


def _application_source(model: ir.Model, path: Path, args: argparse.Namespace) -> Source:
    from effspec.weights.importer import import_application_state

    state, notes, fresh = import_application_state(model, path, None)
    return Source(path, "keras-applications", state, fresh, notes)


def _structural_source(model: ir.Model, path: Path, kind: str, args: argparse.Namespace) -> Source:
    from effspec.weights.importer import STRUCTURAL_SOURCES, Options, structural_state
    from effspec.weights.manifest import build_manifest

    options = Options(model=args.init_model, force=args.force)
    state, notes, fresh, _ = structural_state(
        model, build_manifest(model), STRUCTURAL_SOURCES[kind], path, options, "torch"
    )
    return Source(path, kind, state, fresh, notes)


# the plan -----------------------------------------------------------------------------------------


@dataclass
class Plan:
    """What --init puts where: the canonical arrays to load, and what is new or dropped."""

    assign: dict[str, np.ndarray]  # canonical name -> array, every entry but the new ones
    new: list[str]  # canonical names left to the model's fresh initialization
    dropped: list[str]  # file entries not loaded
    line: str  # the one line the run prints


def plan_init(source: Source, expected: Mapping[str, tuple[int, ...]], classes: int, new_classifier: bool) -> Plan:
    """Match the file's tensors with the model's (canonical names -> shapes); only the classifier may
    differ (then it is new); anything else that is missing, extra or mis-shaped is an InitError."""
    import numpy as np

    state = source.state
    fresh_layers = set(source.fresh)
    is_classifier = {name: section(name.rpartition(".")[0]) == CLASSIFIER for name in expected}
    missing, wrong, new = [], [], []
    assign: dict[str, np.ndarray] = {}
    for name, shape in expected.items():
        array = state.get(name)
        layer = name.rpartition(".")[0]
        if is_classifier[name]:
            if new_classifier or layer in fresh_layers or array is None or tuple(array.shape) != tuple(shape):
                new.append(name)
                continue
        elif array is None:
            if name.endswith("num_batches_tracked"):
                assign[name] = np.zeros((), dtype=np.int64)  # a counter some files drop
                continue
            missing.append(name)
            continue
        elif tuple(array.shape) != tuple(shape):
            wrong.append(f"{name} {_shape(array.shape)} (expected {_shape(shape)})")
            continue
        assign[name] = array
    extra = [name for name in state if name not in expected]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {_names(missing)}")
    if wrong:
        problems.append(f"wrong shape {len(wrong)}: {_names(wrong)}")
    if extra:
        problems.append(f"unexpected {len(extra)}: {_names(extra)}")
    if problems:
        raise InitError(
            f"--init {source.path}: does not fit this model (nothing loaded; only the classifier may differ): "
            + "; ".join(problems)
        )
    # a classifier the importer made up (the file had none, or the spec's class count) is not dropped
    dropped = [name for name in state if is_classifier.get(name) and name in new and CLASSIFIER not in fresh_layers]
    file_classes = state.get(f"{CLASSIFIER}.weight")
    count = len(assign)
    parts = [f"init: loaded {count} tensors from {source.path} ({source.kind})"]
    if new:
        why = (
            "--new-classifier"
            if new_classifier
            else "the file has none"
            if file_classes is None or CLASSIFIER in fresh_layers
            else f"the file's has {file_classes.shape[0]} classes"
        )
        parts.append(f"new: {', '.join(new)} ({classes} classes; {why})")
    else:
        parts.append("new: none")
    parts.append(f"dropped: {', '.join(dropped) if dropped else 'none'}")
    return Plan(assign, new, dropped, "; ".join(parts))


def _shape(shape: Any) -> str:
    return "(" + ", ".join(str(int(d)) for d in shape) + ")"


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f" (and {len(names) - _LISTED} more)" if len(names) > _LISTED else "")


def prepare(
    args: argparse.Namespace, net: ModuleType, backend: str, expected: Mapping[str, tuple[int, ...]], verbose: bool
) -> Plan:
    """Read --init and plan the load into a model whose canonical tensors are ``expected``; prints the
    importers' notes and the one-line summary (stderr) when ``verbose`` (the main process)."""
    source = read_source(args, net, backend)
    plan = plan_init(source, expected, args.num_classes, args.new_classifier)
    if verbose:
        for note in source.notes:
            print(f"note: {note}", file=sys.stderr, flush=True)
        print(plan.line, file=sys.stderr, flush=True)
    return plan


def keras_manifest(args: argparse.Namespace, net: ModuleType) -> Manifest:
    """The weight manifest of the Keras trainer's model (the run's class count)."""
    from effspec.weights.manifest import build_manifest

    return build_manifest(with_classes(spec_model(net, args), args.num_classes))
