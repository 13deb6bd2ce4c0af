"""Inference speed: the generated Keras B0 against keras.applications.EfficientNetB0, in one run.

    python benchmarks/keras_inference.py [--batch-size 8] [--iterations 5] [--size 224] [--jit]

Both models take raw 0..1 pixels (keras.applications puts Rescaling/Normalization inside the model,
so ours is built with include_preprocessing=True) and start from random weights. Each mode times
the two models alternately, after warm-up, and reports the median: images/s and the ratio
generated / keras.applications (> 1 means the generated model is faster). Modes: eager
`model(x, training=False)`, the same call inside tf.function (XLA with --jit), and
`predict_on_batch`.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "generated" / "keras" / "efficientnet_b0" / "model.py"


def load_generated(path: Path):
    if not path.is_file():
        raise SystemExit(f"{path} not found: run `effspec compile specs/efficientnet-b0.yaml --backend keras` first")
    spec = importlib.util.spec_from_file_location("generated_keras_b0", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def time_pair(runs: dict[str, Callable[[], object]], iterations: int, warmup: int) -> dict[str, float]:
    """Median seconds per call for each runner, alternating runners so drift hits both alike."""
    for run in runs.values():
        for _ in range(warmup):
            run()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(iterations):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=5, help="timed calls per model and mode")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first (tracing, caches)")
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--jit", action="store_true", help="XLA-compile the tf.function mode")
    parser.add_argument("--model-py", type=Path, default=DEFAULT_MODEL, help="the generated model.py")
    args = parser.parse_args()

    import keras
    import numpy as np
    import tensorflow as tf

    generated = load_generated(args.model_py)
    keras.utils.set_random_seed(0)
    shape = (args.size, args.size, 3)
    models = {
        "generated": generated.build_model(include_preprocessing=True, input_shape=shape),
        "keras.applications": keras.applications.EfficientNetB0(weights=None, input_shape=shape),
    }
    x = tf.constant(np.random.default_rng(0).uniform(size=(args.batch_size, *shape)).astype("float32"))
    functions = {
        name: tf.function(lambda x, m=m: m(x, training=False), jit_compile=args.jit) for name, m in models.items()
    }
    modes = {
        "eager call": {name: (lambda m=m: m(x, training=False)) for name, m in models.items()},
        "tf.function call" + (" (XLA)" if args.jit else ""): {
            name: (lambda f=f: f(x)) for name, f in functions.items()
        },
        "predict_on_batch": {name: (lambda m=m: m.predict_on_batch(x)) for name, m in models.items()},
    }
    print(
        f"keras {keras.__version__} ({keras.backend.backend()}), batch {args.batch_size}, {args.size}x{args.size}, "
        f"{args.iterations} timed calls after {args.warmup} warm-up, median"
    )
    print(f"{'mode':<24}{'generated img/s':>18}{'keras.apps img/s':>18}{'ratio':>8}")
    for mode, runs in modes.items():
        seconds = time_pair(runs, args.iterations, args.warmup)
        ours = args.batch_size / seconds["generated"]
        theirs = args.batch_size / seconds["keras.applications"]
        print(f"{mode:<24}{ours:>18.1f}{theirs:>18.1f}{ours / theirs:>8.2f}")


if __name__ == "__main__":
    main()
