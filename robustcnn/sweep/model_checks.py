"""Checks on the model itself, before any attack (in the spirit of AutoAttack's checks.py).

Each returns a `Check` (robustcnn.results, the type the report's checks return too), explained under its name in
docs/checks.md. They catch set-ups where gradient attacks fail for a bad reason and the accuracy under attack
would look better than it is; what they find (`Findings`: randomness, masked gradients) decides how the adaptive
options of the suite's attacks apply to each model (robustcnn/attacks/adaptive.py).
"""

from __future__ import annotations

import torch
from torch import nn

from robustcnn.attacks.adaptive import RoundingStraightThrough
from robustcnn.attacks.base import Findings
from robustcnn.errors import UsageError, last_line
from robustcnn.results import Check, Status


def check_logits(model: nn.Module, x: torch.Tensor) -> Check:
    """Probabilities (a softmax at the end) saturate and starve cross-entropy attacks of gradient."""
    with torch.no_grad():
        out = model(x)
    probabilities = bool(
        (out >= 0).all() and (out <= 1).all() and torch.allclose(out.sum(1), torch.ones(len(out)), atol=1e-3)
    )
    if probabilities:
        message = "outputs sum to 1 like probabilities: attacks need logits; remove the final softmax"
        return Check.of("logits", Status.WARN, message)
    return Check.of("logits", Status.PASS, "outputs are logits, not probabilities")


def check_deterministic(model: nn.Module, x: torch.Tensor) -> Check:
    """A model whose output changes between identical calls (dropout on, randomised defence) needs EOT attacks."""
    with torch.no_grad():
        first, second = model(x), model(x)
    if not torch.allclose(first, second, atol=1e-5, rtol=1e-4):
        gap = (first - second).abs().max().item()
        message = f"outputs differ between identical calls (max gap {gap:.3g}): dropout left on or a randomised model"
        return Check.of("deterministic", Status.FAIL, message)
    return Check.of("deterministic", Status.PASS, "identical inputs give identical outputs")


MASKED_FRACTION = 0.1  # examples with a masked gradient above which gradient attacks are not to be trusted
MASKED_L1 = 1e-6  # an example's margin gradient this small in L1 is masked: all pixels moved by 1 would change the
# margin by 1e-6 at first order, nothing an attack step can follow


def masked_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """The fraction of examples whose logit margin (true class minus the best other) has a zero or near-zero input
    gradient. The margin, not cross-entropy: cross-entropy's gradient is exactly 0 on a very confident prediction
    (softmax rounds to 1), which is saturation that DLR and C&W losses get past, not a defence."""
    x = x.clone().requires_grad_(True)
    logits = model(x)
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    margin = (true - others).sum()
    if not margin.requires_grad:  # the output does not depend on x for autograd at all (no_grad, a cast)
        return 1.0
    (gradient,) = torch.autograd.grad(margin, x, allow_unused=True)  # unused: x detached inside the model
    if gradient is None:
        return 1.0
    size = gradient.flatten(1).abs().sum(1)
    return ((size <= MASKED_L1) | ~torch.isfinite(size)).float().mean().item()


def check_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Check:
    """Zero input gradients make every gradient attack fail while the model is not robust at all."""
    masked = masked_gradients(model, x, y)
    if masked > MASKED_FRACTION:
        message = (
            f"{masked:.0%} of examples have a zero input gradient: gradient attacks cannot work (masking); "
            "BPDA (bpda = ...) or a black-box attack can"
        )
        return Check.of("gradients", Status.FAIL, message)
    return Check.of("gradients", Status.PASS, f"input gradients are non-zero for {1 - masked:.0%} of examples")


def check_gradients_bpda(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Check:
    """Masked gradients: do they come back with rounding ops passing the gradient straight through (BPDA)?"""
    with RoundingStraightThrough():
        masked = masked_gradients(model, x, y)
    if masked > MASKED_FRACTION:
        message = (
            f"with rounding ops passing the gradient straight through (BPDA), {masked:.0%} of examples still have a "
            'zero input gradient: the masking is elsewhere; name its submodule with bpda = "MODULE.PATH"'
        )
        return Check.of("gradients-bpda", Status.FAIL, message)
    message = f"with rounding ops passing the gradient straight through (BPDA), {1 - masked:.0%} have a gradient"
    return Check.of("gradients-bpda", Status.PASS, message)


def model_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[list[Check], Findings]:
    """x (n, C, H, W) in [0, 1] and y (n,) on the model's device; the model is left in eval mode.

    The checks, and what they found for the attacks to adapt to (robustcnn/attacks/adaptive.py)."""
    model.eval()
    deterministic, gradients = check_deterministic(model, x), check_gradients(model, x, y)
    checks = [check_logits(model, x), deterministic, gradients]
    masked = gradients.status is Status.FAIL
    if masked:
        checks.append(check_gradients_bpda(model, x, y))
    random = deterministic.status is Status.FAIL
    return checks, Findings(random, masked, masked and checks[-1].status is Status.PASS)


def require_fit(model: nn.Module, x: torch.Tensor, info, name: str) -> None:
    """Before any attack: the model runs on the dataset's images and returns finite logits, one per class.

    x (n, C, H, W) in [0, 1] on the model's device. Raises UsageError naming what does not fit.
    """
    from robustcnn.models.preprocess import Preprocessed

    channels, height, width = info.shape
    try:
        with torch.no_grad():
            if isinstance(model, Preprocessed):  # tuple / dict outputs get a clear error before selection
                raw = model.net(model.prepare(x))
                model.output.check(raw, name)
                out = model.output(raw)
            else:
                out = model(x)
    except UsageError:
        raise
    except Exception as error:  # whatever the model's own code raises on input it was not made for
        raise UsageError(
            f"model {name!r} fails on {channels}x{height}x{width} images of dataset {info.name!r} "
            f"({type(error).__name__}: {last_line(error)}); does it take this image size and channels?"
        ) from None
    if out.ndim != 2 or out.shape[0] != len(x):
        raise UsageError(f"model {name!r} returns shape {tuple(out.shape)} for {len(x)} images; expected (n, classes)")
    if out.shape[1] != info.num_classes:
        raise UsageError(
            f"model {name!r} returns {out.shape[1]} outputs per image but dataset {info.name!r} has "
            f"{info.num_classes} classes; build it for {info.num_classes} classes (e.g. --model-arg num_classes=...)"
        )
    if not torch.isfinite(out).all():
        raise UsageError(f"model {name!r} returns NaN or infinite logits on test images of {info.name!r}")
