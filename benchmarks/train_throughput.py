"""Training throughput: the generated torch model against timm's twin, and Keras on TF against JAX.

    python benchmarks/train_throughput.py [--models efficientnet-b0 efficientnetv2-s] [--batch 4]
        [--size N] [--steps 3] [--runs 3] [--compile] [--keras] [--threads N]

One training step = forward, cross-entropy, backward, SGD update, in train mode, channels_last model
and inputs on both sides, float32, random weights. The generated model and timm's TF-SAME twin
(``tf_efficientnet_b0``..., ``tf_efficientnetv2_s``: the same function) each run in a fresh child
process, one after the other, in alternating order per run: images per second (median step after
two warm-up steps) and peak memory (the child's maximum resident set growth from before the first step).
``--compile`` adds both under ``torch.compile`` (compiled in the warm-up). ``--keras`` adds the
generated Keras model's ``train_on_batch`` on the TensorFlow and the JAX backend. Ratios are
ours / peer images per second (> 1: ours faster), per run; median and range over the runs.
``--size`` trains at a smaller resolution than the spec's (CPU: keeps a run short).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from inference import TIMM, load_average  # noqa: E402

from effspec.support.cpus import usable_cpus  # noqa: E402


def peak_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def torch_child(spec: str, which: str, batch: int, size: int | None, steps: int, compiled: bool, threads: int) -> dict:
    import torch

    from effspec.emit.pipeline import build
    from effspec.support.vision import import_timm
    from effspec.weights.generated import load_model_module

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build(ROOT / "specs" / f"{spec}.yaml").model
    if which == "generated":
        net = load_model_module(model, "torch").build_model()
    else:
        net = import_timm().create_model(TIMM[spec], pretrained=False)
    net = net.train().to(memory_format=torch.channels_last)
    size = size or model.resolution
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    forward = torch.compile(net) if compiled else net

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(forward(x), y).backward()
        optimizer.step()

    before = peak_kib()  # the step's activations, gradients and optimizer state come after this
    step()
    step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"images_per_s": batch / statistics.median(times), "peak_mib": (peak_kib() - before) / 1024}


def keras_child(spec: str, batch: int, size: int | None, steps: int) -> dict:
    import keras
    import numpy as np

    from effspec.emit.pipeline import build
    from effspec.weights.generated import load_model_module

    model = build(ROOT / "specs" / f"{spec}.yaml").model
    size = size or model.resolution
    net = load_model_module(model, "keras").build_model(input_shape=(size, size, 3))
    net.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))  # fmt: skip
    x = np.random.default_rng(0).standard_normal((batch, size, size, 3)).astype("float32")
    y = np.random.default_rng(1).integers(0, 1000, (batch,))
    before = peak_kib()
    net.train_on_batch(x, y)
    net.train_on_batch(x, y)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        net.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    return {"images_per_s": batch / statistics.median(times), "peak_mib": (peak_kib() - before) / 1024}


def child(args: argparse.Namespace, *job: str, env: dict | None = None) -> dict:
    command = [sys.executable, __file__, "--child", *job, "--batch", str(args.batch), "--steps", str(args.steps),
               "--threads", str(args.threads)] + (["--size", str(args.size)] if args.size else [])  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False, env={**os.environ, **(env or {})})
    if done.returncode:
        raise SystemExit(f"{' '.join(job)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["efficientnet-b0", "efficientnetv2-s"], choices=sorted(TIMM))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--keras", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.threads = args.threads or usable_cpus()
    if args.child:
        kind, spec, *rest = args.child
        if kind == "keras":
            result = keras_child(spec, args.batch, args.size, args.steps)
        else:
            which, compiled = rest
            result = torch_child(spec, which, args.batch, args.size, args.steps, compiled == "1", args.threads)
        print(json.dumps(result))
        return
    rows = []
    for spec in args.models:
        for run in range(args.runs):
            results = {}
            for mode in ("0", "1") if args.compile else ("0",):
                order = ("generated", "timm") if run % 2 == 0 else ("timm", "generated")
                for which in order:
                    results[f"{which}{'_compile' if mode == '1' else ''}"] = child(args, "torch", spec, which, mode)
            if args.keras:
                for backend in ("tensorflow", "jax"):
                    env = {"KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
                    results[f"keras_{backend}"] = child(args, "keras", spec, env=env)
            ratios = {}
            for ours, peer in (("generated", "timm"), ("generated_compile", "timm_compile"),
                               ("keras_jax", "keras_tensorflow")):  # fmt: skip
                if ours in results and peer in results:
                    ratios[f"{ours}/{peer}"] = results[ours]["images_per_s"] / results[peer]["images_per_s"]
            row = {"model": spec, "run": run, "results": results, "ratios": ratios, "load": load_average()}
            rows.append(row)
            print(json.dumps(row), flush=True)
    import torch

    env = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {usable_cpus()} usable",
        "torch": torch.__version__,
        "threads": args.threads,
    }
    print("\n" + ", ".join(f"{k}: {v}" for k, v in env.items()))
    header = f"| model | ratio (images/s, ours / peer) | median | range ({args.runs} runs) | peak MiB ours / peer |"
    print("\n" + header)
    print("|---|---|---|---|---|")
    for spec in args.models:
        spec_rows = [r for r in rows if r["model"] == spec]
        for name in spec_rows[0]["ratios"]:
            values = [r["ratios"][name] for r in spec_rows]
            ours, peer = name.split("/")
            memory = [(r["results"][ours]["peak_mib"], r["results"][peer]["peak_mib"]) for r in spec_rows]
            mem = "; ".join(f"{a:.0f} / {b:.0f}" for a, b in memory)
            spread = f"{min(values):.2f}-{max(values):.2f}"
            print(f"| {spec} | {name} | {statistics.median(values):.2f} | {spread} | {mem} |")
    print(f"\nload averages at each run: {'; '.join(r['load'] for r in rows)}")
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "results": rows}, indent=1))


if __name__ == "__main__":
    main()
