"""The torch half of the check: a seeded model, its float64 twin, eval outputs and one SGD step.

Imported only by ``check`` (itself imported lazily by the CLI handler), so torch loads on demand.
"""

from __future__ import annotations

import copy
from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from effspec.support.errors import UsageError


def build_seeded(module: ModuleType, seed: int, calibration: np.ndarray) -> nn.Module:
    """The generated model initialized from ``seed``, dropout and drop-path off, in eval mode.

    Every batch norm and bias gets non-trivial values, so that converting and using them is
    exercised: gamma, beta and biases are drawn at random, and running statistics are drawn around
    what each batch norm actually sees (see ``_calibrate``), so activations keep a unit-like scale
    through deep stacks instead of growing or vanishing geometrically.
    """
    torch.manual_seed(seed)
    net = module.build_model(dropout=0.0, drop_path_rate=0.0)
    generator = torch.Generator().manual_seed(seed + 1)

    def uniform(like: torch.Tensor, low: float, high: float) -> torch.Tensor:
        return torch.rand(like.shape, generator=generator, dtype=torch.float64) * (high - low) + low

    with torch.no_grad():
        for submodule in net.modules():
            if isinstance(submodule, nn.BatchNorm2d):
                submodule.weight.copy_(uniform(submodule.weight, 0.5, 1.5))
                submodule.bias.copy_(uniform(submodule.bias, -0.2, 0.2))
            elif isinstance(submodule, nn.Conv2d | nn.Linear) and submodule.bias is not None:
                submodule.bias.copy_(uniform(submodule.bias, -0.1, 0.1))
    _calibrate(net.eval(), calibration, uniform)
    return net


def build_loaded(module: ModuleType, state: dict[str, np.ndarray]) -> nn.Module:
    """The generated model with the user's weights, dropout and drop-path off, in eval mode."""
    net = module.build_model(dropout=0.0, drop_path_rate=0.0)
    net.load_state_dict({name: torch.from_numpy(np.array(array)) for name, array in state.items()})
    return net.eval()


def build_backbone(module: ModuleType, state: dict[str, np.ndarray], output_stride: int) -> nn.Module:
    """The generated backbone (all levels) at ``output_stride``, loaded with a classification state dict."""
    net = module.build_model(drop_path_rate=0.0, features_only=True, output_stride=output_stride)
    net.load_state_dict({name: torch.from_numpy(np.array(array)) for name, array in state.items()})
    return net.eval()


def feature_maps(net: nn.Module, images: np.ndarray) -> list[np.ndarray]:
    """The backbone's maps for NCHW ``images`` (cast to the model's dtype)."""
    dtype = next(net.parameters()).dtype
    with torch.no_grad():
        return [output.numpy() for output in net.eval()(torch.from_numpy(images).to(dtype))]


def _calibrate(net: nn.Module, images: np.ndarray, uniform) -> None:
    """One eval-mode pass in which each batch norm, just before it runs, sets its statistics from its
    own input (already shaped by the batch norms upstream): running_mean = each channel's mean
    + U(-0.2, 0.2) x the layer's std, running_var = the layer's variance x U(0.5, 2) per channel.

    One variance scale per layer rather than per channel: dividing a channel by its own, possibly
    tiny, measured spread would make float32 cancel catastrophically on other inputs.
    """

    def set_statistics(norm: nn.BatchNorm2d, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].double()
        mean = x.mean((0, 2, 3))
        variance = x.var((0, 2, 3), unbiased=False).mean().clamp(min=1e-6)
        norm.running_mean.copy_(mean + uniform(mean, -0.2, 0.2) * variance.sqrt())
        norm.running_var.copy_(variance * uniform(mean, 0.5, 2.0))

    norms = [submodule for submodule in net.modules() if isinstance(submodule, nn.BatchNorm2d)]
    hooks = [norm.register_forward_pre_hook(set_statistics) for norm in norms]
    try:
        with torch.no_grad():
            net(torch.from_numpy(images).float())
    finally:
        for hook in hooks:
            hook.remove()


def state_arrays(net: nn.Module) -> dict[str, np.ndarray]:
    return {name: tensor.detach().cpu().numpy().copy() for name, tensor in net.state_dict().items()}


def float64_twin(net: nn.Module) -> nn.Module:
    """The same weights, cast exactly to float64: the reference every float32 run is measured against."""
    return copy.deepcopy(net).double()


def channels_last_twin(net: nn.Module) -> nn.Module:
    """The same float32 weights in channels_last memory: other kernels and summation orders, a second
    sample of float32's rounding."""
    return copy.deepcopy(net).to(memory_format=torch.channels_last)


def eval_outputs(net: nn.Module, images: np.ndarray) -> list[np.ndarray]:
    """[stem, each stage, features, logits] for NCHW ``images`` (cast to the model's dtype)."""
    dtype = next(net.parameters()).dtype
    x = torch.from_numpy(images).to(dtype)
    net.eval()
    with torch.no_grad():
        outputs = [*net.forward_stages(x), net.forward_features(x), net(x)]
    return [output.numpy() for output in outputs]


def train_step(net: nn.Module, images: np.ndarray, labels: np.ndarray, lr: float) -> dict[str, int]:
    """One plain SGD step (no momentum, no weight decay) on mean cross-entropy, in training mode.

    Returns, per batch norm (by canonical name), how many values per channel its batch statistics
    averaged: n = batch x height x width, the n of torch's unbiased n / (n - 1) variance.
    """
    counts = batch_norm_counts(net, images)
    dtype = next(net.parameters()).dtype
    net.train()
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.0, weight_decay=0.0)
    optimizer.zero_grad()
    loss = F.cross_entropy(net(torch.from_numpy(images).to(dtype)), torch.from_numpy(labels))
    loss.backward()
    optimizer.step()
    net.eval()
    return counts


def batch_norm_counts(net: nn.Module, images: np.ndarray) -> dict[str, int]:
    """Per batch norm (by canonical name), how many values per channel its batch statistics average
    for ``images``: n = batch x height x width, the n of torch's unbiased n / (n - 1) variance."""
    counts: dict[str, int] = {}
    hooks = []
    for name, submodule in net.named_modules():
        if isinstance(submodule, nn.BatchNorm2d):

            def record(_module: nn.Module, inputs: tuple[torch.Tensor, ...], name: str = name) -> None:
                counts[name] = inputs[0].numel() // inputs[0].shape[1]

            hooks.append(submodule.register_forward_pre_hook(record))
    dtype = next(net.parameters()).dtype
    try:
        with torch.no_grad():
            net.eval()(torch.from_numpy(images).to(dtype))
    finally:
        for hook in hooks:
            hook.remove()
    for name, count in counts.items():
        if count < 2:  # torch refuses to train such a batch norm
            raise UsageError(f"{name} sees one value per channel at this size: raise --batch or --resolution")
    return counts
