"""Weight files, read as hostile input and written atomically.

Reading:

- torch pickles (.pt/.pth/.bin/.pth.tar) go through ``torch.load(..., weights_only=True)`` only, so a
  file can never run code. A zip-format file is inspected first: every member must be stored (not
  compressed) and the members together no larger than the file, so a 2 MB zip bomb never inflates.
- .safetensors headers are parsed and checked here before the library sees them: header length
  within the file, known dtypes, offsets inside the data and consistent with shape x dtype, no overlaps.
- Every tensor must be a dense real floating-point tensor (integers only for batch-norm counters):
  sparse, quantized, complex and integer weights are refused.
- Keras .h5 files must carry the HDF5 signature.

Every problem is a ``ConversionError`` (exit 2) with one line naming the file. A state dict may be
nested under ``state_dict`` / ``state_dict_ema`` / ``model`` (timm and generated train.py checkpoints);
DDP's ``module.`` prefix is removed.

Writing: ``atomic_output`` (effspec.support.output) writes to a temporary sibling and renames it over OUT, so
a failure leaves an existing OUT untouched and no partial file.
"""

from __future__ import annotations

import contextlib
import json
import struct
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from effspec.support.errors import UsageError
from effspec.weights.convert import ConversionError, keras_layer_weights

if TYPE_CHECKING:
    import keras

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".tar")
KERAS_SUFFIX = ".weights.h5"
#: keys a training checkpoint nests its state dict under, in the order they are preferred
NESTED_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")
#: the largest safetensors header accepted (the real ones are a few hundred KB)
MAX_HEADER_BYTES = 64 * 1024 * 1024
_SAFETENSORS_DTYPES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1}
_COUNTER_SUFFIX = "num_batches_tracked"
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@dataclass
class Checkpoint:
    """Tensors of a torch-side file, in file order, and what else the file said."""

    path: Path
    tensors: dict[str, np.ndarray]
    module_order: bool  # True when file order is the writer's module order (torch.save of a state_dict)
    key: str | None = None  # the nesting key the state dict came from
    other_keys: tuple[str, ...] = ()  # other nested state dicts present (e.g. state_dict_ema)
    meta: dict[str, Any] = field(default_factory=dict)  # top-level scalars and strings (timm's "arch")


def check_torch_path(path: Path) -> None:
    if path.suffix not in TORCH_SUFFIXES:
        raise UsageError(f"{path}: a torch weights file ends in {', '.join(TORCH_SUFFIXES)}")


def check_keras_path(path: Path) -> None:
    if not path.name.endswith(KERAS_SUFFIX):
        raise UsageError(f"{path}: a Keras weights file ends in {KERAS_SUFFIX}")


def existing_file(path: Path) -> None:
    if not path.exists():
        raise UsageError(f"{path}: no such file")
    if not path.is_file():
        raise UsageError(f"{path}: not a regular file")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


# torch pickles ------------------------------------------------------------------------------------


def check_zip(path: Path) -> None:
    """A torch zip file holds stored members only, together no larger than the file itself."""
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise ConversionError(f"{path}: not a readable torch file (damaged zip: {_first_line(exc)})") from exc
    total = 0
    for member in members:
        if member.compress_type != zipfile.ZIP_STORED:
            raise ConversionError(
                f"{path}: member {member.filename} is compressed; torch.save never compresses (refusing a "
                "possible zip bomb)"
            )
        total += member.file_size
    if total > size:
        raise ConversionError(f"{path}: members claim {total} bytes in a {size}-byte file (forged zip)")


def _unnest(obj: Any, path: Path) -> tuple[Mapping[str, Any], str | None, tuple[str, ...], dict[str, Any]]:
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path}: expected a state_dict (names -> tensors), found {type(obj).__name__}")
    meta = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, str | int | float | bool)}
    nested = [key for key in NESTED_KEYS if isinstance(obj.get(key), Mapping)]
    if not nested:
        return obj, None, (), meta
    key = nested[0]
    return obj[key], key, tuple(nested[1:]), meta


def _as_array(name: str, tensor: Any, path: Path) -> np.ndarray:
    import torch

    if not isinstance(tensor, torch.Tensor):
        raise ConversionError(f"{path}: {name} is a {type(tensor).__name__}, not a tensor")
    if tensor.layout != torch.strided:
        raise ConversionError(f"{path}: {name} is a {tensor.layout} tensor; only dense tensors are weights")
    if tensor.is_quantized:
        raise ConversionError(f"{path}: {name} is a quantized tensor ({tensor.dtype}); expected floating point")
    if tensor.is_complex():
        raise ConversionError(f"{path}: {name} is a complex tensor ({tensor.dtype}); expected real floating point")
    if not tensor.is_floating_point():
        if name.endswith(_COUNTER_SUFFIX) and tensor.numel() == 1:  # 0-d (some writers keep it 1-d)
            return np.asarray(tensor.reshape(()).item(), dtype=np.int64)
        raise ConversionError(f"{path}: {name} is an integer tensor ({tensor.dtype}); expected floating point")
    if tensor.dtype in (torch.float16, torch.bfloat16):
        tensor = tensor.float()
    return tensor.detach().cpu().numpy().copy()


def _strip_module_prefix(state: Mapping[str, Any]) -> Mapping[str, Any]:
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return state


def _load_pickle(path: Path) -> Checkpoint:
    import torch

    if zipfile.is_zipfile(path):
        check_zip(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except Exception as exc:  # noqa: BLE001 - an untrusted file: whatever the reader raises is the user's problem
        raise ConversionError(f"{path}: cannot read torch weights: {_first_line(exc)}") from exc
    state, key, others, meta = _unnest(obj, path)
    state = _strip_module_prefix(state)
    tensors = {}
    for name, tensor in state.items():
        if not isinstance(name, str):
            raise ConversionError(f"{path}: a state_dict key is a {type(name).__name__}, not a string")
        tensors[name] = _as_array(name, tensor, path)
    return Checkpoint(path, tensors, module_order=True, key=key, other_keys=others, meta=meta)


# safetensors --------------------------------------------------------------------------------------


def _check_safetensors_header(path: Path) -> dict[str, Any]:
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ConversionError(f"{path}: truncated safetensors file ({size} bytes, no header length)")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(size - 8, MAX_HEADER_BYTES):
            raise ConversionError(f"{path}: safetensors header claims {length} bytes in a {size}-byte file")
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConversionError(f"{path}: safetensors header is not JSON: {_first_line(exc)}") from exc
    if not isinstance(header, dict):
        raise ConversionError(f"{path}: safetensors header is not a JSON object")
    data_size = size - 8 - length
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
            raise ConversionError(f"{path}: safetensors entry {name!r} lacks dtype, shape or data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in _SAFETENSORS_DTYPES:
            raise ConversionError(f"{path}: {name} has dtype {dtype}; expected a real floating-point tensor")
        if dtype[0] in "IU" and not name.endswith(_COUNTER_SUFFIX):
            raise ConversionError(f"{path}: {name} is an integer tensor ({dtype}); expected floating point")
        ints = [*shape, *offsets] if isinstance(shape, list) and isinstance(offsets, list) else None
        if (
            ints is None
            or len(offsets) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints)
        ):
            raise ConversionError(f"{path}: {name} has a malformed shape or data_offsets")
        begin, end = offsets
        expected = int(np.prod(shape, dtype=object)) * _SAFETENSORS_DTYPES[dtype]
        if not begin <= end <= data_size:
            raise ConversionError(
                f"{path}: {name} data_offsets [{begin}, {end}] lie outside the {data_size} data bytes (truncated or "
                "forged)"
            )
        if end - begin != expected:
            raise ConversionError(f"{path}: {name} holds {end - begin} bytes, shape {shape} x {dtype} needs {expected}")
        spans.append((begin, end, name))
    spans.sort()
    for (_, end, first), (begin, _, second) in zip(spans, spans[1:], strict=False):
        if begin < end:
            raise ConversionError(f"{path}: {first} and {second} overlap in the data section (forged offsets)")
    return header


def _load_safetensors(path: Path) -> Checkpoint:
    header = _check_safetensors_header(path)
    try:
        from safetensors.torch import load_file

        state = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - untrusted file
        raise ConversionError(f"{path}: cannot read safetensors weights: {_first_line(exc)}") from exc
    meta = header.get("__metadata__") or {}
    tensors = {name: _as_array(name, tensor, path) for name, tensor in _strip_module_prefix(state).items()}
    return Checkpoint(path, tensors, module_order=False, meta=dict(meta) if isinstance(meta, dict) else {})


def read_checkpoint(path: Path) -> Checkpoint:
    """Any torch-side weights file: a state dict (possibly nested), or safetensors."""
    check_torch_path(path)
    existing_file(path)
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    return _load_pickle(path)


def load_torch_file(path: Path) -> dict[str, np.ndarray]:
    return read_checkpoint(path).tensors


def save_torch_file(state: Mapping[str, np.ndarray], path: Path) -> None:
    import torch

    check_torch_path(path)
    tensors = {name: torch.from_numpy(np.array(array, order="C")) for name, array in state.items()}  # keeps 0-d
    with atomic_output(path) as temporary:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(tensors, str(temporary))
        else:
            torch.save(tensors, temporary)


# Keras --------------------------------------------------------------------------------------------


def check_hdf5(path: Path) -> None:
    """An HDF5 file starts with its signature at 0 (or after a user block of 512 x 2^k bytes)."""
    existing_file(path)
    size = path.stat().st_size
    with path.open("rb") as handle:
        offset = 0
        while offset + 8 <= size:
            handle.seek(offset)
            if handle.read(8) == _HDF5_SIGNATURE:
                return
            offset = 512 if offset == 0 else offset * 2
    raise ConversionError(f"{path}: not an HDF5 file (no HDF5 signature)")


def load_keras_file(model: keras.Model, path: Path) -> dict[str, list[np.ndarray]]:
    """Load ``path`` into a built generated model and read its layer weights back."""
    check_keras_path(path)
    check_hdf5(path)
    try:
        model.load_weights(str(path))
    except (ValueError, KeyError) as exc:  # Keras names the layer or variable that does not fit
        raise ConversionError(
            f"{path}: does not fit the generated {model.name} Keras model: {_first_line(exc)}"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - a damaged HDF5 file raises whatever h5py raises
        raise ConversionError(f"{path}: cannot read Keras weights: {_first_line(exc)}") from exc
    return keras_layer_weights(model)


def save_keras_file(model: keras.Model, path: Path) -> None:
    check_keras_path(path)
    with atomic_output(path) as temporary:
        model.save_weights(str(temporary), overwrite=True)


# atomic output ------------------------------------------------------------------------------------


def check_output(path: Path, directory: bool = False) -> None:
    """OUT can be written (effspec.support.output's rules): a file name whose folder exists, or a folder
    that is missing, empty or effspec's own previous output (``directory``)."""
    from effspec.support import output

    if directory:
        output.check_folder_target(path, flag="")
    else:
        output.check_file_target(path, flag="")


@contextlib.contextmanager
def atomic_output(path: Path, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` (a file name with the same suffix, or a fresh folder);
    on success it takes ``path``'s place (effspec.support.output). On any failure it is removed and
    ``path`` is untouched."""
    from effspec.support import output

    if directory:
        with output.staged_folder(path, flag="") as temporary:
            yield temporary
        return
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(KERAS_SUFFIX) else path.suffix
    with output.staged_file(path, flag="", suffix=suffix) as temporary:
        yield temporary
