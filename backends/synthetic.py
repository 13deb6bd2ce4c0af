"""``--data synthetic``: the same seeded images and labels in both trainers (numpy only).

Image i is its class's fixed random pattern (4 x 4 blocks of colour) plus its own noise, stored at
SOURCE_SIZE x SOURCE_SIZE with values in 0..1: a model can learn it, nothing is downloaded, and a
seed gives the same set in torch and Keras. Each trainer resizes a batch to the size it needs with
its framework's bilinear resize (half-pixel centres, no antialiasing: the same interpolation).
"""

from __future__ import annotations

import numpy as np

SOURCE_SIZE = 16
PATTERN_CELLS = 4  # a class's pattern: PATTERN_CELLS x PATTERN_CELLS blocks
PATTERN_WEIGHT = 0.6  # image = weight x pattern + (1 - weight) x noise


def synthetic_images(train_count: int, val_count: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """train_count + val_count images (N, SOURCE_SIZE, SOURCE_SIZE, 3) float32 in 0..1 and their int64
    labels: the first train_count train, the rest validate."""
    rng = np.random.default_rng(seed)
    block = SOURCE_SIZE // PATTERN_CELLS
    patterns = rng.random((num_classes, PATTERN_CELLS, PATTERN_CELLS, 3), dtype=np.float32)
    patterns = patterns.repeat(block, axis=1).repeat(block, axis=2)
    count = train_count + val_count
    labels = rng.integers(0, num_classes, size=count, dtype=np.int64)
    noise = rng.random((count, SOURCE_SIZE, SOURCE_SIZE, 3), dtype=np.float32)
    images = PATTERN_WEIGHT * patterns[labels] + (1.0 - PATTERN_WEIGHT) * noise
    return images.astype(np.float32), labels
