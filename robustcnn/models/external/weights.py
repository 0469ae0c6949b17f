"""Weights files from elsewhere: safetensors, or a `.pt` / `.pth` state dict read without unpickling code.

`torch.load(weights_only=True)` only rebuilds tensors and plain containers; a file that needs more (a
whole pickled model, custom classes) is refused with the reason, never opened with `weights_only=False`.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from robustcnn.errors import UsageError, last_line

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "module")  # training scripts' habits
PREFIXES = ("module.", "_orig_mod.")  # left by DataParallel / DistributedDataParallel, and by torch.compile


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, unwrapped from {"state_dict": ...} and stripped of `module.`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UsageError(f"weights file {str(path)!r} does not exist")
    loaded = _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch(path)
    return strip_prefixes(unwrap(loaded, path))


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
