"""Issue 18, "A newcomer's first day": each documented path works as written on the README's install.

One test (or a few) per item of the issue; each failed on the commit the issue was filed against.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from effspec.errors import SpecError
from effspec.pipeline import build

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
        "from effspec.vision import import_timm, import_torchvision\n"
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
