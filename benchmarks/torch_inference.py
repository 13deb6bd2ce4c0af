"""Inference speed: the generated torch B0 against timm's EfficientNet-B0s, measured in one run.

    python benchmarks/torch_inference.py [--device cuda] [--batch-size 64] [--iterations 30]
                                         [--amp bf16] [--size 224] [--compile] [--cuda-graph]

The generated B0 runs three ways: eager NCHW, eager channels_last, and folded (batch norm folded
into the convs by ``fuse_for_inference``) channels_last; ``--compile`` and ``--cuda-graph`` add the
folded model under torch.compile and replayed as a CUDA graph. Where timm imports, timm's
``tf_efficientnet_b0`` (TF-SAME padding computed per call: the same function as our B0) and
``efficientnet_b0`` (symmetric padding, timm's default) are built with ``pretrained=False`` and
timed in the same run, and so is a symmetric-padding twin of our B0
(``benchmarks/efficientnet-b0-symmetric.yaml``, compiled on the spot when effspec imports): each
timm model is compared with the generated model that computes the same function (target >= 1),
and our folded channels_last models with timm's default eager NCHW (target >= 1.5). Ratios > 1
mean the generated model is faster. Where timm does not import, it says so and prints our numbers.

All models start from random weights and run in eval mode under ``torch.inference_mode``; every
model is timed alternately with the others, after warm-up, and the median call is reported.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "generated" / "torch" / "efficientnet_b0" / "model.py"
SYMMETRIC_SPEC = ROOT / "benchmarks" / "efficientnet-b0-symmetric.yaml"
TIMM_MODELS = ("efficientnet_b0", "tf_efficientnet_b0")


def load_generated(path: Path, name: str = "generated_torch_b0"):
    if not path.is_file():
        raise SystemExit(f"{path} not found: run `effspec compile specs/efficientnet-b0.yaml --backend torch` first")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compile_symmetric(out_dir: Path, model_py: Path | None = None):
    """B0 with symmetric padding (timm efficientnet_b0's function): ``model_py`` when given (compiled
    elsewhere, for a machine without effspec's dependencies), else compiled now; None without effspec."""
    if model_py is None:
        try:
            from effspec.emit.pipeline import compile_specs
        except ImportError:  # effspec or one of its dependencies (pydantic) is missing here
            return None
        compile_specs([SYMMETRIC_SPEC], ["torch"], out_dir)
        model_py = out_dir / "torch" / "efficientnet_b0_symmetric" / "model.py"
    return load_generated(model_py, "generated_torch_b0_symmetric")


def import_timm():
    """timm, or the reason it does not import (it needs torchvision, often missing on CPU builds)."""
    try:
        import timm
    except Exception as exc:  # ImportError, or a torchvision built against another torch
        return None, f"{type(exc).__name__}: {exc}"
    return timm, ""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 64 on CUDA, 8 on CPU")
    parser.add_argument("--iterations", type=int, default=20, help="timed calls per model")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls first (cuDNN autotune, caches)")
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--amp", choices=("none", "fp16", "bf16"), default="none", help="autocast dtype")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the folded model")
    parser.add_argument("--cuda-graph", action="store_true", help="also time the folded model replayed as a CUDA graph")
    parser.add_argument("--model-py", type=Path, default=DEFAULT_MODEL, help="the generated model.py")
    parser.add_argument(
        "--symmetric-model-py",
        type=Path,
        default=None,
        help="the symmetric twin's generated model.py (default: compile benchmarks/efficientnet-b0-symmetric.yaml)",
    )
    return parser.parse_args()


def make_runner(model, x, device, amp: str) -> Callable[[], object]:
    import torch

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(amp)

    def run() -> object:
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            return model(x)

    return run


def make_graph_runner(model, x, amp: str) -> Callable[[], object]:
    """The model's forward captured once as a CUDA graph; each call replays it on the same input buffer."""
    import torch

    run = make_runner(model, x, x.device, amp)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up on a side stream, as capture requires
            run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    return graph.replay


def time_alternating(runs: dict[str, Callable[[], object]], iterations: int, warmup: int, sync) -> dict[str, float]:
    """Median seconds per call for each runner; runners alternate so drift hits all alike."""
    for run in runs.values():
        for _ in range(warmup):
            run()
        sync()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(iterations):
        for name, run in runs.items():
            sync()
            start = time.perf_counter()
            run()
            sync()
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in seconds.items()}


def main() -> None:
    args = parse_args()
    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    batch = args.batch_size or (64 if device.type == "cuda" else 8)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    generated = load_generated(args.model_py)
    torch.manual_seed(0)
    ours = generated.build_model().eval().to(device)
    ours_channels_last = generated.build_model().eval().to(device, memory_format=torch.channels_last)
    ours_channels_last.load_state_dict(ours.state_dict())
    folded = generated.fuse_for_inference(ours, channels_last=True)

    x = torch.randn(batch, 3, args.size, args.size, device=device)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    runs = {
        "generated eager NCHW": make_runner(ours, x, device, args.amp),
        "generated eager channels_last": make_runner(ours_channels_last, x_cl, device, args.amp),
        "generated folded channels_last": make_runner(folded, x_cl, device, args.amp),
    }
    if args.compile:
        runs["generated folded channels_last compiled"] = make_runner(torch.compile(folded), x_cl, device, args.amp)
    if args.cuda_graph and device.type == "cuda":
        runs["generated folded channels_last CUDA graph"] = make_graph_runner(folded, x_cl, args.amp)

    timm, why = import_timm()
    if timm is not None:
        with tempfile.TemporaryDirectory() as out_dir:
            symmetric = compile_symmetric(Path(out_dir), args.symmetric_model_py)
        if symmetric is not None:
            torch.manual_seed(0)
            model = symmetric.build_model().eval().to(device)
            model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
            runs["generated symmetric eager NCHW"] = make_runner(model, x, device, args.amp)
            runs["generated symmetric eager channels_last"] = make_runner(model_cl, x_cl, device, args.amp)
            folded_symmetric = symmetric.fuse_for_inference(model, channels_last=True)
            runs["generated symmetric folded channels_last"] = make_runner(folded_symmetric, x_cl, device, args.amp)
        for name in TIMM_MODELS:
            model = timm.create_model(name, pretrained=False).eval().to(device)
            model_cl = timm.create_model(name, pretrained=False).eval().to(device, memory_format=torch.channels_last)
            runs[f"timm {name} eager NCHW"] = make_runner(model, x, device, args.amp)
            runs[f"timm {name} eager channels_last"] = make_runner(model_cl, x_cl, device, args.amp)

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(
        f"torch {torch.__version__}, {device} ({where}), batch {batch}, {args.size}x{args.size}, amp {args.amp}, "
        f"{args.iterations} timed calls after {args.warmup} warm-up, median"
    )
    if timm is None:
        print(f"timm does not import ({why}): timing the generated model only")
    seconds = time_alternating(runs, args.iterations, args.warmup, sync)
    rate = {name: batch / value for name, value in seconds.items()}
    print(f"{'model':<48}{'images/s':>12}")
    for name, value in rate.items():
        print(f"{name:<48}{value:>12.1f}")
    if timm is None:
        return

    print("\nratios (> 1: generated is faster)")
    # Like with like: TF-SAME padding (our B0, timm's tf_efficientnet_b0) and symmetric padding (our
    # symmetric twin, timm's efficientnet_b0); then the folded-vs-timm-default target.
    comparisons = [
        ("generated eager NCHW", "timm tf_efficientnet_b0 eager NCHW", 1.0),
        ("generated eager channels_last", "timm tf_efficientnet_b0 eager channels_last", 1.0),
        ("generated symmetric eager NCHW", "timm efficientnet_b0 eager NCHW", 1.0),
        ("generated symmetric eager channels_last", "timm efficientnet_b0 eager channels_last", 1.0),
        ("generated folded channels_last", "timm efficientnet_b0 eager NCHW", 1.5),
        ("generated symmetric folded channels_last", "timm efficientnet_b0 eager NCHW", 1.5),
        ("generated folded channels_last CUDA graph", "timm efficientnet_b0 eager NCHW", 1.5),
        ("generated folded channels_last compiled", "timm efficientnet_b0 eager NCHW", 1.5),
    ]
    comparisons = [row for row in comparisons if row[0] in rate]
    for ours_name, theirs_name, target in comparisons:
        ratio = rate[ours_name] / rate[theirs_name]
        verdict = "ok" if ratio >= target else "BELOW TARGET"
        print(f"{ours_name} / {theirs_name}: {ratio:.2f} (target >= {target}: {verdict})")


if __name__ == "__main__":
    main()
