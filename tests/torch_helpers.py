"""torch helpers shared by the backend, property, training and scale-out tests."""

from __future__ import annotations

import torch
from torch import nn


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Conv2d and Linear multiply-accumulates of one image, counted with forward hooks."""
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        per_image = output.numel() // output.shape[0]
        if isinstance(module, nn.Conv2d):
            kernel_h, kernel_w = module.kernel_size
            total += per_image * kernel_h * kernel_w * (module.in_channels // module.groups)
        else:
            total += per_image * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return total


def randomize_batch_norm(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine terms, so folding has something to fold."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)


def worst_difference(one: dict[str, torch.Tensor], two: dict[str, torch.Tensor]) -> tuple[str, float]:
    """The floating-point entry of two state dicts that differs most, and its largest absolute difference."""
    diffs = {
        name: (one[name].double() - two[name].double()).abs().max().item()
        for name in one
        if one[name].is_floating_point()
    }
    name = max(diffs, key=diffs.__getitem__)
    return name, diffs[name]
