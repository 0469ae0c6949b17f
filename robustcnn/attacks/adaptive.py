"""Adaptive attacks: gradient attacks adapted to a defence that fools them (Athalye, Carlini & Wagner, 2018).

- EOT (Expectation over Transformation), suite key `eot = K`: on a model random at test time, every gradient the
  attack takes is the mean of K loss gradients, each from its own forward and backward pass with the model's
  randomness live (never seeded away). A deterministic model gets one pass: K identical passes add nothing.
- BPDA (Backward Pass Differentiable Approximation), suite key `bpda`: the forward pass is the model's own, the
  backward pass treats a non-differentiable step as the identity. "rounding": round, floor, ceil, trunc, fix, sign
  and casts to integer types (torch functions, tensor methods and aten ops alike: a torch function mode, so the
  user's model is not changed); "MODULE.PATH": that submodule's backward is the identity (a step that leaves torch,
  such as JPEG through PIL); "auto": rounding, on a model whose input gradients the model checks found masked.

Both act inside the attack's gradient only (`equip` wraps the ART estimator's `loss_gradient`): predictions, and so
every number reported, come from the model as it is. Which model gets what is decided once per model from the
sweep's model checks (`Findings`), by `AdaptiveGradients.adapt`, and written with the reason in the manifest.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from robustcnn.attacks.art import seen_prediction
from robustcnn.attacks.base import Findings, Target
from robustcnn.config import INT, option
from robustcnn.errors import UsageError
from robustcnn.results import Adaptation, Technique

RANDOM_REASON = "outputs differ between identical calls (model check deterministic: fail)"
MASKED_REASON = "input gradients are zero (model check gradients: fail)"
BPDA_WORDS = ("off", "auto", "rounding")  # the other values of `bpda` are module paths
MODULE_PATH = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")


def parse_bpda(value: Any) -> str:
    text = str(value).strip() if isinstance(value, str) else ""
    if text in BPDA_WORDS or MODULE_PATH.fullmatch(text):
        return text
    raise ValueError('expected "off", "auto", "rounding" or a submodule path such as "preprocess.quantise"')


@dataclass(frozen=True)
class AdaptiveParams:
    """The adaptive options of a gradient attack (PGD, APGD); at their defaults the attack is the plain one."""

    eot: int = option(1, "on a model found random at test time: gradients averaged over this many passes", INT)
    bpda: str = option("off", 'gradient straight through: "off", "auto", "rounding" or "MODULE.PATH"', parse_bpda)


ADAPTIVE_DEFAULTS = {"eot": 1, "bpda": "off", "loss": "dlr"}  # left out of described params: older cells stay valid


class AdaptiveGradients:
    """Mixin for gradient attacks whose Params derive from `AdaptiveParams`: EOT and BPDA inside their gradient."""

    name: str
    params: Any
    target: Target
    ITERATES: ClassVar[str] = "any_iterate"  # the every-iterate rule, turned off on a random model

    @classmethod
    def adapt(cls, name: str, params: Any, target: Target) -> tuple[Any, tuple[Adaptation, ...]]:
        """The params as they run on this model, and what changed and why: EOT only where the model is random, BPDA
        "auto" only where its gradients are masked; a random model's single pass never counts an iterate broken."""
        findings, changes, done = target.findings, {}, []
        if params.eot > 1:
            if findings.random:
                done.append(Adaptation(name, Technique.EOT, str(params.eot), RANDOM_REASON))
            else:
                changes["eot"] = 1  # the same gradient K times
        bpda = _resolved_bpda(params.bpda, findings)
        if bpda != params.bpda:
            changes["bpda"] = bpda
        if bpda != "off":
            reason = MASKED_REASON if params.bpda == "auto" else "asked for in the suite"
            done.append(Adaptation(name, Technique.BPDA, bpda, reason))
        if findings.random and getattr(params, cls.ITERATES, False):
            changes[cls.ITERATES] = False
            reason = "random at test time: one pass misclassifying an iterate proves nothing"
            done.append(Adaptation(name, Technique.ITERATES, "off", reason))
        return (replace(params, **changes) if changes else params), tuple(done)

    @classmethod
    def describe_params(cls, params: Any) -> dict:
        described = super().describe_params(params)  # type: ignore[misc]
        return {k: v for k, v in described.items() if not (k in ADAPTIVE_DEFAULTS and v == ADAPTIVE_DEFAULTS[k])}

    def check_model(self) -> None:
        super().check_model()  # type: ignore[misc]
        if self.params.bpda not in BPDA_WORDS:
            find_module(self.target.model, self.params.bpda, self.name)

    def equipped(self, art_attack: Any) -> Any:
        """The ART attack with EOT and BPDA in its estimator (a copy: the target's classifier is shared by every
        attack). With EOT the attack works against the expected model throughout: its gradients, and also the losses
        and predictions it steers by (APGD's step sizes and best points, which restarts and examples it keeps), are
        means over the passes; one noisy pass would make those choices at random."""
        ran = self.adapt(self.name, self.params, self.target)[0]  # as adapted params (the sweep's) already are
        passes, bpda = ran.eot, ran.bpda
        if passes == 1 and bpda == "off":
            return art_attack
        estimator = _shallow_copy(art_attack.estimator)
        through = lambda: straight_through(self.target.model, bpda, self.name)  # noqa: E731
        estimator.loss_gradient = averaged(estimator.loss_gradient, passes, through)
        if passes > 1:
            estimator.compute_loss = averaged(estimator.compute_loss, passes, contextlib.nullcontext)
            estimator.predict = _reported(averaged(estimator.predict, passes, contextlib.nullcontext))
        art_attack._estimator = estimator  # ART keeps it there, behind the read-only `estimator`
        return art_attack


def _reported(predict: Callable) -> Callable:
    """`predict`, telling per-example starts the prediction ART selects its rows by: the mean, not the last pass."""

    def reported(x, *args, **kwargs):
        predicted = predict(x, *args, **kwargs)
        seen_prediction(predicted)
        return predicted

    return reported


def _shallow_copy(estimator: Any) -> Any:
    """A second estimator over the same model and settings. Not copy.copy: ART's PyTorchClassifier pickles itself for
    that (`__getstate__` saves the model under ART's data folder and torch.load's it back)."""
    clone = object.__new__(type(estimator))
    clone.__dict__.update(estimator.__dict__)
    return clone


def _resolved_bpda(bpda: str, findings: Findings) -> str:
    if bpda == "auto":
        return "rounding" if findings.masked else "off"
    return bpda


def averaged(function: Callable, passes: int, through: Callable[[], contextlib.AbstractContextManager]) -> Callable:
    """`function` (ART's loss_gradient, compute_loss or predict) as the mean over `passes` calls, each a fresh pass of
    the model with its randomness live (EOT), under `through()` (BPDA); numpy arrays and tensors alike."""

    def mean(x, *args, **kwargs):
        with through():
            total = function(x, *args, **kwargs)
            for _ in range(passes - 1):
                total = total + function(x, *args, **kwargs)
        return total / passes if passes > 1 else total

    return mean


@contextlib.contextmanager
def straight_through(model: nn.Module, bpda: str, attack: str = "") -> Iterator[None]:
    """While the block runs, the gradient passes through `bpda` ("rounding": rounding ops; a path: that submodule) as
    if it were the identity; "off": nothing changes."""
    if bpda == "off":
        yield
    elif bpda == "rounding":
        with RoundingStraightThrough():
            yield
    else:
        module = find_module(model, bpda, attack)
        handle = module.register_forward_hook(_identity_backward(bpda))
        try:
            yield
        finally:
            handle.remove()


def find_module(model: nn.Module, path: str, attack: str = "") -> nn.Module:
    """The submodule `path` names, as the user wrote the network (inside the sweep's preprocessing wrapper of a
    model from elsewhere). A one-line UsageError listing some of the names when there is none."""
    from robustcnn.models.preprocess import Preprocessed

    root = model.net if isinstance(model, Preprocessed) else model
    with contextlib.suppress(AttributeError):
        return root.get_submodule(path)
    names = [name for name, _ in root.named_modules() if name and "." not in name][:12]
    where = f"attack {attack!r}: " if attack else ""
    raise UsageError(
        f"{where}bpda = {path!r} names no submodule of the model; its submodules include: {', '.join(names) or 'none'}"
    )


def _identity_backward(path: str) -> Callable:
    def hook(module: nn.Module, inputs: tuple, output: Any) -> Any:
        x = inputs[0] if inputs else None
        if not isinstance(x, torch.Tensor) or not isinstance(output, torch.Tensor) or output.shape != x.shape:
            shapes = f"{_shape(x)} -> {_shape(output)}"
            raise UsageError(
                f"bpda = {path!r}: the submodule maps {shapes}; its backward can be the identity only when it "
                "returns one tensor of its input's shape"
            )
        if not x.requires_grad:
            return output
        return _through(x, output)

    return hook


def _shape(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def _through(x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """`output`'s values exactly (in x's floating dtype) with the identity's gradient with respect to x."""
    return output.detach().to(x.dtype) + (x - x.detach())


def _rounding_ops() -> frozenset:
    aten = torch.ops.aten
    names = ("round", "floor", "ceil", "trunc", "fix", "sign")
    ops = {getattr(torch, name) for name in names} | {getattr(torch.Tensor, name) for name in names}
    ops |= {aten.round.default, aten.round.decimals, aten.floor.default, aten.ceil.default, aten.trunc.default}
    return frozenset(ops | {aten.sign.default, torch.special.round})


ROUNDING_OPS = _rounding_ops()
CAST_OPS = frozenset(
    {getattr(torch.Tensor, name) for name in ("to", "type", "long", "int", "short", "char", "byte")}
    | {torch.ops.aten._to_copy.default, torch.ops.aten.to.dtype, torch.ops.aten.to.dtype_layout}
    | {torch.ops.aten.to.device, torch.ops.aten.to.other}  # what torch.export writes for .to(torch.uint8)
)
CHECKED_DTYPE = torch.ops.aten._assert_tensor_metadata.default  # an exported graph's check of a cast's dtype


class RoundingStraightThrough(TorchFunctionMode):
    """BPDA for rounding: round, floor, ceil, trunc, fix, sign and casts of a float tensor to an integer type keep
    their values but pass the gradient straight through, wherever the model calls them (function, method or aten op).

    Only where the input needs a gradient (inside an attack's gradient). A cast's result stays floating point (its
    integer values, exactly): code that relies on the integer type itself (indexing with it, integer overflow,
    bit operations) is beyond this; name the module with bpda = "MODULE.PATH" instead. In-place ops (round_) and
    thresholds (x > 0.5, torch.where) are not rounding ops here.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is CHECKED_DTYPE and args and getattr(args[0], CAST_MARK, False):
            return None  # the graph checks that its cast gave an integer type: this one stays float on purpose
        out = func(*args, **(kwargs or {}))
        if func not in ROUNDING_OPS and func not in CAST_OPS:
            return out
        x = args[0] if args else (kwargs or {}).get("input")
        if not (isinstance(x, torch.Tensor) and isinstance(out, torch.Tensor) and x.requires_grad):
            return out
        if not x.is_floating_point() or out.is_complex() or out.dtype == torch.bool:
            return out
        if func in CAST_OPS and out.is_floating_point():
            return out  # a cast to another float type or a move to a device: differentiable already
        through = _through(x, out)
        if func in CAST_OPS:
            setattr(through, CAST_MARK, True)
        return through


CAST_MARK = "_robustcnn_straight_through_cast"  # on a cast's float result, which an exported graph checks
