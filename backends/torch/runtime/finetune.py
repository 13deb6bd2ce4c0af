"""Fine-tuning in the torch trainer: --init loaded into the model, and the freezing of each epoch
(the rules and the file reading: ``backends/finetune.py``)."""

from __future__ import annotations

import argparse
from types import ModuleType

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from effspec.support.errors import TrainingError

from ...finetune import InitError, Phase, phase_at, prepare


def initialize(model: nn.Module, args: argparse.Namespace, net: ModuleType, verbose: bool) -> None:
    """Load --init into ``model`` (its state_dict keys are the canonical names); the classifier may be new."""
    state = model.state_dict()
    expected = {name: tuple(tensor.shape) for name, tensor in state.items()}
    try:
        plan = prepare(args, net, "torch", expected, verbose)
    except InitError as exc:
        raise TrainingError(str(exc)) from None
    with torch.no_grad():
        for name, array in plan.assign.items():
            target = state[name]
            target.copy_(torch.from_numpy(np.array(array)).to(dtype=target.dtype))


class Freezer:
    """Applies the epoch's phase: frozen parameters stop requiring gradients (the optimizer skips them),
    frozen batch norms run in inference mode (call after every ``.train()``)."""

    def __init__(self, model: nn.Module, args: argparse.Namespace) -> None:
        self.model = model
        self.args = args
        self.phase: Phase | None = None

    def apply(self, epoch: int) -> bool:
        """Set the phase of ``epoch``; True when which parameters train changed (DDP must be rebuilt)."""
        phase = phase_at(self.args, epoch)
        changed = phase != self.phase and (phase.freezes or (self.phase is not None and self.phase.freezes))
        if changed:
            for name, module in self.model.named_modules():
                frozen = phase.frozen(name, isinstance(module, _BatchNorm))
                for parameter in module.parameters(recurse=False):
                    parameter.requires_grad_(not frozen)
        self.phase = phase
        if phase.freezes:
            for name, module in self.model.named_modules():
                if isinstance(module, _BatchNorm) and phase.frozen(name, True):
                    module.eval()
        return changed
