"""Unit tests of the training runtime's parts, each on its own (no training run): the shared recipe
and flag checks, the image-folder policy, and the torch trainer's optimizer, schedule, weight
average and recomputation. The Keras parts are in test_keras_runtime.py."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from conftest import ROOT, SPECS
from effspec.backends.commands import split_backend
from effspec.backends.common import recipe_source
from effspec.backends.recipe import ProgressiveStage, Recipe, recipe_from_model
from effspec.backends.runtime_args import MINIMUMS, check_numbers, stage_index

from effspec.cli import main as effspec
from effspec.emit.pipeline import build
from effspec.support.errors import TrainingError
from effspec.support.images import image_kind, list_split

PNG = b"\x89PNG\r\n\x1a\n" + bytes(20)
JPEG = b"\xff\xd8\xff\xe0" + bytes(20)


@pytest.mark.parametrize("spec", [*SPECS, ROOT / "tests" / "data" / "torch_v2_tiny.yaml"], ids=lambda p: p.stem)
def test_recipe_printed_in_train_py_reads_back_as_the_spec_recipe(spec: Path) -> None:
    recipe = recipe_from_model(build(spec).model)
    namespace: dict[str, object] = {"Recipe": Recipe, "ProgressiveStage": ProgressiveStage}
    exec(recipe_source(recipe), namespace)
    assert namespace["RECIPE"] == recipe
    assert all(len(line) <= 88 for line in recipe_source(recipe).splitlines())


def test_unknown_recipe_choice_is_refused() -> None:
    recipe = recipe_from_model(build(SPECS[0]).model)
    with pytest.raises(ValueError, match="no optimizer 'lamb'"):
        Recipe(**{**recipe.__dict__, "optimizer": "lamb"})


def namespace(**overrides: object) -> argparse.Namespace:
    values: dict[str, object] = {name: low for name, low in MINIMUMS.items()}
    values.update(lr_per_256=0.1, ema_decay=0.999, dropout=0.2, crop_fraction=0.875, progressive=False)
    values.update(overrides)
    return argparse.Namespace(**values)


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("batch_size", 0, "--batch-size must be at least 1, got 0"),
        ("max_steps", -1, "--max-steps must be at least 1, got -1"),
        ("synthetic_val_size", 0, "--synthetic-val-size must be at least 1"),
        ("checkpoint_every", -5, "--checkpoint-every must be at least 0"),
        ("ema_decay", 1.5, "--ema-decay must be in [0, 1]"),
        ("lr_per_256", float("nan"), "--lr-per-256 must be in"),
        ("crop_fraction", 0.0, "--crop-fraction must be in"),
    ],
)
def test_invalid_numbers_name_the_flag(flag: str, value: object, message: str) -> None:
    recipe = recipe_from_model(build(SPECS[0]).model)
    check_numbers(namespace(), recipe)  # the minimums themselves are fine
    with pytest.raises(TrainingError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_numbers(namespace(**{flag: value}), recipe)


def test_progressive_without_stages_is_refused() -> None:
    recipe = recipe_from_model(build(SPECS[0]).model)  # B0: no progressive section
    with pytest.raises(TrainingError, match="defines no stages"):
        check_numbers(namespace(progressive=True), recipe)


def test_stages_split_the_epochs_evenly() -> None:
    assert [stage_index(epoch, 10, 4) for epoch in range(10)] == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    assert [stage_index(epoch, 3, 4) for epoch in range(3)] == [0, 1, 2]


def test_image_signatures() -> None:
    assert image_kind(PNG) == "png" and image_kind(JPEG) == "jpeg"
    assert image_kind(b"GIF89a......") == "gif" and image_kind(b"RIFF\x00\x00\x00\x00WEBP") == "webp"
    assert image_kind(b"") is None and image_kind(b"<html>") is None


def test_folder_listing_skips_what_is_not_an_image(tmp_path: Path) -> None:
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "a.png").write_bytes(PNG)
    (tmp_path / "cat" / "b.JPG").write_bytes(JPEG)
    (tmp_path / "cat" / "empty.jpg").write_bytes(b"")
    (tmp_path / "dog" / "fake.png").write_bytes(b"GIF? no")
    (tmp_path / "dog" / "readme.txt").write_bytes(PNG)  # an image, but not by its name
    (tmp_path / "dog" / "nested").mkdir()
    listing = list_split(str(tmp_path))
    assert listing.classes == ("cat", "dog")
    assert [(Path(path).name, label) for path, label in listing.samples] == [("a.png", 0), ("b.JPG", 0), ("a.png", 1)]
    assert sorted(Path(path).name for path in listing.skipped) == ["empty.jpg", "fake.png", "readme.txt"]
    assert "skipped 3 file(s)" in (listing.note("train") or "")
    val = list_split(str(tmp_path), classes=("ant", "cat", "dog"))
    assert [label for _, label in val.samples] == [1, 1, 2]


def test_folder_listing_errors(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="no such directory"):
        list_split(str(tmp_path / "missing"))
    with pytest.raises(TrainingError, match="no class folders"):
        list_split(str(tmp_path))
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "zero.png").write_bytes(b"")
    with pytest.raises(TrainingError, match="cat: empty class folder"):
        list_split(str(tmp_path))
    (tmp_path / "cat" / "ok.png").write_bytes(PNG)
    (tmp_path / "owl").mkdir()
    (tmp_path / "owl" / "ok.png").write_bytes(PNG)
    with pytest.raises(TrainingError, match="not in train/: owl"):
        list_split(str(tmp_path), classes=("cat",))


def test_effspec_train_backend_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert split_backend(["--epochs", "3", "--backend", "keras", "--seed", "1"], None) == (
        "keras",
        ["--epochs", "3", "--seed", "1"],
    )
    assert split_backend(["--backend=torch"], "keras") == ("torch", [])
    assert effspec(["train", str(SPECS[0]), "--epochs", "1"]) == 2
    assert "pass --backend torch or --backend keras" in capsys.readouterr().err
    assert effspec(["train", str(SPECS[0]), "--backend", "jax"]) == 2
    assert "unknown backend 'jax'" in capsys.readouterr().err


# --- the torch runtime ---------------------------------------------------------------------------

torch = pytest.importorskip("torch")
from effspec.backends.torch.runtime.optim import LrSchedule, ModelEma, ema_decay_at  # noqa: E402
from effspec.backends.torch.runtime.recompute import enable_grad_checkpointing, high_resolution_stages  # noqa: E402
from torch import nn  # noqa: E402


def test_lambda_lr_follows_the_schedule_and_resumes() -> None:
    """torch's LambdaLR over LrSchedule.factor: the optimizer's lr at step t is lr_at(t), also after
    a state_dict round trip mid-run."""
    schedule = LrSchedule(
        base_lr=0.2, kind="exponential", total_steps=40, warmup_steps=5, decay_rate=0.5, decay_steps=7
    )
    weight = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=schedule.base_lr)
    scheduler = schedule.scheduler(optimizer)
    seen = []
    for step in range(40):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
        if step == 17:
            state, saved = scheduler.state_dict(), optimizer.state_dict()
    assert seen == pytest.approx([schedule.lr_at(step) for step in range(40)], rel=1e-12)
    again = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=schedule.base_lr)
    resumed = schedule.scheduler(again)
    again.load_state_dict(saved)
    resumed.load_state_dict(state)
    assert again.param_groups[0]["lr"] == seen[18]
    cosine = LrSchedule(0.1, "cosine", 100, 10, 0.97, 24)
    assert cosine.lr_at(9) == pytest.approx(0.1) and cosine.lr_at(55) == pytest.approx(0.05)


def test_ema_warmup_rule() -> None:
    assert ema_decay_at(0.9999, 1) == 0.0  # the first update copies
    assert ema_decay_at(0.9999, 2) == pytest.approx(3 / 12)
    assert ema_decay_at(0.9999, 100) == pytest.approx(101 / 110)
    assert ema_decay_at(0.99, 10_000) == 0.99


def test_ema_averages_weights_and_batch_norm_statistics() -> None:
    """AveragedModel with use_buffers: BN running statistics are averaged like the weights, the
    batch counter is copied; each update follows ema_decay_at."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    ema = ModelEma(model, decay=0.5)
    expected = {name: value.clone() for name, value in model.state_dict().items()}
    for update in range(1, 6):
        with torch.no_grad():
            model[0].weight.add_(torch.randn_like(model[0].weight))
        model.train()(torch.randn(2, 3, 8, 8))  # moves the BN statistics
        ema.update(model)
        decay = ema_decay_at(0.5, update)
        for name, value in model.state_dict().items():
            if value.is_floating_point():
                expected[name] = decay * expected[name] + (1 - decay) * value
            else:
                expected[name] = value.clone()
    averaged = ema.module.state_dict()
    for name, value in expected.items():
        torch.testing.assert_close(averaged[name], value, rtol=1e-6, atol=1e-6, msg=name)
    assert averaged["1.num_batches_tracked"].item() == 5
    assert not torch.equal(averaged["1.running_mean"], model.state_dict()["1.running_mean"])
    restored = ModelEma(model, decay=0.5)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 5 and torch.equal(restored.module.state_dict()["0.weight"], averaged["0.weight"])


def test_recomputed_stages_give_the_same_gradients_and_statistics() -> None:
    def stage(channels: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.Dropout(0.3))

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.Sequential(stage(3), stage(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.blocks(x).sum()

    torch.manual_seed(0)
    plain = Tiny()
    recomputed = Tiny()
    recomputed.load_state_dict(plain.state_dict())
    assert enable_grad_checkpointing(recomputed) == 2
    images = torch.randn(4, 3, 8, 8)
    for model in (plain, recomputed):
        torch.manual_seed(1)
        model(images).backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), recomputed.named_parameters(), strict=True):
        assert torch.equal(a.grad, b.grad), name
    for name, value in plain.state_dict().items():
        assert torch.equal(value, recomputed.state_dict()[name]), name  # BN moved once, not twice
    assert set(recomputed.state_dict()) == set(plain.state_dict())


def test_only_high_resolution_stages_are_recomputed() -> None:
    class Info:
        def __init__(self, reduction: int) -> None:
            self.reduction = reduction

    b0 = [Info(r) for r in (2, 2, 4, 8, 16, 16, 32, 32)]  # stem, then 7 stages
    assert high_resolution_stages(b0) == 3
    assert high_resolution_stages(None) is None


def test_the_recipe_is_defined_once() -> None:
    """The spec's training section, the IR's plan and the trainers' Recipe share one field list."""
    from dataclasses import fields

    from effspec.core import ir
    from effspec.core.schema import Training

    plan = {item.name for item in fields(ir.TrainingPlan)}
    assert set(Training.model_fields) == plan - {"eval_resolution"}  # the scaled resolution, not a spec field
    model_facts = {"spec_name", "spec_sha256", "num_classes", "dropout", "drop_path_rate"}
    assert {item.name for item in fields(Recipe)} == plan | model_facts
