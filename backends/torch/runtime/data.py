"""Batches: seeded synthetic images, or an image folder through torchvision's transforms.

Every random draw (order, crop, flip, AutoAugment/RandAugment, mixup) is seeded by (seed, epoch,
position), so a resumed run sees the batches an uninterrupted one would.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F

from effspec.support.errors import TrainingError
from effspec.support.images import Listing, first_decodable, list_split, open_image, read_local

from ...recipe import ProgressiveStage
from ...synthetic import synthetic_images
from .distributed import Runtime

Batch = tuple[torch.Tensor, torch.Tensor]


def epoch_order(sample_count: int, seed: int, epoch: int) -> torch.Tensor:
    """The same shuffled order on every process: each then takes its slice."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(sample_count, generator=generator)


def rank_batches(order: torch.Tensor, global_batch: int, runtime: Runtime, start_step: int) -> list[list[int]]:
    """Process r takes images [r * b, (r + 1) * b) of each global batch (b per rank)."""
    per_rank = global_batch // runtime.world_size
    first = runtime.rank * per_rank
    steps = len(order) // global_batch
    return [order[step * global_batch + first :][:per_rank].tolist() for step in range(start_step, steps)]


def mixup(
    images: torch.Tensor, labels: torch.Tensor, alpha: float, seed: int, step: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Blend each image with its mirror in the batch, lam ~ Beta(alpha, alpha)."""
    if alpha <= 0:
        return images, labels, labels, 1.0
    lam = random.Random(seed * 1_000_003 + step).betavariate(alpha, alpha)
    mixed = images * lam + images.flip(0) * (1.0 - lam)
    return mixed, labels, labels.flip(0), lam


class SyntheticImages:
    """``--data synthetic`` (backends/synthetic.py: the Keras trainer's very images and labels), held
    at their stored size and resized (bilinear, on the training device) to the size a batch asks for."""

    def __init__(
        self, train_count: int, val_count: int, num_classes: int, seed: int, device: torch.device, net: ModuleType
    ) -> None:
        images, labels = synthetic_images(train_count, val_count, num_classes, seed)
        self.sources = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)
        self.labels = torch.from_numpy(labels).to(device)
        self.mean = torch.tensor(net.MEAN, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(net.STD, device=device).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices: list[int], image_size: int) -> Batch:
        index = torch.tensor(indices, dtype=torch.long, device=self.sources.device)
        images = F.interpolate(self.sources[index], size=(image_size, image_size), mode="bilinear")
        return (images - self.mean) / self.std, self.labels[index]


def load_rgb(path: str) -> Any:
    """One image file as 8-bit RGB (Pillow), decoded by the policy both trainers share."""
    return open_image(read_local(path))


class FolderSamples(torch.utils.data.Dataset):
    """Image-folder samples whose random transform is seeded by (seed, epoch, index).

    A key is (epoch, index, stage): the stage picks the transform (progressive learning changes
    size and RandAugment magnitude). A file that passed the listing's header check but does not
    decode is replaced by the next sample (imagefiles.first_decodable, as in the Keras trainer),
    with one note: never a traceback mid-epoch.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], transforms: Sequence[Any], seed: int) -> None:
        self.samples = samples
        self.transforms = transforms
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[torch.Tensor, int]:
        epoch, index, stage = key
        image, label = first_decodable(self.samples, index, read_local)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + epoch) * 1_000_033 + index)
            return self.transforms[stage](image), label


def train_transform(stage: ProgressiveStage, args: argparse.Namespace, net: ModuleType) -> Any:
    """RandomResizedCrop (bicubic) or, with --no-random-crop, the evaluation view at the stage's
    size; flip unless --no-flip; AutoAugment or RandAugment; normalize."""
    from effspec.support.vision import import_torchvision

    T = import_torchvision().transforms

    bicubic = T.InterpolationMode.BICUBIC
    if args.random_crop:
        steps = [T.RandomResizedCrop(stage.image_size, interpolation=bicubic, antialias=True)]
    else:
        steps = [
            T.Resize(int(stage.image_size / args.crop_fraction), interpolation=bicubic, antialias=True),
            T.CenterCrop(stage.image_size),
        ]
    if args.flip:
        steps.append(T.RandomHorizontalFlip())
    if args.augmentation == "autoaugment":
        steps.append(T.AutoAugment(T.AutoAugmentPolicy.IMAGENET))
    elif args.augmentation == "randaugment":
        # TF magnitudes run 0..10; torchvision's bins 0..30 of the same range.
        magnitude = min(30, max(0, round(stage.randaugment_magnitude * 3)))
        steps.append(T.RandAugment(2, magnitude, num_magnitude_bins=31))
    steps += [T.ToTensor(), T.Normalize(net.MEAN, net.STD)]
    return T.Compose(steps)


def eval_transform(args: argparse.Namespace, net: ModuleType) -> Any:
    """Bicubic resize to resolution / crop_fraction, then a center crop."""
    from effspec.support.vision import import_torchvision

    T = import_torchvision().transforms

    resize = int(args.eval_resolution / args.crop_fraction)
    bicubic = T.InterpolationMode.BICUBIC
    return T.Compose(
        [
            T.Resize(resize, interpolation=bicubic, antialias=True),
            T.CenterCrop(args.eval_resolution),
            T.ToTensor(),
            T.Normalize(net.MEAN, net.STD),
        ]
    )


def image_folders(root: Path, quiet: bool = False) -> tuple[Listing, Listing]:
    """DIR/train and DIR/val, listed and checked (the same policy as the Keras trainer)."""
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise TrainingError(
                f"--data {root}: no {split}/ folder (expected the layout "
                f"{root}/train/<class>/<image> and {root}/val/<class>/<image>)"
            )
    train = list_split(str(root / "train"))
    val = list_split(str(root / "val"), train.classes)
    for split, listing in (("train", train), ("val", val)):
        note = listing.note(str(root / split))
        if note and not quiet:
            print(note, file=sys.stderr)
    return train, val


def import_transforms() -> None:
    """torchvision through effspec.support.vision (which copes with a torchvision whose compiled operators
    do not load: the transforms used here are pure Python)."""
    from effspec.support.vision import import_torchvision

    try:
        import_torchvision()
    except (ImportError, RuntimeError) as exc:
        raise TrainingError(f"--data DIR needs torchvision, which does not import ({exc})") from exc


def use_cpus(args: argparse.Namespace) -> None:
    """Settle --workers and --threads from the CPUs this process may use (effspec.support.cpus), shared by
    torchrun's local processes, and set torch's intra-op threads. OMP_NUM_THREADS, when set and
    --threads is not, is left to decide the threads."""
    import os

    from effspec.support.cpus import free_cpus, split_cpus

    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    threads, args.workers = split_cpus(processes, args.workers if args.data != "synthetic" else 0)
    if args.threads is None and os.environ.get("OMP_NUM_THREADS"):
        args.threads = torch.get_num_threads()
        return
    if args.threads is None and processes == 1:  # not the CPUs another process keeps busy (torchrun's
        threads = min(threads, free_cpus())  # ranks, starting together, would count each other)
    args.threads = args.threads or threads
    torch.set_num_threads(args.threads)


class Data:
    """Batches for one process: its slice of each global batch, at the stage's size."""

    def __init__(
        self, args: argparse.Namespace, runtime: Runtime, stages: Sequence[ProgressiveStage], net: ModuleType
    ) -> None:
        self.args = args
        self.runtime = runtime
        self.stages = stages
        self.synthetic: SyntheticImages | None = None
        use_cpus(args)
        if args.data == "synthetic":
            self.num_classes = args.num_classes or net.NUM_CLASSES
            total = args.synthetic_train_size + args.synthetic_val_size
            self.synthetic = SyntheticImages(
                args.synthetic_train_size, args.synthetic_val_size, self.num_classes, args.seed, runtime.device, net
            )
            self.train_count = args.synthetic_train_size
            val_indices = list(range(self.train_count, total))
        else:
            train, val = image_folders(Path(args.data), quiet=not runtime.is_main)
            import_transforms()
            self.num_classes = args.num_classes or len(train.classes)
            if self.num_classes < len(train.classes):
                raise TrainingError(
                    f"--num-classes {self.num_classes}: {args.data}/train has {len(train.classes)} class folders"
                )
            transforms = [train_transform(stage, args, net) for stage in stages]
            self.train_set = FolderSamples(train.samples, transforms, args.seed)
            self.val_set = FolderSamples(val.samples, [eval_transform(args, net)], args.seed)
            self.train_count = len(train.samples)
            val_indices = list(range(len(val.samples)))
        self.val_indices = val_indices[runtime.rank :: runtime.world_size]

    @property
    def steps_per_epoch(self) -> int:
        return self.train_count // self.args.batch_size

    def train_batches(self, epoch: int, stage: int, start_step: int) -> Iterable[Batch]:
        order = epoch_order(self.train_count, self.args.seed, epoch)
        batches = rank_batches(order, self.args.batch_size, self.runtime, start_step)
        if self.synthetic is not None:
            synthetic, size = self.synthetic, self.stages[stage].image_size
            return (synthetic.batch(indices, size) for indices in batches)
        keys = [[(epoch, index, stage) for index in batch] for batch in batches]
        return self._loader(self.train_set, keys)

    def val_batches(self) -> Iterable[Batch]:
        per_rank = self.args.batch_size // self.runtime.world_size
        chunks = [self.val_indices[start : start + per_rank] for start in range(0, len(self.val_indices), per_rank)]
        if self.synthetic is not None:
            synthetic, size = self.synthetic, self.args.eval_resolution
            return (synthetic.batch(indices, size) for indices in chunks)
        keys = [[(0, index, 0) for index in chunk] for chunk in chunks]
        return self._loader(self.val_set, keys)

    def _loader(self, dataset: FolderSamples, keys: list[list[tuple[int, int, int]]]) -> Iterator[Batch]:
        workers = self.args.workers
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=keys,
            num_workers=workers,
            pin_memory=self.runtime.device.type == "cuda",
            prefetch_factor=4 if workers > 0 else None,
        )
        return iter(loader)
