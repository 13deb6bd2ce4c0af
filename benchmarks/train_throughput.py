"""Training throughput: the generated torch model against timm's twin in one process, and Keras on
TensorFlow against Keras on JAX.

    python benchmarks/train_throughput.py [--models efficientnet-b0 efficientnetv2-s] [--batch 4]
        [--size N] [--steps 5] [--runs 3] [--compile] [--keras] [--threads free|usable|N] [--compete]

One training step = forward, cross-entropy, backward, SGD with momentum, in train mode, channels_last
model and inputs on both sides, float32, random weights, the same batch, the spec's dropout and
drop-path rates on both (timm's default drop path is 0). The generated model and
timm's TF-SAME twin (``tf_efficientnet_b0``..., ``tf_efficientnetv2_s``: the same function) live in
ONE process and are timed in alternating steps (the order flips every step), so both see the same
machine; ``--compile`` adds both under ``torch.compile`` (compiled in the warm-up, outside the
timing). Each run gives images per second per variant (batch / median step) and the ratios
generated / timm of the same run; the summary gives the median and range over ``--runs``.

Peak memory comes from a separate short process per variant (memory does not depend on the load;
in one process the two models' allocations would mix): after two warm-up steps, the peak resident
memory of one step above the resident memory before it (activations and gradients; the weights and
the optimizer state are already resident), with glibc told to return large buffers to the system
(``MALLOC_MMAP_THRESHOLD_``) so that freed activations do not hide the next step's.

``--keras`` trains the generated Keras model (``train_on_batch``) on the TensorFlow and on the JAX
backend: one process per backend (Keras picks its backend at import), one after the other, the same
number of runs in each; their ratio is JAX / TensorFlow images per second.
``--size`` trains at a smaller resolution than the spec's (CPU: keeps a run short). ``--threads``
and ``--compete``: as in benchmarks/inference.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from inference import TIMM, competing, load_average, pick_threads  # noqa: E402

from effspec.support.cpus import usable_cpus  # noqa: E402

MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072"}  # fixed: large buffers mmapped, returned when freed


def training_step(spec: str, which: str, batch: int, size: int | None, compiled: bool):
    """A closure running one training step of ``which`` (generated or timm) on a fixed batch."""
    import torch

    from effspec.emit.pipeline import build
    from effspec.support.vision import import_timm
    from effspec.weights.generated import load_model_module

    torch.manual_seed(0)
    model = build(ROOT / "specs" / f"{spec}.yaml").model
    module = load_model_module(model, "torch")  # the spec's dropout and drop path on both sides
    regularization = {"drop_rate": module.DROPOUT, "drop_path_rate": module.DROP_PATH_RATE}
    if which == "generated":
        net = module.build_model()
    else:
        net = import_timm().create_model(TIMM[spec], pretrained=False, **regularization)
    net = net.train().to(memory_format=torch.channels_last)
    size = size or model.resolution
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, size, size, generator=generator).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), generator=generator)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    forward = torch.compile(net) if compiled else net

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(forward(x), y).backward()
        optimizer.step()

    return step


def interleaved(spec: str, args: argparse.Namespace) -> tuple[list[dict[str, float]], dict[str, float]]:
    """Images per second of every variant per run, all in this process, steps alternating; and the
    seconds each variant's warm-up took (its compile)."""
    variants = [("generated", False), ("timm", False)]
    if args.compile:
        variants += [("generated", True), ("timm", True)]
    steps, warmup = {}, {}
    for which, compiled in variants:
        name = which + ("_compile" if compiled else "")
        steps[name] = training_step(spec, which, args.batch, args.size, compiled)
        start = time.perf_counter()
        steps[name]()
        steps[name]()
        warmup[name] = time.perf_counter() - start
    runs = []
    for _ in range(args.runs):
        times: dict[str, list[float]] = {name: [] for name in steps}
        for index in range(args.steps):
            for name in list(steps)[:: 1 if index % 2 == 0 else -1]:
                start = time.perf_counter()
                steps[name]()
                times[name].append(time.perf_counter() - start)
        runs.append({name: args.batch / statistics.median(values) for name, values in times.items()})
    return runs, warmup


def vm_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_child(spec: str, which: str, compiled: bool, args: argparse.Namespace) -> dict:
    """One step's peak resident memory above the resident memory before it, after two warm-up steps."""
    step = training_step(spec, which, args.batch, args.size, compiled)
    step()
    step()
    resident = vm_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (the peak) to the current RSS
    step()
    return {"step_peak_mib": (vm_kib("VmHWM") - resident) / 1024, "resident_mib": resident / 1024}


def keras_child(spec: str, args: argparse.Namespace) -> dict:
    """Images per second of the generated Keras model, per run, on this process's Keras backend."""
    import keras
    import numpy as np

    from effspec.emit.pipeline import build
    from effspec.weights.generated import load_model_module

    model = build(ROOT / "specs" / f"{spec}.yaml").model
    size = args.size or model.resolution
    net = load_model_module(model, "keras").build_model(input_shape=(size, size, 3))
    net.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))  # fmt: skip
    x = np.random.default_rng(0).standard_normal((args.batch, size, size, 3)).astype("float32")
    y = np.random.default_rng(1).integers(0, 1000, (args.batch,))
    net.train_on_batch(x, y)
    net.train_on_batch(x, y)
    runs = []
    for _ in range(args.runs):
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            net.train_on_batch(x, y)
            times.append(time.perf_counter() - start)
        runs.append(args.batch / statistics.median(times))
    return {"images_per_s": runs}


def child(args: argparse.Namespace, *job: str, env: dict | None = None) -> dict:
    command = [sys.executable, __file__, "--child", *job, "--batch", str(args.batch), "--steps", str(args.steps),
               "--runs", str(args.runs), "--threads", str(args.threads)]  # fmt: skip
    command += ["--size", str(args.size)] if args.size else []
    done = subprocess.run(command, capture_output=True, text=True, check=False, env={**os.environ, **(env or {})})
    if done.returncode:
        raise SystemExit(f"{' '.join(job)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


RATIOS = (("generated", "timm"), ("generated_compile", "timm_compile"), ("generated_compile", "timm"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["efficientnet-b0", "efficientnetv2-s"], choices=sorted(TIMM))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--keras", action="store_true")
    parser.add_argument("--memory", choices=["all", "eager", "none"], default="all",
                        help="variants measured in a memory process (each compiles again)")  # fmt: skip
    parser.add_argument("--keras-only", action="store_true", help="only the Keras processes (with --keras)")
    parser.add_argument("--compete", action="store_true")
    parser.add_argument("--threads", default="free", help="free (default), usable or a number")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import warnings

    warnings.simplefilter("ignore")
    if args.child:
        args.threads = int(args.threads)
        kind, spec, *rest = args.child
        if kind == "keras":
            result = keras_child(spec, args)
        else:
            import torch

            torch.set_num_threads(args.threads)
            result = memory_child(spec, rest[0], rest[1] == "1", args)
        print(json.dumps(result))
        return
    import torch

    rows, memory = [], {}
    with competing(args.compete):
        args.threads = pick_threads(args.threads)  # torch's intra-op threads from here on
        for spec in args.models:
            runs, warmup = ([{} for _ in range(args.runs)], {}) if args.keras_only else interleaved(spec, args)
            keras = {}
            if args.keras:
                for backend in ("tensorflow", "jax"):
                    env = {"KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
                    keras[f"keras_{backend}"] = child(args, "keras", spec, env=env)["images_per_s"]
            for run, results in enumerate(runs):
                results.update({name: values[run] for name, values in keras.items()})
                ratios = {f"{a}/{b}": results[a] / results[b] for a, b in (*RATIOS, ("keras_jax", "keras_tensorflow"))
                          if a in results and b in results}  # fmt: skip
                row = {"model": spec, "run": run, "images_per_s": results, "ratios": ratios, "load": load_average(),
                       "warmup_s": {k: round(v, 1) for k, v in warmup.items()}}  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
            if args.memory != "none":
                for name in [name for name in warmup if args.memory == "all" or not name.endswith("_compile")]:
                    which, compiled = name.split("_")[0], "1" if name.endswith("_compile") else "0"
                    memory[(spec, name)] = child(args, "torch", spec, which, compiled, env=MALLOC)
                    print(json.dumps({"model": spec, "variant": name, **memory[(spec, name)]}), flush=True)
    summary(rows, memory, args)


def summary(rows: list[dict], memory: dict, args: argparse.Namespace) -> None:
    env = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {usable_cpus()} usable",
        "python": platform.python_version(),
        "torch": __import__("torch").__version__,
        "threads": args.threads,
        "compete": args.compete,
    }
    print("\n" + ", ".join(f"{k}: {v}" for k, v in env.items()))
    print(f"\n| model | ratio (images/s) | median | range ({args.runs} runs) |")
    print("|---|---|---|---|")
    for spec in args.models:
        spec_rows = [r for r in rows if r["model"] == spec]
        for name in spec_rows[0]["ratios"]:
            values = [r["ratios"][name] for r in spec_rows]
            print(f"| {spec} | {name} | {statistics.median(values):.2f} | {min(values):.2f}-{max(values):.2f} |")
    if memory:
        print("\n| model | variant | one step's peak above resident, MiB | resident after warm-up, MiB |")
        print("|---|---|---|---|")
        for (spec, name), value in memory.items():
            print(f"| {spec} | {name} | {value['step_peak_mib']:.0f} | {value['resident_mib']:.0f} |")
    print(f"\nload averages at each run: {'; '.join(r['load'] for r in rows)}")
    warm = [f"{r['model']} {r['warmup_s']}" for r in rows if r["run"] == 0]
    print(f"warm-up seconds (2 steps, compile included): {'; '.join(warm)}")
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "results": rows,
                                         "memory": [{"model": s, "variant": n, **v} for (s, n), v in memory.items()]},
                                        indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
