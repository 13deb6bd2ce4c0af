"""CPU inference: every deployment path of a generated model against its peer, in one run.

    python benchmarks/inference.py [--models efficientnet-b0 efficientnetv2-s] [--batches 1 8]
        [--runs 3] [--iterations 10] [--compile] [--keras tensorflow jax] [--compete] [--threads free|usable|N]

Per model and batch, timed alternately in one process (after warm-up; the median call of each run):
generated eager (NCHW), BN-folded channels_last (``fuse_for_inference``), with ``--compile`` the folded
model under ``torch.compile`` (inductor with ``freezing``: weights become constants, convs run as
prepacked oneDNN kernels with their activation fused; module guards skipped, the model does not
change) and the same ahead of time (``torch.export`` + AOTInductor: a .pt2 package, no Python guard
per call), onnxruntime on effspec's own ONNX export (what ``effspec export --format onnx`` writes: opset 17,
basic optimizations saved, SAME pads in the convs; the session adds its extended fusions), and timm's
TF-SAME twin (``tf_efficientnet_b0``, ``tf_efficientnetv2_s``: same function, random weights).
``--keras tensorflow jax`` times the generated Keras model against keras.applications' (weights=None)
on each Keras backend, each backend in its own process (all runs in it). Ratios are peer time / our
time (> 1: ours faster), measured in the same run; the summary gives the median and range over ``--runs`` runs.
``--compete`` starts a competing process (a one-thread busy loop of float work) for the whole
measurement: the CPU share the benchmark really gets halves on two cores.

Intra-op threads (torch and onnxruntime): ``--threads free`` (default) takes the CPUs this process may
use less those other processes keep busy when it starts (``effspec.support.cpus.free_cpus``, measured
after the competitor starts); ``usable`` all the CPUs it may use (affinity mask, cgroup quota:
``usable_cpus``); or a number. The load average is printed with every result: read the numbers with it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from effspec.support.cpus import free_cpus, usable_cpus

ROOT = Path(__file__).resolve().parent.parent
TIMM = {
    "efficientnet-b0": "tf_efficientnet_b0",
    "efficientnet-b1": "tf_efficientnet_b1",
    "efficientnet-b2": "tf_efficientnet_b2",
    "efficientnet-b3": "tf_efficientnet_b3",
    "efficientnetv2-s": "tf_efficientnetv2_s",
}
KERAS_APPLICATIONS = {
    "efficientnet-b0": "EfficientNetB0",
    "efficientnet-b1": "EfficientNetB1",
    "efficientnet-b2": "EfficientNetB2",
    "efficientnet-b3": "EfficientNetB3",
    "efficientnetv2-s": "EfficientNetV2S",
}


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


@contextlib.contextmanager
def competing(enabled: bool) -> Iterator[None]:
    """With ``enabled``: a competing process (one thread of float work) for the whole block, running
    for a second before it starts (so that ``--threads free`` counts it)."""
    if not enabled:
        yield
        return
    code = "import math\nx = 0.0\nwhile True:\n    for i in range(100000): x += math.sin(i)\n"
    competitor = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(1.0)
        yield
    finally:
        competitor.kill()
        competitor.wait()


SETTLE_S = 0.05  # untimed pause before each call


def time_alternately(calls: dict, iterations: int) -> dict[str, float]:
    """Median seconds per call of each callable, timed one after the other in rounds.

    Each call starts after a short untimed pause: onnxruntime's intra-op threads (more than one)
    spin-wait after a run, and the call right after it shared the cores with them (timm's B0 at
    batch 1, two threads: 78 ms right after an onnxruntime call, 52 ms after the pause; onnxruntime
    itself loses 14% with spinning off, so it keeps its default)."""
    for call in calls.values():  # warm-up
        call()
        call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(iterations):
        for name, call in calls.items():
            time.sleep(SETTLE_S)
            start = time.perf_counter()
            call()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def torch_paths(spec: str, batch: int, args: argparse.Namespace) -> dict:
    """{path: callable} for the torch and onnxruntime paths of one model at one batch."""
    import onnxruntime
    import torch

    from effspec.emit.pipeline import build
    from effspec.support.vision import import_timm
    from effspec.weights import export as export_module
    from effspec.weights.generated import load_model_module

    model = build(ROOT / "specs" / f"{spec}.yaml").model
    module = load_model_module(model, "torch")
    torch.manual_seed(0)
    net = module.build_model().eval()
    size = model.resolution
    x = torch.randn(batch, 3, size, size)
    x_last = x.contiguous(memory_format=torch.channels_last)
    folded = module.fuse_for_inference(net)
    calls = {}
    with torch.inference_mode():
        calls["eager"] = lambda: net(x)
        calls["folded_cl"] = lambda: folded(x_last)
    if args.compile:
        calls.update(compiled_paths(folded, x_last, Path(args.workdir) / f"{spec}-{batch}.pt2"))
    onnx_path = Path(args.workdir) / f"{spec}-{batch}.onnx"
    # What `effspec export --format onnx` writes, from this very model (random weights), without the
    # export's self-check: a deep untrained model (V2-S) amplifies float rounding past its tolerance.
    export_options = export_module.ExportOptions(format="onnx", batch=batch)
    export_module._write_onnx(net, x, onnx_path, export_options, ["logits"])
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    images = x.numpy()
    calls["onnxruntime"] = lambda: session.run(None, {"images": images})
    timm = import_timm()
    peer = timm.create_model(TIMM[spec], pretrained=False).eval()
    with torch.inference_mode():
        calls["timm_eager"] = lambda: peer(x)
    return calls


COMPILE_SECONDS: dict[str, float] = {}  # path: seconds its last compile took (reported, not timed)


def compiled_paths(folded, x_last, package: Path) -> dict:
    """torch.compile and AOTInductor of the folded channels_last model, compiled outside the timing."""
    import torch
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True  # inference only: weights as constants, oneDNN convs prepacked and fused
    options = {"guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe}
    calls = {}
    with torch.inference_mode():
        start = time.perf_counter()
        compiled = torch.compile(folded, options=options)
        compiled(x_last)
        COMPILE_SECONDS["folded_compile"] = time.perf_counter() - start
        calls["folded_compile"] = lambda: compiled(x_last)
        start = time.perf_counter()
        program = torch.export.export(folded, (x_last,))
        written = torch._inductor.aoti_compile_and_package(program, package_path=str(package))
        loaded = torch._inductor.aoti_load_package(written)
        loaded(x_last)
        COMPILE_SECONDS["folded_aoti"] = time.perf_counter() - start
        calls["folded_aoti"] = lambda: loaded(x_last)
    return calls


def keras_child(spec: str, batch: int, iterations: int, runs: int) -> None:
    """Runs in a child process with KERAS_BACKEND set: generated vs keras.applications."""
    import keras
    import numpy as np

    from effspec.emit.pipeline import build
    from effspec.weights.generated import load_model_module

    model = build(ROOT / "specs" / f"{spec}.yaml").model
    ours = load_model_module(model, "keras").build_model()
    size = model.resolution
    theirs = getattr(keras.applications, KERAS_APPLICATIONS[spec])(weights=None, input_shape=(size, size, 3))
    x = np.random.default_rng(0).standard_normal((batch, size, size, 3)).astype("float32")
    calls = {"keras_generated": lambda: ours.predict_on_batch(x)}
    calls["keras_applications"] = lambda: theirs.predict_on_batch(x)
    print(json.dumps([time_alternately(calls, iterations) for _ in range(runs)]))


def keras_paths(spec: str, batch: int, backend: str, args: argparse.Namespace) -> list[dict[str, float]]:
    """One dict of times per run, from one child process on ``backend`` (its threads: TensorFlow's
    and XLA's own defaults)."""
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, __file__, "--keras-child", spec, str(batch), str(args.iterations), str(args.runs)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"keras {backend} child failed:\n{done.stderr[-3000:]}")
    runs = json.loads(done.stdout.strip().splitlines()[-1])
    return [{f"{name}_{backend}": value for name, value in times.items()} for times in runs]


RATIOS = (  # (peer, ours): peer time / our time
    ("timm_eager", "eager"),
    ("timm_eager", "folded_cl"),
    ("onnxruntime", "folded_cl"),
    ("onnxruntime", "folded_compile"),
    ("onnxruntime", "folded_aoti"),
    ("timm_eager", "folded_aoti"),
    ("keras_applications_tensorflow", "keras_generated_tensorflow"),
    ("keras_applications_jax", "keras_generated_jax"),
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["efficientnet-b0", "efficientnetv2-s"], choices=sorted(TIMM))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--keras", nargs="*", default=[], choices=["tensorflow", "jax"])
    parser.add_argument("--compete", action="store_true")
    parser.add_argument("--threads", default="free", help="free (default), usable or a number")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--keras-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.keras_child:
        spec, batch, iterations, runs = args.keras_child
        keras_child(spec, int(batch), int(iterations), int(runs))
        return
    warnings.simplefilter("ignore")

    results = []
    with competing(args.compete), tempfile.TemporaryDirectory(prefix="effspec-bench-") as workdir:
        args.threads = pick_threads(args.threads)  # torch's intra-op threads from here on
        args.workdir = workdir
        for spec in args.models:
            for batch in args.batches:
                calls = torch_paths(spec, batch, args)
                keras_runs = [keras_paths(spec, batch, backend, args) for backend in args.keras]
                for run in range(args.runs):
                    times = time_alternately(calls, args.iterations)
                    for backend_runs in keras_runs:
                        times.update(backend_runs[run])
                    ratios = {f"{peer}/{ours}": times[peer] / times[ours] for peer, ours in RATIOS
                              if peer in times and ours in times}  # fmt: skip
                    row = {"model": spec, "batch": batch, "run": run, "ms": {k: v * 1e3 for k, v in times.items()},
                           "ratios": ratios, "load": load_average(),
                           "compile_s": {k: round(v, 1) for k, v in COMPILE_SECONDS.items()}}  # fmt: skip
                    results.append(row)
                    print(json.dumps(row), flush=True)
    print_summary(results, args)
    if args.json:
        args.json.write_text(json.dumps({"environment": environment(args), "results": results}, indent=1))


def pick_threads(policy: str | int) -> int:
    """--threads: free (the usable CPUs less those other processes keep busy), usable, or a number;
    set as torch's intra-op threads and returned (onnxruntime's sessions take it too)."""
    import torch

    if str(policy) == "free":
        threads = free_cpus(interval=0.5)
    elif str(policy) == "usable":
        threads = usable_cpus()
    elif str(policy).isdigit() and int(policy) >= 1:
        threads = int(policy)
    else:
        raise SystemExit(f"--threads {policy}: free, usable or a positive number")
    torch.set_num_threads(threads)
    return threads


def environment(args: argparse.Namespace) -> dict:
    import onnxruntime
    import torch

    try:
        from importlib.metadata import version

        timm_version = version("timm")
    except Exception:  # noqa: BLE001 (reported, not needed)
        timm_version = "?"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs, {usable_cpus()} usable",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "timm": timm_version,
        "threads": args.threads,
        "compete": args.compete,
    }


def print_summary(results: list[dict], args: argparse.Namespace) -> None:
    env = environment(args)
    print("\n" + ", ".join(f"{k}: {v}" for k, v in env.items()))
    print(f"\n| model | batch | ratio (peer time / ours) | median | range (over {args.runs} runs) |")
    print("|---|---|---|---|---|")
    keys = sorted({(r["model"], r["batch"]) for r in results}, key=lambda k: (args.models.index(k[0]), k[1]))
    for model, batch in keys:
        rows = [r for r in results if (r["model"], r["batch"]) == (model, batch)]
        for name in rows[0]["ratios"]:
            values = [r["ratios"][name] for r in rows]
            print(f"| {model} | {batch} | {name} | {statistics.median(values):.2f} | "
                  f"{min(values):.2f}-{max(values):.2f} |")  # fmt: skip
    loads = [r["load"] for r in results]
    print(f"\nload averages (1, 5, 15 min) at each run: {'; '.join(loads)}")
    compiles = [f"{r['model']} b{r['batch']} {r['compile_s']}" for r in results if r["run"] == 0 and r["compile_s"]]
    if compiles:
        print(f"compile seconds (not timed): {'; '.join(compiles)}")


if __name__ == "__main__":
    main()
