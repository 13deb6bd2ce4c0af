"""Where the Keras trainer runs: the strategy (one device, mirrored, multi-worker, TPU), precision,
sync BN; on Keras' TensorFlow backend through tf.distribute, on its JAX backend through
keras.distribution (the backend is KERAS_BACKEND's, read by Keras at import)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Any

import keras
import tensorflow as tf

from effspec.support.errors import TrainingError


def on_jax() -> bool:
    return bool(keras.backend.backend() == "jax")


class JaxDataParallel:
    """Keras' own data parallelism on JAX (keras.distribution.DataParallel, how Keras trains on a TPU
    pod slice): the variables replicated on every device, each global batch split over them, one
    jit-compiled SPMD step. Batch-norm statistics, dropout and drop-path masks are those of the
    global batch (XLA computes them across the shards), so --sync-bn is inherent here.

    Quacks like the tf.distribute strategy the loop uses (scope(), num_replicas_in_sync)."""

    def __init__(self, devices: list[Any]) -> None:
        self.devices = devices
        self.num_replicas_in_sync = len(devices)
        if len(devices) > 1:
            keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        where = f"{len(devices)} {devices[0].platform} device{'s' if len(devices) > 1 else ''}"
        print(f"keras (jax): data parallel over {where}", file=sys.stderr)

    def scope(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()


def make_jax_strategy(args: argparse.Namespace) -> tuple[JaxDataParallel, str]:
    """DataParallel over every device JAX sees (all TPU cores of the VM, all GPUs, or --cpu-devices
    host devices); kind "tpu" on TPU devices (bfloat16, static batch shapes). With --strategy
    multiworker each process joins JAX's distributed runtime first (keras.distribution.initialize:
    on a TPU pod slice it finds the coordinator itself)."""
    import jax

    if args.tpu:
        raise TrainingError("--tpu NAME is TensorFlow's TPUStrategy; with KERAS_BACKEND=jax run on the TPU VM itself")
    if args.cpu_devices > 1:  # before JAX initializes its CPU backend
        try:
            jax.config.update("jax_num_cpu_devices", args.cpu_devices)
        except RuntimeError as error:
            raise TrainingError(f"--cpu-devices {args.cpu_devices}: JAX is already initialized ({error})") from None
    if args.strategy == "multiworker":
        keras.distribution.initialize()
    devices = jax.devices()
    platform = devices[0].platform
    if args.strategy == "one":
        devices = devices[:1]
    elif args.strategy == "tpu" and platform != "tpu":
        raise TrainingError(f"--strategy tpu: JAX sees no TPU (its devices are {platform})")
    kind = "tpu" if platform == "tpu" else "one" if len(devices) == 1 else args.strategy
    if kind == "auto":
        kind = "multiworker" if jax.process_count() > 1 else "mirrored"
    return JaxDataParallel(devices), kind


class MultiWorkerMirrored(tf.distribute.MultiWorkerMirroredStrategy):
    """TF's multi-worker strategy, taking the reduce() calls Keras 3's fit() makes with it:

    - its first (x, y) batch in one call (to build the model symbolically), which TensorFlow's
      multi-worker strategy takes one tensor at a time ("Attempt to convert a value (PerReplica...)
      to a Tensor"): here element by element;
    - every step's logs (scalar losses and metrics) as MEAN over axis 0, which a scalar has not
      ("Invalid reduction dimension 0 for input with 0 dimensions"): scalars are averaged over
      the replicas."""

    def reduce(self, reduce_op: Any, value: Any, axis: Any) -> Any:
        parent = super()

        def one(part: Any) -> Any:
            local = part.values[0] if isinstance(part, tf.distribute.DistributedValues) else part
            scalar = axis is not None and tf.convert_to_tensor(local).shape.rank == 0
            return parent.reduce(reduce_op, part, None if scalar else axis)

        return tf.nest.map_structure(one, value)


def make_strategy(args: argparse.Namespace) -> tuple[Any, str]:
    """The strategy and its kind: one, mirrored, multiworker or tpu."""
    if on_jax():
        if args.deterministic:  # tf.data still feeds the batches
            tf.config.experimental.enable_op_determinism()
        return make_jax_strategy(args)
    if args.cpu_devices > 1:  # before anything initializes the runtime
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * args.cpu_devices)
    if args.deterministic:
        tf.config.experimental.enable_op_determinism()
    kind = auto_strategy(args) if args.strategy == "auto" else args.strategy
    if kind == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=args.tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver), kind
    if kind == "multiworker":  # the cluster and this worker's role come from TF_CONFIG
        return MultiWorkerMirrored(), kind
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy([device.name for device in devices]), kind
    return tf.distribute.OneDeviceStrategy(devices[0].name), kind


def auto_strategy(args: argparse.Namespace) -> str:
    if args.tpu or os.environ.get("TPU_NAME"):
        return "tpu"
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    if len(cluster.get("worker", [])) + len(cluster.get("chief", [])) > 1:
        return "multiworker"
    if len(tf.config.list_physical_devices("GPU")) > 1 or args.cpu_devices > 1:
        return "mirrored"
    return "one"


def precision_policy(args: argparse.Namespace, kind: str) -> str:
    """bfloat16 compute on TPU, float16 (loss-scaled) on GPU, float32 otherwise."""
    if args.precision != "auto":
        return str(args.precision)
    if kind == "tpu":
        return "mixed_bfloat16"
    if on_jax():
        import jax

        return "mixed_float16" if jax.devices()[0].platform == "gpu" else "float32"
    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    return "float32"


def sync_batch_norm(args: argparse.Namespace, strategy: Any) -> bool:
    if isinstance(strategy, JaxDataParallel):
        return False  # already global: one SPMD program over the global batch
    if args.sync_bn is None:
        return bool(strategy.num_replicas_in_sync > 1)
    return bool(args.sync_bn)


def synchronize_batch_norm(model: keras.Model) -> None:
    """Batch statistics over the global batch, as the reference does on TPU (Keras reads
    ``synchronized`` at each call: moments are all-reduced over replicas)."""
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True


def is_chief(strategy: Any) -> bool:
    """Only one worker of a multi-worker run writes checkpoints and logs."""
    if isinstance(strategy, JaxDataParallel):
        import jax

        return bool(jax.process_index() == 0)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    resolver = strategy.cluster_resolver
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return bool(not has_chief and resolver.task_type == "worker" and resolver.task_id == 0)


def lost_worker(error: BaseException) -> str | None:
    """One line for TensorFlow's report that another worker of a multi-worker run stopped (its
    collectives fail once the coordination service misses the worker's heartbeats); None for any
    other error."""
    lost = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError)
    if not isinstance(error, lost) or not os.environ.get("TF_CONFIG"):
        return None
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # After TensorFlow's traceback of where the op was defined: the reason, then node names.
    reasons = [line for line in lines if not line.startswith(("File ", "Detected at node", "Graph execution", "[["))]
    reason = (reasons or lines or [type(error).__name__])[0]
    return (
        f"a worker of this multi-worker run stopped ({type(error).__name__}: {reason[:300]}); "
        "start every worker again with --resume to continue from the last checkpoint"
    )
