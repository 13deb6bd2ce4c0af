"""The training loop: build the model and its optimizer, step, evaluate, checkpoint, log."""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from effspec.support.errors import TrainingError

from ...recipe import ProgressiveStage, Recipe
from ...runtime_args import check_numbers, stage_index, training_stages
from ...runtime_shared import check_model, prepare_output, run_summary
from .args import parse_args
from .checkpoint import (
    CHECKPOINT_FORMAT,
    EpochMeters,
    Position,
    gather_rng_states,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
    set_rng_state,
    to_cpu,
)
from .data import Data, mixup
from .distributed import (
    Runtime,
    all_reduce_sum,
    autocast,
    convert_sync_bn,
    mean_over_processes,
    resolve_amp,
    setup_runtime,
)
from .finetune import Freezer, initialize
from .logs import MetricsLog, Progress
from .optim import LrSchedule, ModelEma, build_optimizer, build_schedule
from .recompute import enable_grad_checkpointing, high_resolution_stages


def mixed_cross_entropy(
    logits: torch.Tensor, labels_a: torch.Tensor, labels_b: torch.Tensor, lam: float, smoothing: float
) -> torch.Tensor:
    loss = F.cross_entropy(logits, labels_a, label_smoothing=smoothing)
    if lam < 1.0:
        other = F.cross_entropy(logits, labels_b, label_smoothing=smoothing)
        loss = lam * loss + (1.0 - lam) * other
    return loss


def set_dropout(model: nn.Module, rate: float) -> float:
    """Progressive learning raises the classifier's dropout stage by stage; returns the rate the
    model now applies (0.0 when it has no dropout layer)."""
    layers = [module for module in model.modules() if isinstance(module, nn.Dropout)]
    for layer in layers:
        layer.p = rate
    return layers[0].p if layers else 0.0


@dataclass
class Trainer:
    """One optimizer step: mixup, forward (autocast), backward, schedule, EMA."""

    args: argparse.Namespace
    runtime: Runtime
    model: nn.Module  # the bare model: checkpoints, EMA
    train_module: nn.Module  # what runs the step: DDP and/or torch.compile around it
    optimizer: torch.optim.Optimizer
    schedule: LrSchedule
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ema: ModelEma | None
    scaler: torch.amp.GradScaler | None

    def step(
        self, images: torch.Tensor, labels: torch.Tensor, stage: ProgressiveStage, global_step: int
    ) -> tuple[Any, float]:
        lr = float(self.optimizer.param_groups[0]["lr"])
        images, labels_a, labels_b, lam = mixup(images, labels, stage.mixup_alpha, self.args.seed, global_step)
        if self.args.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(self.runtime, self.args.amp):
            logits = self.train_module(images)
        # float32 at least (autocast's half logits), float64 kept (effspec check's reference run)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        loss = mixed_cross_entropy(logits, labels_a, labels_b, lam, self.args.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:  # fp16: scale the loss so small gradients survive
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.runtime.mark_step()
        return loss, lr

    def evaluated_model(self) -> nn.Module:
        """What evaluation and model.pt use: the weight average when there is one."""
        return self.ema.module if self.ema is not None else self.model


@torch.no_grad()
def evaluate(model: nn.Module, data: Data, runtime: Runtime, args: argparse.Namespace) -> dict[str, float]:
    """Loss, top-1 and top-5 (percent) over the whole validation set."""
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=runtime.device)
    top = min(5, args.num_classes)
    for images, labels in data.val_batches():
        images = images.to(runtime.device, non_blocking=True)
        labels = labels.to(runtime.device, non_blocking=True)
        if args.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(runtime, args.amp):
            logits = model(images).float()
        hits = logits.topk(top, dim=1).indices == labels[:, None]
        totals[0] += F.cross_entropy(logits, labels, reduction="sum").double()
        totals[1] += hits[:, 0].sum()
        totals[2] += hits.any(dim=1).sum()
        totals[3] += len(labels)
        runtime.mark_step()
    loss, top1, top5, count = all_reduce_sum(totals, runtime).tolist()
    count = max(count, 1.0)
    return {"val_loss": loss / count, "val_top1": 100.0 * top1 / count, "val_top5": 100.0 * top5 / count}


def resume_path(args: argparse.Namespace) -> Path | None:
    if args.resume is None:
        return None
    if args.resume in ("last", "auto"):
        path = args.output / "checkpoint.pt"
        return None if args.resume == "auto" and not path.is_file() else path
    return Path(args.resume)


def checkpoint_state(
    trainer: Trainer, position: Position, meters: EpochMeters, recipe: Recipe, net: ModuleType
) -> dict[str, Any]:
    args, runtime = trainer.args, trainer.runtime
    return {
        "format": CHECKPOINT_FORMAT,
        "spec_name": recipe.spec_name,
        "spec_sha256": net.SPEC_SHA256,
        "num_classes": args.num_classes,
        "batch_size": args.batch_size,
        "world_size": runtime.world_size,
        "position": asdict(position),
        "meters": asdict(meters),
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": {**asdict(trainer.schedule), "state": trainer.scheduler.state_dict()},
        "ema": None if trainer.ema is None else trainer.ema.state_dict(),
        "scaler": None if trainer.scaler is None else trainer.scaler.state_dict(),
        "rng": gather_rng_states(runtime),
    }


def restore(trainer: Trainer, state: dict[str, Any], path: Path) -> None:
    """Model, optimizer, schedule, EMA and loss scaler from a checkpoint (RNG: at loop start)."""
    try:
        trainer.model.load_state_dict(state["model"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        if trainer.ema is not None and state.get("ema") is not None:
            trainer.ema.load_state_dict(state["ema"])
        trainer.scheduler.load_state_dict(state["scheduler"]["state"])
        if trainer.scaler is not None and state.get("scaler") is not None:
            trainer.scaler.load_state_dict(state["scaler"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TrainingError(f"--resume: {path} does not fit this model: {first_line}") from exc
    saved = {key: value for key, value in state["scheduler"].items() if key != "state"}
    if saved != asdict(trainer.schedule) and trainer.runtime.is_main:
        print(
            f"note: the learning-rate schedule differs from {path}'s ({saved}); continuing with this run's",
            file=sys.stderr,
        )
        for group, factor in zip(trainer.optimizer.param_groups, trainer.scheduler.lr_lambdas, strict=False):
            scale = group.get("lr_scale", 1.0)  # --lr-pretrained
            group["lr"] = trainer.schedule.base_lr * scale * factor(trainer.scheduler.last_epoch)


def seed_or_restore_rng(args: argparse.Namespace, runtime: Runtime, states: list[Any] | None) -> None:
    """Dropout and drop-path draws: per process, continued exactly on --resume."""
    if states is not None and len(states) == runtime.world_size:
        set_rng_state(states[runtime.rank], runtime)
        return
    if states is not None and runtime.is_main:
        print(
            f"note: the checkpoint has {len(states)} random states for {runtime.world_size} processes; "
            "reseeding (not bit-exact)",
            file=sys.stderr,
        )
    torch.manual_seed(args.seed + runtime.rank)
    random.seed(args.seed + runtime.rank)


def build(
    args: argparse.Namespace,
    runtime: Runtime,
    steps_per_epoch: int,
    stages: Sequence[ProgressiveStage],
    net: ModuleType,
    init: bool = False,
) -> Trainer:
    """Model (from --init when ``init``), EMA, optimizer, schedule and loss scaler; DDP and compile
    around them."""
    torch.manual_seed(args.seed)  # the same initial weights on every process
    dropout = max(stage.dropout for stage in stages)  # each stage then sets its own
    model = net.build_model(num_classes=args.num_classes, dropout=dropout, drop_path_rate=args.drop_path_rate)
    if init:
        initialize(model, args, net, runtime.is_main)
    model.to(runtime.device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    ema = ModelEma(model, args.ema_decay) if args.ema_decay > 0 else None
    if args.sync_bn and runtime.distributed:
        model = convert_sync_bn(model, runtime)
    if args.grad_checkpointing:
        enable_grad_checkpointing(model, high_resolution_stages(getattr(net, "FEATURE_INFO", None)))
    schedule = build_schedule(args, steps_per_epoch)
    optimizer = build_optimizer(model, args, schedule.base_lr)
    scheduler = schedule.scheduler(optimizer)
    scaler = torch.amp.GradScaler(runtime.device.type) if args.amp == "fp16" else None
    return Trainer(args, runtime, model, wrap(model, args, runtime), optimizer, schedule, scheduler, ema, scaler)


def wrap(model: nn.Module, args: argparse.Namespace, runtime: Runtime) -> nn.Module:
    """What runs the step: DDP and/or torch.compile around the bare model (built again when freezing
    changes which parameters train: DDP reduces the gradients of those that did at construction)."""
    train_module: nn.Module = model
    if runtime.distributed:
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        train_module = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if args.compile:
        train_module = torch.compile(train_module)  # type: ignore[assignment]
    return train_module


def describe(
    args: argparse.Namespace,
    runtime: Runtime,
    data: Data,
    trainer: Trainer,
    stages: Sequence[ProgressiveStage],
    recipe: Recipe,
) -> str:
    per_rank = args.batch_size // runtime.world_size
    sizes = ", ".join(str(stage.image_size) for stage in stages)
    return (
        f"{recipe.spec_name}: {runtime.world_size} process(es) on {runtime.device.type}, "
        f"global batch {args.batch_size} ({per_rank} per process), {data.steps_per_epoch} steps/epoch, "
        f"{args.epochs} epochs, {args.optimizer} lr {trainer.schedule.base_lr:.4g}, amp {args.amp}, "
        f"image size {sizes}, {args.threads} thread(s) and {args.workers} data worker(s) per process"
    )


def check_args(args: argparse.Namespace, runtime: Runtime, recipe: Recipe) -> None:
    check_numbers(args, recipe)
    if args.batch_size % runtime.world_size:
        raise TrainingError(f"--batch-size {args.batch_size} does not split over {runtime.world_size} processes")


def train(args: argparse.Namespace, runtime: Runtime, recipe: Recipe, net: ModuleType) -> None:
    started = time.perf_counter()
    check_args(args, runtime, recipe)
    check_model(recipe, net)
    args.amp = resolve_amp(args.amp, runtime)
    if args.deterministic:
        torch.use_deterministic_algorithms(True)
    elif runtime.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    checkpoint = resume_path(args)
    latest = args.output / "checkpoint.pt"
    if runtime.is_main:  # locked first: a second trainer on this --output stops here, naming this one
        holder = f"torch train.py of {recipe.spec_name}"
        prepare_output(args.output, holder, fresh=checkpoint is None, resume=args.resume is not None)
    if checkpoint is None and latest.exists():
        raise TrainingError(
            f"{args.output} already holds a checkpoint: pass --resume to continue it, or choose another --output"
        )
    stages = training_stages(args, recipe)
    data = Data(args, runtime, stages, net)
    args.num_classes = data.num_classes
    steps = data.steps_per_epoch
    if steps < 1:
        raise TrainingError(f"--batch-size {args.batch_size} exceeds the {data.train_count} training images")
    trainer = build(args, runtime, steps, stages, net, init=args.init is not None and checkpoint is None)
    freezer = Freezer(trainer.model, args)
    position, meters, rng_states = Position(), EpochMeters(), None
    if checkpoint is not None:
        expected = {"spec_sha256": net.SPEC_SHA256, "num_classes": args.num_classes, "batch_size": args.batch_size}
        state = load_checkpoint(checkpoint, expected, recipe.spec_name)
        restore(trainer, state, checkpoint)
        position, meters = Position(**state["position"]), EpochMeters(**state["meters"])
        rng_states = state["rng"]
        if runtime.is_main:
            remove_stale_temporaries(latest)
    seed_or_restore_rng(args, runtime, rng_states)
    log = None
    if runtime.is_main:
        resumed_at = None if checkpoint is None else position.global_step
        resumed_epoch = None if checkpoint is None else position.epoch
        log = MetricsLog(args.output, resumed_at, args.tensorboard, resumed_epoch)
        print(describe(args, runtime, data, trainer, stages, recipe), file=sys.stderr)
    progress = Progress(args.batch_size)
    lr = trainer.schedule.lr_at(max(position.global_step - 1, 0))
    stopped = False
    for epoch in range(position.epoch, args.epochs):
        stage_at = stage_index(epoch, args.epochs, len(stages))
        stage = stages[stage_at]
        dropout = set_dropout(trainer.model, stage.dropout)
        start = position.step if epoch == position.epoch else 0
        if start == 0:
            meters = EpochMeters()
        trainer.train_module.train()
        if freezer.apply(epoch) and (runtime.distributed or args.compile):
            trainer.train_module = wrap(trainer.model, args, runtime)
        progress.reset()
        for step, (images, labels) in enumerate(data.train_batches(epoch, stage_at, start), start=start):
            images = images.to(runtime.device, non_blocking=True)
            labels = labels.to(runtime.device, non_blocking=True)
            loss, lr = trainer.step(images, labels, stage, position.global_step)
            position = Position(epoch, step + 1, position.global_step + 1)
            meters.add(loss, images)
            progress.steps += 1
            if position.global_step % args.log_every == 0 or step + 1 == steps:
                interval_loss = mean_over_processes(meters.interval_loss_sum, runtime)
                mean_loss = interval_loss / meters.interval_steps
                meters.interval_loss_sum, meters.interval_steps = 0.0, 0
                if log is not None:
                    row = {"global_step": position.global_step, "epoch": epoch, "lr": lr, "loss": mean_loss}
                    log.step({**row, "image_size": stage.image_size})
                    progress.show(epoch, args.epochs, step + 1, steps, mean_loss, lr)
            every = args.checkpoint_every
            if every and position.global_step % every == 0 and step + 1 < steps:
                state = checkpoint_state(trainer, position, meters, recipe, net)
                if runtime.is_main:
                    save_checkpoint(latest, state)
            if args.max_steps is not None and position.global_step >= args.max_steps:
                stopped = True
                break
        train_loss = mean_over_processes(meters.loss_sum, runtime) / max(meters.steps, 1)
        images_per_s = progress.images_per_s()
        metrics = evaluate(trainer.evaluated_model(), data, runtime, args)
        row = {
            "epoch": epoch,
            "global_step": position.global_step,
            "lr": lr,
            "train_loss": train_loss,
            **metrics,
            "image_size": stage.image_size,
            "input_shapes": " ".join(meters.input_shapes),
            "randaugment_magnitude": stage.randaugment_magnitude,
            "mixup_alpha": stage.mixup_alpha,
            "dropout": dropout,
            "images_per_s": round(images_per_s, 1),
            "seconds": round(time.perf_counter() - progress.start, 1),
        }
        if position.step == steps:
            position, meters = Position(epoch + 1, 0, position.global_step), EpochMeters()
        state = checkpoint_state(trainer, position, meters, recipe, net)
        if log is not None:
            log.epoch(row)
            save_checkpoint(latest, state)
            weights = "EMA weights" if trainer.ema is not None else "weights"
            print(
                f"epoch {epoch + 1}/{args.epochs}: train loss {train_loss:.4f}; {weights}: val loss "
                f"{metrics['val_loss']:.4f}, top-1 {metrics['val_top1']:.2f}%, top-5 {metrics['val_top5']:.2f}%",
                file=sys.stderr,
            )
        if stopped:
            if log is not None:
                print(f"stopped after --max-steps {args.max_steps}", file=sys.stderr)
            break
    if log is not None:
        export = to_cpu(trainer.evaluated_model().state_dict())
        save_checkpoint(args.output / "model.pt", export)  # atomic (effspec.support.output), as every output
        log.close()
        weights = "EMA weights" if trainer.ema is not None else "weights"
        files = {"weights": str(args.output / "model.pt"), "checkpoint": str(latest)}
        seconds = time.perf_counter() - started
        print(run_summary(recipe.spec_name, str(log.epochs), "val_top1", 1.0, seconds, weights, files), file=sys.stderr)


def main(recipe: Recipe, net: ModuleType, argv: Sequence[str] | None = None) -> int:
    """The whole run: parse flags, set up the process group, train; 2 on a user error."""
    try:
        args = parse_args(recipe, net, argv)
    except SystemExit as exc:  # --help, or a usage error already printed in one line
        return int(exc.code or 0)
    try:
        runtime = setup_runtime(args.device)
        try:
            train(args, runtime, recipe, net)
        finally:
            if runtime.distributed and dist.is_initialized():
                dist.destroy_process_group()
    except TrainingError as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 2
    return 0
