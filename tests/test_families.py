"""The wider MBConv family, each one short YAML file: exact counts, timm as the oracle, Keras checked.

For every family spec: parameters and MACs equal docs/reference.md (timm 1.0.31); the generated torch
model loaded with the weights of timm's model (random, with randomized batch-norm statistics) gives
timm's logits at an odd and an even input size; and ``effspec check`` (torch vs Keras against a
float64 budget) passes.

Weights move from timm to the generated model by structure: both list their tensors in forward
order with the same shapes, except that timm keeps a grouped 1x1 conv (MixNet's ``a1.1``) as one
conv per group, which concatenate along the output channels into ours.
"""

from __future__ import annotations

import os

import pytest
from reference import FAMILIES
from torch_helpers import randomize_batch_norm

from effspec.emit.pipeline import build
from effspec.support.vision import import_timm

torch = pytest.importorskip("torch")
timm = import_timm()  # effspec.support.vision: as the product imports it (a failure fails, never skips)

from effspec.equivalence.check import Settings, run_check  # noqa: E402
from effspec.weights.generated import load_model_module  # noqa: E402

#: The Keras check for one spec per new rule in the default run (each builds both models and a float64
#: reference; the property test checks torch == Keras on random specs that use every rule);
#: EFFSPEC_ALL_FAMILIES=1 checks all 24 (all pass).
KERAS_CHECKED = (
    sorted(FAMILIES)
    if os.environ.get("EFFSPEC_ALL_FAMILIES") == "1"
    else [  # one per rule the family added: fixed stem/head, expansion_in, pooled conv, mixed kernels
        "efficientnet-lite0",
        "efficientnet-edgetpu-s",
        "mobilenetv3-small-100",
        "mixnet-s",
        "fbnet-c",
    ]
)
LOGITS_RTOL = 1e-4  # max |ours - timm| / max |timm|, float32, eval mode
SIZES = (97, 64)  # one odd, one even: TF SAME pads differently at each


def timm_weights_into(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    """Copy timm's tensors into ours in forward order, concatenating timm's per-group convs."""
    source = [(k, v) for k, v in theirs.state_dict().items() if not k.endswith("num_batches_tracked")]
    target = [(k, v) for k, v in ours.state_dict().items() if not k.endswith("num_batches_tracked")]
    state, position = {}, 0
    for key, tensor in target:
        name, value = source[position]
        position += 1
        while value.shape != tensor.shape and value.dim() == 4 and value.shape[1:] == tensor.shape[1:]:
            name, part = source[position]  # the next group of a split 1x1 conv
            position += 1
            value = torch.cat([value, part])
        assert value.shape == tensor.shape, (key, name, tuple(value.shape), tuple(tensor.shape))
        state[key] = value
    assert position == len(source), f"timm has {len(source) - position} tensors left over"
    ours.load_state_dict(state, strict=False)


@pytest.mark.parametrize("spec_name", sorted(FAMILIES))
def test_counts_are_exact(spec_name: str) -> None:
    timm_name, resolution, params, macs = FAMILIES[spec_name]
    model = build(f"specs/{spec_name}.yaml").model
    assert (model.resolution, model.params, model.macs) == (resolution, params, macs)


@pytest.mark.parametrize("spec_name", sorted(FAMILIES))
def test_timm_weights_give_timm_logits(spec_name: str) -> None:
    timm_name = FAMILIES[spec_name][0]
    model = build(f"specs/{spec_name}.yaml").model
    torch.manual_seed(0)
    theirs = timm.create_model(timm_name, pretrained=False).eval()
    randomize_batch_norm(theirs, seed=1)
    ours = load_model_module(model, "torch").build_model().eval()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    timm_weights_into(ours, theirs)
    generator = torch.Generator().manual_seed(2)
    for size in SIZES:
        x = torch.randn(2, 3, size, size, generator=generator)
        with torch.no_grad():
            expected, got = theirs(x), ours(x)
        error = (got - expected).abs().max().item() / expected.abs().max().item()
        assert error <= LOGITS_RTOL, f"{spec_name} vs {timm_name} at {size}x{size}: {error:.2e}"


@pytest.mark.parametrize("spec_name", KERAS_CHECKED)
def test_keras_agrees_through_effspec_check(spec_name: str) -> None:
    result = run_check(f"specs/{spec_name}.yaml", Settings(resolution=64, batch=1, seed=0))
    assert result.ok, [(row.name, row.keras_error, row.budget) for row in result.failures]
