"""The recipe's optimization: RMSProp in TensorFlow's form, parameter groups, the learning-rate
schedule (a torch LambdaLR over a pure function of the step) and the weight average (EMA)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ... import finetune
from ...recipe import MOMENTUM, RMSPROP_DECAY, RMSPROP_EPS


class RMSpropTF(torch.optim.Optimizer):
    """RMSProp as TensorFlow computes it, the optimizer of the EfficientNet papers.

    Per parameter, g being the gradient plus weight_decay * w (TF's L2 loss term):

        mean_square = decay * mean_square + (1 - decay) * g * g
        buffer = momentum * buffer + lr * g / sqrt(mean_square + eps)
        w = w - buffer

    mean_square starts at ones, as TF's slot does (no huge first steps). Hand-written because
    torch.optim.RMSprop puts eps outside the square root, starts the mean square at zero and
    applies lr outside the momentum buffer (so a learning-rate change acts differently).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        decay: float = RMSPROP_DECAY,
        momentum: float = MOMENTUM,
        eps: float = RMSPROP_EPS,
    ) -> None:
        defaults = {"lr": lr, "decay": decay, "momentum": momentum, "eps": eps, "weight_decay": 0.0}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            for p in params:
                state = self.state[p]
                if not state:
                    state["mean_square"] = torch.ones_like(p)
                    state["momentum_buffer"] = torch.zeros_like(p)
            mean_squares = [self.state[p]["mean_square"] for p in params]
            buffers = [self.state[p]["momentum_buffer"] for p in params]
            decay = group["decay"]
            torch._foreach_mul_(mean_squares, decay)
            torch._foreach_addcmul_(mean_squares, grads, grads, value=1.0 - decay)
            denominators = torch._foreach_add(mean_squares, group["eps"])
            torch._foreach_sqrt_(denominators)
            torch._foreach_mul_(buffers, group["momentum"])
            torch._foreach_addcdiv_(buffers, grads, denominators, value=group["lr"])
            torch._foreach_sub_(params, buffers)
        return loss


def parameter_groups(
    model: nn.Module, weight_decay: float, lr_scale: Callable[[str], float] | None = None
) -> list[dict[str, Any]]:
    """Weight decay on conv and linear weights; none on BN scales/shifts or biases. With ``lr_scale``
    (parameter name -> learning-rate multiplier: fine-tuning's --lr-pretrained), one such pair of
    groups per multiplier other than 1, each with its ``lr_scale``."""
    decay, no_decay = [], []
    scaled: dict[float, tuple[list[nn.Parameter], list[nn.Parameter]]] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            scale = 1.0 if lr_scale is None else lr_scale(name.rpartition(".")[0])
            pair = (decay, no_decay) if scale == 1.0 else scaled.setdefault(scale, ([], []))
            pair[0 if parameter.ndim > 1 else 1].append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    for scale, (scaled_decay, scaled_no_decay) in scaled.items():
        groups += [
            {"params": scaled_decay, "weight_decay": weight_decay, "lr_scale": scale},
            {"params": scaled_no_decay, "weight_decay": 0.0, "lr_scale": scale},
        ]
    return groups


def build_optimizer(model: nn.Module, args: argparse.Namespace, lr: float) -> torch.optim.Optimizer:
    pretrained = getattr(args, "lr_pretrained", 1.0)
    groups = parameter_groups(
        model, args.weight_decay, None if pretrained == 1.0 else lambda layer: finetune.lr_scale(args, layer)
    )
    for group in groups:  # the scheduler multiplies each group's own rate
        group["lr"] = lr * group.get("lr_scale", 1.0)
    if args.optimizer == "rmsprop":
        return RMSpropTF(groups, lr, decay=args.rmsprop_decay, momentum=args.momentum, eps=args.rmsprop_eps)
    if args.optimizer == "sgd":
        return torch.optim.SGD(groups, lr, momentum=args.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr)  # decoupled weight decay


@dataclass(frozen=True)
class LrSchedule:
    """Per-step learning rate: linear warmup, then exponential (staircase) or cosine.

    The rate is a pure function of the global step, so restoring the step restores the schedule.
    Exponential decay counts from step 0 as the TF reference does (the Keras trainer computes the
    same function in keras.ops).
    """

    base_lr: float
    kind: str
    total_steps: int
    warmup_steps: int
    decay_rate: float
    decay_steps: int

    def factor(self, step: int) -> float:
        """The learning rate at ``step`` as a multiple of ``base_lr``."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "exponential":
            return float(self.decay_rate ** (step // self.decay_steps))
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    def lr_at(self, step: int) -> float:
        return self.base_lr * self.factor(step)

    def scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        """A LambdaLR whose epoch is the global step: call its step() after every optimizer step."""
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: self.factor(step))


def build_schedule(args: argparse.Namespace, steps_per_epoch: int) -> LrSchedule:
    return LrSchedule(
        base_lr=args.lr_per_256 * args.batch_size / 256,
        kind=args.schedule,
        total_steps=args.epochs * steps_per_epoch,
        warmup_steps=int(args.warmup_epochs * steps_per_epoch),
        decay_rate=args.decay_rate,
        decay_steps=max(1, int(args.decay_epochs * steps_per_epoch)),
    )


def ema_decay_at(decay: float, update: int) -> float:
    """The decay of update ``update`` (1-based): 0 for the first (a copy), then min(decay,
    (1 + n) / (10 + n)), TF's ExponentialMovingAverage with num_updates. Both trainers use this."""
    return 0.0 if update <= 1 else min(decay, (1 + update) / (10 + update))


class ModelEma:
    """The exponential moving average of the weights AND batch-norm statistics (torch's
    AveragedModel with use_buffers=True, each update a get_ema_multi_avg_fn step at the warmed-up
    decay). Evaluation and the exported weights use it."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.averaged = AveragedModel(model, multi_avg_fn=self._average, use_buffers=True)
        self.averaged.eval().requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        return self.averaged.module

    def _average(self, averages: list[torch.Tensor], currents: list[torch.Tensor], _: Any) -> None:
        if averages[0].is_floating_point():
            get_ema_multi_avg_fn(ema_decay_at(self.decay, self.updates))(averages, currents, None)
        else:  # num_batches_tracked: a count, not averaged
            for average, current in zip(averages, currents, strict=True):
                average.copy_(current)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        self.averaged.update_parameters(model)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.averaged.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averaged.load_state_dict(state["module"])
        self.updates = int(state["updates"])
