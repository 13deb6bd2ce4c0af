"""Where the time goes, op by op: the BN-folded channels_last torch model (eager and under
``torch.compile`` with freezing, as benchmarks/inference.py compiles it) against onnxruntime on
effspec's ONNX export of the same model, one intra-op thread each by default.

    python benchmarks/profile_ops.py [--model efficientnet-b0] [--batch 1] [--calls 10] [--threads 1]

torch: ``torch.profiler`` (eager: the time of each top-level aten op; compiled: self time, so a
fused oneDNN conv counts the swish or residual add fused into it). onnxruntime: its own profiler
(``enable_profiling``), the kernel time of each node. Convs are grouped by their weight's shape:
1x1, depthwise, other (the stem). Milliseconds per call, each side's top groups.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def conv_kind(weight_shape) -> str:
    if not weight_shape or len(weight_shape) != 4:
        return "conv ?"
    if weight_shape[1] == 1 and weight_shape[0] > 1:
        return "conv depthwise"
    if weight_shape[2] == 1 and weight_shape[3] == 1:
        return "conv 1x1"
    return "conv kxk dense (stem)"


def torch_profile(call, calls: int, compiled: bool) -> dict[str, float]:
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        call()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(calls):
            call()
    groups: collections.Counter = collections.Counter()
    for event in prof.events():
        if not compiled and event.cpu_parent is not None:
            continue  # eager: top-level aten ops, their total time
        name = event.name
        if "conv" in name:  # the weight's place: (input, weight, ...), or (other, input, weight, ...)
            weight = 2 if name.endswith("_convolution_pointwise_") else 1  # for a conv fused with an add
            name = conv_kind(event.input_shapes[weight] if len(event.input_shapes) > weight else None)
        groups[name] += event.self_cpu_time_total if compiled else event.cpu_time_total
    return {name: us / calls / 1e3 for name, us in groups.most_common(12)}


def onnxruntime_profile(path: Path, images, calls: int, threads: int) -> dict[str, float]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix(""))
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(3 + calls):
        session.run(None, {"images": images})
    events = json.loads(Path(session.end_profiling()).read_text())
    groups: collections.Counter = collections.Counter()
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        op = event["args"].get("op_name", "?")
        if "Conv" in op:
            shapes = event["args"].get("input_type_shape", [])
            weight = list(shapes[1].values())[0] if len(shapes) > 1 else None
            op = f"{conv_kind(weight)} ({op})"
        groups[op] += event["dur"]
    return {name: us / (3 + calls) / 1e3 for name, us in groups.most_common(12)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet-b0")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from inference import compiled_paths

    from effspec.emit.pipeline import build
    from effspec.weights import export as export_module
    from effspec.weights.generated import load_model_module

    torch.set_num_threads(args.threads)
    model = build(ROOT / "specs" / f"{args.model}.yaml").model
    module = load_model_module(model, "torch")
    torch.manual_seed(0)
    net = module.build_model().eval()
    x = torch.randn(args.batch, 3, model.resolution, model.resolution)
    x_last = x.contiguous(memory_format=torch.channels_last)
    folded = module.fuse_for_inference(net)
    with tempfile.TemporaryDirectory(prefix="effspec-profile-") as workdir:
        onnx_path = Path(workdir) / "model.onnx"
        export_module._write_onnx(net, x, onnx_path, export_module.ExportOptions(format="onnx", batch=args.batch),
                                  ["logits"])  # fmt: skip
        compiled = compiled_paths(folded, x_last, Path(workdir) / "model.pt2")["folded_compile"]
        with torch.inference_mode():
            tables = {
                "torch folded channels_last, eager": torch_profile(lambda: folded(x_last), args.calls, False),
                "torch folded, torch.compile (freezing)": torch_profile(compiled, args.calls, True),
            }
        tables["onnxruntime"] = onnxruntime_profile(onnx_path, x.numpy(), args.calls, args.threads)
    print(f"{args.model}, batch {args.batch}, {args.threads} thread(s): milliseconds per call")
    for title, groups in tables.items():
        print(f"\n{title} (sum of the groups shown: {sum(groups.values()):.1f} ms)")
        for name, ms in groups.items():
            print(f"  {ms:7.2f}  {name}")


if __name__ == "__main__":
    main()
