"""--grad-checkpointing: each stage's activations are recomputed in the backward pass.

Only the stage boundaries are kept between forward and backward; torch.utils.checkpoint replays
the stage (with the same dropout / drop-path draws) when its gradient is needed. The replay must
not move batch-norm running statistics a second time: during it every BN of the stage runs with
momentum 0 and its batch counter is put back. The module tree and state_dict keys are unchanged
(the stage's forward is wrapped on the instance).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def enable_grad_checkpointing(model: nn.Module) -> int:
    """Wrap every stage of ``model.blocks``; returns how many stages were wrapped."""
    stages = getattr(model, "blocks", None)
    if not isinstance(stages, nn.Sequential):
        raise ValueError("--grad-checkpointing needs a generated model (model.blocks: one module per stage)")
    for stage in stages:
        stage.forward = _checkpointed(stage, stage.forward)  # type: ignore[method-assign]
    return len(stages)


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
