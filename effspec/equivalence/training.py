"""`effspec check SPEC --train-steps K`: do the two trainers train the same model the same way?

Both generated models start from the same seeded weights (torch's, converted through the manifest),
and K steps of each trainer's own step run on the same seeded batches: the torch trainer's
``Trainer.step`` (optimizer, LambdaLR schedule, label-smoothed loss, EMA) and the Keras trainer's
compiled model (``compile_model``: the same optimizer classes, schedule, loss and the EMA update its
callback runs), with the spec's recipe: optimizer, warmup then exponential or cosine decay, weight
decay, label smoothing, EMA of weights and batch-norm statistics, batch-norm momentum, and the spec's
dropout and drop-path driven by the same masks in every run (``SharedMasks``: each framework's own
draws could not agree). The torch trainer in float64 from the same weights is the reference; the
torch trainer runs in float32 twice, NCHW and channels_last, and the larger of their errors measures
float32's own rounding (the budget's base).

After every step the check compares the loss, the learning rate, every weight, every optimizer slot,
the batch-norm running statistics and the EMA's weights and statistics, per section of the network
(stem, each stage, head), each against the budget of ``budget_at`` (see docs/equivalence.md): the
first quantity and step over budget are reported.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from effspec.core import ir
from effspec.emit.pipeline import build
from effspec.equivalence import keras_side, torch_side
from effspec.equivalence.budget import BUDGET_MULTIPLE, EPS32, FLOOR_ULPS, Row
from effspec.equivalence.check import CALIBRATION_BATCH, seeded_batch
from effspec.support.errors import UsageError
from effspec.weights.convert import (
    from_keras_array,
    keras_layer_weights,
    keras_to_torch,
    set_keras_weights,
    torch_to_keras,
)
from effspec.weights.generated import load_model_module
from effspec.weights.manifest import Entry, Manifest, build_manifest, sections

DEFAULT_STEPS = 10
DEFAULT_RESOLUTION = 64  # B0 ends at 2x2: batch-norm statistics over 4 x 4 values, well conditioned
DEFAULT_BATCH = 4
#: torch slot -> the Keras optimizer's list of the same slot, per optimizer.
SLOTS: dict[str, tuple[tuple[str, str], ...]] = {
    "rmsprop": (("mean_square", "_velocities"), ("momentum_buffer", "_momentums")),
    "sgd": (("momentum_buffer", "momentums"),),
    "adamw": (("exp_avg", "_momentums"), ("exp_avg_sq", "_velocities")),
}
STATISTICS = ("bn_mean", "bn_variance")


@dataclass(frozen=True)
class TrainSettings:
    steps: int = DEFAULT_STEPS
    optimizer: str | None = None  # None: the spec's
    schedule: str | None = None  # None: the spec's
    resolution: int = DEFAULT_RESOLUTION
    batch: int = DEFAULT_BATCH
    seed: int = 0
    lr: float | None = None  # peak rate; None: the recipe's, lr_per_256 x batch / 256


@dataclass(frozen=True)
class Geometry:
    """The schedule squeezed into K steps, so that warmup and decay both happen."""

    peak: float
    warmup_steps: int
    decay_steps: int
    total_steps: int

    @classmethod
    def for_steps(cls, steps: int, peak: float) -> Geometry:
        return cls(peak=peak, warmup_steps=max(1, steps // 4), decay_steps=max(1, steps // 5), total_steps=steps)


@dataclass(frozen=True)
class StepRow:
    step: int  # 1-based: the state after this many steps
    quantity: str  # "loss", "lr", "weights", "optimizer mean_square", "ema bn_variance", ...
    section: str  # "stem", "blocks.3", "head", or "" for the scalars
    row: Row  # errors of torch32 and Keras against float64; its budget is the step's

    @property
    def ratio(self) -> float:
        if self.row.budget > 0:
            return self.row.keras_error / self.row.budget
        return 0.0 if self.row.keras_error == 0 else float("inf")


@dataclass(frozen=True)
class TrainCheckResult:
    spec: str
    spec_name: str
    resolution: int
    batch: int
    seed: int
    steps: int
    recipe: str  # one line: what ran
    rows: tuple[StepRow, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return all(row.row.ok for row in self.rows)

    @property
    def first_failure(self) -> StepRow | None:
        return next((row for row in self.rows if not row.row.ok), None)


def budget_at(step: int, worst_torch_error: float, scale: float) -> float:
    """max(16 x the largest float32-torch error of this quantity so far, 4 x step float32 ulps of scale).

    The first term grows as float32's own error grows through the training dynamics (measured, not
    assumed); the running maximum keeps one lucky step from tightening it. The floor lets every step
    add up to 4 ulps of rounding, accumulating linearly (the worst case of independent roundings)."""
    return max(BUDGET_MULTIPLE * worst_torch_error, FLOOR_ULPS * step * EPS32 * scale)


RUNS = ("ref", "torch", "torch_cl", "keras")  # the order Budgets.add takes them in


def _max_abs(array: np.ndarray) -> float:
    return float(np.max(np.abs(array))) if array.size else 0.0


class Budgets:
    """Rows with the growing budget: remembers each quantity's largest torch32 error so far."""

    def __init__(self) -> None:
        self.worst: dict[tuple[str, str], float] = {}
        self.rows: list[StepRow] = []

    def add(self, step: int, quantity: str, section: str, *runs: Any) -> None:
        """One comparison of the values of RUNS: float64 torch, the NCHW and the channels_last float32
        torch runs (the torch32 error is the larger of the two) and Keras."""
        ref, torch32, torch32_cl, keras32 = (np.asarray(a, dtype=np.float64).ravel() for a in runs)
        torch_error = max(_max_abs(torch32 - ref), _max_abs(torch32_cl - ref))
        key = (quantity, section)
        worst = max(self.worst.get(key, 0.0), torch_error)
        self.worst[key] = worst
        scale = _max_abs(ref)
        row = Row(
            name=f"{quantity} {section}".strip(),
            shape=f"{ref.size} values",
            scale=scale,
            torch_error=torch_error,
            keras_error=_max_abs(keras32 - ref),
            keras_vs_torch=_max_abs(keras32 - torch32),
            budget=budget_at(step, worst, scale),
        )
        self.rows.append(StepRow(step, quantity, section, row))


class SharedMasks:
    """Dropout and drop-path with the same masks in all three runs.

    The Keras model's Dropout layers are the ones that act (drop-path only on residual blocks, the
    head's dropout); each pairs with the torch module of the same canonical name, whose rate must be
    the same. Per step one seeded numpy draw per layer (kept with probability 1 - rate: per sample for
    drop-path, per sample and feature for dropout) is what every run multiplies by, / (1 - rate)."""

    def __init__(self, torch_module: Any, network: Any, batch: int, seed: int) -> None:
        defaults = dict(torch_module.build_model().named_modules())
        self.rates: dict[str, float] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.keras_layers: dict[str, Any] = {}
        for layer in network.layers:
            if type(layer).__name__ != "Dropout" or layer.rate <= 0:
                continue
            block = layer.name.removesuffix("_drop_path").replace("_", ".")
            name = "dropout" if layer.name == "head_dropout" else f"{block}.drop_path"
            torch_rate = getattr(defaults.get(name), "rate", getattr(defaults.get(name), "p", None))
            if torch_rate is None or abs(torch_rate - layer.rate) > 1e-12:
                raise UsageError(f"Keras' {layer.name} drops with rate {layer.rate}, torch's {name} with {torch_rate}")
            self.rates[name] = float(layer.rate)
            features = int(layer.input.shape[-1])
            self.shapes[name] = (batch, 1, 1, 1) if layer.noise_shape else (batch, features)
            self.keras_layers[name] = layer
        self.seed = seed
        self.current: dict[str, np.ndarray] = {}

    def draw(self, step: int) -> None:
        rng = np.random.default_rng([self.seed, 9, step])
        self.current = {
            name: (rng.random(self.shapes[name]) >= self.rates[name]).astype(np.float64) for name in sorted(self.rates)
        }

    def drive_torch(self, net: Any) -> None:
        import torch

        for name, module in net.named_modules():
            if name in self.rates:

                def forward(x: Any, name: str = name, module: Any = module) -> Any:
                    if not module.training:
                        return x
                    mask = torch.from_numpy(self.current[name]).to(x.dtype)
                    return x * mask / (1.0 - self.rates[name])

                module.forward = forward

    def drive_keras(self) -> None:
        import keras

        self.variables: dict[str, Any] = {}
        for name, layer in self.keras_layers.items():
            variable = keras.Variable(
                np.ones(self.shapes[name], np.float32), trainable=False, name=f"mask_{layer.name}"
            )
            self.variables[name] = variable

            def call(inputs: Any, training: Any = None, variable: Any = variable, keep: float = 1 - layer.rate) -> Any:
                return inputs * variable / keep if training else inputs

            layer.call = call

    def assign_keras(self) -> None:
        for name, variable in self.variables.items():
            variable.assign(self.current[name].astype(np.float32))

    def describe(self) -> str:
        if not self.rates:
            return "no dropout or drop-path in this spec"
        path = [rate for name, rate in self.rates.items() if name != "dropout"]
        parts = [f"dropout {self.rates['dropout']:g}"] if "dropout" in self.rates else []
        if path:
            parts.append(f"drop-path on {len(path)} blocks ({min(path):.3g}..{max(path):.3g})")
        return " and ".join(parts) + " driven by the same masks in every run"


def recipe_args(model: ir.Model, settings: TrainSettings, torch_module: Any) -> argparse.Namespace:
    """The torch trainer's flags at their defaults (the spec's recipe), with the check's overrides."""
    from effspec.backends.recipe import recipe_from_model
    from effspec.backends.torch.runtime.args import parse_args

    argv = ["--amp", "none", "--seed", str(settings.seed), "--num-classes", str(model.head.num_classes)]
    if settings.optimizer:
        argv += ["--optimizer", settings.optimizer]
    if settings.schedule:
        argv += ["--schedule", settings.schedule]
    args = parse_args(recipe_from_model(model), torch_module, argv)
    return args


class TorchRun:
    """The torch trainer's step on one model (float32, or the float64 reference)."""

    def __init__(self, net: Any, args: argparse.Namespace, geometry: Geometry) -> None:
        import torch

        from effspec.backends.torch.runtime.distributed import Runtime
        from effspec.backends.torch.runtime.loop import Trainer
        from effspec.backends.torch.runtime.optim import LrSchedule, ModelEma, build_optimizer

        self.net = net
        schedule = LrSchedule(
            base_lr=geometry.peak,
            kind=args.schedule,
            total_steps=geometry.total_steps,
            warmup_steps=geometry.warmup_steps,
            decay_rate=args.decay_rate,
            decay_steps=geometry.decay_steps,
        )
        optimizer = build_optimizer(net, args, schedule.base_lr)
        self.trainer = Trainer(
            args=args,
            runtime=Runtime(torch.device("cpu")),
            model=net,
            train_module=net,
            optimizer=optimizer,
            schedule=schedule,
            scheduler=schedule.scheduler(optimizer),
            ema=ModelEma(net, args.ema_decay) if args.ema_decay > 0 else None,
            scaler=None,
        )
        self.dtype = next(net.parameters()).dtype

    def step(self, images: np.ndarray, labels: np.ndarray, stage: Any, global_step: int) -> tuple[float, float]:
        import torch

        self.net.train()
        loss, lr = self.trainer.step(
            torch.from_numpy(images).to(self.dtype), torch.from_numpy(labels), stage, global_step
        )
        return float(loss.detach()), lr

    def state(self) -> dict[str, np.ndarray]:
        return torch_side.state_arrays(self.net)

    def slots(self, slot: str) -> dict[str, np.ndarray]:
        optimizer = self.trainer.optimizer
        return {
            name: optimizer.state[parameter][slot].detach().numpy().copy()
            for name, parameter in self.net.named_parameters()
            if parameter in optimizer.state
        }

    def ema(self) -> dict[str, np.ndarray] | None:
        return None if self.trainer.ema is None else torch_side.state_arrays(self.trainer.ema.module)


class KerasRun:
    """The Keras trainer's compiled model: train_on_batch (fit's train function), then the EMA update
    its WeightAverageCallback runs."""

    def __init__(
        self,
        module: Any,
        manifest: Manifest,
        state: Mapping[str, np.ndarray],
        model: ir.Model,
        settings: TrainSettings,
        geometry: Geometry,
    ) -> None:
        from effspec.backends.keras.runtime.args import parse_args
        from effspec.backends.keras.runtime.loop import compile_model
        from effspec.backends.keras.runtime.optim import WarmupThenDecay
        from effspec.backends.recipe import recipe_from_model

        argv = ["--seed", str(settings.seed), "--num-classes", str(model.head.num_classes)]
        if settings.optimizer:
            argv += ["--optimizer", settings.optimizer]
        if settings.schedule:
            argv += ["--schedule", settings.schedule]
        self.args = parse_args(recipe_from_model(model), argv)
        self.manifest = manifest
        self.network = module.build_model()  # the spec's dropout and drop-path: SharedMasks drives them
        set_keras_weights(manifest, self.network, torch_to_keras(manifest, state))
        self.schedule = WarmupThenDecay(
            peak=geometry.peak,
            warmup_steps=geometry.warmup_steps,
            decay_steps=geometry.decay_steps,
            decay_rate=self.args.decay_rate,
            total_steps=geometry.total_steps,
            kind=self.args.schedule,
        )
        self.model = compile_model(self.args, self.network, self.schedule)
        self.optimizer = self.model.optimizer
        layers = {layer.name: layer for layer in self.network.layers if layer.weights}
        self.variables = {
            entry.name: layers[entry.keras.layer].weights[entry.keras.index] for entry in manifest if entry.keras
        }

    def step(self, images: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
        import keras

        lr = float(keras.ops.convert_to_numpy(self.schedule(self.optimizer.iterations)))
        onehot = np.eye(self.args.num_classes, dtype=np.float32)[labels]
        logs = self.model.train_on_batch(keras_side.nhwc(images.astype(np.float32)), onehot, return_dict=True)
        if self.args.ema_decay > 0:
            self.optimizer.update_average()
        return float(logs["loss"]), lr

    def state(self) -> dict[str, np.ndarray]:
        return keras_to_torch(self.manifest, keras_layer_weights(self.network))

    def _canonical(self, variables: dict[str, Any]) -> dict[str, np.ndarray]:
        import keras

        entries = {entry.name: entry for entry in self.manifest}
        return {
            name: from_keras_array(entries[name], keras.ops.convert_to_numpy(value))
            for name, value in variables.items()
        }

    def slots(self, attribute: str) -> dict[str, np.ndarray]:
        values = getattr(self.optimizer, attribute)
        trainable = {name: v for name, v in self.variables.items() if v.trainable}
        return self._canonical({name: values[self.optimizer._get_variable_index(v)] for name, v in trainable.items()})

    def ema(self) -> dict[str, np.ndarray] | None:
        if self.args.ema_decay <= 0:
            return None
        averages = {id(v): a for v, a in zip(self.optimizer.averaged, self.optimizer.averages, strict=True)}
        return self._canonical({name: averages[id(v)] for name, v in self.variables.items() if id(v) in averages})


def _groups(model: ir.Model, manifest: Manifest) -> list[tuple[str, list[Entry]]]:
    by_section = {section: [e for e in manifest if e.section == section] for section, _ in sections(model)}
    return list(by_section.items())


def _concat(arrays: Mapping[str, np.ndarray], entries: list[Entry]) -> np.ndarray:
    return np.concatenate([np.asarray(arrays[e.name], np.float64).ravel() for e in entries])


def run_train_check(spec: str | Path, settings: TrainSettings) -> TrainCheckResult:
    from effspec.backends.recipe import ProgressiveStage

    model = build(spec).model
    if settings.steps < 1 or settings.batch < 2 or settings.resolution < 8:
        raise UsageError(
            f"--train-steps needs at least 1 step, a batch of at least 2 and a resolution of at least 8, got "
            f"{settings.steps}, {settings.batch} and {settings.resolution}"
        )
    manifest = build_manifest(model)
    torch_module = load_model_module(model, "torch")
    keras_module = load_model_module(model, "keras")
    args = recipe_args(model, settings, torch_module)
    peak = settings.lr if settings.lr is not None else args.lr_per_256 * settings.batch / 256
    geometry = Geometry.for_steps(settings.steps, peak)
    num_classes = model.head.num_classes
    resolution = settings.resolution

    batches = [
        seeded_batch(settings.seed + 100 + step, settings.batch, resolution, num_classes)
        for step in range(settings.steps)
    ]
    calibration, _ = seeded_batch(settings.seed + 1, CALIBRATION_BATCH, resolution, 1)
    net = torch_side.build_seeded(torch_module, settings.seed, np.concatenate([calibration, batches[0][0]]))
    reference = torch_side.float64_twin(net)
    before = torch_side.state_arrays(net)
    counts = torch_side.batch_norm_counts(net, batches[0][0])  # a clear error where n = 1

    # Two float32 torch runs sample float32's rounding: the same net in NCHW and in channels_last
    # (other conv and batch-norm kernels, another summation order). One sample alone can land lucky
    # close to float64 at a step (a scalar such as the loss especially) and shrink the budget below
    # what float32 rounding really does.
    channels_last = torch_side.channels_last_twin(net)
    runs = {
        "ref": TorchRun(reference, args, geometry),
        "torch": TorchRun(net, args, geometry),
        "torch_cl": TorchRun(channels_last, args, geometry),
    }
    keras_run = KerasRun(keras_module, manifest, before, model, settings, geometry)
    masks = SharedMasks(torch_module, keras_run.network, settings.batch, settings.seed)
    masks.drive_torch(net)
    masks.drive_torch(channels_last)
    masks.drive_torch(reference)
    masks.drive_keras()
    stage = ProgressiveStage(image_size=resolution, randaugment_magnitude=0.0, mixup_alpha=0.0, dropout=0.0)
    groups = _groups(model, manifest)
    slots = SLOTS[args.optimizer]
    budgets = Budgets()

    for step, (images, labels) in enumerate(batches, start=1):
        masks.draw(step)
        masks.assign_keras()
        losses, rates, states, optimizer_states, emas = {}, {}, {}, {}, {}
        for name, run in runs.items():
            losses[name], rates[name] = run.step(images, labels, stage, step - 1)
            states[name] = run.state()
            optimizer_states[name] = {slot: run.slots(slot) for slot, _ in slots}
            emas[name] = run.ema()
        losses["keras"], rates["keras"] = keras_run.step(images, labels)
        states["keras"] = keras_run.state()
        optimizer_states["keras"] = {slot: keras_run.slots(attribute) for slot, attribute in slots}
        emas["keras"] = keras_run.ema()

        budgets.add(step, "loss", "", *(losses[k] for k in RUNS))
        budgets.add(step, "lr", "", *(rates[k] for k in RUNS))
        for section, entries in groups:
            trainable = [e for e in entries if e.trainable]
            statistics = {kind: [e for e in entries if e.kind == kind] for kind in STATISTICS}
            # (quantity, values per run, entries, compared as the change since step 0?)
            compared: list[tuple[str, dict[str, Any], list[Entry], bool]] = [("weights", states, trainable, True)]
            compared += [(kind.replace("_", " "), states, group, True) for kind, group in statistics.items()]
            compared += [
                (f"optimizer {slot}", {k: v[slot] for k, v in optimizer_states.items()}, trainable, False)
                for slot, _ in slots
            ]
            if emas["ref"] is not None:
                compared += [("ema weights", emas, trainable, True)]
                compared += [(f"ema {kind.replace('_', ' ')}", emas, group, True) for kind, group in statistics.items()]
            for quantity, values, group, change in compared:
                if group:
                    start = _concat(before, group) if change else 0.0
                    arrays = [_concat(values[k], group) - start for k in RUNS]
                    budgets.add(step, quantity, section, *arrays)

    recipe = (
        f"{args.optimizer}, peak lr {geometry.peak:g}, warmup {geometry.warmup_steps} steps then "
        + (
            f"exponential x{args.decay_rate:g} every {geometry.decay_steps} steps"
            if args.schedule == "exponential"
            else f"cosine to 0 at step {geometry.total_steps}"
        )
        + f", weight decay {args.weight_decay:g}, label smoothing {args.label_smoothing:g}, "
        f"EMA {args.ema_decay:g}, BN decay {model.batch_norm.momentum:g}; {masks.describe()}"
    )
    notes = (
        "rows: loss and lr per step; per section, the change since step 0 of the weights, batch-norm statistics "
        "and EMA, and the optimizer slots",
        f"budget at step k = max({BUDGET_MULTIPLE} x largest torch32 error so far, "
        f"{FLOOR_ULPS} k float32 ulps of scale); torch32: the larger error of float32 torch in NCHW and in "
        "channels_last",
        "loss: the label-smoothed cross-entropy, as both trainers report it (weight decay is in the gradient)",
        "batch-norm statistics compared as they are: both move the running variance with the unbiased batch "
        f"variance (n = batch x H x W per batch norm, {min(counts.values())}..{max(counts.values())})",
    )
    return TrainCheckResult(
        spec=str(spec),
        spec_name=model.name,
        resolution=resolution,
        batch=settings.batch,
        seed=settings.seed,
        steps=settings.steps,
        recipe=recipe,
        rows=tuple(budgets.rows),
        notes=notes,
    )


def summary(result: TrainCheckResult) -> list[tuple[str, StepRow]]:
    """Per quantity, its worst row (largest error / budget) over sections and steps."""
    worst: dict[str, StepRow] = {}
    for row in result.rows:
        if row.quantity not in worst or row.ratio > worst[row.quantity].ratio:
            worst[row.quantity] = row
    return list(worst.items())


def table(result: TrainCheckResult) -> str:
    lines = [
        f"{result.spec}: {result.steps} training steps at {result.resolution}x{result.resolution}, "
        f"batch {result.batch}, seed {result.seed}",
        result.recipe,
        "",
    ]
    columns = ("quantity", "worst at", "scale", "torch32 err", "keras err", "budget", "err/budget", "")
    body = [
        (
            quantity,
            f"step {row.step} {row.section}".rstrip(),
            f"{row.row.scale:.2e}",
            f"{row.row.torch_error:.2e}",
            f"{row.row.keras_error:.2e}",
            f"{row.row.budget:.2e}",
            f"{row.ratio:.3f}",
            "ok" if all(r.row.ok for r in result.rows if r.quantity == quantity) else "OVER BUDGET",
        )
        for quantity, row in summary(result)
    ]
    widths = [max(len(line[i]) for line in (columns, *body)) for i in range(len(columns))]
    for line in (columns, *body):
        cells = [
            cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ]
        cells[-1] = line[-1]
        lines.append("  ".join(cells).rstrip())
    lines += ["", *result.notes]
    first = result.first_failure
    if first is None:
        lines.append(f"{result.spec_name}: all {len(result.rows)} comparisons within budget over {result.steps} steps")
    else:
        lines.append(
            f"{result.spec_name}: first over budget: {first.row.name} at step {first.step} "
            f"(keras err {first.row.keras_error:.2e} > budget {first.row.budget:.2e}; torch32 err "
            f"{first.row.torch_error:.2e})"
        )
    return "\n".join(lines)


def as_json(result: TrainCheckResult) -> dict[str, Any]:
    first = result.first_failure
    return {
        "spec": result.spec,
        "spec_name": result.spec_name,
        "mode": "train-steps",
        "resolution": result.resolution,
        "batch": result.batch,
        "seed": result.seed,
        "steps": result.steps,
        "recipe": result.recipe,
        "budget_multiple": BUDGET_MULTIPLE,
        "floor_ulps": FLOOR_ULPS,
        "ok": result.ok,
        "first_failure": None if first is None else {"step": first.step, "name": first.row.name},
        "notes": list(result.notes),
        "rows": [
            {
                "step": row.step,
                "quantity": row.quantity,
                "section": row.section,
                "scale": row.row.scale,
                "torch_error": row.row.torch_error,
                "keras_error": row.row.keras_error,
                "keras_vs_torch": row.row.keras_vs_torch,
                "budget": row.row.budget,
                "ok": row.row.ok,
            }
            for row in result.rows
        ],
    }
