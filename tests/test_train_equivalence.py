"""`effspec check --train-steps K`: the two trainers take the same steps (docs/equivalence.md).

B0 and V2-B0 run the check's default 10 steps at 64 px, batch 4 (rmsprop + exponential decay, the
spec's recipe; sgd + cosine); the tiny spec covers adamw and the command line; a corrupted
optimizer (Keras' own SGD, which keeps the learning rate inside its momentum) must fail at the
first step whose rate differs from the previous one's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("keras")

from effspec.cli import main  # noqa: E402
from effspec.support.vision import import_torchvision  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "tests" / "data" / "torch_v2_tiny.yaml")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def run(spec: str, **settings):
    from effspec.equivalence.training import TrainSettings, run_train_check

    return run_train_check(spec, TrainSettings(**settings))


def assert_passes(result) -> None:
    from effspec.equivalence.training import table

    assert result.ok, table(result)
    quantities = {row.quantity for row in result.rows}
    assert {"loss", "lr", "weights", "bn mean", "bn variance", "ema weights", "ema bn variance"} <= quantities
    assert any(q.startswith("optimizer ") for q in quantities)
    assert max(row.step for row in result.rows) == result.steps


@pytest.mark.slow
def test_b0_trains_the_same_for_10_steps() -> None:
    result = run(str(ROOT / "specs" / "efficientnet-b0.yaml"))  # the spec's rmsprop, exponential decay
    assert_passes(result)
    assert "rmsprop" in result.recipe and "exponential" in result.recipe


@pytest.mark.slow
def test_v2_b0_trains_the_same_for_10_steps_with_sgd_and_cosine() -> None:
    result = run(str(ROOT / "specs" / "efficientnetv2-b0.yaml"), optimizer="sgd", schedule="cosine")
    assert_passes(result)


@pytest.mark.parametrize(
    ("optimizer", "schedule"), [("adamw", "exponential"), ("adamw", "cosine"), ("rmsprop", "cosine")]
)
def test_every_optimizer_and_schedule_on_the_tiny_spec(optimizer: str, schedule: str) -> None:
    assert_passes(run(TINY, optimizer=optimizer, schedule=schedule, steps=6, resolution=32))


def test_keras_sgd_with_the_rate_inside_its_momentum_fails_at_the_first_rate_change(monkeypatch) -> None:
    """Keras' own SGD (velocity = momentum x velocity - lr x g): the same update as torch's while the
    rate is constant, another one once warmup changes it (step 2 of 6: warmup is 1 step here)."""
    import keras
    from effspec.backends.keras.runtime import optim

    class KerasSGD(optim.WeightAverage, keras.optimizers.SGD):
        pass

    monkeypatch.setattr(optim, "SGD", KerasSGD)
    result = run(TINY, optimizer="sgd", steps=6, resolution=32)
    weights = [row for row in result.rows if row.quantity == "weights" and not row.row.ok]
    assert weights and min(row.step for row in weights) == 2
    assert all(row.row.ok for row in result.rows if row.step == 1 and row.quantity == "weights")


def test_keras_own_batch_norm_update_fails_at_the_first_step(monkeypatch) -> None:
    """Keras' BatchNormalization moves its running variance with the biased batch variance; the
    generated BatchNorm (torch's and TF1's unbiased one) is what makes the statistics agree."""
    import keras

    from effspec.emit.pipeline import build
    from effspec.weights.generated import load_model_module

    module = load_model_module(build(TINY).model, "keras")
    monkeypatch.setattr(module.BatchNorm, "call", keras.layers.BatchNormalization.call)
    result = run(TINY, optimizer="sgd", steps=2, resolution=32)
    failed = [row for row in result.rows if not row.row.ok]
    assert failed and min(row.step for row in failed) == 1
    assert {row.quantity for row in failed if row.step == 1} <= {"bn variance", "ema bn variance"}


def test_an_l2_loss_term_in_one_trainer_fails_the_loss_at_the_first_step(monkeypatch) -> None:
    """The Keras trainer used to add weight_decay / 2 x sum(w^2) to its loss (same gradient), so its
    reported loss was not torch's cross-entropy: caught on the loss at step 1."""
    import keras
    from effspec.backends.keras.runtime import optim

    def as_loss_term(self, variables, decay) -> None:
        for variable in variables:
            variable.regularizer = keras.regularizers.L2(decay / 2)

    monkeypatch.setattr(optim.WeightAverage, "decay_in_gradient", as_loss_term)
    result = run(TINY, optimizer="rmsprop", steps=2, resolution=32)
    failed = [row for row in result.rows if not row.row.ok]
    assert failed and (failed[0].step, failed[0].quantity) == (1, "loss")


def test_dropout_and_drop_path_are_driven_by_the_same_masks(monkeypatch) -> None:
    """The tiny spec's dropout and drop-path run in the check with shared masks: Keras left with
    masks of all ones (nothing dropped) is caught at the first step."""
    from effspec.equivalence import training

    monkeypatch.setattr(training.SharedMasks, "assign_keras", lambda self: None)  # the variables stay 1
    result = run(TINY, optimizer="sgd", steps=2, resolution=32)
    assert "dropout 0.2 and drop-path" in result.recipe and "same masks" in result.recipe
    failed = [row for row in result.rows if not row.row.ok]
    assert failed and failed[0].step == 1 and failed[0].quantity == "loss"


def test_the_budget_grows_with_the_step_and_with_float32s_own_error() -> None:
    from effspec.equivalence.budget import EPS32
    from effspec.equivalence.training import budget_at

    assert budget_at(1, 0.0, 1.0) == pytest.approx(4 * EPS32)
    assert budget_at(10, 0.0, 1.0) == pytest.approx(40 * EPS32)
    assert budget_at(3, 1e-3, 1.0) == pytest.approx(16e-3)


def test_cli_json_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", TINY, "--train-steps", "2", "--resolution", "32", "--optimizer", "adamw", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0, out["first_failure"]
    assert out["mode"] == "train-steps" and out["ok"] and out["steps"] == 2
    assert {row["step"] for row in out["rows"]} == {1, 2}
    assert all(np.isfinite(row["keras_error"]) for row in out["rows"])
    assert main(["check", TINY, "--optimizer", "sgd"]) == 2  # only with --train-steps
    assert "go with --train-steps" in capsys.readouterr().err
    assert main(["check", TINY, "--train-steps", "2", "--batch", "1"]) == 2


GREY_MEAN = 0.5  # grey levels (of 255): mean |torch - keras| of a decoded, resized, normalized image
GREY_MAX = 10.0  # and the largest: PIL rounds to 8 bits and clips after each of its two 1-D passes, TF stays float


def _images(root: Path) -> dict[str, Path]:
    from PIL import Image
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(0)
    digit = (load_digits().images[5] * (255 / 16)).astype(np.uint8)
    images = {
        "digit": Image.fromarray(digit, mode="L").resize((32, 32), Image.Resampling.BILINEAR),  # grey PNG
        "noise": Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)),
        "gradient": Image.fromarray(
            np.stack([*np.meshgrid(np.linspace(0, 255, 70), np.linspace(40, 200, 50)), np.full((50, 70), 99.0)], -1)
            .round()
            .astype(np.uint8)
        ),
    }
    paths = {}
    for name, image in images.items():
        paths[name] = root / f"{name}.png"
        image.save(paths[name])
    return paths


@pytest.mark.parametrize(
    ("name", "size", "fraction"),
    [("digit", 24, 1.0), ("digit", 64, 1.0), ("noise", 24, 1.0), ("noise", 20, 0.875), ("gradient", 40, 0.875)],
)
def test_the_same_image_gives_the_same_tensor_in_both_trainers(tmp_path: Path, name: str, size: int, fraction: float):
    """Decode, centre crop, resize (bicubic, antialiased when shrinking) and normalize: the torch
    trainer's eval transform (PIL) and the Keras trainer's (tf.image) agree within GREY_MEAN/GREY_MAX."""
    import argparse

    import_torchvision()
    from effspec.backends.keras.runtime import data as keras_data
    from effspec.backends.torch.runtime import data as torch_data

    net = argparse.Namespace(MEAN=(0.485, 0.456, 0.406), STD=(0.229, 0.224, 0.225))
    args = argparse.Namespace(eval_resolution=size, crop_fraction=fraction, steps_per_epoch=0, batch_size=1)
    path = _images(tmp_path)[name]
    torch_image = torch_data.eval_transform(args, net)(torch_data.load_rgb(str(path))).numpy().transpose(1, 2, 0)
    pipeline = keras_data.Data(
        args, net, keras_data.Split(np.array([str(path)]), np.zeros(1, np.int32), False), None, False
    )
    import tensorflow as tf

    view = tf.function(lambda file: keras_data.center_crop(keras_data.decode(file), size, fraction))  # as tf.data
    keras_image = pipeline.normalize(view(tf.constant(str(path)))).numpy()
    assert keras_image.shape == torch_image.shape == (size, size, 3)
    grey = np.abs(keras_image - torch_image) * np.array(net.STD) * 255
    assert grey.mean() <= GREY_MEAN and grey.max() <= GREY_MAX, (grey.mean(), grey.max())


def test_the_random_crops_follow_the_same_distribution() -> None:
    """The Keras trainer's stateless crop draws what torchvision's RandomResizedCrop draws: area
    fraction and aspect ratio distributions agree (means within 0.01 over 4,000 draws)."""
    import torch

    import_torchvision()
    import tensorflow as tf
    from effspec.backends.keras.runtime.data import crop_box
    from torchvision import transforms as T

    height, width, draws = 40, 56, 4000
    torch.manual_seed(0)
    image = torch.zeros(3, height, width)
    torch_boxes = np.array(
        [T.RandomResizedCrop.get_params(image, (0.08, 1.0), (3 / 4, 4 / 3))[2:] for _ in range(draws)]
    )
    extents = tf.function(  # every draw in one graph: one seed per position, as the data pipeline
        lambda: tf.map_fn(
            lambda i: crop_box(tf.constant(height), tf.constant(width), tf.stack([tf.constant(0, tf.int64), i]))[1],
            tf.range(draws, dtype=tf.int64),
            fn_output_signature=tf.int32,
        )
    )
    keras_boxes = np.array(extents().numpy())
    for boxes in (torch_boxes, keras_boxes):
        assert boxes.min() >= 1 and (boxes[:, 0] <= height).all() and (boxes[:, 1] <= width).all()
    area = [np.mean(b[:, 0] * b[:, 1]) / (height * width) for b in (torch_boxes, keras_boxes)]
    ratio = [np.mean(np.log(b[:, 1] / b[:, 0])) for b in (torch_boxes, keras_boxes)]
    assert abs(area[0] - area[1]) < 0.01 and abs(ratio[0] - ratio[1]) < 0.01, (area, ratio)


@pytest.mark.parametrize("size", [24, 12])
def test_synthetic_data_is_the_same_in_both_trainers(size: int) -> None:
    """--data synthetic: one generator (backends/synthetic.py), so the same seed gives the same labels
    and, through each trainer's own resize and normalization, the same input tensors."""
    import argparse
    from types import SimpleNamespace

    import torch
    from effspec.backends.keras.runtime.data import Data, resized, synthetic_splits
    from effspec.backends.torch.runtime.data import SyntheticImages

    net = SimpleNamespace(MEAN=(0.485, 0.456, 0.406), STD=(0.229, 0.224, 0.225))
    torch_set = SyntheticImages(12, 4, 5, 3, torch.device("cpu"), net)
    train, val = synthetic_splits(12, 4, 5, 3)
    assert torch_set.labels.tolist() == [*train.labels.tolist(), *val.labels.tolist()]
    assert len(set(train.labels.tolist())) > 1

    args = argparse.Namespace(steps_per_epoch=0, batch_size=4, eval_resolution=size, num_classes=5)
    data = Data(args, net, train, val, static=False)
    keras_val = np.concatenate([np.asarray(x) for x, _ in data.val()])
    torch_val, _ = torch_set.batch(list(range(12, 16)), size)
    np.testing.assert_allclose(keras_val, torch_val.permute(0, 2, 3, 1).numpy(), atol=1e-5)

    keras_train = np.stack([np.asarray(data.normalize(resized(image, size))) for image in train.images[:4]])
    torch_train, _ = torch_set.batch([0, 1, 2, 3], size)
    np.testing.assert_allclose(keras_train, torch_train.permute(0, 2, 3, 1).numpy(), atol=1e-5)
