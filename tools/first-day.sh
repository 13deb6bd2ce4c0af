#!/usr/bin/env bash
# Issue 18's first real jobs, run by .ci/run after the suite in the environment it just installed
# with the README's command, with no test stub anywhere: train the tiny spec with the torch backend
# on an image folder for one epoch, import timm as effspec does, and convert a timm checkpoint with
# verification. Each step must succeed and print its key line.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python - "$work/images" <<'PY'
import sys
from pathlib import Path

import numpy as np
from PIL import Image

rng = np.random.default_rng(0)
for split in ("train", "val"):
    for label in ("a", "b"):
        folder = Path(sys.argv[1]) / split / label
        folder.mkdir(parents=True)
        for index in range(8):
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / f"{index}.png")
PY
effspec train tests/data/torch_v2_tiny.yaml --backend torch --data "$work/images" --epochs 1 --batch-size 8 \
    --output "$work/run" 2>&1 | tee "$work/train.log"
grep -q "done in" "$work/train.log"
python -c "from effspec.support.vision import import_timm; timm = import_timm(); print('timm', timm.__version__, 'imports')"
python - "$work/tf_b0.pth" <<'PY'
import sys

import torch

from effspec.support.vision import import_timm

torch.save(import_timm().create_model("tf_efficientnet_b0", pretrained=False).state_dict(), sys.argv[1])
PY
effspec convert-weights specs/efficientnet-b0.yaml --from timm --model tf_efficientnet_b0 --to torch \
    "$work/tf_b0.pth" "$work/b0.pt" --verify 2>&1 | tee "$work/convert.log"
if grep -q "does not import\|not verified\|unknown" "$work/convert.log"; then
    echo "first-day: convert-weights --from timm did not verify" >&2
    exit 1
fi
echo "first-day: ok"
