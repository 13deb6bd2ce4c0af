"""Issue 18, "A newcomer's first day": each documented path works as written on the README's install.

One test (or a few) per item of the issue; each failed on the commit the issue was filed against.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from effspec.emit.pipeline import build
from effspec.support.errors import SpecError

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "data" / "torch_v2_tiny.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}


def effspec(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None, timeout: float = 300):
    """The installed command in a fresh process (nothing the suite imported leaks into it)."""
    command = [sys.executable, "-c", "import sys; from effspec.cli import main; sys.exit(main(sys.argv[1:]))", *args]
    return subprocess.run(command, cwd=cwd, env=env or ENV, capture_output=True, text=True, timeout=timeout)


# 1. torchvision / timm import on this install without any stand-in ------------------------------


def test_1_torchvision_and_timm_import_in_a_fresh_process_without_a_stub() -> None:
    code = (
        "import sys\n"
        "from effspec.support.vision import import_timm, import_torchvision\n"
        "tv = import_torchvision()\n"
        "from torchvision import transforms, datasets, models\n"
        "timm = import_timm()\n"
        "m = timm.create_model('tf_efficientnet_b0', pretrained=False, num_classes=3)\n"
        "print('ok', type(transforms.AutoAugment()).__name__, type(m).__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ok AutoAugment EfficientNet" in result.stdout


def test_1_conftest_installs_no_torchvision_stub() -> None:
    assert "_meta_registrations" not in (ROOT / "tests" / "conftest.py").read_text()


def test_1_torchvision_is_in_the_torch_extra() -> None:
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(requirement.startswith("torchvision") for requirement in extras["torch"])


# 2. YAML 1.2 floats ------------------------------------------------------------------------------


@pytest.mark.parametrize("written", ["1e-3", "1E5", "+1.5e-3", ".5", "5.", "1.0e-03", "2e+0"])
def test_2_float_fields_accept_numbers_as_people_write_them(tmp_path: Path, written: str) -> None:
    spec = tmp_path / "eps.yaml"
    spec.write_text(f"extends: efficientnet-b0\nname: eps\ndefaults: {{batch_norm: {{eps: {written}}}}}\n")
    assert build(spec).model.batch_norm.eps == float(written)


@pytest.mark.parametrize("written", [".inf", "-.inf", ".nan", "'1e-3'", "abc"])
def test_2_float_fields_still_refuse_non_numbers(tmp_path: Path, written: str) -> None:
    spec = tmp_path / "eps.yaml"
    spec.write_text(f"extends: efficientnet-b0\nname: eps\ndefaults: {{batch_norm: {{eps: {written}}}}}\n")
    with pytest.raises(SpecError) as error:
        build(spec)
    assert "defaults.batch_norm.eps" in str(error.value)


@pytest.mark.parametrize("written", ["1e3", "1000.", "1E3"])
def test_2_integer_fields_stay_strict(tmp_path: Path, written: str) -> None:
    spec = tmp_path / "classes.yaml"
    spec.write_text(f"extends: efficientnet-b0\nname: classes\nhead: {{num_classes: {written}}}\n")
    with pytest.raises(SpecError, match="head.num_classes: expected an integer"):
        build(spec)


# 3. one decoding policy for every odd image, in both trainers --------------------------------------


def _odd_folder(root: Path) -> dict[str, str]:
    from images import odd_images

    return odd_images(root)


def test_3_every_odd_image_decodes_to_rgb_or_is_undecodable(tmp_path: Path) -> None:
    import numpy as np

    from effspec.support.images import Undecodable, open_image

    expected = _odd_folder(tmp_path)
    for name, kind in expected.items():
        data = (tmp_path / name).read_bytes()
        if kind == "ok":
            image = open_image(data)
            assert image.mode == "RGB" and image.size == (24, 20), name
        else:
            with pytest.raises(Undecodable):
                open_image(data)
    deep = np.asarray(open_image((tmp_path / "deep16.png").read_bytes()))
    assert deep.max() > 128  # 16-bit values scaled to 8 bits, not clipped to white


def test_3_torch_and_keras_trainers_read_the_same_samples_from_a_damaged_folder(tmp_path: Path) -> None:
    """Both pipelines walk the same list: every undecodable file is replaced by the next sample that
    decodes (same pixels, same label) and named once; nothing raises. (On 42c7fe2 the Keras side
    stopped with jpeg::Uncompress / a UnicodeDecodeError on the Latin-1 name.)"""
    import numpy as np

    pytest.importorskip("tensorflow")
    from effspec.backends.keras.runtime import data as keras_data
    from effspec.backends.torch.runtime import data as torch_data

    from effspec.support.images import list_split

    for label in ("a", "b"):
        _odd_folder(tmp_path / "train" / label)
    listing = list_split(str(tmp_path / "train"))
    assert len(listing.skipped) == 2  # the two empty files: refused by the header check
    split, _ = keras_data.folder_split(str(tmp_path / "train"))
    samples = torch_data.FolderSamples(listing.samples, [lambda image: image], seed=0)
    for index in range(len(listing.samples)):
        torch_image, torch_label = samples[(0, index, 0)]
        keras_image, keras_label = keras_data.decode_sample(split, index)
        assert keras_label.numpy() == torch_label
        assert np.array_equal(keras_image.numpy().astype(np.uint8), np.asarray(torch_image))


def test_3_export_calibration_skips_undecodable_images(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from effspec.weights.export import _folder_images

    _odd_folder(tmp_path / "calib")
    model = build(TINY).model
    images = _folder_images(tmp_path / "calib", model, 16)
    assert images.shape == (9, 3, 16, 16)  # the 9 decodable files of 14


# 10. torchscript file endings ---------------------------------------------------------------------


def test_10_torchscript_export_accepts_the_usual_extensions(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from effspec.weights.export import SUFFIXES

    assert set(SUFFIXES["torchscript"]) == {".pt", ".ts", ".torchscript"}
    result = effspec("export", str(TINY), "--format", "torchscript", "-o", str(tmp_path / "model.ts"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "model.ts").is_file()


def test_10_torchscript_export_still_refuses_other_extensions(tmp_path: Path) -> None:
    result = effspec("export", str(TINY), "--format", "torchscript", "-o", str(tmp_path / "model.onnx"))
    assert result.returncode == 2 and ".ts" in result.stderr


# 4. effspec search with relative paths ----------------------------------------------------------


def _image_folder(root: Path, size: int = 20, per_class: int = 8) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{index}.png")
    return root


def test_4_search_with_a_relative_output_and_data_folder(tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    pytest.importorskip("torch")
    _image_folder(tmp_path / "digits")
    result = effspec(
        "search", str(ROOT / "tests" / "data" / "torch_v1_tiny.yaml"), "--data", "digits", "--trials", "1",
        "--trial-steps", "2", "--batch-size", "8", "--device", "cpu", "-o", "search-out", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = (tmp_path / "search-out" / "results.csv").read_text().splitlines()
    assert len(rows) == 2 and ",complete," in rows[1], rows
    assert not list((tmp_path / "search-out" / "trials").glob("*/search-out"))


# 5. threads and data workers from the CPUs this process may use ---------------------------------


def test_5_usable_cpus_reads_affinity_and_cgroup_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from effspec.support import cpus

    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cpus.cgroup_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpus.cgroup_quota(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpus.cgroup_quota(tmp_path) == 2.0
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    monkeypatch.setattr(cpus, "cgroup_quota", lambda: 2.5)
    assert cpus.usable_cpus() == 3
    monkeypatch.setattr(cpus, "cgroup_quota", lambda: None)
    assert cpus.split_cpus() == (6, 2) and cpus.split_cpus(processes=2) == (4, 0)
    assert cpus.split_cpus(workers=3) == (5, 3)
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: {0, 1})
    assert cpus.split_cpus() == (2, 0)


class _Snapshots:
    """/proc/stat read twice: by the second read cpu0 has worked ``busy`` CPUs over the time between."""

    def __init__(self, busy: float) -> None:
        self.busy, self.start = busy, None

    def read_text(self) -> str:
        import time

        if self.start is None:
            self.start, ticks = time.monotonic(), 0
        else:  # a little over the elapsed time, so rounding cannot tip the result
            ticks = round(self.busy * (time.monotonic() - self.start) * 1.02 * os.sysconf("SC_CLK_TCK"))
        return "\n".join(f"cpu{cpu} {100 + ticks * (cpu == 0)} 0 0 5000 0 0 0 0" for cpu in (0, 1))


def test_5_free_cpus_leaves_out_the_cpus_other_processes_keep_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    from effspec.support import cpus

    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(cpus, "cgroup_quota", lambda: None)
    assert cpus.free_cpus(interval=0.2, stat=_Snapshots(busy=1.0)) == 1  # one CPU of two busy throughout
    assert cpus.free_cpus(interval=0.2, stat=_Snapshots(busy=0.2)) == 2  # rounded to whole CPUs
    assert cpus.free_cpus(interval=0.2, stat=_Snapshots(busy=2.0)) == 1  # never below one
    assert cpus.free_cpus(stat=Path("/nonexistent/stat")) == 2  # unreadable: the usable CPUs


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_5_free_cpus_sees_a_real_busy_process() -> None:
    """A real process spinning on one of two CPUs: free_cpus, measuring /proc/stat, leaves one."""
    two = sorted(os.sched_getaffinity(0))[:2]
    script = f"""
import os, subprocess, sys, time
os.sched_setaffinity(0, {set(two)!r})
spin = subprocess.Popen([sys.executable, "-c", "import itertools, os; os.sched_setaffinity(0, {{{two[1]}}}); all(itertools.repeat(True))"])
try:
    time.sleep(0.5)
    from effspec.support.cpus import free_cpus, usable_cpus
    print(usable_cpus(), free_cpus(interval=0.5))
finally:
    spin.kill()
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split() == ["2", "1"], done.stdout + done.stderr


def test_5_torch_trainer_fits_threads_and_workers_to_its_cpus(tmp_path: Path) -> None:
    """On one allowed CPU (affinity), no OMP_NUM_THREADS: one thread, no data worker, no DataLoader
    warning; the folder holds every odd and damaged image (item 3): the run trains through them."""
    pytest.importorskip("torch")
    env = {key: value for key, value in ENV.items() if key not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    for split in ("train", "val"):  # item 3 as well: the odd and damaged files of tests/images.py
        for label in ("a", "b"):
            _odd_folder(tmp_path / "data" / split / label)
    command = [
        sys.executable, "-c", "import os, sys; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
        "from effspec.cli import main; sys.exit(main(sys.argv[1:]))",
        "train", str(TINY), "--backend", "torch", "--data", str(tmp_path / "data"), "--epochs", "1",
        "--batch-size", "8", "--output", str(tmp_path / "run"), "--no-tensorboard",
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "1 thread(s) and 0 data worker(s) per process" in result.stderr
    assert "worker processes in total" not in result.stderr
    assert "broken.jpg: cannot decode" in result.stderr and "Traceback" not in result.stderr
    help_text = effspec("train", str(TINY), "--backend", "torch", "--help").stdout
    assert "--threads" in help_text and "CPUs this process may use" in " ".join(help_text.split())


# 6. a torch run does not import TensorFlow for TensorBoard ---------------------------------------


def test_6_torch_run_writes_tensorboard_events_without_tensorflow(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("tensorboard")
    code = (
        "import sys\nfrom effspec.cli import main\nrc = main(sys.argv[1:])\n"
        "print('tensorflow imported:', 'tensorflow' in sys.modules)\nsys.exit(rc)\n"
    )
    command = [
        sys.executable, "-c", code, "train", str(TINY), "--backend", "torch", "--data", "synthetic",
        "--max-steps", "2", "--batch-size", "4", "--synthetic-train-size", "8", "--synthetic-val-size", "4",
        "--output", str(tmp_path / "run"),
    ]  # fmt: skip
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tensorflow imported: False" in result.stdout
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert "oneDNN" not in result.stderr and "absl" not in result.stderr


# 7. logs: plain lines, start-up lines once, a summary, one metrics row per epoch ------------------


def test_7_torch_resume_keeps_one_metrics_row_per_epoch_and_ends_with_a_summary(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    run = tmp_path / "run"
    common = [
        "train", str(TINY), "--backend", "torch", "--data", "synthetic", "--epochs", "2", "--batch-size", "4",
        "--synthetic-train-size", "8", "--synthetic-val-size", "4", "--output", str(run), "--no-tensorboard",
    ]  # fmt: skip
    first = effspec(*common, "--max-steps", "1")  # stops inside epoch 1 (2 steps an epoch): a partial row
    assert first.returncode == 0, first.stderr[-2000:]
    second = effspec(*common, "--resume")
    assert second.returncode == 0, second.stderr[-2000:]
    import csv

    with open(run / "metrics.csv", newline="") as handle:
        epochs = [row["epoch"] for row in csv.DictReader(handle)]
    assert epochs == ["0", "1"]
    last = second.stderr.strip().splitlines()[-1]
    assert "done in" in last and "val top-1 (EMA weights) final" in last and "best" in last
    assert str(run / "model.pt") in last and str(run / "checkpoint.pt") in last


@pytest.mark.slow
def test_7_keras_log_is_plain_with_startup_lines_once_and_a_summary(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    env = {key: value for key, value in ENV.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    result = effspec(
        "train", str(TINY), "--backend", "keras", "--data", "synthetic", "--epochs", "1", "--batch-size", "4",
        "--synthetic-train-size", "8", "--synthetic-val-size", "4", "--output", str(tmp_path / "run"),
        "--no-tensorboard", env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    log = result.stdout + result.stderr
    assert "\x1b[" not in log  # no colour codes or bar redraws in a redirected log
    assert log.count("oneDNN custom operations are on") <= 1
    assert log.count("All log messages before absl::InitializeLog()") <= 1
    last = result.stdout.strip().splitlines()[-1]
    assert "done in" in last and "val top-1 (weight average) final" in last
    assert "model.weights.h5" in last


# 8. --augmentation none with explicit crop and flip control ---------------------------------------


def test_8_no_random_crop_no_flip_is_the_evaluation_view_in_both_backends(tmp_path: Path) -> None:
    import argparse
    import types

    import numpy as np

    pytest.importorskip("tensorflow")
    torch = pytest.importorskip("torch")
    from effspec.backends.keras.runtime import data as keras_data
    from effspec.backends.recipe import ProgressiveStage
    from effspec.backends.torch.runtime import data as torch_data

    _image_folder(tmp_path / "data", size=30, per_class=2)
    net = types.SimpleNamespace(MEAN=(0.5, 0.5, 0.5), STD=(0.25, 0.25, 0.25), NUM_CLASSES=2)
    stage = ProgressiveStage(image_size=16, randaugment_magnitude=0.0, mixup_alpha=0.0, dropout=0.0)
    args = argparse.Namespace(
        augmentation="none", random_crop=False, flip=False, crop_fraction=0.875, seed=0, batch_size=4,
        num_classes=2, steps_per_epoch=0, eval_resolution=16,
    )  # fmt: skip
    split, _ = keras_data.folder_split(str(tmp_path / "data" / "train"))
    images = {}
    for epoch in (0, 1):  # a random view would differ between epochs
        batch = next(iter(keras_data.Data(args, net, split, None, static=False).train(epoch, stage, 0, 1)))[0]
        order = keras_data.tf.random.experimental.stateless_shuffle(
            keras_data.tf.range(4, dtype=keras_data.tf.int64), seed=[0, epoch]
        ).numpy()
        images[epoch] = batch.numpy()[np.argsort(order)]
    assert np.array_equal(images[0], images[1])
    transform = torch_data.train_transform(stage, args, net)
    for index, (path, _) in enumerate(sorted(zip(split.images, split.labels, strict=True))):
        torch.manual_seed(index)
        ours = transform(torch_data.load_rgb(str(path))).numpy().transpose(1, 2, 0)
        position = list(split.images).index(path)
        # the same view: PIL's and TF's antialiased bicubic resizes differ by a few grey levels on noise
        difference = np.abs(ours - images[0][position])  # one grey level is 1/255/0.25 ~ 0.016 here
        assert difference.max() < 0.1 and difference.mean() < 0.01
    default = torch_data.train_transform(
        stage, argparse.Namespace(**{**vars(args), "random_crop": True, "flip": True}), net
    )
    assert "RandomResizedCrop" in repr(default) and "RandomHorizontalFlip" in repr(default)


def test_8_crop_and_flip_flags_in_both_trainers_help() -> None:
    """Both trainers take their recipe flags from add_recipe_flags: the flags, their defaults
    (today's random crop and flip) and their help are the same in both."""
    import argparse

    from effspec.backends.recipe import recipe_from_model
    from effspec.backends.runtime_args import add_recipe_flags

    recipe = recipe_from_model(build(TINY).model)
    for keras in (False, True):
        parser = argparse.ArgumentParser()
        add_recipe_flags(parser, recipe, keras=keras)
        assert vars(parser.parse_args([]))["random_crop"] is True and parser.parse_args([]).flip is True
        chosen = parser.parse_args(["--augmentation", "none", "--no-random-crop", "--no-flip"])
        assert (chosen.augmentation, chosen.random_crop, chosen.flip) == ("none", False, False)
        text = " ".join(parser.format_help().split())
        assert "--random-crop, --no-random-crop" in text and "--flip, --no-flip" in text


# 9. per-block overrides visible in info, info --json and info --diagram ----------------------------


def test_9_info_shows_each_blocks_overrides() -> None:
    from effspec.core.analysis import analyze
    from effspec.tools.diagram import _rows
    from effspec.tools.info import info_json, info_table

    report = analyze(build(ROOT / "specs" / "mixnet-s.yaml").model)
    table = info_table(report)
    stage2 = next(line for line in table.splitlines() if line.startswith("blocks.1 "))
    assert " 6,3 " in stage2  # MixNet-S stage 2: expansion 6, then 3 (was "6")
    stage6 = next(line for line in table.splitlines() if line.startswith("blocks.5 "))
    assert "3.5.7.9.11,3.5.7.9*2" in stage6 and "groups 1/1,1/2*2" in stage6
    stages = info_json(report)["stages"]
    assert stages[2]["per_block"] == {"expansion": "6,3"} and stages[1]["per_block"] == {}
    details = [row["detail"] for row in _rows(report)]
    assert any("expand 6,3" in detail for detail in details)
    plain = info_table(analyze(build(ROOT / "specs" / "efficientnet-b0.yaml").model))
    assert "per block" not in plain and "per-block" not in plain  # nothing to show: the table is as before
