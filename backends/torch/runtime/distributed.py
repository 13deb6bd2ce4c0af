"""Where a process runs: device, torchrun rank, cross-process batch norm, mixed precision."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from effspec.support.errors import TrainingError


@dataclass
class Runtime:
    """Where this process runs and which part of the global batch it owns."""

    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    xm: Any = None  # torch_xla.core.xla_model when --device xla

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mark_step(self) -> None:
        """XLA builds a graph lazily: cut it after every training step."""
        if self.xm is not None:
            self.xm.mark_step()


def import_torch_xla() -> Any:
    try:
        import torch_xla.core.xla_model as xm
    except ImportError as exc:
        raise TrainingError(
            f"--device xla needs torch_xla, which does not import here ({exc}); "
            "install it as https://github.com/pytorch/xla describes"
        ) from exc
    return xm


def check_xla_world(world_size: int) -> None:
    """torch_xla's process group must span the processes torchrun started. On its CPU runtime
    (PJRT_DEVICE=CPU) it does not: each process is a world of its own (torch_xla runs CPU devices as
    threads of one process), and the ranks would train apart, silently, each on its share."""
    found = dist.get_world_size()
    if found != world_size:
        device = os.environ.get("PJRT_DEVICE", "?")
        raise TrainingError(
            f"--device xla: torchrun started {world_size} processes but torch_xla's process group "
            f"(PJRT_DEVICE={device}) has {found}: torch_xla cannot span these processes here "
            "(on its CPU runtime, one process holds every device); run one process"
        )


def setup_runtime(device: str) -> Runtime:
    """One process per device; torchrun's RANK/WORLD_SIZE/LOCAL_RANK turn on DDP."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "xla":
        xm = import_torch_xla()
        if world_size > 1:
            import torch_xla.distributed.xla_backend  # noqa: F401  (registers "xla")

            dist.init_process_group("xla", init_method="xla://")
            check_xla_world(world_size)
        return Runtime(xm.xla_device(), rank, local_rank, world_size, xm)
    if device == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError("--device cuda: no CUDA device is visible")
        cuda = torch.device("cuda", local_rank)
        torch.cuda.set_device(cuda)
        if world_size > 1:
            dist.init_process_group("nccl", device_id=cuda)
        return Runtime(cuda, rank, local_rank, world_size)
    if world_size > 1:
        dist.init_process_group("gloo")
    return Runtime(torch.device("cpu"), rank, local_rank, world_size)


class AllReduceSum(torch.autograd.Function):
    """Sum a tensor over every process; the gradient is summed the same way."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        total = tensor.clone()
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        total = grad.clone()
        dist.all_reduce(total, group=ctx.group)
        return total, None


class CrossProcessBatchNorm2d(nn.BatchNorm2d):
    """Batch norm over the global batch where torch has none: CPU (gloo) and XLA.

    On CUDA the runtime uses torch's nn.SyncBatchNorm. This one all-reduces per-channel sums (a
    mean pass, then a centred variance pass) through AllReduceSum. Parameters and buffers are the
    wrapped layer's.
    """

    def __init__(self, source: nn.BatchNorm2d, group: Any) -> None:
        super().__init__(source.num_features, source.eps, source.momentum)
        self.weight = source.weight
        self.bias = source.bias
        self.running_mean = source.running_mean
        self.running_var = source.running_var
        self.num_batches_tracked = source.num_batches_tracked
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        values = x.float()
        count = values.numel() // values.shape[1]
        counts = torch.tensor([float(count)], device=x.device)
        total = AllReduceSum.apply(torch.cat([values.sum((0, 2, 3)), counts]), self.group)
        n = total[-1]
        mean = total[:-1] / n
        centered = values - mean[None, :, None, None]
        var = AllReduceSum.apply(centered.square().sum((0, 2, 3)), self.group) / n
        with torch.no_grad():
            momentum = 0.1 if self.momentum is None else self.momentum
            self.running_mean.lerp_(mean.detach(), momentum)
            self.running_var.lerp_(var.detach() * n / (n - 1), momentum)
            self.num_batches_tracked.add_(1)
        scale = self.weight * torch.rsqrt(var + self.eps)
        out = centered * scale[None, :, None, None] + self.bias[None, :, None, None]
        return out.to(x.dtype)


def convert_sync_bn(module: nn.Module, runtime: Runtime) -> nn.Module:
    """Every BatchNorm2d normalizes over the global batch (torch's SyncBatchNorm on CUDA)."""
    if runtime.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    group = dist.new_group()  # its own group: never interleaves with DDP's buckets
    return _swap_batch_norm(module, group)


def _swap_batch_norm(module: nn.Module, group: Any) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, CrossProcessBatchNorm2d(child, group))
        else:
            _swap_batch_norm(child, group)
    return module


def autocast(runtime: Runtime, amp: str) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision for the forward pass ("none": full float32)."""
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(runtime.device.type, dtype=dtype)


def resolve_amp(amp: str, runtime: Runtime) -> str:
    if amp != "auto":
        return amp
    if runtime.device.type != "cuda":
        return "none"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def all_reduce_sum(tensor: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    if runtime.distributed:
        dist.all_reduce(tensor)
    return tensor


def mean_over_processes(value: torch.Tensor | float, runtime: Runtime) -> float:
    """The average of a per-process number (a loss sum) over every process."""
    total = torch.tensor([float(value)], dtype=torch.float64, device=runtime.device)
    return all_reduce_sum(total, runtime).item() / runtime.world_size
