"""The generated torch train.py, compiled from two tiny specs and run as a user runs it.

What it must show (issue 6): the loss goes down on a fixed batch; torchrun with 2 processes (gloo)
ends with the weights of 1 process on the same global batch; a SIGKILLed run continued with
--resume ends bit-identical to an uninterrupted one; progressive learning really changes the input
resolution per stage; the image-folder path runs where torchvision imports; clear exit-2 errors.

Runs that need their own process (torchrun, the killed run, its resumption) are subprocesses; the
others call the generated script's main() in this process, which saves a torch import per run.
Every run uses one intra-op thread: CPU kernels are then deterministic (bit-identical between
processes) and parallel runs do not fight over the two cores.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
from conftest import OUT_OF_RANGE, ROOT, free_port

torch = pytest.importorskip("torch")
from effspec.backends.torch.runtime.optim import LrSchedule, RMSpropTF, parameter_groups  # noqa: E402
from torch_helpers import worst_difference  # noqa: E402

PYTHON = sys.executable
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
V1 = ROOT / "tests" / "data" / "torch_v1_tiny.yaml"
V2 = ROOT / "tests" / "data" / "torch_v2_tiny.yaml"
QUIET = ["--no-tensorboard", "--synthetic-val-size", "16", "--workers", "0", "--log-every", "1"]


@pytest.fixture(scope="module")
def scripts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both tiny specs compiled once, the way a user does it."""
    out = tmp_path_factory.mktemp("compiled")
    command = [PYTHON, "-m", "effspec.cli", "compile", str(V1), str(V2), "--backend", "torch", "-o", str(out)]
    subprocess.run(command, check=True, cwd=ROOT, capture_output=True, text=True)
    return {name: out / "torch" / f"torch_{name}_tiny" / "train.py" for name in ("v1", "v2")}


@pytest.fixture(scope="module")
def trains(scripts: dict[str, Path]):
    """The generated train.py files imported in this process (each imports its model.py by path)."""
    modules = {}
    for name, path in scripts.items():
        spec = importlib.util.spec_from_file_location(f"torch_{name}_tiny_train", path)
        modules[name] = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = modules[name]
        spec.loader.exec_module(modules[name])
    yield modules
    for module in modules.values():
        sys.modules.pop(module.__name__, None)
        sys.modules.pop(module.net.__name__, None)


def train(module: ModuleType, *args: str) -> int:
    """main(args) in this process: one thread, and this process's random state left as it was."""
    threads, python_state = torch.get_num_threads(), random.getstate()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():
            return module.main([*QUIET, *args])
    finally:
        torch.set_num_threads(threads)
        random.setstate(python_state)


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def run(command: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(command, env=environment(), capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr}"
    return result


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def untimed(epoch_rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{key: value for key, value in row.items() if key not in ("images_per_s", "seconds")} for row in epoch_rows]


def checkpoint(output: Path) -> dict:
    return torch.load(output / "checkpoint.pt", map_location="cpu", weights_only=True)


def test_help_documents_every_flag_with_the_spec_defaults(trains, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        trains["v2"].parse_args(["--help"])
    text = capsys.readouterr().out
    for action in trains["v2"].build_parser()._actions:
        assert action.help and action.option_strings[0] in text, action
    for flag in ("--data", "--optimizer", "--lr-per-256", "--resume", "--max-steps", "--sync-bn", "--device", "--amp"):
        assert flag in text
    assert "(default: rmsprop)" in text and "(default: 0.016)" in text and "(default: 8)" in text
    assert "24px, RandAugment 4, mixup 0, dropout 0.05" in text  # the spec's stage table
    assert "--progressive, --no-progressive" in text and "(default: True)" in text
    v1 = trains["v1"].parse_args([])
    assert (v1.augmentation, v1.progressive, v1.crop_fraction, v1.ema_decay) == ("autoaugment", False, 0.875, 0.999)


def test_loss_goes_down_on_a_fixed_batch(trains, tmp_path: Path) -> None:
    """One batch of 16 seen 40 times (one step per epoch): the model must fit it."""
    fixed_batch = "--synthetic-train-size 16 --batch-size 16 --epochs 40 --lr-per-256 0.5 --warmup-epochs 2"
    assert train(trains["v1"], *fixed_batch.split(), "--output", str(tmp_path)) == 0
    losses = [float(row["loss"]) for row in rows(tmp_path / "steps.csv")]
    assert len(losses) == 40
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.5 * first, f"loss went from {first:.3f} to {last:.3f}"


@pytest.mark.slow
def test_two_processes_match_one_on_the_same_global_batch(scripts, trains, tmp_path: Path) -> None:
    """torchrun (gloo, 2 x 8 images, --sync-bn) == 1 process x 16 images after 8 steps.

    DDP averages the two halves' gradients, which is the gradient of the full batch's mean loss;
    --sync-bn makes batch norm use the full batch's statistics too. Dropout and drop-path are off
    (each process draws its own masks). Tolerance 1e-5 absolute: only float summation order differs
    (measured below 1e-6); without --sync-bn the weights differ by ~1e-2.
    """
    recipe = "--synthetic-train-size 64 --batch-size 16 --epochs 2 --dropout 0 --drop-path-rate 0 --lr-per-256 0.2"
    args = [*QUIET, *recipe.split(), "--sync-bn"]
    assert train(trains["v1"], *args, "--output", str(tmp_path / "one")) == 0
    port = f"--master-port={free_port()}"
    run([TORCHRUN, "--nproc_per_node=2", port, str(scripts["v1"]), *args, "--output", str(tmp_path / "two")])
    one, two = checkpoint(tmp_path / "one"), checkpoint(tmp_path / "two")
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["position"] == two["position"] == {"epoch": 2, "step": 0, "global_step": 8}
    worst, diff = worst_difference(one["model"], two["model"])
    assert diff < 1e-5, f"{worst} differs by {diff:.3g}"
    moved = max(state["momentum_buffer"].abs().max().item() for state in one["optimizer"]["state"].values())
    assert moved > 1e-4  # the runs really trained: equal weights are not just equal initial weights


@pytest.mark.slow
def test_sigkill_then_resume_ends_bit_identical(scripts, trains, tmp_path: Path) -> None:
    """Dropout, drop-path, mixup, EMA and shuffling on; killed right after a mid-epoch checkpoint."""
    recipe = "--synthetic-train-size 32 --batch-size 8 --epochs 3 --mixup-alpha 0.2 --lr-per-256 0.2"
    args = [*recipe.split(), "--checkpoint-every", "3"]
    assert train(trains["v1"], *args, "--output", str(tmp_path / "straight")) == 0

    killed = tmp_path / "killed"
    command = [PYTHON, str(scripts["v1"]), *QUIET, *args, "--output", str(killed)]
    process = subprocess.Popen(command, env=environment(), stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (killed / "checkpoint.pt").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert checkpoint(killed)["position"]["global_step"] < 12  # 3 epochs x 4 steps: killed mid-run

    run([*command, "--resume"])
    straight, resumed = checkpoint(tmp_path / "straight"), checkpoint(killed)
    assert resumed["position"] == straight["position"] == {"epoch": 3, "step": 0, "global_step": 12}
    for part in ("model", "optimizer", "ema", "rng"):
        assert_identical(straight[part], resumed[part], part)
    assert rows(tmp_path / "straight" / "steps.csv") == rows(killed / "steps.csv")
    assert untimed(rows(tmp_path / "straight" / "metrics.csv")) == untimed(rows(killed / "metrics.csv"))


def assert_identical(expected: object, actual: object, where: str) -> None:
    if isinstance(expected, torch.Tensor):
        assert torch.equal(expected, actual), f"{where} differs"
    elif isinstance(expected, dict):
        assert expected.keys() == actual.keys(), where
        for key in expected:
            assert_identical(expected[key], actual[key], f"{where}.{key}")
    elif isinstance(expected, list | tuple):
        assert len(expected) == len(actual), where
        for index, (a, b) in enumerate(zip(expected, actual, strict=True)):
            assert_identical(a, b, f"{where}[{index}]")
    else:
        assert expected == actual, f"{where}: {expected!r} != {actual!r}"


def test_progressive_learning_changes_the_input_resolution_per_stage(trains, tmp_path: Path) -> None:
    from effspec.emit.pipeline import build

    stages = build(V2).model.training.progressive
    assert train(trains["v2"], "--synthetic-train-size", "16", "--epochs", "8", "--output", str(tmp_path)) == 0
    epochs = rows(tmp_path / "metrics.csv")
    assert len(epochs) == 8
    for row in epochs:
        stage = stages[int(row["epoch"]) // 2]  # 8 epochs over 4 stages
        assert row["input_shapes"] == f"{stage.image_size}x{stage.image_size}", row  # what the model was fed
        assert float(row["dropout"]) == pytest.approx(stage.dropout)  # read back from the model's nn.Dropout
        assert float(row["mixup_alpha"]) == pytest.approx(stage.mixup_alpha)
    assert [row["input_shapes"] for row in epochs[::2]] == ["24x24", "32x32", "40x40", "48x48"]

    fixed = tmp_path / "fixed"
    assert (
        train(trains["v2"], *"--synthetic-train-size 16 --epochs 2 --no-progressive".split(), "--output", str(fixed))
        == 0
    )
    assert [row["input_shapes"] for row in rows(fixed / "metrics.csv")] == ["48x48", "48x48"]


def test_user_errors_exit_2_with_one_line(trains, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def error(module: ModuleType, *args: str) -> str:
        capsys.readouterr()
        assert train(module, *args) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("train.py: error: "), lines
        return lines[0]

    assert "no train/ folder" in error(
        trains["v1"], "--data", str(tmp_path / "nowhere"), "--output", str(tmp_path / "a")
    )
    first = tmp_path / "v1"
    assert (
        train(trains["v1"], *"--synthetic-train-size 16 --epochs 1 --max-steps 1".split(), "--output", str(first)) == 0
    )
    assert "incompatible: its spec_sha256" in error(trains["v2"], "--output", str(first), "--resume")
    assert "already holds a checkpoint" in error(trains["v1"], "--output", str(first))
    assert "no checkpoint at" in error(trains["v1"], "--output", str(tmp_path / "b"), "--resume")
    assert "--batch-size must be at least 1" in error(
        trains["v1"], "--batch-size", "0", "--output", str(tmp_path / "c")
    )
    try:
        import torch_xla  # noqa: F401
    except ImportError:  # as here: a clear message, not a traceback
        assert "--device xla needs torch_xla" in error(trains["v1"], "--device", "xla", "--output", str(tmp_path / "x"))


TF_RMSPROP = """
import json, sys
import tensorflow as tf
steps = json.loads(sys.stdin.read())
var = tf.Variable(steps["start"])
lr = tf.Variable(0.0)
opt = tf.compat.v1.train.RMSPropOptimizer(lambda: lr, decay=0.9, momentum=0.9, epsilon=1e-3)
for rate, grad in zip(steps["lrs"], steps["grads"]):
    lr.assign(rate)
    opt.apply_gradients([(tf.constant(grad), var)])
print(json.dumps(var.numpy().tolist()))
"""


def test_rmsprop_matches_tensorflow(trains) -> None:
    """RMSpropTF == tf.compat.v1.train.RMSPropOptimizer (ones-initialized mean square, eps inside
    the root, lr inside the momentum) over 12 steps with a changing learning rate: rtol 1e-5 (float32)."""
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(6, generator=generator)
    grads = [torch.randn(6, generator=generator) * scale for scale in (0.01, 1.0, 3.0) for _ in range(4)]
    lrs = [0.1 * (index + 1) / 12 for index in range(12)]
    payload = json.dumps({"start": start.tolist(), "grads": [g.tolist() for g in grads], "lrs": lrs})
    probe = subprocess.run([PYTHON, "-c", TF_RMSPROP], input=payload, capture_output=True, text=True, env=environment())
    if probe.returncode != 0:
        pytest.skip(f"tensorflow does not run here: {probe.stderr.strip().splitlines()[-1:]}")
    expected = torch.tensor(json.loads(probe.stdout.strip().splitlines()[-1]))

    weight = torch.nn.Parameter(start.clone())
    optimizer = RMSpropTF([weight], lr=0.0)
    for rate, grad in zip(lrs, grads, strict=True):
        optimizer.param_groups[0]["lr"] = rate
        weight.grad = grad.clone()
        optimizer.step()
    torch.testing.assert_close(weight.detach(), expected, rtol=1e-5, atol=1e-6)
    assert (weight.detach() - start).abs().max() > 0.05  # it moved: the comparison means something


def test_learning_rate_schedule(trains) -> None:
    """Warmup to lr_per_256 x batch / 256, then x0.97 every 2.4 epochs (staircase) or cosine to 0."""
    schedule = LrSchedule(
        base_lr=0.256, kind="exponential", total_steps=35_000, warmup_steps=500, decay_rate=0.97, decay_steps=240
    )
    assert schedule.lr_at(0) == pytest.approx(0.256 / 500)
    assert schedule.lr_at(499) == pytest.approx(0.256)
    assert schedule.lr_at(500) == pytest.approx(0.256 * 0.97**2)  # decay counts from step 0, as TF
    assert schedule.lr_at(719) == pytest.approx(0.256 * 0.97**2)
    assert schedule.lr_at(720) == pytest.approx(0.256 * 0.97**3)
    cosine = LrSchedule(0.1, "cosine", 1100, 100, 0.97, 240)
    assert cosine.lr_at(100) == pytest.approx(0.1)
    assert cosine.lr_at(600) == pytest.approx(0.05)
    assert cosine.lr_at(1099) == pytest.approx(0.0, abs=1e-6)


def test_weight_decay_skips_batch_norm_and_biases(trains) -> None:
    model = trains["v1"].net.build_model()
    decayed, plain = parameter_groups(model, 1e-5)
    assert decayed["weight_decay"] == 1e-5 and plain["weight_decay"] == 0.0
    names = {id(p): name for name, p in model.named_parameters()}
    assert all(p.ndim > 1 for p in decayed["params"])
    assert {names[id(p)].rsplit(".", 1)[-1] for p in plain["params"]} == {"weight", "bias"}  # BN scale, biases
    assert all(p.ndim == 1 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))


def image_folder(root: Path, counts: dict[str, int], classes: tuple[str, ...] = ("cat", "dog", "fox")) -> Path:
    """PNGs of assorted sizes: root/<split>/<class>/<index>.png."""
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    for split, count in counts.items():
        for label in classes:
            folder = root / split / label
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = torch.randint(0, 256, (37 + index, 45, 3), dtype=torch.uint8, generator=generator)
                Image.fromarray(pixels.numpy()).save(folder / f"{index}.png")
    return root


def test_image_folder_training_runs(trains, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A tiny image folder through both recipes' torchvision transforms (V1: AutoAugment; V2:
    RandAugment and progressive resolution), with an empty, a corrupt and a non-image file skipped."""
    root = image_folder(tmp_path / "images", {"train": 8, "val": 3})
    (root / "train" / "cat" / "empty.jpg").write_bytes(b"")
    (root / "train" / "dog" / "corrupt.png").write_bytes(b"this is not a png at all")
    (root / "val" / "fox" / "notes.txt").write_text("not an image")
    data = ["--data", str(root), "--workers", "0", "--batch-size", "8"]
    capsys.readouterr()
    assert train(trains["v1"], *data, "--epochs", "2", "--output", str(tmp_path / "v1")) == 0
    assert train(trains["v2"], *data, "--epochs", "4", "--output", str(tmp_path / "v2")) == 0
    err = capsys.readouterr().err
    assert "train: skipped 2 file(s) that are empty or not images" in err, err
    assert "val: skipped 1 file(s)" in err, err
    v1_rows, v2_rows = rows(tmp_path / "v1" / "metrics.csv"), rows(tmp_path / "v2" / "metrics.csv")
    assert [row["input_shapes"] for row in v1_rows] == ["32x32", "32x32"]
    assert [row["input_shapes"] for row in v2_rows] == ["24x24", "32x32", "40x40", "48x48"]
    assert checkpoint(tmp_path / "v1")["num_classes"] == 3
    assert set(torch.load(tmp_path / "v2" / "model.pt", weights_only=True)) == set(
        trains["v2"].net.build_model().state_dict()
    )


def test_bad_input_exits_2_with_one_line(trains, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Empty class folder, --output a file or under one, invalid numbers, forged and foreign checkpoints."""

    def error(*args: str) -> str:
        capsys.readouterr()
        assert train(trains["v1"], *args) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("train.py: error: "), lines
        return lines[0]

    root = image_folder(tmp_path / "images", {"train": 2, "val": 1}, classes=("cat", "dog"))
    (root / "train" / "owl").mkdir()
    (root / "train" / "owl" / "broken.jpg").write_bytes(b"")
    out = str(tmp_path / "out")
    assert "train/owl: empty class folder" in error("--data", str(root), "--output", out)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert "is a file, not a directory" in error("--output", str(blocker))
    assert "cannot create it" in error("--output", str(blocker / "below"))
    for flag, value in (*OUT_OF_RANGE, ("--epochs", "0"), ("--ema-decay", "1.5")):
        assert error(flag, value, "--output", out).startswith(f"train.py: error: {flag} must be")
    assert "invalid int value" in error("--batch-size", "many", "--output", out)

    good = tmp_path / "good"
    assert (
        train(trains["v1"], *"--synthetic-train-size 16 --epochs 1 --max-steps 1".split(), "--output", str(good)) == 0
    )
    forged = tmp_path / "forged"
    forged.mkdir()
    (forged / "checkpoint.pt").write_bytes(b"PK\x03\x04 forged zip")
    assert "cannot read" in error("--output", str(forged), "--resume")
    torch.save({"format": 1, "spec_sha256": "x"}, forged / "checkpoint.pt")
    assert "is damaged: its num_classes should be a int" in error("--output", str(forged), "--resume")
    state = checkpoint(good)
    state["model"] = {"stem.conv.weight": torch.zeros(1)}
    torch.save(state, forged / "checkpoint.pt")
    assert "does not fit this model" in error("--output", str(forged), "--resume")
    torch.save([1, 2, 3], forged / "checkpoint.pt")
    assert "is not a train.py checkpoint" in error("--output", str(forged), "--resume")


def test_resume_leaves_no_temporary_files(trains, tmp_path: Path) -> None:
    """A run killed while writing leaves .checkpoint.pt.<pid>.tmp; the resumed run removes it."""
    args = [*"--synthetic-train-size 16 --batch-size 8 --epochs 2".split(), "--output", str(tmp_path)]
    assert train(trains["v1"], *args, "--max-steps", "3") == 0
    (tmp_path / ".checkpoint.pt.999999.tmp").write_bytes(b"half a checkpoint")
    assert train(trains["v1"], *args, "--resume") == 0
    assert sorted(path.name for path in tmp_path.glob(".*")) == [".effspec-lock"]  # the run folder's lock
    assert checkpoint(tmp_path)["position"]["global_step"] == 4


def test_grad_checkpointing_trains_the_same_weights(trains, tmp_path: Path) -> None:
    """Per-stage recomputation (dropout and drop-path replayed with the same draws) changes memory,
    not the result: bit-identical weights after 4 steps on the CPU."""
    args = "--synthetic-train-size 16 --epochs 2 --mixup-alpha 0.2".split()
    assert train(trains["v2"], *args, "--output", str(tmp_path / "plain")) == 0
    assert train(trains["v2"], *args, "--grad-checkpointing", "--output", str(tmp_path / "recomputed")) == 0
    assert_identical(checkpoint(tmp_path / "plain")["model"], checkpoint(tmp_path / "recomputed")["model"], "model")
