"""The Keras half of the check: build, load converted weights, eval outputs and one SGD step.

Imported only by ``check`` (itself imported lazily by the CLI handler), so TensorFlow loads on demand.
"""

from __future__ import annotations

import os
from types import ModuleType

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter is not our output

import keras  # noqa: E402
import numpy as np  # noqa: E402

from effspec.support.errors import UsageError  # noqa: E402


def build(module: ModuleType) -> keras.Model:
    """The generated model with dropout and drop-path off (so train steps are deterministic)."""
    return module.build_model(dropout=0.0, drop_path_rate=0.0)


def feature_maps(model: keras.Model, images: np.ndarray) -> list[np.ndarray]:
    """The backbone's maps for NCHW ``images``, returned NCHW like torch's."""
    maps = model(nhwc(images.astype(np.float32)), training=False)
    return [nchw(keras.ops.convert_to_numpy(output)) for output in maps]


def nhwc(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(images, (0, 2, 3, 1)))


def nchw(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(array, (0, 3, 1, 2))) if array.ndim == 4 else array


def eval_outputs(module: ModuleType, model: keras.Model, images: np.ndarray) -> list[np.ndarray]:
    """[stem, each stage, features, logits] for NCHW ``images``, returned NCHW like torch's."""
    extractor = module.build_feature_extractor(model)
    x = nhwc(images.astype(np.float32))
    maps = extractor(x, training=False)
    logits = model(x, training=False)
    return [nchw(keras.ops.convert_to_numpy(output)) for output in (*maps, logits)]


def train_step(model: keras.Model, images: np.ndarray, labels: np.ndarray, lr: float) -> None:
    """One plain SGD step (no momentum, no weight decay) on mean cross-entropy, in training mode;
    batch norms update their moving statistics during the forward pass."""
    if keras.backend.backend() != "tensorflow":
        raise UsageError(f"--train-step needs the TensorFlow Keras backend, found {keras.backend.backend()!r}")
    import tensorflow as tf

    x = nhwc(images.astype(np.float32))
    with tf.GradientTape() as tape:
        logits = model(x, training=True)
        loss = keras.ops.mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))
    gradients = tape.gradient(loss, model.trainable_variables)
    optimizer = keras.optimizers.SGD(learning_rate=lr, momentum=0.0)
    optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
