"""Scaling curve: inference and training of the generated B0..B3 against timm's twins, in one run, so a
regression at any size shows.

    python benchmarks/scaling.py [--models efficientnet-b0 ... efficientnet-b3] [--runs 3]
        [--batch 1] [--train-batch 2] [--train-size N] [--threads free|usable|N] [--compete]

Per model: inference at the spec's resolution (``--batch``; eager, BN-folded channels_last and
onnxruntime on effspec's ONNX export against timm's ``tf_efficientnet_bN`` eager, timed alternately:
benchmarks/inference.py's paths) and training steps (``--train-batch``, at ``--train-size`` or the
spec's resolution; generated against timm in one process, steps alternating:
benchmarks/train_throughput.py's). Ratios are always "timm time / ours" (inference) and "ours / timm
images per second" (training): > 1, ours faster. Median and range over ``--runs`` runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference import RATIOS, competing, environment, load_average, pick_threads, time_alternately, torch_paths  # noqa: E402
from train_throughput import interleaved  # noqa: E402

MODELS = ["efficientnet-b0", "efficientnet-b1", "efficientnet-b2", "efficientnet-b3"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=5, help="inference calls per path per run")
    parser.add_argument("--batch", type=int, default=1, help="inference batch")
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--train-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=3, help="training steps per model per run")
    parser.add_argument("--threads", default="free")
    parser.add_argument("--compete", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")

    args.compile = False
    train_args = argparse.Namespace(compile=False, batch=args.train_batch, size=args.train_size, runs=args.runs,
                                    steps=args.steps)  # fmt: skip
    rows = []
    with competing(args.compete), tempfile.TemporaryDirectory(prefix="effspec-scaling-") as workdir:
        args.threads = pick_threads(args.threads)  # torch's intra-op threads from here on
        args.workdir = workdir
        for spec in args.models:
            calls = torch_paths(spec, args.batch, args)
            inference = [time_alternately(calls, args.iterations) for _ in range(args.runs)]
            del calls
            training, _ = interleaved(spec, train_args)
            for run in range(args.runs):
                times, speeds = inference[run], training[run]
                ratios = {f"inference {peer}/{ours}": times[peer] / times[ours] for peer, ours in RATIOS
                          if peer in times and ours in times}  # fmt: skip
                ratios["training generated/timm"] = speeds["generated"] / speeds["timm"]
                row = {"model": spec, "run": run, "ratios": ratios, "load": load_average(),
                       "ms": {k: v * 1e3 for k, v in times.items()}, "images_per_s": speeds}  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
    env = environment(args)
    print("\n" + ", ".join(f"{k}: {v}" for k, v in env.items()))
    names = list(rows[0]["ratios"])
    print(f"\nmedian (range over {args.runs} runs); inference batch {args.batch}, training batch {args.train_batch}")
    print("\n| model | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for spec in args.models:
        cells = []
        for name in names:
            values = [r["ratios"][name] for r in rows if r["model"] == spec]
            cells.append(f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})")
        print(f"| {spec} | " + " | ".join(cells) + " |")
    print(f"\nload averages at each run: {'; '.join(r['load'] for r in rows)}")
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "results": rows}, indent=1))


if __name__ == "__main__":
    main()
