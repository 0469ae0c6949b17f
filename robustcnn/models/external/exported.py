"""`model.pt2`: a `torch.export.save` archive, loaded without unpickling anything.

The archive keeps the graph as JSON and the weights as raw bytes, but `torch.export.load` falls back to
`torch.load(weights_only=False)` and `pickle.loads` for some entries (tensors stored as pickles, custom
objects). `_no_unpickling` refuses exactly those while it runs. The graph's train/eval behaviour is fixed
when it is exported, so an archive exported in train mode (dropout or BatchNorm batch statistics) is refused.
"""

from __future__ import annotations

import logging
import types
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from robustcnn.errors import UsageError, last_line
from robustcnn.fileio import sha256_file
from robustcnn.models.external import LOADERS, Built, Loader
from robustcnn.models.external.batching import FixedBatch, fixed_batch_note
from robustcnn.models.external.model import Model


class _Refused(Exception):
    pass


@LOADERS.register("pt2")
class Exported(Loader):
    takes_weights = False  # the archive carries them

    @classmethod
    def matches(cls, spec: str) -> bool:
        return spec.endswith(".pt2")

    def build(self, model: Model, num_classes: int, download: bool) -> Built:
        path = Path(str(model.source)).expanduser()
        if not path.is_file():
            raise UsageError(f"model file {str(path)!r} does not exist")
        if model.model_args:
            raise UsageError(f"{path} is a torch.export archive: it takes no --model-arg")
        program = _load(path)
        _refuse_train_mode(program, path)
        net = program.module()
        # ExportedProgram.module() makes .train()/.eval() raise; the graph ignores the flag anyway (fixed at export).
        for name in ("train", "eval"):
            net.__dict__.pop(name, None)
        size = _static_batch(program)
        if size is None:
            return Built(net, f"torch.export:{path.name}", sha256_file(path))
        return Built(
            FixedBatch(net, size), f"torch.export:{path.name}", sha256_file(path), (fixed_batch_note(str(path), size),)
        )


def _load(path: Path):
    try:
        with _no_unpickling(), _quiet():
            return torch.export.load(str(path))
    except _Refused:
        raise UsageError(f"{path} holds pickled objects; refused (loading them could run code)") from None
    except Exception as error:
        if "weights_only" in str(error) or "Weights only load failed" in str(error):
            raise UsageError(f"{path} holds pickled tensors that torch.load(weights_only=True) refuses") from None
        raise UsageError(f"cannot load {path} as a torch.export archive: {last_line(error)}") from None


@contextmanager
def _no_unpickling():
    """While torch.export.load runs: torch.load only with weights_only=True, pickle.loads refused."""
    import torch.export.pt2_archive._package as package

    def refuse(*args, **kwargs):
        raise _Refused

    def tensors_only(*args, **kwargs):
        kwargs["weights_only"] = True
        return original_load(*args, **kwargs)

    original_load, original_pickle, original_object = torch.load, package.pickle, torch._C._pickle_load_obj
    torch.load, torch._C._pickle_load_obj = tensors_only, refuse
    package.pickle = types.SimpleNamespace(**{**vars(original_pickle), "loads": refuse, "load": refuse})
    try:
        yield
    finally:
        torch.load, package.pickle, torch._C._pickle_load_obj = original_load, original_pickle, original_object


@contextmanager
def _quiet():
    """torch.export.load logs a traceback (and warnings) before it raises or falls back to an old format;
    the user gets one line from us instead."""
    loggers = [logging.getLogger(name) for name in ("torch.export", "torch._export")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _refuse_train_mode(program, path: Path) -> None:
    for node in program.graph.nodes:
        target = str(node.target)
        training = ("dropout" in target and len(node.args) > 2 and node.args[2] is True) or (
            "batch_norm" in target and len(node.args) > 5 and node.args[5] is True
        )
        if training:
            raise UsageError(
                f"{path} was exported in train mode ({target} trains); export it after model.eval(): "
                "its graph keeps the mode it was exported in"
            )


def _static_batch(program) -> int | None:
    """The batch size the archive was exported with, when it is fixed rather than a dynamic dimension."""
    inputs = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in inputs:
            value = node.meta.get("val")
            first = value.shape[0] if value is not None and value.dim() else None
            return first if isinstance(first, int) else None
    return None
