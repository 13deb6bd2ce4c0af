"""The latency of a generated model: the median time of one forward pass (torch or Keras), measured
after warm-up. torch or Keras load only here, only for a latency target."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from effspec.support.errors import UsageError

if TYPE_CHECKING:
    from effspec.core.ir import Model


def measure_latency(model: Model, backend: str, device: str, batch: int, repeats: int = 20) -> float:
    """Median milliseconds of one forward pass of the generated ``backend`` model (after warm-up)."""
    import sys
    import tempfile
    import time

    from effspec.emit.modules import import_file
    from effspec.emit.pipeline import emit

    files = emit(model, [backend])
    (rel, texts), *_ = files.items()
    with tempfile.TemporaryDirectory(prefix="effspec-latency-") as tmp:
        path = Path(tmp) / "model.py"
        path.write_text(texts["model.py"], encoding="utf-8")
        module = import_file(path, f"_effspec_latency_{abs(hash(rel))}_{len(sys.modules)}")
        res = model.resolution
        channels = model.input.channels
        times = []
        if backend == "torch":
            import torch

            if device == "cuda" and not torch.cuda.is_available():
                raise UsageError("--device cuda: torch sees no CUDA device")
            net = module.build_model().eval().to(device)
            x = torch.randn(batch, channels, res, res, device=device)
            sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
            with torch.inference_mode():
                for i in range(repeats + 5):
                    sync()
                    t0 = time.perf_counter()
                    net(x)
                    sync()
                    if i >= 5:
                        times.append(time.perf_counter() - t0)
        else:
            import keras
            import numpy as np

            if device == "cuda" and not _keras_sees_a_gpu():
                raise UsageError(f"--device cuda: Keras ({keras.backend.backend()} backend) sees no GPU")
            with keras.device("gpu:0" if device == "cuda" else "cpu:0"):
                net = module.build_model(input_shape=(res, res, channels))
                x = np.random.default_rng(0).standard_normal((batch, res, res, channels)).astype("float32")
                for i in range(repeats + 5):  # predict_on_batch: the compiled inference step, not eager calls
                    t0 = time.perf_counter()
                    net.predict_on_batch(x)
                    if i >= 5:
                        times.append(time.perf_counter() - t0)
        sys.modules.pop(module.__name__, None)
    times.sort()
    return 1000 * times[len(times) // 2]


def _keras_sees_a_gpu() -> bool:
    import keras

    name = keras.backend.backend()
    if name == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if name == "torch":
        import torch

        return torch.cuda.is_available()
    if name == "jax":
        import jax

        return any(device.platform == "gpu" for device in jax.devices())
    return False
