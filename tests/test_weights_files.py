"""Weight files as hostile input (issue 15): every bad file exits 2 with one line, quickly, without
running code, inflating bombs or touching an existing OUT."""

from __future__ import annotations

import json
import os
import resource
import struct
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
pytest.importorskip("h5py")

from safetensors.torch import save_file  # noqa: E402

from effspec.cli import main  # noqa: E402
from effspec.emit.pipeline import build  # noqa: E402
from effspec.weights.files import atomic_output  # noqa: E402
from effspec.weights.manifest import build_manifest  # noqa: E402

SPEC = "specs/efficientnet-b0.yaml"
BOMB_BYTES = 512 << 20  # inflates to 512 MiB; the file is about 0.5 MB


def _convert(source: str, target: str, weights: Path, out: Path) -> int:
    return main(["convert-weights", SPEC, "--from", source, "--to", target, str(weights), str(out)])


def _assert_exit_2(capsys, source: str, target: str, weights: Path, out: Path, expect: str) -> None:
    started = time.monotonic()
    before = out.read_bytes() if out.is_file() else None
    assert _convert(source, target, weights, out) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0], captured.err
    assert captured.out == ""
    assert time.monotonic() - started < 30
    assert (out.read_bytes() if out.is_file() else None) == before
    assert not out.parent.is_dir() or not [p for p in out.parent.iterdir() if ".partial" in p.name]


def _state() -> dict[str, torch.Tensor]:
    manifest = build_manifest(build(SPEC).model)
    return {
        e.name: torch.zeros(e.shape, dtype=torch.int64 if e.kind == "bn_count" else torch.float32) for e in manifest
    }


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out.weights.h5"


def test_a_zip_bomb_is_refused_without_inflating(tmp_path: Path, out: Path, capsys) -> None:
    torch.save({"stem.conv.weight": torch.zeros(4)}, tmp_path / "base.pt")
    bomb = tmp_path / "bomb.bin"
    with zipfile.ZipFile(tmp_path / "base.pt") as base, zipfile.ZipFile(bomb, "w") as archive:
        for info in base.infolist():
            if info.filename.endswith("/data/0"):
                member = zipfile.ZipInfo(info.filename)
                member.compress_type = zipfile.ZIP_DEFLATED
                with archive.open(member, "w", force_zip64=True) as handle:
                    chunk = bytes(64 << 20)
                    for _ in range(BOMB_BYTES // len(chunk)):
                        handle.write(chunk)
            else:
                archive.writestr(info, base.read(info))
    assert bomb.stat().st_size < 2 << 20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _assert_exit_2(capsys, "torch", "keras", bomb, out, "refusing a possible zip bomb")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 256 * 1024  # KiB


def test_a_zip_whose_members_claim_more_than_the_file_is_refused(tmp_path: Path, out: Path, capsys) -> None:
    path = tmp_path / "forged.bin"
    torch.save({"stem.conv.weight": torch.zeros(4)}, path)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        member = next(i for i in archive.infolist() if i.filename.endswith("/data/0"))
    claim = struct.pack("<I", 0xFFFFFFF0)  # about 4 GiB
    for start in range(len(data) - 4):  # patch the member's uncompressed size in the central directory
        if data[start : start + 4] == b"PK\x01\x02" and data[start + 46 : start + 46 + len(member.filename)] == (
            member.filename.encode()
        ):
            data[start + 24 : start + 28] = claim
    path.write_bytes(bytes(data))
    _assert_exit_2(capsys, "torch", "keras", path, out, "forged zip")


def test_a_pickle_that_runs_code_is_never_executed(tmp_path: Path, out: Path, capsys) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"stem.conv.weight": Payload()}, path)
    _assert_exit_2(capsys, "torch", "keras", path, out, "cannot read torch weights")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("value", "expect"),
    [
        (torch.zeros(4, dtype=torch.complex64), "complex tensor"),
        (torch.zeros(4, dtype=torch.int32), "integer tensor"),
        (torch.zeros(4, 4).to_sparse(), "only dense tensors are weights"),
        ([1, 2, 3], "not a tensor"),
    ],
    ids=["complex", "integer", "sparse", "list"],
)
def test_tensors_that_are_not_real_dense_floats_are_refused(tmp_path: Path, out: Path, capsys, value, expect) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"stem.conv.weight": value}, path)
    _assert_exit_2(capsys, "torch", "keras", path, out, expect)


def test_not_a_state_dict(tmp_path: Path, out: Path, capsys) -> None:
    path = tmp_path / "weights.pt"
    torch.save([torch.zeros(1)], path)
    _assert_exit_2(capsys, "torch", "keras", path, out, "expected a state_dict")


def test_a_truncated_torch_file(tmp_path: Path, out: Path, capsys) -> None:
    path = tmp_path / "weights.pt"
    torch.save(_state(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _assert_exit_2(capsys, "torch", "keras", path, out, "weights.pt")


def _safetensors(path: Path, header: dict, data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("huge header", "header claims"),
        ("not json", "not JSON"),
        ("outside", "lie outside"),
        ("overlap", "overlap"),
        ("wrong size", "needs 16"),
        ("integer", "integer tensor"),
        ("complex", "dtype C64"),
        ("truncated", "lie outside"),
        ("empty", "truncated safetensors file"),
    ],
)
def test_forged_safetensors_are_refused(tmp_path: Path, out: Path, capsys, case: str, expect: str) -> None:
    path = tmp_path / "model.safetensors"
    tensor = {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}
    if case == "huge header":
        path.write_bytes(struct.pack("<Q", 1 << 60) + b"{}")
    elif case == "not json":
        path.write_bytes(struct.pack("<Q", 4) + b"\xff\xfe{[")
    elif case == "outside":
        _safetensors(path, {"a": {**tensor, "data_offsets": [0, 1 << 40]}}, bytes(16))
    elif case == "overlap":
        _safetensors(path, {"a": tensor, "b": {**tensor, "data_offsets": [8, 24]}}, bytes(24))
    elif case == "wrong size":
        _safetensors(path, {"a": {**tensor, "data_offsets": [0, 8]}}, bytes(16))
    elif case == "integer":
        save_file({"stem.conv.weight": torch.zeros(4, dtype=torch.int32)}, str(path))
    elif case == "complex":
        _safetensors(path, {"a": {**tensor, "dtype": "C64"}}, bytes(16))
    elif case == "truncated":
        save_file({k: v for k, v in _state().items()}, str(path))
        path.write_bytes(path.read_bytes()[:-100])
    else:
        path.write_bytes(b"")
    _assert_exit_2(capsys, "torch", "keras", path, out, expect)


def test_a_file_that_is_not_hdf5(tmp_path: Path, capsys) -> None:
    fake = tmp_path / "model.weights.h5"
    fake.write_text("not HDF5 at all\n")
    _assert_exit_2(capsys, "keras", "torch", fake, tmp_path / "out.pt", "not an HDF5 file")
    fake = tmp_path / "efficientnetb0.h5"
    fake.write_bytes(np.random.default_rng(0).bytes(4096))
    _assert_exit_2(capsys, "keras-applications", "torch", fake, tmp_path / "out.pt", "not an HDF5 file")


def test_a_failed_conversion_leaves_an_existing_out_untouched(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.pt"
    torch.save({"stem.conv.weight": torch.zeros(1)}, bad)  # loads, but does not fit the manifest
    out = tmp_path / "out.weights.h5"
    out.write_bytes(b"precious")
    _assert_exit_2(capsys, "torch", "keras", bad, out, "stem.conv.weight")
    _assert_exit_2(capsys, "keras", "torch", tmp_path / "missing.weights.h5", tmp_path / "bad.pt", "no such file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt", "out.weights.h5"]


def test_out_must_be_writable(tmp_path: Path, capsys) -> None:
    good = tmp_path / "w.pt"
    torch.save(_state(), good)
    _assert_exit_2(capsys, "torch", "keras", good, tmp_path / "no" / "such" / "x.weights.h5", "does not exist")
    (tmp_path / "dir.weights.h5").mkdir()
    _assert_exit_2(capsys, "torch", "keras", good, tmp_path / "dir.weights.h5", "found a directory")


def test_atomic_output_replaces_on_success_and_keeps_out_on_failure(tmp_path: Path) -> None:
    out = tmp_path / "x.pt"
    out.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_output(out) as temporary:
        temporary.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert out.read_bytes() == b"old"
    with atomic_output(out) as temporary:
        assert temporary.parent == tmp_path and temporary.suffix == ".pt"
        temporary.write_bytes(b"new")
    assert out.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.pt"]


def test_a_legacy_torch_file_claiming_8_gib_is_refused(tmp_path: Path, out: Path, capsys) -> None:
    """Pre-zip torch files declare each storage's size in the pickle: a forged size must fail fast."""
    path = tmp_path / "legacy.pth"
    torch.save({"stem.conv.weight": torch.zeros(1 << 20)}, path, _use_new_zipfile_serialization=False)
    data = bytearray(path.read_bytes())
    position = data.find(b"J" + struct.pack("<i", 1 << 20))  # the storage's element count
    data[position + 1 : position + 5] = struct.pack("<i", (1 << 31) - 1)
    path.write_bytes(bytes(data[:200_000]))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _assert_exit_2(capsys, "torch", "keras", path, out, "cannot read torch weights")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 256 * 1024  # KiB
