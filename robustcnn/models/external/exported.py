"""`model.pt2`: a `torch.export.save` archive, loaded without unpickling, evaluating or executing anything in it.

`pt2_check.checked_archive` reads the archive first and refuses what torch would unpickle, `eval` or load as
native code; torch then reads the checked copy in memory, so nothing is patched while it runs. The graph's
train/eval behaviour is fixed when it is exported, so an archive exported in train mode (dropout or BatchNorm
batch statistics) is refused.
"""

from __future__ import annotations

from pathlib import Path

from robustcnn.errors import UsageError, last_line
from robustcnn.models.external import LOADERS, Built, Loader
from robustcnn.models.external.batching import FixedBatch, fixed_batch_note
from robustcnn.models.external.model import Model
from robustcnn.models.external.pt2_check import MODEL, CheckedArchive, checked_archive


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
        archive = checked_archive(path)
        program, net = _load(path, archive)
        _refuse_train_mode(program, path)
        # ExportedProgram.module() makes .train()/.eval() raise; the graph ignores the flag anyway (fixed at export).
        for name in ("train", "eval"):
            net.__dict__.pop(name, None)
        size = _static_batch(program)
        if size is None:
            return Built(net, f"torch.export:{path.name}", archive.sha256)
        return Built(
            FixedBatch(net, size), f"torch.export:{path.name}", archive.sha256, (fixed_batch_note(str(path), size),)
        )


def _load(path: Path, archive: CheckedArchive):
    """The program and its module. load_pt2 is what torch.export.load calls; the wrapper adds only a logged
    traceback and a fallback to an older archive format, which checked_archive refuses."""
    from torch.export.pt2_archive._package import load_pt2

    try:
        program = load_pt2(archive.data).exported_programs[MODEL]
        return program, program.module()
    except Exception as error:  # SerializeError, RuntimeError, KeyError ...: the archive does not deserialize
        raise UsageError(f"cannot load {path} as a torch.export archive: {last_line(error)}") from None


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
