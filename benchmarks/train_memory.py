"""Training memory and speed: the generated torch B0 against timm's efficientnet_b0, with and
without activation checkpointing, at the same batch and resolution, in one run.

    python benchmarks/train_memory.py [--device cuda] [--batch-size 128] [--size 224]
                                      [--steps 10] [--amp bf16] [--channels-last]

Four configurations, each a full training step (forward, cross-entropy, backward, SGD step) from
random weights in train mode: the generated model (generated/torch/efficientnet_b0/model.py),
the same with --grad-checkpointing (effspec's per-stage recomputation of the stages at output
stride <= 8, loaded from backends/torch/runtime/recompute.py), timm's efficientnet_b0, and timm's with
set_grad_checkpointing(). Peak memory is torch.cuda.max_memory_allocated on CUDA (weights,
gradients and optimizer state included), and on the CPU the growth of the process's peak RSS
during training (above the model and inputs), each configuration in its own subprocess. Step
time is the median of --steps steps after 3 warm-up steps. Ratios < 1 mean the generated model needs less.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "generated" / "torch" / "efficientnet_b0" / "model.py"
RECOMPUTE = ROOT / "backends" / "torch" / "runtime" / "recompute.py"
CONFIGS = ("generated", "generated+ckpt", "timm", "timm+ckpt")
CKPT_STAGES: int | None = None  # --ckpt-stages N: recompute the first N stages (default: as train.py)


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def import_timm() -> ModuleType:
    """timm as effspec imports it (effspec.support.vision: copes with a torchvision whose compiled operators
    do not load against this torch)."""
    from effspec.support.vision import import_timm as effspec_import_timm

    return effspec_import_timm()


def build(config: str) -> Any:
    if config.startswith("generated"):
        net = load(MODEL, "generated_b0")
        model = net.build_model(num_classes=1000)
        if config.endswith("+ckpt"):  # as train.py --grad-checkpointing does
            recompute = load(RECOMPUTE, "effspec_recompute")
            stages = CKPT_STAGES or recompute.high_resolution_stages(getattr(net, "FEATURE_INFO", None))
            recompute.enable_grad_checkpointing(model, stages)
        return model
    timm = import_timm()
    model = timm.create_model("efficientnet_b0", pretrained=False, num_classes=1000)
    if config.endswith("+ckpt"):
        model.set_grad_checkpointing(True)
    return model


def measure(config: str, args: argparse.Namespace) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = build(config).to(device).train()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(args.batch_size, 3, args.size, args.size, device=device)
    if args.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (args.batch_size,), device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    rss_base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB: weights, inputs, torch itself

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:  # the process's peak resident memory above what it held before the first step
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_base) / 1024
    return {"peak_mib": peak, "step_ms": 1000 * statistics.median(times)}


def cpu_measure(config: str, args: argparse.Namespace) -> dict[str, float]:
    """Each CPU configuration in a fresh process: peak RSS is per process and never goes down."""
    flags = [
        f"--{key.replace('_', '-')}={value}" for key, value in vars(args).items() if key != "one" and value is not None
    ]
    flags = [flag for flag in flags if not flag.endswith("=False") and not flag.endswith("=True")]
    flags += ["--channels-last"] if args.channels_last else []
    out = subprocess.run(
        [sys.executable, __file__, "--one", config, *flags], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--amp", choices=("bf16", "fp16", "none"), default="bf16")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--ckpt-stages", type=int, default=None, help="checkpoint only the first N stages")
    parser.add_argument("--one", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    global CKPT_STAGES
    CKPT_STAGES = args.ckpt_stages
    if args.one:
        print(json.dumps(measure(args.one, args)))
        return
    import torch

    device = args.device
    if device == "cuda":
        name = torch.cuda.get_device_name()
    else:
        name = f"CPU, {torch.get_num_threads()} threads"
    print(f"{name}; torch {torch.__version__}; batch {args.batch_size} at {args.size}px, amp {args.amp}")
    results = {}
    for config in CONFIGS:
        results[config] = measure(config, args) if device == "cuda" else cpu_measure(config, args)
        if device == "cuda":
            torch.cuda.empty_cache()
        row = results[config]
        print(f"{config:16s} peak {row['peak_mib']:9.1f} MiB   step {row['step_ms']:8.1f} ms")
    for ours, theirs in (
        ("generated", "timm"),
        ("generated+ckpt", "timm"),
        ("generated+ckpt", "timm+ckpt"),
        ("generated+ckpt", "generated"),
    ):
        memory = results[ours]["peak_mib"] / results[theirs]["peak_mib"]
        speed = results[ours]["step_ms"] / results[theirs]["step_ms"]
        print(f"{ours} / {theirs}: peak memory x{memory:.2f}, step time x{speed:.2f}")


if __name__ == "__main__":
    main()
