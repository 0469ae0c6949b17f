"""The one place that wraps a model for ART: pixel range, labels, device and batch size are set here."""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import math
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from robustcnn.art_setup import import_art


def art_classifier(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    num_classes: int,
    device: torch.device,
    loss: nn.Module | None = None,
):
    """An ART `PyTorchClassifier` over `model` (the same module: training updates are seen at once).

    clip_values=(0, 1) because every model takes pixels in [0, 1] and normalises inside.
    """
    classifier = classifier_class()(
        model=model,
        loss=loss if loss is not None else nn.CrossEntropyLoss(),
        input_shape=tuple(input_shape),
        nb_classes=num_classes,
        clip_values=(0.0, 1.0),
        preprocessing=None,  # ART's default (0, 1) standardisation is the identity, paid for at every step
        device_type="gpu" if device.type == "cuda" else "cpu",
    )
    return pin_device(classifier, model, device)


def pin_device(estimator: Any, model: nn.Module, device: torch.device) -> Any:
    """ART knows only "cpu" and "gpu" (the current CUDA device) and keeps its choice in the private `_device`,
    which has no public setter; the one place robustcnn sets it, so an estimator runs on cuda:N and mps too."""
    estimator._device = device
    model.to(device)
    return estimator


@functools.cache
def classifier_class() -> type:
    """ART's `PyTorchClassifier` with a lean `loss_gradient` for tensors (what ART's PyTorch attacks pass), and a zero
    gradient, not a crash, for a model whose output does not depend on its input for autograd (masked gradients).

    Bit for bit ART's gradient (same module call, mode, label reduction and loss), without what an attack
    step does not need: a copy of the batch, preprocessing when there is none, setting the mode that is
    already set, and zeroing every weight's gradient (frozen while attacks run): fixed costs per step, which
    weigh most on small batches. tests/test_attacks.py compares the two.
    """
    import_art()
    from art.estimators.classification import PyTorchClassifier

    class Classifier(PyTorchClassifier):
        def predict(self, x, batch_size: int = 128, training_mode: bool = False, **kwargs):
            predicted = super().predict(x, batch_size=batch_size, training_mode=training_mode, **kwargs)
            seen_prediction(predicted)  # which rows APGD restarts from (`per_example_starts`)
            return predicted

        def loss_gradient(self, x, y, training_mode: bool = False, **kwargs):
            lean = (
                isinstance(x, torch.Tensor)
                and isinstance(y, torch.Tensor)
                and not kwargs
                and not self.preprocessing_operations
                and not self.is_rnn
                and not self._use_amp
            )
            if not lean:
                try:
                    return super().loss_gradient(x, y, training_mode=training_mode, **kwargs)
                except (RuntimeError, AttributeError) as error:  # ART's backward() on an output that ignores x
                    if not _no_path_to_input(error):
                        raise
                    return np.zeros_like(x)
            if "_module_list" not in self.__dict__:
                self._module_list = list(self._model.modules())  # the wrapped model's modules do not change
            if any(module.training != training_mode for module in self._module_list):
                self._model.train(mode=training_mode)  # ART sets it at every call: a slow walk through setattr
            x_grad = x.detach().requires_grad_(True)
            loss = self._loss(self._model(x_grad)[-1], self.reduce_labels(y))
            if not loss.requires_grad:
                return torch.zeros_like(x)  # the model's output does not depend on x for autograd: masked, zero
            (grad,) = torch.autograd.grad(loss, x_grad, allow_unused=True)
            return torch.zeros_like(x) if grad is None else grad

    return Classifier


def _no_path_to_input(error: Exception) -> bool:
    """Whether ART's loss_gradient failed because the model's output does not depend on its input for autograd (a
    detached input, no_grad inside the model): a masked gradient, which is zero, not an error."""
    text = str(error)
    return "does not require grad" in text or "'NoneType' object has no attribute" in text


def to_numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().to("cpu", torch.float32).numpy()


def from_numpy(x: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).to(device, non_blocking=True)


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Weights need no gradient while an attack runs: ART's loss_gradient calls backward(), which would
    otherwise also compute every weight's gradient, a large share of an attack step on a small CNN."""
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in zip(model.parameters(), flags, strict=True):
            parameter.requires_grad_(flag)


ART_PGD_MODULE = "art.attacks.evasion.projected_gradient_descent.projected_gradient_descent_pytorch"


@contextlib.contextmanager
def lazy_success_rate() -> Iterator[None]:
    """Skips the success rate ART's PGD computes for a log line nobody sees; the attack itself is unchanged.

    `ProjectedGradientDescentPyTorch.generate` ends with `logger.info("Success rate ...", compute_success(...))`:
    the argument is evaluated even when INFO is off, costing two extra forward passes over every input
    (as much as the attack itself for a one-step attack). While
    the block runs, and only if ART's logger would drop the line, `compute_success` there returns nan.
    It feeds nothing but that log line (restarts use `compute_success_array`, which is left alone).
    """
    import_art()
    module = importlib.import_module(ART_PGD_MODULE)
    if module.logger.isEnabledFor(logging.INFO):
        yield
        return
    with _LAZY.lock:  # the first block in patches, the last one out restores: threads never keep the patch
        if _LAZY.depth == 0:
            _LAZY.original, module.compute_success = module.compute_success, _no_success_rate
        _LAZY.depth += 1
    try:
        yield
    finally:
        with _LAZY.lock:
            _LAZY.depth -= 1
            if _LAZY.depth == 0:
                module.compute_success, _LAZY.original = _LAZY.original, None


class _LazyState:
    lock = threading.Lock()
    depth = 0  # blocks of lazy_success_rate open now, in any thread
    original: Any = None  # ART's compute_success while patched


_LAZY = _LazyState()


def _no_success_rate(*args, **kwargs) -> float:
    return math.nan


class IterateRecorder:
    """Keeps every point an attack evaluates that lies in an original's eps ball and is misclassified there.

    AutoAttack counts an example as broken when *any* iterate inside the ball is misclassified; ART's PGD
    and APGD return only their last iterate (on a PGD-trained model a few examples have a misclassified
    iterate that the returned one is not). ART runs the model on every
    iterate anyway, for its gradient and loss, so a forward hook sees each one at no extra forward pass.

    Which original a row belongs to: ART runs the model on the whole batch in order (PGD), or on the subset
    of examples still correct at its last look (APGD restarts, APGD-T targets), in order. So the rows are
    first tried against those index maps (the whole batch, and the last few sets of still-correct examples),
    checked, not assumed: every row must lie in its original's ball on the probe pixels (where the originals
    differ most), and every point kept must lie in it whole. Rows that fit no map are matched by geometry:
    a point in the ball of x_j and classified as anything but y_j is an adversarial example of x_j.
    The hook runs at every step, so it touches whole rows only for the few points it keeps (a whole-row check
    of every row would be a visible share of each step).
    """

    PROBES = 32  # pixels compared first, where the originals differ most: another image's ball shows there
    TOLERANCE = 1e-6  # float32 rounding of ART's projection (x + clipped delta)
    MAPS = 4  # index maps remembered besides the whole batch

    def __init__(self, model: nn.Module, x: np.ndarray, y: np.ndarray, eps: float, norm: float):
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self.model, self.eps, self.norm = model, float(eps), norm
        self.x = torch.from_numpy(np.ascontiguousarray(x)).to(device).flatten(1)  # (n, d) in [0, 1]
        self.y = torch.from_numpy(np.asarray(y)).to(device)  # (n,) true labels
        self.found: dict[int, torch.Tensor] = {}  # original index -> a misclassified point in its ball
        self.open = torch.ones(len(self.x), dtype=torch.bool, device=device)  # originals with nothing found yet
        self.maps = [torch.arange(len(self.x), device=device)]  # row -> original index, tried newest first
        self.probes = self.x.std(0).argsort(descending=True)[: self.PROBES] if len(self.x) > 1 else None
        self.x_probes = self.x if self.probes is None else self.x[:, self.probes]  # (n, probes)

    def __enter__(self) -> IterateRecorder:
        self.handle = self.model.register_forward_hook(self._seen)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()

    def _seen(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if not isinstance(output, torch.Tensor) or math.prod(inputs[0].shape[1:]) != self.x.shape[1]:
            return
        with torch.no_grad():
            points = inputs[0].detach().flatten(1)  # (m, d)
            predicted = output.detach().argmax(1)
            originals = self._mapped(points)
            if originals is not None:
                whole = originals is self.maps[0]  # the common case (PGD): row i is original i, no gathers
                wrong = predicted != (self.y if whole else self.y[originals])
                self._remember(originals[~wrong])  # what ART will attack next, if it filters
                rows = torch.nonzero(wrong & (self.open if whole else self.open[originals])).flatten()
                if not len(rows):
                    return
                originals = originals[rows]
                if not self._in_ball(points[rows], originals).all():
                    originals = None  # a map that fits the probe pixels but not a whole point: not trusted
            if originals is None:
                rows, originals = self._by_geometry(points, predicted)
            if len(rows):
                self._keep(points, rows, originals)

    def _keep(self, points: torch.Tensor, rows: torch.Tensor, originals: torch.Tensor) -> None:
        for row, original in zip(rows.tolist(), originals.tolist(), strict=True):
            if original not in self.found:
                self.found[original] = points[row].clone()
        self.open[originals] = False

    def _mapped(self, points: torch.Tensor) -> torch.Tensor | None:
        for index in (*reversed(self.maps[1:]), self.maps[0]):
            if len(index) == len(points) and self._near(points, index).all():
                return index
        return None

    def _near(self, points: torch.Tensor, originals: torch.Tensor) -> torch.Tensor:
        """(k,) bool: point i within eps of x[originals[i]] on the probe pixels (necessary for the whole point)."""
        if self.probes is None:
            return self._in_ball(points, originals)
        centres = self.x_probes if originals is self.maps[0] else self.x_probes[originals]
        gap = points.index_select(1, self.probes) - centres
        size = gap.abs().amax(1) if self.norm == math.inf else gap.norm(dim=1)
        return size <= self.eps + self.TOLERANCE

    def _remember(self, index: torch.Tensor) -> None:
        if len(index) in (0, len(self.x)) or any(torch.equal(index, known) for known in self.maps):
            return
        self.maps = [self.maps[0], *self.maps[1:][-(self.MAPS - 1) :], index]

    def _by_geometry(self, points: torch.Tensor, predicted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, original) pairs of points in an open original's ball and misclassified for it."""
        candidates = (predicted[:, None] != self.y[None, :]) & self.open[None, :]  # (m, n)
        if self.probes is not None:
            gap = (points[:, None, self.probes] - self.x_probes[None]).abs()  # (m, n, probes)
            bound = gap.amax(2) if self.norm == math.inf else gap.square().sum(2).sqrt()  # <= the full norm
            candidates &= bound <= self.eps + self.TOLERANCE
        rows, originals = torch.nonzero(candidates, as_tuple=True)
        keep = self._in_ball(points[rows], originals)
        return rows[keep], originals[keep]

    def _in_ball(self, points: torch.Tensor, originals: torch.Tensor) -> torch.Tensor:
        """(k,) bool: point i within eps of x[originals[i]] and inside the pixel range."""
        delta = points - self.x[originals]
        size = delta.abs().amax(1) if self.norm == math.inf else delta.norm(dim=1)
        return (size <= self.eps + self.TOLERANCE) & (points.amin(1) >= 0) & (points.amax(1) <= 1)

    def apply(self, x_adv: np.ndarray) -> np.ndarray:
        """x_adv with every recorded adversarial example in place of the attack's last iterate."""
        x_adv = x_adv.copy()
        for original, point in self.found.items():
            x_adv[original] = point.reshape(x_adv.shape[1:]).cpu().numpy()
        return x_adv


def art_norm(norm: int | float | str) -> float:
    """ART's norm setting ("inf", np.inf, 2, ...) as a number."""
    return math.inf if norm in ("inf", np.inf) else float(norm)


def projection(values: torch.Tensor, eps: float, norm: float, *, in_place: bool = False) -> torch.Tensor:
    """ART's PGD projection onto the eps ball (`ProjectedGradientDescentPyTorch._projection`), bit for bit,
    for a scalar eps and the Linf or L2 norm (`in_place`: Linf overwrites `values`).

    ART broadcasts eps to an (n, d) float64 array, copies it to a tensor and projects in float64 at every
    step. The same numbers come out of smaller work: in Linf,
    ART's sign(v) * min(|v|, eps) is v clamped at float32(eps) (no float32 lies strictly between eps and its
    nearest float32; only the sign of a zero can differ, which no sum or model output sees); in L2 the
    float64 factor min(1, eps / ||v||) is one per row, not per pixel. tests/test_attacks.py compares it
    with ART's own function on random tensors.
    """
    if norm == math.inf:
        bound = float(np.float32(eps))
        return values.clamp_(-bound, bound) if in_place else values.clamp(-bound, bound)
    flat = values.reshape(len(values), -1)
    size = torch.linalg.norm(flat, ord=2, dim=1, keepdim=True).double()  # (n, 1)
    factor = torch.where(size == 0, size, torch.clamp(eps / size, max=1.0))
    return flat.double().mul_(factor).to(values.dtype).reshape(values.shape)


def pgd_step(attack, x: torch.Tensor, x_init: torch.Tensor, y: torch.Tensor, eps: float, eps_step: float):
    """One step of ART's PGD (`_compute_pytorch` without a random start, mask or momentum), bit for bit.

    The same float operations in the same order, minus ART's redundant passes over the batch (a multiply by
    1, an `any(isnan)` that syncs, a tensor of ones, float64 temporaries) and with every later pass done in
    place on one buffer (what it saves: README, "Benchmarks", sweep-limit). tests/test_attacks.py compares it
    with ART's own step, NaN and infinite gradients included.
    """
    keep_inf = {"nan": 0.0, "posinf": math.inf, "neginf": -math.inf}  # ART replaces NaN by 0 and keeps infinities
    grad = attack.estimator.loss_gradient(x=x, y=y)
    grad = torch.nan_to_num(-grad if attack.targeted else grad, **keep_inf)
    norm = art_norm(attack.norm)
    step_size = float(np.float32(eps_step))  # ART multiplies float32 tensors by it
    if norm == math.inf:
        # sign(g) is in {-1, 0, 1}: step_size * sign(g) is exact, so the fused x + step_size * sign(g) is ART's sum
        x_adv = torch.add(x, grad.sign_(), alpha=step_size)
    else:  # L2: ART's |g| / ||g|| ** (2 - 1) * sign(g) is g / ||g||: rounding is symmetric, x ** 1 is x
        flat = grad.reshape(len(grad), -1)
        size = torch.linalg.norm(flat, ord=2.0, dim=1, keepdim=True)
        step = flat.mul_(size.where(size == 0, 1 / size)).mul_(step_size)
        x_adv = step.nan_to_num_(**keep_inf).reshape(x.shape).add_(x)  # an infinite g gives inf / inf = NaN
    low, high = attack.estimator.clip_values
    x_adv.clamp_(float(low), float(high)).sub_(x_init)
    return projection(x_adv, eps, norm, in_place=True).add_(x_init)


@functools.cache
def pgd_class() -> type:
    """ART's `ProjectedGradientDescentPyTorch` with its projection (`projection`) and its step (`pgd_step`)
    done leaner where they apply: scalar eps, Linf or L2, no mask, no momentum, pixel bounds set."""
    ProjectedGradientDescentPyTorch = starts_module(ART_PGD_MODULE).ProjectedGradientDescentPyTorch

    class Pgd(ProjectedGradientDescentPyTorch):
        @staticmethod
        def _projection(values, eps, norm_p, *, suboptimal=True):
            norm = art_norm(norm_p)
            if np.ndim(eps) == 0 and eps >= 0 and norm in (math.inf, 2.0):
                return projection(values, float(eps), norm)
            return ProjectedGradientDescentPyTorch._projection(values, eps, norm_p, suboptimal=suboptimal)

        def _compute_pytorch(self, x, x_init, y, mask, eps, eps_step, random_init, momentum):
            lean = (
                not random_init
                and mask is None
                and self.decay is None
                and self.summary_writer is None
                and np.ndim(eps) == 0
                and np.ndim(eps_step) == 0
                and art_norm(self.norm) in (math.inf, 2.0)
                and self.estimator.clip_values is not None
            )
            if random_init:  # the rows of this batch start at rows batch_id * batch_size on (`per_example_starts`)
                with _batch_offset(self._batch_id * self.batch_size):
                    return super()._compute_pytorch(x, x_init, y, mask, eps, eps_step, random_init, momentum)
            if not lean:  # every case the lean step does not cover
                return super()._compute_pytorch(x, x_init, y, mask, eps, eps_step, random_init, momentum)
            return pgd_step(self, x, x_init, y, float(eps), float(eps_step))

    return Pgd


# --- random starts drawn per example ----------------------------------------------------------------
ART_STARTS_MODULES = (ART_PGD_MODULE, "art.attacks.evasion.auto_projected_gradient_descent")  # random_sphere users


@dataclass(frozen=True)
class Starts:
    """The random starts of one cell, drawn per example: the k-th start of example `ids[i]` comes from a generator
    seeded by (seed, ids[i], k), whichever batch the example is in and however large it is."""

    seed: int  # the cell's (ChainRunner.cell seeds torch with it: `torch.initial_seed()`)
    ids: np.ndarray  # (n,) the examples' identities (their place in the model's test images), one per row of x
    draws: dict[int, int] = field(default_factory=dict)  # example id -> starts drawn so far in this call

    def draw(self, example: int, dims: int, radius: float, norm: float) -> np.ndarray:
        """(dims,) float64: what ART's `random_sphere` draws for one point, from the example's own generator."""
        k = self.draws.get(example, 0)
        self.draws[example] = k + 1
        rng = np.random.default_rng([self.seed, example, k])
        if norm == math.inf:
            return rng.uniform(-radius, radius, dims)  # ART: uniform in the box
        from scipy.special import gammainc

        a = rng.standard_normal(dims)  # ART's formula: a direction, and a radius with the L2 ball's law
        s_2 = np.sum(a**2)
        return a * (gammainc(dims / 2.0, s_2 / 2.0) ** (1 / dims) * radius / np.sqrt(s_2))


@dataclass
class _Call:
    """One ART generate call under `per_example_starts`: which example each row is, and what ART compares with."""

    starts: Starts
    ids: np.ndarray  # (n,) example id of each row handed to ART
    labels: np.ndarray  # (n,) the class ART compares predictions with (the true one; the target when targeted)
    targeted: bool
    offset: int | None = None  # PGD: the first row of the batch ART is attacking (`Pgd._compute_pytorch`)
    predicted: np.ndarray | None = None  # ART's last prediction of every row (`Classifier.predict`)

    def rows(self, count: int) -> np.ndarray:
        """The example ids of the `count` rows ART asks starts for. PGD: its current batch (offset). APGD: every
        row, or at a restart the rows its last prediction left unbroken, as ART itself selects them."""
        if self.offset is not None:
            return self.ids[self.offset : self.offset + count]
        if count == len(self.ids):
            return self.ids
        if self.predicted is not None:
            right = self.predicted.argmax(1) == self.labels
            left = self.ids[~right if self.targeted else right]
            if len(left) == count:
                return left
        raise RuntimeError(
            f"ART asked for {count} random starts of a batch of {len(self.ids)} and robustcnn cannot tell which "
            "examples they are for (has ART's PGD or APGD changed?)"
        )


class _StartsState(threading.local):
    def __init__(self):
        self.calls: list[_Call] = []  # this thread's open calls, innermost last


_CALLS = _StartsState()


@contextlib.contextmanager
def per_example_starts(starts: Starts | None, labels: np.ndarray, targeted: bool = False) -> Iterator[None]:
    """ART's PGD and APGD (`ART_STARTS_MODULES`) draw their random starts from `starts`, per example, in this thread
    while the block runs; `labels` (n,): the classes the call's y stands for. starts None: ART's own draws.

    ART draws a whole batch's starts from numpy's global generator (`art.utils.random_sphere`), so they depend on
    which batch an example lands in. The two modules' `random_sphere` is replaced while any block is open in any
    thread (the first block in patches, the last one out restores, as `lazy_success_rate`); the replacement serves
    only threads with a block open and calls ART's own everywhere else (and for norms or radii other than a scalar
    radius in Linf or L2, which robustcnn's attacks never ask for).
    """
    if starts is None:
        yield
        return
    with _open_call(_Call(starts, np.asarray(starts.ids), np.asarray(labels), targeted)):
        yield


@contextlib.contextmanager
def narrowed_starts(index: np.ndarray, labels: np.ndarray, targeted: bool) -> Iterator[None]:
    """Inside `per_example_starts`: the next ART call takes only rows `index` of the enclosing call's, with `labels`
    (APGD-T runs one target class at a time); outside it, nothing."""
    if not _CALLS.calls:
        yield
        return
    outer = _CALLS.calls[-1]
    with _open_call(_Call(outer.starts, outer.ids[index], np.asarray(labels), targeted)):
        yield


@contextlib.contextmanager
def _open_call(call: _Call) -> Iterator[None]:
    _patch_starts(+1)
    _CALLS.calls.append(call)
    try:
        yield
    finally:
        _CALLS.calls.pop()
        _patch_starts(-1)


class _PatchState:
    lock = threading.Lock()
    depth = 0  # blocks of per_example_starts open now, in any thread
    original: Any = None  # ART's random_sphere while patched


_STARTS = _PatchState()


def _patch_starts(change: int) -> None:
    """Only the modules already imported are patched (a suite without PGD or APGD never imports theirs): an attack
    imports its module when it is built, and `starts_module` patches it then if a block is open."""
    import_art()
    from art import utils

    modules = [sys.modules[name] for name in ART_STARTS_MODULES if name in sys.modules]
    with _STARTS.lock:
        if change > 0 and _STARTS.depth == 0:
            _STARTS.original = utils.random_sphere  # the function both modules import from art.utils
            for module in modules:
                module.random_sphere = _random_sphere
        _STARTS.depth += change
        if change < 0 and _STARTS.depth == 0:
            for module in modules:
                module.random_sphere = _STARTS.original
            _STARTS.original = None


def starts_module(name: str) -> Any:
    """ART's module `name` (one of ART_STARTS_MODULES), imported, with per-example starts if a block is open."""
    import_art()
    module = importlib.import_module(name)
    with _STARTS.lock:
        if _STARTS.depth > 0:
            module.random_sphere = _random_sphere
    return module


def _random_sphere(nb_points: int, nb_dims: int, radius, norm) -> np.ndarray:
    """ART's `random_sphere` with each row drawn from its example's generator (see `per_example_starts`)."""
    call = _CALLS.calls[-1] if _CALLS.calls else None
    if call is None or np.ndim(radius) != 0 or art_norm(norm) not in (math.inf, 2.0):
        return _STARTS.original(nb_points, nb_dims, radius, norm)
    rows = call.rows(nb_points)
    out = np.empty((nb_points, nb_dims))  # (n, d) float64, as ART's
    for i, example in enumerate(rows.tolist()):
        out[i] = call.starts.draw(int(example), nb_dims, float(radius), art_norm(norm))
    return out


@contextlib.contextmanager
def _batch_offset(offset: int) -> Iterator[None]:
    call = _CALLS.calls[-1] if _CALLS.calls else None
    if call is None:
        yield
        return
    call.offset = offset
    try:
        yield
    finally:
        call.offset = None


def seen_prediction(predicted: np.ndarray) -> None:
    """A prediction ART just made of the rows of the innermost call: which of them its next restart starts from."""
    call = _CALLS.calls[-1] if _CALLS.calls else None
    if call is not None and len(predicted) == len(call.ids):
        call.predicted = predicted
