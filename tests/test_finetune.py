"""Fine-tuning (issue 22): --init in both trainers from every format convert-weights reads, the
classifier replaced when the class count differs, a partial load refused, frozen batch norms whose
statistics stay bit-identical, and published names resolved through the libraries' own caches
(huggingface_hub, Keras), offline. Real data: tests/test_finetune_digits.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from effspec.backends.finetune import InitError, Phase, Source, plan_init, section

from effspec.cli import main as cli
from effspec.support.vision import import_timm

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "data" / "torch_v2_tiny.yaml"
B0 = ROOT / "specs" / "efficientnet-b0.yaml"
SYNTHETIC = [
    *("--data", "synthetic", "--synthetic-train-size", "8", "--synthetic-val-size", "4", "--batch-size", "4"),
    *("--train-resolution", "32", "--eval-resolution", "32", "--no-progressive", "--augmentation", "none"),
    *("--epochs", "1", "--no-tensorboard", "--ema-decay", "0"),
]
BACKEND_FLAGS = {"torch": ["--workers", "0"], "keras": ["--verbose", "0"]}
EFFSPEC = str(Path(sys.executable).with_name("effspec"))  # the installed command
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}


def train(spec: Path, backend: str, output: Path, *flags: str) -> int:
    return cli(
        ["train", str(spec), "--backend", backend, *SYNTHETIC, *BACKEND_FLAGS[backend], "--output", str(output), *flags]
    )


def tiny_file(path: Path, spec: Path = TINY) -> dict[str, np.ndarray]:
    """A generated torch file of ``spec`` with non-trivial batch-norm statistics."""
    from torch_helpers import randomize_batch_norm

    from effspec.emit.pipeline import build
    from effspec.weights.files import save_torch_file
    from effspec.weights.generated import load_model_module

    net = load_model_module(build(spec).model, "torch").build_model()
    randomize_batch_norm(net)
    state = {name: value.detach().numpy().copy() for name, value in net.state_dict().items()}
    save_torch_file(state, path)
    return state


def canonical(backend: str, output: Path, spec: Path = TINY) -> dict[str, np.ndarray]:
    """A finished run's final weights as the canonical (torch) state."""
    from effspec.weights.files import load_torch_file

    if backend == "torch":
        return load_torch_file(output / "model.pt")
    converted = output / "converted.pt"
    assert (
        cli(
            [
                "convert-weights",
                str(spec),
                "--from",
                "keras",
                "--to",
                "torch",
                str(output / "model.weights.h5"),
                str(converted),
            ]
        )
        == 0
    )
    return load_torch_file(converted)


# the plan and the phases (no framework) -----------------------------------------------------------


def test_plan_refuses_a_partial_load_and_names_the_tensors() -> None:
    expected = {
        "stem.conv.weight": (16, 3, 3, 3),
        "head.bn.weight": (64,),
        "classifier.weight": (5, 64),
        "classifier.bias": (5,),
    }
    state = {
        "stem.conv.weight": np.zeros((24, 3, 3, 3), np.float32),
        "classifier.weight": np.zeros((10, 64), np.float32),
        "classifier.bias": np.zeros(10, np.float32),
        "extra.weight": np.zeros(3, np.float32),
    }
    with pytest.raises(InitError) as error:
        plan_init(Source(Path("x.pt"), "torch", state), expected, 5, False)
    message = str(error.value)
    assert "missing 1: head.bn.weight" in message
    assert "stem.conv.weight (24, 3, 3, 3) (expected (16, 3, 3, 3))" in message
    assert "unexpected 1: extra.weight" in message and "nothing loaded" in message


def test_plan_replaces_only_the_classifier_and_reports_it() -> None:
    expected = {"stem.conv.weight": (16, 3, 3, 3), "classifier.weight": (5, 64), "classifier.bias": (5,)}
    state = {
        "stem.conv.weight": np.ones((16, 3, 3, 3), np.float32),
        "classifier.weight": np.zeros((10, 64), np.float32),
        "classifier.bias": np.zeros(10, np.float32),
    }
    plan = plan_init(Source(Path("x.pt"), "torch", state), expected, 5, False)
    assert list(plan.assign) == ["stem.conv.weight"] and plan.new == ["classifier.weight", "classifier.bias"]
    assert plan.line == (
        "init: loaded 1 tensors from x.pt (torch); new: classifier.weight, classifier.bias (5 classes; the file's "
        "has 10 classes); dropped: classifier.weight, classifier.bias"
    )
    fits = {**state, "classifier.weight": np.zeros((5, 64), np.float32), "classifier.bias": np.zeros(5, np.float32)}
    assert plan_init(Source(Path("x.pt"), "torch", fits), expected, 5, False).new == []
    assert plan_init(Source(Path("x.pt"), "torch", fits), expected, 5, True).new == [
        "classifier.weight",
        "classifier.bias",
    ]


def test_phases_by_section_for_canonical_and_keras_names() -> None:
    assert [
        section(name) for name in ("stem.bn", "blocks_2_1_se_reduce", "blocks.0.0.expand.conv", "head_bn", "classifier")
    ] == [
        "stem",
        "blocks.2",
        "blocks.0",
        "head",
        "classifier",
    ]
    warmup = Phase(classifier_only=True, head_conv=False, stages=None, batch_norm=False)
    assert warmup.frozen("head.conv", False) and not warmup.frozen("classifier", False)
    assert not Phase(True, True, None, False).frozen("head_bn", True)
    stages = Phase(False, False, 1, False)
    assert stages.frozen("stem.conv", False) and stages.frozen("blocks_0_0_expand_bn", True)
    assert not stages.frozen("blocks.1.0.expand.conv", False)
    assert Phase(False, False, None, True).frozen("blocks.2.1.project.bn", True)


# trainers ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", "keras"])
def test_a_file_of_another_spec_is_refused_with_the_mismatched_tensors(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.yaml"
    other.write_text(
        TINY.read_text()
        .replace("name: torch-v2-tiny", "name: other-tiny")
        .replace("channels: 16, kernel: 3, stride: 2", "channels: 24, kernel: 3, stride: 2")
    )
    tiny_file(tmp_path / "other.pt", other)
    assert train(TINY, backend, tmp_path / "run", "--init", str(tmp_path / "other.pt")) == 2
    err = capsys.readouterr().err
    assert "does not fit this model (nothing loaded; only the classifier may differ)" in err, err
    assert "stem.conv.weight (24, 3, 3, 3) (expected (16, 3, 3, 3))" in err, err
    assert "Traceback" not in err


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backend", "flags"),
    [
        ("torch", ["--freeze-stages", "1"]),
        ("keras", ["--freeze-stages", "1"]),
        ("torch", ["--freeze-epochs", "1"]),
        ("keras", ["--freeze-bn"]),
    ],
)
def test_frozen_batch_norm_statistics_stay_bit_identical_through_an_epoch(
    backend: str, flags: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    initial = tiny_file(tmp_path / "pretrained.pt")
    run = tmp_path / "run"
    assert train(TINY, backend, run, "--init", str(tmp_path / "pretrained.pt"), *flags) == 0, capsys.readouterr().err
    assert "init: loaded 76 tensors" in capsys.readouterr().err
    final = canonical(backend, run)
    phase = Phase(
        classifier_only="--freeze-epochs" in flags,
        head_conv=False,
        stages=1 if "--freeze-stages" in flags else None,
        batch_norm="--freeze-bn" in flags,
    )
    frozen_stats, moved_stats = [], []
    for name, value in initial.items():
        layer, _, what = name.rpartition(".")
        if what in ("running_mean", "running_var"):
            (frozen_stats if phase.frozen(layer, True) else moved_stats).append(name)
            if phase.frozen(layer, True):
                assert np.array_equal(final[name], value), f"{name} moved although frozen"
        elif what in ("weight", "bias") and phase.frozen(layer, layer.endswith("bn")):
            assert np.array_equal(final[name], value), f"{name} trained although frozen"
    assert frozen_stats
    moved = [name for name in moved_stats if not np.array_equal(final[name], initial[name])]
    assert moved_stats == moved, "unfrozen batch norms should update their statistics"
    assert not np.array_equal(final["classifier.weight"], initial["classifier.weight"])


def test_torch_resume_continues_in_the_freeze_phase_bit_identically(tmp_path: Path) -> None:
    tiny_file(tmp_path / "pretrained.pt")
    flags = [
        "--init",
        str(tmp_path / "pretrained.pt"),
        "--freeze-epochs",
        "1",
        "--epochs",
        "2",
        "--lr-pretrained",
        "0.5",
    ]
    assert train(TINY, "torch", tmp_path / "whole", *flags) == 0
    assert train(TINY, "torch", tmp_path / "parts", *flags, "--max-steps", "1") == 0  # stops in the frozen epoch
    assert train(TINY, "torch", tmp_path / "parts", *flags, "--resume") == 0
    whole, parts = canonical("torch", tmp_path / "whole"), canonical("torch", tmp_path / "parts")
    assert all(np.array_equal(whole[name], parts[name]) for name in whole)


# foreign formats and published names -----------------------------------------------------------------


MOBILENET = ROOT / "specs" / "mobilenetv3-small-100.yaml"  # the fewest layers: Keras traces it fastest


def timm_file(path: Path, name: str = "tf_efficientnet_b0") -> None:
    timm = import_timm()
    from safetensors.torch import save_file

    net = timm.create_model(name, pretrained=False)
    save_file({key: value.contiguous() for key, value in net.state_dict().items()}, str(path))


def keras_application_file(path: Path, legacy: bool = False) -> None:
    """keras.applications.EfficientNetB0 with random weights and no top: a Keras 3 .weights.h5, or the
    legacy .h5 layout Keras' published files (and weight cache) use."""
    import h5py
    import keras

    application = keras.applications.EfficientNetB0(weights=None, include_top=False)
    if not legacy:
        application.save_weights(str(path))
        return
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, application)


SMALL = ["--num-classes", "5", "--synthetic-train-size", "4", "--synthetic-val-size", "2", "--batch-size", "2"]
SMALL += ["--max-steps", "1"]


@pytest.mark.slow
def test_keras_trainer_from_a_timm_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "mobilenetv3_small_100.safetensors"
    timm_file(path, "mobilenetv3_small_100")
    # timm's mobilenetv3_small_100 pads symmetrically with eps 1e-5; the shipped spec is keras.applications'
    assert train(MOBILENET, "keras", tmp_path / "refused", "--init", str(path), *SMALL) == 2
    err = capsys.readouterr().err
    assert f"--init: {path}: timm mobilenetv3_small_100 (from the file path) was trained with padding symmetric" in err
    assert "set defaults: {padding: symmetric, batch_norm: {eps: 1.0e-5}}" in err and "or pass --force" in err
    assert train(MOBILENET, "keras", tmp_path / "run", "--init", str(path), "--force", *SMALL) == 0
    err = capsys.readouterr().err
    assert "note: --force: timm mobilenetv3_small_100 differs from the spec in padding symmetric" in err, err
    assert "note: imported timm mobilenetv3_small_100 (identified by the file path)" in err, err
    assert f"from {path} (timm); new: classifier.weight, classifier.bias (5 classes; the file's has 1000" in err, err


@pytest.mark.slow
def test_torch_trainer_from_a_keras_applications_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "efficientnetb0_notop.weights.h5"
    keras_application_file(path)
    assert train(B0, "torch", tmp_path / "run", "--init", str(path), *SMALL) == 0
    err = capsys.readouterr().err
    assert f"init: loaded 358 tensors from {path} (keras-applications); new: classifier.weight" in err, err
    assert "(5 classes; the file has none); dropped: none" in err, err


@pytest.mark.slow
def test_published_names_resolve_through_the_library_caches_offline(tmp_path: Path) -> None:
    """hf-hub:timm/... from a Hugging Face cache laid out as huggingface_hub does (refs/main ->
    snapshots/<commit>/model.safetensors), HF_HUB_OFFLINE=1, for the torch trainer;
    keras.applications:EfficientNetB0 from $KERAS_HOME/models/efficientnetb0_notop.h5, for
    convert-weights (the same resolution). Names not in the caches exit 2 in one line, nothing written."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--timm--tf_efficientnet_b0"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    timm_file(repo / "snapshots" / commit / "model.safetensors")
    (tmp_path / "keras" / "models").mkdir(parents=True)
    keras_application_file(tmp_path / "keras" / "models" / "efficientnetb0_notop.h5", legacy=True)
    env = {**ENV, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "KERAS_HOME": str(tmp_path / "keras")}
    train_torch = [EFFSPEC, "train", str(B0), "--backend", "torch", *SYNTHETIC, *SMALL, "--workers", "0"]
    train_torch += ["--init", "hf-hub:timm/tf_efficientnet_b0", "--output", str(tmp_path / "t")]
    convert = [EFFSPEC, "convert-weights", str(B0), "--from", "keras-applications", "--to", "torch"]
    convert += ["keras.applications:EfficientNetB0", str(tmp_path / "b0.pt")]
    missing = {  # not in the caches, no network: exit 2 in one line, nothing written
        name: [EFFSPEC, "convert-weights", str(B0), "--from", source, "--to", "torch", name, str(tmp_path / "x.pt")]
        for source, name in (
            ("timm", "hf-hub:timm/tf_efficientnet_b3"),
            ("keras-applications", "keras.applications:EfficientNetB3"),
        )
    }
    commands = {"train": train_torch, "convert": convert, **missing}
    runs = {  # all at once: each is mostly start-up
        name: subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for name, command in commands.items()
    }
    logs = {name: process.communicate(timeout=300)[0] for name, process in runs.items()}
    assert runs["train"].returncode == 0, logs["train"][-3000:]
    assert f"snapshots/{commit}/model.safetensors (timm); new: classifier.weight" in logs["train"], logs["train"]
    assert runs["convert"].returncode == 0, logs["convert"][-3000:]
    assert "imported keras.applications EfficientNetB0" in logs["convert"] and (tmp_path / "b0.pt").is_file()
    for name in missing:
        log = logs[name]
        assert runs[name].returncode == 2, log[-2000:]
        errors = [line for line in log.splitlines() if line.startswith("effspec: error")]
        assert len(errors) == 1 and "not downloadable" in errors[0] and "fetch" in errors[0], log
        assert "Traceback" not in log
    assert not (tmp_path / "x.pt").exists()
