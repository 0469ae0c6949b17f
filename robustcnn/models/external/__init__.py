"""Models trained elsewhere: a Python builder, torchvision / timm by name, a torch.export archive, an ONNX file.

Each kind is one small module with an `@LOADERS.register` class that recognises its spec and builds the
network as its author wrote it. `build_external` then loads `--weights`, wraps the network so that it
takes [0, 1] pixels and returns logits (`Preprocessed`), and says what identifies it (hashes, spec).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from robustcnn.data.base import EvalTransform
from robustcnn.errors import UsageError
from robustcnn.models.external.model import RUN_WEIGHTS, Model, parse_spec
from robustcnn.models.external.weights import load_weights_into, read_state_dict, state_sha256
from robustcnn.models.preprocess import Preprocessed, resolve_preprocessing
from robustcnn.registry import Registry

SPEC_FORMS = (
    "a run directory, FILE.py:BUILDER, package.module:BUILDER, torchvision:NAME, timm:NAME, FILE.pt2 or FILE.onnx"
)


@dataclass(frozen=True)
class Built:
    """A network as its author wrote it: takes what it was trained on, returns what it returns."""

    net: nn.Module
    arch: str  # what the rows call it: the spec, e.g. "torchvision:resnet18"
    source_sha256: str | None = None  # the file that defines the network (.py, .onnx, .pt2), when there is one
    notes: tuple[str, ...] = ()  # said once on stderr and kept in the manifest


class Loader:
    """Recognises one kind of spec and builds it. `takes_weights`: whether --weights FILE applies."""

    takes_weights: ClassVar[bool] = True
    priority: ClassVar[int] = 0  # tried in this order: prefixes and suffixes first, X:Y builders last
    extra: ClassVar[str | None] = None  # the optional dependency group it needs, for the error message

    @classmethod
    def matches(cls, spec: str) -> bool:
        raise NotImplementedError

    def build(self, model: Model, num_classes: int, download: bool) -> Built:
        raise NotImplementedError

    def declared_transform(self, model: Model) -> EvalTransform | None:
        """The eval transform the model's pretrained weights declare (resize, crop, interpolation), read from the
        library's metadata without fetching them; None when it has no pretrained weights or declares none."""
        return None

    def declared_normalization(self, model: Model) -> str | None:
        """The mean and std the model's pretrained weights declare, as a --normalize MEAN,STD value (per channel,
        [0, 1] units), read from the library's metadata; None when it has no pretrained weights."""
        return None


LOADERS: Registry[type[Loader]] = Registry("model kind")


def missing_extra(spec: str, extra: str, error: ImportError) -> UsageError:
    return UsageError(
        f"model {spec!r} needs the optional extra {extra!r} ({error.name or error} is not installed): "
        f"pip install 'robustcnn[{extra}]'"
    )


@dataclass(frozen=True)
class External:
    """A model from elsewhere, ready to attack, and what identifies it."""

    module: Preprocessed  # [0, 1] pixels in, logits out
    kind: str  # loader name, or "module" for a Python object
    arch: str
    weights_sha256: str  # of the parameters and buffers actually in the network
    identity: dict[str, Any]  # everything else that changes its outputs (spec, arguments, preprocessing, code)
    entry: dict[str, Any]  # what the manifest says about it
    notes: tuple[str, ...]


def loader_for(spec: str) -> tuple[str, Loader]:
    from robustcnn.models.external import exported, hub, onnx, python  # noqa: F401  (registers the loaders)

    for name in sorted(LOADERS.names(), key=lambda n: LOADERS.get(n).priority):
        if LOADERS.get(name).matches(spec):
            return name, LOADERS.get(name)()
    raise UsageError(f"model {spec!r} not found; a model is {SPEC_FORMS}")


def declared_transform(model: Model) -> EvalTransform | None:
    """The eval transform `model`'s pretrained weights declare (torchvision's weights enum, timm's pretrained
    config), or None: for a Python module, a builder, an exported file or a model without pretrained weights."""
    loader = _spec_loader(model)
    return None if loader is None else loader.declared_transform(model)


def declared_normalization(model: Model) -> str | None:
    """The --normalize value `model`'s pretrained weights declare (see `declared_transform`), or None."""
    loader = _spec_loader(model)
    return None if loader is None else loader.declared_normalization(model)


def _spec_loader(model: Model) -> Loader | None:
    """The loader of a model given by spec; None for a Python module, a run directory, or a spec that fails with
    its own message when it is built."""
    if isinstance(model.source, nn.Module):
        return None
    try:
        return loader_for(str(model.source))[1]
    except UsageError:
        return None


def build_external(model: Model, channels: int, num_classes: int, mean, std, download: bool = False) -> External:
    """Builds, loads weights, wraps. `mean`/`std`: the dataset's, for --normalize dataset."""
    kind, built = _build(model, num_classes, download)
    net = built.net
    if model.weights is not None:
        _load_weights(net, model, kind)
    was_training = isinstance(model.source, nn.Module) and model.source.training
    preprocessing = resolve_preprocessing(model.normalize or "none", model.input_range, channels, mean, std)
    wrapped = Preprocessed(net, preprocessing, model.output).eval()
    weights_sha = state_sha256(net)
    identity = {
        "kind": kind,
        "arch": built.arch,
        "weights": weights_sha,
        "code": built.source_sha256,
        "model_args": model.model_args,
        "preprocessing": preprocessing.to_dict(),
        **model.output.describe(),
    }
    entry = {
        "kind": kind,
        "spec": model.spec,
        "repeat_spec": None if isinstance(model.source, nn.Module) else model.to_spec(),
        "options": model.given(),
        "weights_file": model.weights,
        "weights_sha256": weights_sha,
        "source_sha256": built.source_sha256,
        "preprocessing": preprocessing.to_dict(),
        "was_training": was_training,
        "notes": list(built.notes),
    }
    return External(wrapped, kind, built.arch, weights_sha, identity, entry, built.notes)


def _build(model: Model, num_classes: int, download: bool) -> tuple[str, Built]:
    if isinstance(model.source, nn.Module):
        # A copy: eval mode, frozen weights and channels-last must not change the caller's module.
        net = copy.deepcopy(model.source)
        return "module", Built(net, f"{type(net).__module__}.{type(net).__qualname__}")
    kind, loader = loader_for(str(model.source))
    if model.weights is not None and not loader.takes_weights:
        raise UsageError(f"model {model.spec!r} carries its own weights; --weights applies to builder specs only")
    return kind, loader.build(model, num_classes, download)


def _load_weights(net: nn.Module, model: Model, kind: str) -> None:
    if model.weights in RUN_WEIGHTS:
        raise UsageError(
            f"--weights {model.weights} chooses a run directory's checkpoint; for {model.spec!r} give a weights file"
        )
    load_weights_into(net, read_state_dict(model.weights), model.weights)


__all__ = [
    "LOADERS",
    "Built",
    "External",
    "Loader",
    "Model",
    "build_external",
    "declared_normalization",
    "declared_transform",
    "loader_for",
    "parse_spec",
]
