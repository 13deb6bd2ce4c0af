#!/usr/bin/env bash
# Build the torch_xla environment beside the main one (idempotent).
#
#   tools/xla-env.sh [VENV_DIR]      # default: .xla-venv in the repository root (gitignored)
#
# torch_xla pins its own torch, so it cannot share the main .venv (which carries the newest CPU torch):
# this venv holds torch==2.9.0 + torch_xla==2.9.0 from PyPI (the torch wheel pulls the CUDA libraries,
# about 7 GB; about 3 minutes here), effspec's own small dependencies, and effspec itself installed
# editable with --no-deps. torch_xla runs on the CPU with PJRT_DEVICE=CPU, so no accelerator is needed.
#
# Then run the opt-in tests with it:
#   EFFSPEC_XLA_PYTHON=.xla-venv/bin/python python -m pytest -q tests/test_scaleout_xla.py
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-$root/.xla-venv}"
torch_version=2.9.0
xla_version=2.9.0
py="$venv/bin/python"

ready() {
    [ -x "$py" ] && "$py" - "$torch_version" "$xla_version" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
import effspec  # noqa: F401
import pytest  # noqa: F401
ok = version("torch").split("+")[0] == sys.argv[1] and version("torch_xla").split("+")[0] == sys.argv[2]
sys.exit(0 if ok else 1)
PY
}

if ready; then
    echo "xla-env: $venv is ready (torch $torch_version, torch_xla $xla_version)"
    exit 0
fi
[ -x "$py" ] || python3 -m venv "$venv"
"$py" -m pip install -q --upgrade pip
# effspec's own dependencies (pyproject [project] + the torch extra); constraints.txt pins the main venv's
# torch, so its torch lines are left out here
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
grep -v -E '^torch' "$root/constraints.txt" >"$constraints"
"$py" -m pip install -q -c "$constraints" \
    "torch==$torch_version" "torch_xla==$xla_version" \
    pydantic PyYAML Jinja2 safetensors numpy pytest
"$py" -m pip install -q --no-deps -e "$root"
if ! ready; then
    echo "xla-env: $venv was built but torch $torch_version / torch_xla $xla_version / effspec do not import" >&2
    exit 1
fi
echo "xla-env: built $venv (torch $torch_version, torch_xla $xla_version)"
