"""tf.data pipelines: seeded synthetic images, or an image folder (local or gs://).

An epoch's order and every random crop, flip and mixup draw are stateless functions of (seed,
epoch, position), so a resumed run sees exactly the batches it would have seen (Keras'
RandAugment layer draws from its own generator, which a resume does not replay).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from effspec.support.errors import TrainingError
from effspec.support.images import LOCAL, FileSystem, first_decodable, list_split, open_image, read_local

from ...recipe import ProgressiveStage
from ...synthetic import synthetic_images


def _gfile_head(path: str) -> bytes:
    with tf.io.gfile.GFile(path, "rb") as handle:
        return handle.read(12)


GFILE = FileSystem(listdir=tf.io.gfile.listdir, isdir=tf.io.gfile.isdir, head=_gfile_head)


@dataclass(frozen=True)
class Split:
    """Training or validation examples: in-memory uint8 images or image file paths."""

    images: np.ndarray  # (N, H, W, 3) float32 0..255 (synthetic), or (N,) file paths
    labels: np.ndarray  # (N,) int32
    decoded: bool  # True: `images` holds pixels

    def __len__(self) -> int:
        return len(self.labels)


def synthetic_splits(train_count: int, val_count: int, num_classes: int, seed: int) -> tuple[Split, Split]:
    """``--data synthetic`` (backends/synthetic.py: the torch trainer's very images and labels), as
    0..255 pixels at their stored size; batches resize them to the size they need."""
    images, labels = synthetic_images(train_count, val_count, num_classes, seed)
    images, labels = images * np.float32(255.0), labels.astype(np.int32)
    train = Split(images[:train_count], labels[:train_count], decoded=True)
    return train, Split(images[train_count:], labels[train_count:], decoded=True)


def resized(image: tf.Tensor, size: int) -> tf.Tensor:
    """A synthetic image at ``size``: bilinear, half-pixel centres, no antialiasing (torch's
    F.interpolate(mode="bilinear"), which the torch trainer applies to the same images)."""
    if image.shape[0] == size:
        return image
    return tf.image.resize(image, (size, size), method="bilinear")


def folder_split(directory: str, classes: tuple[str, ...] | None = None) -> tuple[Split, tuple[str, ...]]:
    """<directory>/<class>/<image>, listed and checked by the policy both trainers share."""
    listing = list_split(directory, classes, GFILE if "://" in directory else LOCAL)
    note = listing.note(directory)
    if note:
        print(note, file=sys.stderr)
    paths = np.array([path for path, _ in listing.samples])
    labels = np.array([label for _, label in listing.samples], np.int32)
    return Split(paths, labels, decoded=False), listing.classes


def _read(path: str) -> bytes:
    """A whole file: tf.io.gfile for URLs (gs://), else the OS (tf.io.gfile cannot list or open a
    file whose name is not UTF-8, such as a Latin-1 name)."""
    if "://" not in path:
        return read_local(path)
    with tf.io.gfile.GFile(path, "rb") as handle:
        return handle.read()


def decode(path: tf.Tensor | str) -> tf.Tensor:
    """One image file as float32 0..255 RGB, decoded by Pillow as the torch trainer decodes it
    (imagefiles.open_image: CMYK, 16-bit, palette, grayscale; bombs refused)."""

    def load(name: bytes) -> np.ndarray:
        return np.asarray(open_image(_read(os.fsdecode(name))), np.uint8)

    image = tf.numpy_function(load, [path], tf.uint8, stateful=False)
    return tf.cast(tf.ensure_shape(image, [None, None, 3]), tf.float32)


def decode_sample(split: Split, index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Sample ``index`` of a folder split, or the next one that decodes (imagefiles.first_decodable,
    the torch trainer's policy): float32 0..255 RGB and its label."""
    samples = [(str(path), int(label)) for path, label in zip(split.images, split.labels, strict=True)]

    def load(position: np.int64) -> tuple[np.ndarray, np.int32]:
        image, label = first_decodable(samples, int(position), _read)
        return np.asarray(image, np.uint8), np.int32(label)

    image, label = tf.numpy_function(load, [index], (tf.uint8, tf.int32), stateful=False)
    return tf.cast(tf.ensure_shape(image, [None, None, 3]), tf.float32), tf.ensure_shape(label, [])


CROP_AREA = (0.08, 1.0)  # random-resized crop: fraction of the image's area
CROP_RATIO = (3 / 4, 4 / 3)  # and aspect ratio (width / height), drawn log-uniformly
CROP_ATTEMPTS = 10


def crop_box(height: tf.Tensor, width: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The torch trainer's crop (torchvision's RandomResizedCrop) as a stateless draw: up to 10
    candidates of area U(8%, 100%) and log-uniform aspect 3/4..4/3 (sides rounded half to even);
    the first that fits, at a uniform position; else the centre crop of the whole image at the
    nearest allowed aspect. Returns (top, left), (crop height, crop width).

    tf.image.sample_distorted_bounding_box draws the crop's height uniformly instead of its area
    (smaller crops on average) and would give the two trainers different augmentations."""
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    draws = tf.random.stateless_uniform([4, CROP_ATTEMPTS], seed=tf.random.experimental.stateless_fold_in(seed, 7))
    area = h * w * (CROP_AREA[0] + (CROP_AREA[1] - CROP_AREA[0]) * draws[0])
    low, high = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    ratio = tf.exp(low + (high - low) * draws[1])
    crop_w, crop_h = tf.round(tf.sqrt(area * ratio)), tf.round(tf.sqrt(area / ratio))
    fits = (crop_w > 0) & (crop_w <= w) & (crop_h > 0) & (crop_h <= h)
    first = tf.argmax(tf.cast(fits, tf.int32))
    top = tf.floor(draws[2][first] * (h - crop_h[first] + 1))
    left = tf.floor(draws[3][first] * (w - crop_w[first] + 1))
    aspect = w / h  # no candidate fits: the centre crop
    fallback_w = tf.where(aspect < CROP_RATIO[0], w, tf.where(aspect > CROP_RATIO[1], tf.round(h * CROP_RATIO[1]), w))
    fallback_h = tf.where(aspect < CROP_RATIO[0], tf.round(w / CROP_RATIO[0]), h)
    found = tf.reduce_any(fits)
    box_h = tf.where(found, crop_h[first], fallback_h)
    box_w = tf.where(found, crop_w[first], fallback_w)
    top = tf.where(found, top, tf.floor((h - box_h) / 2))
    left = tf.where(found, left, tf.floor((w - box_w) / 2))
    return tf.cast(tf.stack([top, left]), tf.int32), tf.cast(tf.stack([box_h, box_w]), tf.int32)


def resize(image: tf.Tensor, size: int) -> tf.Tensor:
    """Bicubic (Keys, a = -0.5) with antialiasing when shrinking: PIL's bicubic resize, which the
    torch trainer uses (a plain tf.image.resize aliases: 143 grey levels off on noise at 37 -> 24 px)."""
    return tf.image.resize(image, (size, size), method="bicubic", antialias=True)


def random_resized_crop(image: tf.Tensor, size: int, seed: tf.Tensor) -> tf.Tensor:
    """A random crop (``crop_box``) resized to size x size."""
    shape = tf.shape(image)
    begin, extent = crop_box(shape[0], shape[1], seed)
    image = tf.slice(image, tf.concat([begin, [0]], 0), tf.concat([extent, [-1]], 0))
    return resize(tf.ensure_shape(image, [None, None, 3]), size)


def center_crop(image: tf.Tensor, size: int, fraction: float) -> tf.Tensor:
    """The torch trainer's evaluation view (torchvision's Resize then CenterCrop): the image resized
    so that its shorter side is int(size / fraction) and the longer in proportion (truncated), then
    its central size x size (offsets rounded half to even). Cropping first and resizing the crop
    instead lands up to a pixel away and filters other pixels at the edges."""
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float64), tf.cast(shape[1], tf.float64)
    shorter = tf.constant(float(int(size / fraction)), tf.float64)
    new_height = tf.where(height <= width, shorter, tf.floor(shorter * height / width))
    new_width = tf.where(height <= width, tf.floor(shorter * width / height), shorter)
    extent = tf.cast(tf.stack([new_height, new_width]), tf.int32)
    image = tf.image.resize(image, extent, method="bicubic", antialias=True)
    top = tf.cast(tf.round((new_height - size) / 2), tf.int32)
    left = tf.cast(tf.round((new_width - size) / 2), tf.int32)
    return image[top : top + size, left : left + size]


def mixup(images: tf.Tensor, labels: tf.Tensor, alpha: float, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Blend each example with the batch reversed, weight ~ Beta(alpha, alpha)."""
    first = tf.random.stateless_gamma([], seed=seed, alpha=alpha)
    second = tf.random.stateless_gamma([], seed=seed + 1, alpha=alpha)
    weight = first / (first + second)
    images = weight * images + (1 - weight) * tf.reverse(images, [0])
    labels = weight * labels + (1 - weight) * tf.reverse(labels, [0])
    return images, labels


class Data:
    """The training split per (epoch, stage), and validation."""

    def __init__(
        self, args: argparse.Namespace, net: ModuleType, train: Split, val: Split | None, static: bool
    ) -> None:
        self.args = args
        self.train_split = train
        self.val_split = val
        self.static = static  # TPU: every batch the same shape
        self.mean = tf.constant(net.MEAN, tf.float32) * 255.0
        self.std = tf.constant(net.STD, tf.float32) * 255.0
        self.steps_per_epoch = args.steps_per_epoch or max(1, len(train) // args.batch_size)
        self._val: tf.data.Dataset | None = None

    def train(self, epoch: int, stage: ProgressiveStage, skip: int, steps: int) -> tf.data.Dataset:
        """Batches skip .. skip + steps of epoch `epoch`, at the stage's image size."""
        args, split, batch = self.args, self.train_split, self.args.batch_size
        count = len(split)
        order = tf.random.experimental.stateless_shuffle(tf.range(count, dtype=tf.int64), seed=[args.seed, epoch])
        # decoded splits only: a folder's paths stay in Python (a Latin-1 file name is no UTF-8 tensor)
        images, labels = (tf.constant(split.images), tf.constant(split.labels)) if split.decoded else (None, None)
        epoch_seed = args.seed * 65_537 + epoch
        augment = None if split.decoded else self._augmenter(stage, epoch_seed)

        def example(position: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            index = order[position % count]
            seed = tf.stack([tf.constant(epoch_seed, tf.int64), position])
            if split.decoded:
                image, label = resized(tf.cast(images[index], tf.float32), stage.image_size), labels[index]
            else:
                image, label = decode_sample(split, index)
                if args.random_crop:
                    image = random_resized_crop(image, stage.image_size, seed)
                else:  # the evaluation view at the stage's size (the torch trainer's Resize + CenterCrop)
                    image = center_crop(image, stage.image_size, args.crop_fraction)
                if args.flip:
                    image = tf.image.stateless_random_flip_left_right(image, seed)
                if augment is not None:
                    image = augment(image)
            return self.normalize(image), tf.one_hot(label, args.num_classes), position

        dataset = tf.data.Dataset.range(skip * batch, (skip + steps) * batch)
        dataset = dataset.map(example, num_parallel_calls=tf.data.AUTOTUNE)
        dataset = dataset.batch(batch, drop_remainder=True)
        if stage.mixup_alpha > 0:
            alpha = stage.mixup_alpha
            dataset = dataset.map(
                lambda x, y, p: mixup(x, y, alpha, tf.stack([p[0], epoch_seed + 1])),
                num_parallel_calls=tf.data.AUTOTUNE,
            )
        else:
            dataset = dataset.map(lambda x, y, p: (x, y))
        return self._finish(dataset)

    def val(self) -> tf.data.Dataset | None:
        """The validation set at --eval-resolution, center-cropped; built once."""
        if self.val_split is None:
            return None
        if self._val is None:
            split, size = self.val_split, self.args.eval_resolution
            images, labels = (tf.constant(split.images), tf.constant(split.labels)) if split.decoded else (None, None)

            def example(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
                if split.decoded:
                    image, label = resized(tf.cast(images[index], tf.float32), size), labels[index]
                else:
                    image, label = decode_sample(split, index)
                    image = center_crop(image, size, self.args.crop_fraction)
                return self.normalize(image), tf.one_hot(label, self.args.num_classes)

            dataset = tf.data.Dataset.range(len(split))
            dataset = dataset.map(example, num_parallel_calls=tf.data.AUTOTUNE)
            dataset = dataset.batch(self.args.batch_size, drop_remainder=self.static)
            self._val = self._finish(dataset)
        return self._val

    def normalize(self, image: tf.Tensor) -> tf.Tensor:
        """0..255 pixels -> the model's input: (x / 255 - MEAN) / STD."""
        return (tf.clip_by_value(image, 0.0, 255.0) - self.mean) / self.std

    def _augmenter(self, stage: ProgressiveStage, seed: int) -> Any:
        if self.args.augmentation == "none" or stage.randaugment_magnitude <= 0:
            return None
        return keras.layers.RandAugment(
            value_range=(0, 255),
            num_ops=2,
            factor=min(1.0, stage.randaugment_magnitude / 10.0),
            seed=seed,
            dtype="float32",
        )

    def _finish(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
        options = tf.data.Options()
        # Several workers: each takes its share of every global batch.
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def open_data(args: argparse.Namespace, net: ModuleType, stages: tuple[ProgressiveStage, ...], static: bool) -> Data:
    """Check the data source and list it; every problem is a one-line TrainingError.

    Also settles --num-classes: the spec's for synthetic data, else the class folders'.
    """
    if args.data == "synthetic":
        args.num_classes = args.num_classes or net.NUM_CLASSES
        train, val = synthetic_splits(args.synthetic_train_size, args.synthetic_val_size, args.num_classes, args.seed)
        return Data(args, net, train, val, static)
    root = args.data.rstrip("/")
    if not tf.io.gfile.isdir(root):
        raise TrainingError(
            f"--data {root}: no such directory (expected 'synthetic' or a directory with "
            "train/<class>/<image> and val/<class>/<image>)"
        )
    train, classes = folder_split(f"{root}/train")
    args.num_classes = args.num_classes or len(classes)
    if len(classes) > args.num_classes:
        raise TrainingError(
            f"{root}/train has {len(classes)} classes but the model has {args.num_classes} outputs: "
            f"pass --num-classes {len(classes)}"
        )
    val = None
    if tf.io.gfile.isdir(f"{root}/val"):
        val, _ = folder_split(f"{root}/val", classes)
    else:
        print(f"note: no {root}/val: training without validation", file=sys.stderr)
    if not args.steps_per_epoch and len(train) < args.batch_size:
        raise TrainingError(
            f"{root}/train has {len(train)} images, fewer than one global batch (--batch-size {args.batch_size})"
        )
    return Data(args, net, train, val, static)
