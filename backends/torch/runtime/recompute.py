"""--grad-checkpointing: stage activations are recomputed in the backward pass.

Only stage boundaries are kept between forward and backward; torch.utils.checkpoint replays a
stage (with the same dropout / drop-path draws) when its gradient is needed. By default only the
high-resolution stages (output stride <= 8, where nearly all activation memory is) are replayed:
on an H100, B0 at 224 px and batch 128 peaks at 0.50x the memory either way, and replaying the
low-resolution stages too costs 1.38x the step time instead of 1.26x (benchmarks/
train_memory.py). The replay must not move batch-norm running statistics a second time: during
it every BN of the stage runs with momentum 0 and its batch counter is put back. The module tree
and state_dict keys are unchanged (the stage's forward is wrapped on the instance).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

#: Stages whose output stride (input size / output size) is at most this are recomputed.
MAX_REDUCTION = 8


def high_resolution_stages(feature_info: Sequence[Any] | None) -> int | None:
    """How many leading stages have an output stride <= MAX_REDUCTION (model.py's FEATURE_INFO:
    the stem, then one entry per stage); None (every stage) without the table."""
    if not feature_info:
        return None
    return sum(1 for info in list(feature_info)[1:] if info.reduction <= MAX_REDUCTION)


def enable_grad_checkpointing(model: nn.Module, stages: int | None = None) -> int:
    """Wrap the first ``stages`` stages of ``model.blocks`` (all by default); returns how many."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential):
        raise ValueError("--grad-checkpointing needs a generated model (model.blocks: one module per stage)")
    chosen = list(blocks)[:stages]
    for stage in chosen:
        stage.forward = _checkpointed(stage, stage.forward)  # type: ignore[method-assign]
    return len(chosen)


@contextlib.contextmanager
def frozen_batch_norm_statistics(module: nn.Module) -> Iterator[None]:
    layers = [layer for layer in module.modules() if isinstance(layer, nn.modules.batchnorm._BatchNorm)]
    saved = [
        (layer.momentum, None if layer.num_batches_tracked is None else layer.num_batches_tracked.clone())
        for layer in layers
    ]
    for layer in layers:
        layer.momentum = 0.0
    try:
        yield
    finally:
        for layer, (momentum, count) in zip(layers, saved, strict=True):
            layer.momentum = momentum
            if count is not None:
                layer.num_batches_tracked.copy_(count)


def _checkpointed(stage: nn.Module, forward: Any) -> Any:
    def contexts() -> tuple[contextlib.AbstractContextManager[None], contextlib.AbstractContextManager[None]]:
        return contextlib.nullcontext(), frozen_batch_norm_statistics(stage)

    def run(x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and stage.training:
            return checkpoint(forward, x, use_reentrant=False, context_fn=contexts)
        return forward(x)

    return run
