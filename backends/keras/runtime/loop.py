"""The Keras training loop: fit() once per epoch (or part of one), so that progressive stages,
mid-epoch checkpoints and exact resumption fit Keras' own loop."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from types import ModuleType
from typing import Any

import keras

from effspec.support.errors import TrainingError

from ...recipe import ProgressiveStage, Recipe
from ...runtime_args import check_numbers, stage_index, training_stages
from ...runtime_shared import check_model, prepare_output, run_summary
from .args import parse_args
from .callbacks import Callbacks, head_dropout
from .checkpoint import Checkpoint, resume_directory, save_weights, write_json
from .data import open_data
from .distribution import (
    is_chief,
    lost_worker,
    make_strategy,
    precision_policy,
    sync_batch_norm,
    synchronize_batch_norm,
)
from .finetune import Freezer, initialize
from .optim import WarmupThenDecay, make_optimizer


def apply_stage(model: keras.Model, stage: ProgressiveStage) -> None:
    """Set the stage's dropout; the train step is traced again to see the new rate."""
    dropout = head_dropout(model)
    if dropout is not None and dropout.rate != stage.dropout:
        dropout.rate = stage.dropout
        model.make_train_function(force=True)


def with_float32_logits(network: keras.Model) -> keras.Model:
    """The network with float32 logits, as the loss and metrics of a mixed-precision model need:
    the same layers and weights, plus one weightless cast."""
    logits = keras.layers.Activation("linear", dtype="float32", name="logits_float32")
    return keras.Model(network.input, logits(network.output), name=network.name)


def compile_model(args: argparse.Namespace, network: keras.Model, schedule: WarmupThenDecay) -> keras.Model:
    """The network with float32 logits, compiled with the recipe's optimizer (built, before a
    restore), label-smoothed cross-entropy and accuracy metrics: what fit() and `effspec check
    --train-steps` step."""
    model = with_float32_logits(network)
    optimizer = make_optimizer(args, schedule, model)
    metrics: list[Any] = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    if args.num_classes > 5:
        metrics.append(keras.metrics.TopKCategoricalAccuracy(5, name="top5"))
    loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=args.label_smoothing)
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
    model.optimizer.build(model.trainable_variables)
    return model


def export_final_weights(args: argparse.Namespace, net: ModuleType, model: keras.Model, path: str) -> None:
    """The model's weights alone (no optimizer state): the weight average when there is one."""
    if args.ema_decay > 0:
        model.optimizer.swap_average()
    export = net.build_model(num_classes=args.num_classes, dropout=args.dropout, drop_path_rate=args.drop_path_rate)
    export.set_weights(model.get_weights())
    save_weights(export, path)  # atomic (effspec.support.output)


def remat_scope(args: argparse.Namespace) -> Any:
    """--grad-checkpointing: layers built in the scope recompute their activation function in the
    backward pass. Keras' "full" mode (whole layers, the torch trainer's per-stage recomputation)
    fails under TensorFlow's graph mode: its tf.custom_gradient rejects the layers' keyword
    arguments (training=), so only activations are recomputed here."""
    return keras.RematScope(mode="activations") if args.grad_checkpointing else nullcontext()


def train(args: argparse.Namespace, recipe: Recipe, net: ModuleType) -> dict[str, Any]:
    check_numbers(args, recipe)
    check_model(recipe, net)
    output = args.output.rstrip("/")
    if "://" not in output:  # locked: a second trainer on this --output stops here, naming this one
        prepare_output(
            output,
            f"Keras train.py of {recipe.spec_name}",
            fresh=lambda: resume_directory(args, f"{output}/checkpoint") is None,
            resume=args.resume is not None,
        )
    strategy, kind = make_strategy(args)  # first: logical devices must precede any op
    keras.utils.set_random_seed(args.seed)
    keras.mixed_precision.set_dtype_policy(precision_policy(args, kind))
    stages = training_stages(args, recipe)
    data = open_data(args, net, stages, kind == "tpu")
    steps_per_epoch = data.steps_per_epoch
    total_steps = args.epochs * steps_per_epoch
    last_step = total_steps if args.max_steps is None else min(total_steps, args.max_steps)

    source = resume_directory(args, f"{output}/checkpoint")
    with strategy.scope():
        with remat_scope(args):
            dropout = max(stage.dropout for stage in stages)  # each stage then sets its own
            network = net.build_model(num_classes=args.num_classes, dropout=dropout, drop_path_rate=args.drop_path_rate)
        if args.init is not None and source is None:  # a resumed run has its weights
            initialize(network, args, net, is_chief(strategy))
        if sync_batch_norm(args, strategy):
            synchronize_batch_norm(network)
        schedule = WarmupThenDecay(
            peak=args.lr_per_256 * args.batch_size / 256,
            warmup_steps=int(args.warmup_epochs * steps_per_epoch),
            decay_steps=max(1, int(args.decay_epochs * steps_per_epoch)),
            decay_rate=args.decay_rate,
            total_steps=total_steps,
            kind=args.schedule,
        )
        model = compile_model(args, network, schedule)

    identity = {
        "spec_sha256": recipe.spec_sha256,
        "num_classes": args.num_classes,
        "batch_size": args.batch_size,
        "steps_per_epoch": steps_per_epoch,
        "optimizer": args.optimizer,
        "ema": args.ema_decay > 0,
    }
    checkpoint = Checkpoint(f"{output}/checkpoint", model, identity, writer=is_chief(strategy))
    step = checkpoint.restore(source) if source else 0
    checkpoint.remove_temporaries()
    callbacks = Callbacks(args, output, checkpoint, schedule, model)

    current = None
    freezer = Freezer(model, network, args)
    for epoch in range(step // steps_per_epoch, args.epochs):
        if step >= last_step:
            break
        freezer.apply(epoch)
        index = stage_index(epoch, args.epochs, len(stages))
        if index != current:
            current = index
            apply_stage(model, stages[index])
        skip = step - epoch * steps_per_epoch  # batches this epoch already ran
        steps = min(steps_per_epoch - skip, last_step - step)
        dataset = data.train(epoch, stages[index], skip, steps)
        callbacks.begin(epoch, index, stages[index], step, dataset)
        model.fit(
            dataset,
            epochs=epoch + 1,
            initial_epoch=epoch,
            steps_per_epoch=steps,
            validation_data=data.val(),
            callbacks=callbacks.keras,
            shuffle=False,
            verbose=args.verbose,
        )
        step += steps

    checkpoint.save(step)
    summary = {"spec": recipe.spec_name, "steps": step, "epochs": step / steps_per_epoch}
    if checkpoint.writer:
        export_final_weights(args, net, model, f"{output}/model.weights.h5")
        write_json(f"{output}/summary.json", summary)
    return summary


def main(recipe: Recipe, net: ModuleType, argv: Sequence[str] | None = None) -> int:
    started = time.perf_counter()
    try:
        args = parse_args(recipe, argv)
    except SystemExit as exc:  # --help, or a usage error already printed in one line
        return int(exc.code or 0)
    try:
        summary = train(args, recipe, net)
    except TrainingError as error:
        print(f"{Path(sys.argv[0]).name if sys.argv[0] else 'train.py'}: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        lost = lost_worker(error)
        if lost is None:
            raise
        print(f"{Path(sys.argv[0]).name if sys.argv[0] else 'train.py'}: error: {lost}", file=sys.stderr)
        return 1
    print(f"{recipe.spec_name}: trained {summary['steps']} steps -> {args.output}")
    which = "weight average" if args.ema_decay > 0 else "weights"
    output = str(args.output).rstrip("/")
    files = {"weights": f"{output}/model.weights.h5", "checkpoint": f"{output}/checkpoint"}
    seconds = time.perf_counter() - started
    print(run_summary(recipe.spec_name, f"{output}/metrics.csv", "val_accuracy", 100.0, seconds, which, files))
    return 0
