"""Every command as safe as compile (issue 19): scale, search, train, export, plot, info --diagram,
convert-weights and check met by an attacker or an unlucky user. Each case ends in exit 2 with one
line (or in correct behaviour), never an internal error (70), never a hang, never a user's file
lost or replaced. The writing rules themselves are tested in test_output.py."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from test_hostile_specs import GOOD, TIMEOUT, one_line, run_main, snapshot, watchdog  # noqa: F401

from effspec.support.output import LOCK_NAME
from effspec.support.vision import import_timm

pytestmark = pytest.mark.usefixtures("watchdog")
ROOT = Path(__file__).resolve().parent.parent
B0 = ROOT / "specs" / "efficientnet-b0.yaml"
SCALE = ["--target-params", "3000000"]  # the tiny spec reaches it in a second
TRAIN = [
    "--backend",
    "torch",
    "--data",
    "synthetic",
    "--max-steps",
    "1",
    "--epochs",
    "1",
    "--batch-size",
    "2",
    "--synthetic-train-size",
    "2",
    "--synthetic-val-size",
    "2",
    "--train-resolution",
    "32",
    "--eval-resolution",
    "32",
    "--no-tensorboard",
]


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "base.yaml").write_text(GOOD)
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nname: child\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def refused(work: Path, capsys: pytest.CaptureFixture[str], args: list[str], words: str, changes: bool = False) -> str:
    """Exit 2 with one error line containing ``words`` (after any progress lines); nothing under
    ``work`` changed (unless ``changes``)."""
    before = snapshot(work)
    started = time.monotonic()
    code, _out, err = run_main(args, capsys)
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert "error" in line and not [other for other in err.strip().splitlines()[:-1] if "error" in other], err
    assert code == 2, err
    assert words in line, line
    assert "internal error" not in line
    assert time.monotonic() - started < 30  # refused promptly, never after a long wait
    if not changes:
        assert snapshot(work) == before
    return line


# ---- files lost ----------------------------------------------------------------------------------


def test_export_saved_model_keeps_a_users_folder(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "mine").mkdir()
    (work / "mine" / "notes.txt").write_text("the user's")
    args = ["export", "base.yaml", "--format", "saved_model", "-o", "mine"]
    refused(work, capsys, args, "holds files effspec did not write")


def test_plot_replaces_a_symlink_never_writes_through_it(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "precious.svg").write_text("the user's figure")
    os.symlink("precious.svg", work / "fig.svg")
    code, _out, err = run_main(["plot", "base.yaml", "-o", "fig.svg"], capsys)
    assert code == 0, err
    assert (work / "precious.svg").read_text() == "the user's figure"
    assert not (work / "fig.svg").is_symlink() and (work / "fig.svg").read_text().startswith("<?xml")


@pytest.mark.parametrize("target", ["child.yaml", "base.yaml", "hard.yaml", "soft.yaml"])
def test_scale_never_writes_over_its_spec_or_a_base(
    work: Path, capsys: pytest.CaptureFixture[str], target: str
) -> None:
    os.link(work / "base.yaml", work / "hard.yaml")
    os.symlink("child.yaml", work / "soft.yaml")
    refused(work, capsys, ["scale", "child.yaml", *SCALE, "-o", target], "is one of this command's inputs")


def test_convert_weights_never_writes_over_its_input(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "w.pt").write_bytes(b"not even read")
    os.link(work / "w.pt", work / "same.weights.h5")  # the same file under a Keras name
    args = ["convert-weights", "--from", "torch", "--to", "keras", "base.yaml", "w.pt", "same.weights.h5"]
    refused(work, capsys, args, "is one of this command's inputs")


def test_export_never_writes_over_its_weights(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "w.pt").write_bytes(b"not even read")
    args = ["export", "base.yaml", "--format", "torchscript", "--weights", "w.pt", "-o", "w.pt"]
    refused(work, capsys, args, "is one of this command's inputs")


def test_train_refuses_a_folder_holding_a_keras_run(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = work / "run"
    (run / "checkpoint").mkdir(parents=True)
    (run / "checkpoint" / "checkpoint.json").write_text("{}")
    (run / "metrics.csv").write_text("epoch,step\n0,10\n")
    refused(work, capsys, ["train", "base.yaml", *TRAIN, "--output", "run"], "already holds a", changes=True)

    # Each refusal held the folder's lock, which names its holder and the second it started: effspec's
    # own file, rewritten; nothing else may change.
    def without_lock() -> dict:
        return {path: entry for path, entry in snapshot(work).items() if not path.endswith(LOCK_NAME)}

    before = without_lock()
    args = ["train", "base.yaml", *TRAIN, "--output", "run", "--resume", "auto"]
    line = refused(work, capsys, args, "already holds a", changes=True)
    assert without_lock() == before
    assert "another backend's or spec's run" in line
    assert (run / "metrics.csv").read_text() == "epoch,step\n0,10\n"


def test_a_second_trainer_on_one_output_exits_at_once_naming_the_first(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    holder = (
        "import sys, time; from effspec.support.output import lock_folder\n"
        "lock = lock_folder('run', 'torch train.py of base'); print('locked', flush=True); time.sleep(60)\n"
    )
    first = subprocess.Popen([sys.executable, "-c", holder], cwd=work, stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout is not None and first.stdout.readline().strip() == "locked"
        line = refused(work, capsys, ["train", "base.yaml", *TRAIN, "--output", "run"], "already in use")
        assert f"pid {first.pid} (torch train.py of base" in line
    finally:
        first.kill()
        first.wait()


def test_plot_on_a_full_disk_keeps_the_previous_figure(
    work: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from matplotlib.figure import Figure

    (work / "fig.svg").write_text("the previous figure")

    def full_disk(self: object, path: object, **kwargs: object) -> None:
        Path(str(path)).write_text("<svg half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full_disk)
    refused(work, capsys, ["plot", "base.yaml", "-o", "fig.svg"], "No space left on device")


# ---- replaced or inflated ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["scale", "child.yaml", *SCALE, "-o", "{}"],
        ["export", "base.yaml", "--format", "onnx", "-o", "{}.onnx"],
        ["plot", "base.yaml", "-o", "{}.svg"],
        ["info", "base.yaml", "--diagram", "{}.svg"],
        ["convert-weights", "--from", "torch", "--to", "keras", "base.yaml", "w.pt", "{}.weights.h5"],
        ["schema", "-o", "{}"],
    ],
)
def test_a_fifo_is_refused_at_once(work: Path, capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    import torch

    torch.save({}, work / "w.pt")
    args = [arg.format("fifo") for arg in args]
    os.mkfifo(work / args[-1])
    refused(work, capsys, args, "found a FIFO")


def test_scale_never_replaces_dev_null(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    refused(work, capsys, ["scale", "child.yaml", *SCALE, "-o", "/dev/null"], "found a character device")
    assert Path("/dev/null").is_char_device()


def _zip_bomb(path: Path) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\0" * (64 << 20))  # 64 MB that deflate to 64 KB


def test_train_resume_refuses_a_zip_bomb_before_inflating(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _zip_bomb(work / "bomb.pt")
    assert (work / "bomb.pt").stat().st_size < 1 << 20
    args = ["train", "base.yaml", *TRAIN, "--output", "run", "--resume", "bomb.pt"]
    refused(work, capsys, args, "possible zip bomb", changes=True)


def test_two_scales_into_one_output_both_succeed(work: Path) -> None:
    command = [sys.executable, "-m", "effspec.cli", "scale", "child.yaml", *SCALE, "-o", "out.yaml"]
    procs = [subprocess.Popen(command, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    results = [proc.communicate(timeout=TIMEOUT) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], results
    assert (work / "out.yaml").read_text().startswith("# Written by `effspec scale`")
    assert not [p for p in work.iterdir() if "effspec-tmp" in p.name]


def test_an_empty_home_creates_no_cache(work: Path) -> None:
    env = {**os.environ, "HOME": ""}
    env.pop("XDG_CACHE_HOME", None)
    result = subprocess.run(
        [sys.executable, "-m", "effspec.cli", "compile", "base.yaml", "-o", "out"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert not Path("/.cache/effspec").exists()


# ---- hangs ---------------------------------------------------------------------------------------


def test_search_grid_product_is_bounded(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    axis = "1:10.66:0.01"  # 967 values: each axis under its cap, the product not
    grid = f"alpha={axis},beta={axis},gamma={axis}"
    args = ["search", "base.yaml", "--data", "synthetic", "--grid", grid, "-o", "s"]
    line = refused(work, capsys, args, "expected at most 1,000,000 grid points")
    assert "967 alpha x 967 beta x 967 gamma" in line


def test_search_refuses_a_foreign_study_of_the_same_name(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = f"sqlite:///{work / 'foreign.db'}"
    study = optuna.create_study(storage=storage, study_name="effspec-search-tiny", direction="maximize")
    study.enqueue_trial({"x": 1.0})
    args = ["search", "base.yaml", "--data", "synthetic", "--flops-ratio", "2", "--storage", storage, "-o", "s"]
    refused(work, capsys, args, "that effspec search did not create", changes=True)
    assert len(optuna.load_study(storage=storage, study_name="effspec-search-tiny").trials) == 1


def test_keras_checkpoint_record_naming_a_fifo_or_damaged(work: Path) -> None:
    keras = pytest.importorskip("keras")
    from effspec.backends.keras.runtime.checkpoint import Checkpoint

    from effspec.support.errors import TrainingError

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    folder = work / "checkpoint"
    folder.mkdir()
    os.mkfifo(folder / "state-000000001.weights.h5")
    checkpoint = Checkpoint(str(folder), model, {}, writer=True)
    record = '{"weights": "state-000000001.weights.h5", "step": 1, "seeds": []}'
    cases = {
        record: "which is not a regular file",
        "[1, 2]": "is damaged",
        '{"weights": 5, "step": 1, "seeds": []}': "is damaged",
        '{"weights": "../../etc/passwd", "step": 1, "seeds": []}': "which is not in",
        "\udcff": "is damaged",
    }
    for text, words in cases.items():
        (folder / "checkpoint.json").write_bytes(text.encode("utf-8", "surrogateescape"))
        with pytest.raises(TrainingError, match=words):
            checkpoint.restore(str(folder))
    (folder / "checkpoint.json").unlink()
    os.mkfifo(folder / "checkpoint.json")
    with pytest.raises(TrainingError, match="not a regular file"):
        checkpoint.restore(str(folder))


# ---- internal errors before: output paths --------------------------------------------------------

TARGET_COMMANDS = {
    "scale": ["scale", "child.yaml", *SCALE, "-o", "{}"],
    "plot": ["plot", "base.yaml", "-o", "{}.svg"],
    "diagram": ["info", "base.yaml", "--diagram", "{}.svg"],
    "export": ["export", "base.yaml", "--format", "onnx", "-o", "{}.onnx"],
    "search": ["search", "base.yaml", "--data", "synthetic", "--flops-ratio", "2", "--trials", "1", "-o", "{}"],
}
TARGETS = {
    "a directory": ("dir", "found a directory"),
    "under a regular file": ("afile/x", "a file is in the way"),
    "on a read-only file system": ("/proc/effspec-x", "cannot write /proc/effspec-x"),
    "too long": ("x" * 300, "File name too long"),
}


@pytest.mark.parametrize("command", sorted(TARGET_COMMANDS))
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_bad_output_paths(work: Path, capsys: pytest.CaptureFixture[str], command: str, target: str) -> None:
    name, words = TARGETS[target]
    if command == "search" and target == "a directory":
        pytest.skip("search -o names a folder")
    (work / "afile").write_text("keep me")
    (work / "dir.svg").mkdir()
    (work / "dir.onnx").mkdir()
    (work / "dir").mkdir()
    args = [arg.format(name) for arg in TARGET_COMMANDS[command]]
    refused(work, capsys, args, words)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_folder(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "ro").mkdir(mode=0o555)
    refused(work, capsys, ["scale", "child.yaml", *SCALE, "-o", "ro/x.yaml"], "Permission denied")


def test_a_full_disk_while_scale_writes(
    work: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (work / "out.yaml").write_text("the previous spec")
    real = Path.write_text

    def full_disk(self: Path, *args: object, **kwargs: object) -> int:
        if "effspec-tmp" in self.name:
            real(self, "half a spec")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "write_text", full_disk)
    refused(work, capsys, ["scale", "child.yaml", *SCALE, "-o", "out.yaml"], "No space left on device")


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch = pytest.importorskip("torch")
    from effspec.backends.torch.runtime import checkpoint

    from effspec.support.errors import TrainingError

    path = tmp_path / "checkpoint.pt"
    checkpoint.save_checkpoint(path, {"step": 1})

    def full_disk(obj: object, handle: object) -> None:
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(TrainingError, match="cannot write .*checkpoint.pt: .*unexpected pos"):
        checkpoint.save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


# ---- sizes that cannot be allocated --------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (
            ["train", "base.yaml", *TRAIN, "--train-resolution", "100000", "--output", "r"],
            "expected a resolution of at most 8,192",
        ),
        (
            ["train", "base.yaml", *TRAIN, "--num-classes", "1000000000", "--output", "r"],
            "expected a class count of at most 100,000",
        ),
        (["train", "base.yaml", *TRAIN, "--seed", str(2**64), "--output", "r"], "expected a seed of at most"),
        (
            ["train", "base.yaml", *TRAIN[:-5], "--batch-size", "60000", "--train-resolution", "8192", "--output", "r"],
            "pixels in one batch",
        ),
        (
            ["export", "base.yaml", "--format", "onnx", "--resolution", "100000", "-o", "x.onnx"],
            "expected a resolution of at most 8,192",
        ),
        (["check", "base.yaml", "--resolution", "100000"], "expected a resolution of at most 8,192"),
        (["check", "base.yaml", "--seed", str(2**64)], "expected a seed of at most"),
        (["search", "base.yaml", "--data", "synthetic", "--seed", str(2**64), "-o", "s"], "expected a seed of at most"),
        (["scale", "child.yaml", *SCALE, "--resolution-divisor", "100000", "-o", "x.yaml"], "--resolution-divisor"),
    ],
)
def test_sizes_are_bounded_before_allocation(
    work: Path, capsys: pytest.CaptureFixture[str], args: list[str], words: str
) -> None:
    refused(work, capsys, args, words)


# ---- resuming damaged runs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"epoch,global_step\n\xff\xfe,1\n", "not UTF-8" if False else "codec can't decode"),
        (b"epoch,global_step,lr\n1," + b"9" * 200_000 + b",2\n", "field larger than field limit"),
        (b"epoch,global_step\n1,2,3,4\n", "rows of different lengths"),
    ],
)
def test_resume_with_a_damaged_metrics_csv_names_it(
    work: Path, capsys: pytest.CaptureFixture[str], content: bytes, words: str
) -> None:
    run = work / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"not reached")
    (run / "metrics.csv").write_bytes(content)
    line = refused(work, capsys, ["train", "base.yaml", *TRAIN, "--output", "run", "--resume", "last"], words, True)
    assert "run/metrics.csv is damaged" in line
    assert (run / "metrics.csv").read_bytes() == content


def test_resume_with_a_fifo_for_metrics_csv(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = work / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"not reached")
    os.mkfifo(run / "metrics.csv")
    args = ["train", "base.yaml", *TRAIN, "--output", "run", "--resume", "last"]
    refused(work, capsys, args, "metrics.csv is damaged: expected a regular file", changes=True)


def test_a_real_run_resumes_and_refuses_a_fresh_start(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run_main(["train", "base.yaml", *TRAIN, "--output", "run"], capsys)
    assert code == 0, err
    rows = (work / "run" / "metrics.csv").read_text()
    refused(work, capsys, ["train", "base.yaml", *TRAIN, "--output", "run"], "already holds a", changes=True)
    assert (work / "run" / "metrics.csv").read_text() == rows
    code, _out, err = run_main(["train", "base.yaml", *TRAIN, "--output", "run", "--resume", "last"], capsys)
    assert code == 0, err
    assert not [p for p in (work / "run").iterdir() if "tmp" in p.name]
    (work / "run" / "metrics.csv").write_text("epoch,lr\n1,2\n")  # readable, but not this trainer's log
    args = ["train", "base.yaml", *TRAIN, "--output", "run", "--resume", "last"]
    line = refused(work, capsys, args, "no global_step column", changes=True)
    assert "run/metrics.csv is damaged" in line


# ---- plot --accuracy and scale -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"name,top1\ntiny,inf\n", "row 2: top1 is 'inf', expected a finite number"),
        (b"name,top1\ntiny,nan\n", "expected a finite number"),
        (b"name,top1\n\xff,1\n", "not UTF-8 text"),
        (b"name,top1\ntiny," + b"1" * 200_000 + b"\n", "not a readable CSV file"),
    ],
)
def test_plot_accuracy_csv(work: Path, capsys: pytest.CaptureFixture[str], content: bytes, words: str) -> None:
    (work / "acc.csv").write_bytes(content)
    refused(work, capsys, ["plot", "base.yaml", "--accuracy", "acc.csv", "-o", "a.svg"], words)


def test_plot_accuracy_fifo(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    os.mkfifo(work / "acc.csv")
    refused(work, capsys, ["plot", "base.yaml", "--accuracy", "acc.csv", "-o", "a.svg"], "expected a regular file")


def test_scale_quotes_an_extends_yaml_would_misread(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "yes").write_text(GOOD)
    code, _out, err = run_main(["scale", "yes", *SCALE, "-o", "out.yaml"], capsys)
    assert code == 0, err
    assert 'extends: "yes"' in (work / "out.yaml").read_text()
    assert run_main(["validate", "out.yaml"], capsys)[0] == 0


def test_scale_latency_on_cuda_without_a_gpu(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tensorflow")
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is present")
    args = ["scale", "child.yaml", "--target-latency", "5", "--backend", "keras", "--device", "cuda", "-o", "o.yaml"]
    refused(work, capsys, args, "--device cuda: Keras")


# ---- convert-weights: NaN and a hostile config.json ----------------------------------------------


@pytest.fixture(scope="module")
def timm_b0(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    timm = import_timm()
    return timm.create_model("efficientnet_b0", pretrained=False).state_dict()


CONVERT = ["convert-weights", "--from", "timm", "--to", "torch", "--force", "--verify-size", "32", str(B0)]


def test_verify_fails_on_nan_weights(work: Path, capsys: pytest.CaptureFixture[str], timm_b0: dict) -> None:
    import torch

    state = {name: tensor.clone() for name, tensor in timm_b0.items()}
    state["conv_stem.weight"][0, 0, 0, 0] = float("nan")
    (work / "hub").mkdir()
    torch.save(state, work / "hub" / "efficientnet_b0.pt")
    args = [*CONVERT[:5], "--verify", *CONVERT[5:], "hub/efficientnet_b0.pt", "out.pt"]
    refused(work, capsys, args, "NaN or infinite values")


@pytest.mark.parametrize(
    "config",
    [
        '{"architecture": "efficientnet_b0", "pretrained_cfg": {"input_size": ["a"], "crop_pct": 1e308, "tag": 5}}',
        "[" * 100_000,
        '{"architecture": "efficientnet_b0", "pretrained_cfg": {"input_size": [3, 0, 0], "mean": [NaN]}}',
        '{"architecture": "__import__(\'os\')", "pretrained_cfg": []}',
    ],
)
def test_a_hostile_timm_config_json_is_ignored(
    work: Path, capsys: pytest.CaptureFixture[str], timm_b0: dict, config: str
) -> None:
    import torch

    (work / "hub").mkdir()
    torch.save(timm_b0, work / "hub" / "efficientnet_b0.pt")
    (work / "hub" / "config.json").write_text(config)
    code, _out, err = run_main([*CONVERT, "hub/efficientnet_b0.pt", "out.pt"], capsys)
    assert code == 0, err
    assert (work / "out.pt").is_file()
