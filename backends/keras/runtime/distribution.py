"""tf.distribute: the strategy (one device, mirrored, multi-worker, TPU), precision, sync BN."""

from __future__ import annotations

import argparse
import json
import os

import keras
import tensorflow as tf


def make_strategy(args: argparse.Namespace) -> tuple[tf.distribute.Strategy, str]:
    """The tf.distribute strategy and its kind: one, mirrored, multiworker or tpu."""
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
        return tf.distribute.MultiWorkerMirroredStrategy(), kind
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
    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    return "float32"


def sync_batch_norm(args: argparse.Namespace, strategy: tf.distribute.Strategy) -> bool:
    if args.sync_bn is None:
        return bool(strategy.num_replicas_in_sync > 1)
    return bool(args.sync_bn)


def synchronize_batch_norm(model: keras.Model) -> None:
    """Batch statistics over the global batch, as the reference does on TPU (Keras reads
    ``synchronized`` at each call: moments are all-reduced over replicas)."""
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Only one worker of a multi-worker run writes checkpoints and logs."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    resolver = strategy.cluster_resolver
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return bool(not has_chief and resolver.task_type == "worker" and resolver.task_id == 0)
