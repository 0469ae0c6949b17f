"""Weights files from elsewhere: safetensors, or a `.pt` / `.pth` state dict read without unpickling code.

`torch.load(weights_only=True)` only rebuilds tensors and plain containers; a file that needs more (a
whole pickled model, custom classes) is refused with the reason, never opened with `weights_only=False`.
A file that would expand past `MAX_TENSOR_BYTES` is refused before it is read, and `check_tensor_kinds`
refuses tensors a model cannot take as weights (sparse, meta, complex, a bool or integer for a float).
"""

from __future__ import annotations

import hashlib
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from robustcnn.errors import UsageError, last_line

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "module")  # training scripts' habits
PREFIXES = ("module.", "_orig_mod.")  # left by DataParallel / DistributedDataParallel, and by torch.compile
# 4 GiB: 1e9 float32 weights, above the largest image classifiers worth attacking (ViT-H/14 is 2.5 GiB); a small
# file that declares more (a zip bomb, a storage size that lies) is refused before torch reads it.
MAX_TENSOR_BYTES = 4 * 2**30
INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)  # e.g. num_batches_tracked


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, unwrapped from {"state_dict": ...} and stripped of `module.`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UsageError(f"weights file {str(path)!r} does not exist")
    _check_size(path)
    loaded = _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch(path)
    return strip_prefixes(unwrap(loaded, path))


def _check_size(path: Path) -> None:
    """Refuses a file that expands past MAX_TENSOR_BYTES. For torch.save's zip format that is the entries' declared
    sizes (torch.load checks each storage against its entry's size, so these bound what it allocates); for
    safetensors and the old torch format, the file's own size."""
    try:
        size = path.stat().st_size
        if path.suffix != ".safetensors" and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                size = sum(info.file_size for info in archive.infolist())
    except zipfile.BadZipFile:
        pass  # not a zip after all: torch.load says what it is
    except OSError as error:
        raise UsageError(f"weights file {path} cannot be read ({error.strerror or last_line(error)})") from None
    if size > MAX_TENSOR_BYTES:
        raise UsageError(
            f"weights file {path} expands to {size} bytes, more than the {MAX_TENSOR_BYTES} allowed; refused before "
            "reading it"
        )


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise UsageError(f"weights file {path} is not a readable safetensors file ({last_line(error)})") from None


def _read_torch(path: Path) -> object:
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing: one line is enough
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError, RuntimeError, EOFError, zip errors: all mean "refused"
        raise UsageError(
            f"weights file {path} cannot be loaded with torch.load(weights_only=True) ({last_line(error)}); "
            "it was not unpickled: save model.state_dict() with torch.save, or use safetensors"
        ) from None


def unwrap(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint: itself, or under one of `WRAPPER_KEYS` (nested at most twice)."""
    for _ in range(3):
        if isinstance(loaded, Mapping) and loaded and all(isinstance(v, torch.Tensor) for v in loaded.values()):
            return dict(loaded)
        inner = next((loaded[k] for k in WRAPPER_KEYS if isinstance(loaded, Mapping) and k in loaded), None)
        if not isinstance(inner, Mapping):
            break
        loaded = inner
    keys = f" with keys {', '.join(map(str, list(loaded)[:6]))}" if isinstance(loaded, Mapping) else ""
    raise UsageError(
        f"weights file {path} holds a {type(loaded).__name__}{keys}, not a state dict of tensors; "
        f"expected model.state_dict(), possibly under one of: {', '.join(WRAPPER_KEYS)}"
    )


def check_tensor_kinds(
    tensors: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], source: str | Path
) -> None:
    """Each tensor is dense (strided), has data (not on the meta device), and is a real number of the kind the
    model's own tensor of that name is (floating, integer or bool): load_state_dict would crash on a sparse or meta
    tensor and silently cast a complex or bool one."""
    for name, tensor in tensors.items():
        own = expected.get(name)
        kind, wanted = _kind(tensor.dtype), _kind(own.dtype) if own is not None else None
        if tensor.layout == torch.strided and not tensor.is_meta and kind is not None and kind == wanted:
            continue
        found = f"{tensor.dtype} with layout {tensor.layout}{' on the meta device' if tensor.is_meta else ''}"
        allowed = f"a {wanted} dtype, as the model's ({own.dtype})" if wanted else "a real floating or integer dtype"
        raise UsageError(
            f"checkpoint {source} holds {name} as {found}; allowed: a dense (strided) tensor with data, of {allowed}"
        )


def _kind(dtype: torch.dtype) -> str | None:
    """floating / integer / bool; None for complex, quantized and other dtypes no weight should have."""
    if dtype.is_floating_point:
        return "floating"
    if dtype in INTEGER_DTYPES:
        return "integer"
    return "bool" if dtype == torch.bool else None


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def state_sha256(model: nn.Module) -> str:
    """sha256 of every parameter and buffer actually in the model (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def load_weights_into(model: nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    """Strict load with an error that says which architecture or dataset the file does not match."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    if expected.keys() != found.keys():
        missing, extra = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
        problems = [
            f"{len(names)} {what} (e.g. {names[0]!r})"
            for what, names in (("missing", missing), ("unexpected", extra))
            if names
        ]
        raise UsageError(
            f"checkpoint {source} does not match the model: weights {' and '.join(problems)}; "
            "was it saved for another architecture?"
        )
    wrong = [k for k in expected if expected[k] != found[k]]
    if wrong:
        k = wrong[0]
        raise UsageError(
            f"checkpoint {source} does not match the model: {k} has shape {found[k]}, expected {expected[k]}; "
            "was it saved for another dataset (channels, image size, classes)?"
        )
    check_tensor_kinds(tensors, model.state_dict(), source)
    broken = next((k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if broken is not None:
        raise UsageError(
            f"checkpoint {source} holds NaN or infinite weights (in {broken}); training diverged before it was "
            "saved: use the other weights (--weights best or last) or retrain with a lower --lr"
        )
    model.load_state_dict(tensors, strict=True)
