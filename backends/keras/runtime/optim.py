"""The recipe's optimization in Keras: warmup + decay schedule, RMSProp in TF1's form, weight
decay off batch norm and biases, and the weight average (EMA) defined as in the torch trainer."""

from __future__ import annotations

import argparse
import math
from typing import Any

import keras
import tensorflow as tf
from keras import ops

from ... import finetune


class WarmupThenDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to ``peak``, then exponential (staircase) or cosine decay: the torch
    trainer's LrSchedule (tested against each other). The staircase counts from step 0, as TF's."""

    def __init__(
        self, peak: float, warmup_steps: int, decay_steps: int, decay_rate: float, total_steps: int, kind: str
    ) -> None:
        self.peak = peak
        self.warmup_steps = warmup_steps
        self.decay_steps = decay_steps  # exponential: one factor of decay_rate per
        self.decay_rate = decay_rate
        self.total_steps = total_steps  # cosine: reaches 0 here
        self.kind = kind

    def __call__(self, step: Any) -> Any:
        step = ops.cast(step, "float32")
        if self.kind == "exponential":
            rate = self.peak * ops.power(self.decay_rate, ops.floor(step / self.decay_steps))
        else:
            span = max(1, self.total_steps - self.warmup_steps)
            progress = ops.clip((step - self.warmup_steps) / span, 0.0, 1.0)
            rate = 0.5 * self.peak * (1.0 + ops.cos(math.pi * progress))
        if self.warmup_steps > 0:
            warmup = self.peak * (step + 1) / self.warmup_steps
            rate = ops.where(step < self.warmup_steps, warmup, rate)
        return rate

    def get_config(self) -> dict[str, Any]:
        return {
            "peak": self.peak,
            "warmup_steps": self.warmup_steps,
            "decay_steps": self.decay_steps,
            "decay_rate": self.decay_rate,
            "total_steps": self.total_steps,
            "kind": self.kind,
        }


def outside_fit(method: Any) -> Any:
    """A method the callbacks call between steps: one tf.function under TensorFlow (where it also
    runs in a tf.distribute strategy's cross-replica context); under JAX, eager keras.ops on the
    (replicated) variables."""
    return tf.function(method) if keras.backend.backend() == "tensorflow" else method


def averaged_statistics(model: keras.Model) -> list[Any]:
    """Batch-norm moving means and variances: averaged with the weights, as in torch."""
    return [
        variable
        for layer in model._flatten_layers()
        if isinstance(layer, keras.layers.BatchNormalization)
        for variable in (layer.moving_mean, layer.moving_variance)
    ]


class WeightAverage:
    """Optimizer mixin: the exponential moving average of the trainable weights AND batch-norm
    statistics, stored as optimizer variables (so checkpoints carry it).

    Keras' own ``use_ema`` averages trainable weights only, at a fixed decay. Here update n (the
    optimizer's step count after the step) uses decay 0 for n = 1 (a copy), then
    min(decay, (1 + n) / (10 + n)): TF's ExponentialMovingAverage with num_updates, and
    ``effspec.backends.torch.runtime.optim.ema_decay_at``. ``WeightAverageCallback`` updates it
    after every step and swaps it in for evaluation; the exported weights are the average.
    """

    average_decay: float = 0.0
    averaged: list[Any]
    averages: list[Any]

    def track_average(self, model: keras.Model, decay: float) -> None:
        self.average_decay = decay
        # Not an attribute Keras tracks: the model's own variables would become optimizer variables
        # too (saved twice; on JAX the train step is then handed one buffer twice and fails).
        object.__setattr__(self, "averaged", list(model.trainable_variables) + averaged_statistics(model))

    def build(self, var_list: list[Any]) -> None:
        super().build(var_list)  # type: ignore[misc]
        self.averages = []
        if self.average_decay > 0:
            self.averages = self.add_optimizer_variables(self.averaged, "average")  # type: ignore[attr-defined]

    def finalize_variable_values(self, var_list: list[Any]) -> None:
        """fit() runs once per epoch here: it must not end by changing the model's weights."""

    @outside_fit
    def update_average(self) -> None:
        n = ops.cast(self.iterations, "float32")  # type: ignore[attr-defined]
        decay = ops.where(n <= 1.0, 0.0, ops.minimum(self.average_decay, (1.0 + n) / (10.0 + n)))
        for average, variable in zip(self.averages, self.averaged, strict=True):
            average.assign(decay * average + (1.0 - decay) * ops.cast(variable, average.dtype))

    @outside_fit
    def swap_average(self) -> None:
        """Model weights <-> their average (twice: back as they were)."""
        for average, variable in zip(self.averages, self.averaged, strict=True):
            saved = ops.copy(variable.value)
            variable.assign(average)
            average.assign(saved)

    lr_scales: dict[str, float] = {}  # noqa: RUF012 - replaced per instance by scale_learning_rates

    def scale_learning_rates(self, model: keras.Model, scale: Any) -> None:
        """Fine-tuning's --lr-pretrained: variable -> learning-rate multiplier, ``scale(layer name)``."""
        scales = {v.path: float(scale(v.path.split("/")[0])) for v in model.trainable_variables}
        self.lr_scales = {path: value for path, value in scales.items() if value != 1.0}

    l2_decay: float = 0.0
    l2_paths: frozenset[str] = frozenset()

    def decay_in_gradient(self, variables: list[Any], decay: float) -> None:
        """rmsprop and sgd's weight decay: gradient += decay x w for ``variables``, as torch's optimizers
        (and the reference's loss term decay / 2 x sum(w^2), whose gradient this is) do. In the gradient,
        not in the loss, so the reported loss is the cross-entropy alone in both trainers."""
        self.l2_decay = decay
        self.l2_paths = frozenset(v.path for v in variables)

    def _backend_update_step(self, grads: list[Any], trainable_variables: list[Any], learning_rate: Any) -> None:
        """Each multiplier's variables stepped at learning_rate x multiplier (torch: a parameter group each)."""
        if self.l2_decay > 0:
            # TensorFlow sums the replicas' gradients after this (in super()): each adds its share
            context = tf.distribute.get_replica_context() if keras.backend.backend() == "tensorflow" else None
            decay = self.l2_decay / (context.num_replicas_in_sync if context is not None else 1)
            grads = [
                ops.add(g, ops.multiply(ops.cast(v, g.dtype), decay)) if v.path in self.l2_paths else g
                for g, v in zip(grads, trainable_variables, strict=True)
            ]
        if not self.lr_scales:
            return super()._backend_update_step(grads, trainable_variables, learning_rate)  # type: ignore[misc]
        groups: dict[float, tuple[list[Any], list[Any]]] = {}
        for gradient, variable in zip(grads, trainable_variables, strict=True):
            group = groups.setdefault(self.lr_scales.get(variable.path, 1.0), ([], []))
            group[0].append(gradient)
            group[1].append(variable)
        for scale, (group_grads, group_variables) in groups.items():
            rate = learning_rate if scale == 1.0 else learning_rate * scale
            super()._backend_update_step(group_grads, group_variables, rate)  # type: ignore[misc]
        return None


class RMSpropTF(WeightAverage, keras.optimizers.RMSprop):
    """RMSProp as the reference's TF1 RMSPropOptimizer.

    Keras 3 already puts epsilon inside the square root, lr * g / sqrt(ms + eps), as TF1 does. TF1
    starts the mean square at 1, Keras at 0 (from 0 the first steps move every weight by about
    lr / sqrt(1 - rho) whatever its gradient's size), so it starts at 1 here.
    """

    def build(self, var_list: list[Any]) -> None:
        super().build(var_list)
        for mean_square in self._velocities:
            mean_square.assign(ops.ones(mean_square.shape, mean_square.dtype))


class SGD(WeightAverage, keras.optimizers.SGD):
    """Nesterov momentum SGD in TF1's MomentumOptimizer form, which torch.optim.SGD also computes:

        buffer = momentum * buffer + g
        w = w - lr * (g + momentum * buffer)        (nesterov; w - lr * buffer without)

    Keras' own SGD keeps lr inside the buffer (velocity = momentum * velocity - lr * g), which
    differs as soon as the rate changes (every warmup step): past gradients keep their old rate.
    The slot ``momentums`` holds the buffer (torch's ``momentum_buffer``).
    """

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        if not self.momentums:
            self.assign_sub(variable, ops.multiply(gradient, lr))
            return
        buffer = self.momentums[self._get_variable_index(variable)]
        momentum = ops.cast(self.momentum, variable.dtype)
        self.assign(buffer, ops.add(ops.multiply(buffer, momentum), gradient))
        step = ops.add(gradient, ops.multiply(buffer, momentum)) if self.nesterov else buffer
        self.assign_sub(variable, ops.multiply(step, lr))


ADAM_EPSILON = 1e-8  # torch.optim.AdamW's default (Keras' is 1e-7)


class AdamW(WeightAverage, keras.optimizers.AdamW):
    """Adam with decoupled weight decay, in torch.optim.AdamW's form:

        m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  t = the step (1-based)
        w = w - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

    after w = w - lr * weight_decay * w (Keras' own weight-decay step). Keras' Adam adds eps to
    sqrt(v) before the bias correction, i.e. an eps sqrt(1 - b2^t) times smaller in torch's terms,
    with 1e-7 for torch's 1e-8: both are aligned here. Slots: ``_momentums`` = torch's
    ``exp_avg``, ``_velocities`` = ``exp_avg_sq``.
    """

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        step = ops.cast(self.iterations + 1, variable.dtype)
        first = ops.subtract(1.0, ops.power(ops.cast(self.beta_1, variable.dtype), step))
        second = ops.subtract(1.0, ops.power(ops.cast(self.beta_2, variable.dtype), step))
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1.0 - self.beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1.0 - self.beta_2))
        denominator = ops.add(ops.divide(ops.sqrt(v), ops.sqrt(second)), self.epsilon)
        self.assign_sub(variable, ops.divide(ops.multiply(m, ops.divide(lr, first)), denominator))


def decayed_variables(model: keras.Model) -> list[Any]:
    """Weight decay applies to kernels only: not to biases, batch-norm scale/offset."""
    return [v for v in model.trainable_variables if len(v.shape) >= 2]


def make_optimizer(
    args: argparse.Namespace, schedule: WarmupThenDecay, model: keras.Model
) -> keras.optimizers.Optimizer:
    optimizer: Any
    if args.optimizer == "adamw":
        optimizer = AdamW(schedule, weight_decay=args.weight_decay, epsilon=ADAM_EPSILON)
        decayed = {id(v) for v in decayed_variables(model)}
        optimizer.exclude_from_weight_decay(var_list=[v for v in model.trainable_variables if id(v) not in decayed])
    else:
        if args.optimizer == "sgd":
            optimizer = SGD(schedule, momentum=args.momentum, nesterov=True)
        else:
            optimizer = RMSpropTF(schedule, rho=args.rmsprop_decay, momentum=args.momentum, epsilon=args.rmsprop_eps)
        if args.weight_decay > 0:
            optimizer.decay_in_gradient(decayed_variables(model), args.weight_decay)
    optimizer.track_average(model, args.ema_decay)
    if getattr(args, "lr_pretrained", 1.0) != 1.0:
        optimizer.scale_learning_rates(model, lambda layer: finetune.lr_scale(args, layer))
    return optimizer
