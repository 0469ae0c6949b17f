"""ART's APGD (`AutoProjectedGradientDescent`) with its iterations done lean: ART's results bit for bit on CPU.

Per iteration ART takes the loss gradient at x_k (a forward and a backward pass) and then the loss at the next
point x_k+1 (a forward pass), whose gradient it takes at the next iteration (a second forward pass over the same
point), all through numpy copies of the batch. Here one forward and backward pass at each new point gives both its
loss and its gradient (the gradient of the best point is kept for when APGD moves back to it), so an iteration costs
one forward pass less, and the step, clipping and projection run on the batch's device, in place, in ART's
order of float32 operations. The restarts and random starts are ART's code (`random_sphere`, so per-example starts
still apply). tests/test_lean_attacks.py compares the results with ART's own class, restarts and targets included.

Every iterate: given `true_labels`, the loop sees each point's prediction from the pass it makes anyway, keeps the
first point misclassified for each example (AutoAttack's rule) and stops attacking that example (early exit), so it
needs no forward hook. Each example's numbers are its own (its gradient takes ART's 1 / batch share of the mean loss,
however many rows are left), so the others' do not change, with two provisos: a pass
never runs on fewer than MIN_ROWS rows (PyTorch's kernels round otherwise in small batches), and ART stops a batch
when every loss in it is exactly 0, a test that now sees fewer examples.

Lean where it applies: a PyTorch classifier whose loss gradient robustcnn has not wrapped (EOT, BPDA), Linf or L2,
a scalar eps, pixel bounds set, no mask; otherwise ART's own `generate` runs. On other devices than the CPU the L2
norms are torch's sums, not numpy's (the last bit can differ).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from robustcnn.art_setup import import_art

ALPHA = 0.75  # ART's momentum weight of the new step
RHO = 0.75  # ART's share of improving iterations below which a checkpoint halves the step
TOLERANCE = 10e-8  # ART's guard against dividing by a zero L2 gradient
ART_APGD_MODULE = "art.attacks.evasion.auto_projected_gradient_descent"
MIN_ROWS = 12  # the fewest rows a pass runs on once examples leave: PyTorch's CPU kernels give an example other
# last bits in batches of 1-3, 5-7, 9-11 than in larger ones (measured on smallcnn), and ART's batch never shrinks


@dataclass
class Pass:
    """One forward (and backward) pass of a batch: the per-example loss, its gradient and predicted class."""

    loss: torch.Tensor  # (m,) float32
    grad: torch.Tensor | None  # (m, C, H, W) or None when not needed (the last iteration)
    predicted: torch.Tensor  # (m,) int64


def checkpoints(max_iter: int) -> list[int]:
    """ART's iterations at which APGD may halve its step (p_0 = 0, p_1 = 0.22, ... as in Croce & Hein)."""
    var_w = [0, 0.22]
    while True:
        p_next = var_w[-1] + max(var_w[-1] - var_w[-2] - 0.03, 0.06)
        if p_next > 1:
            break
        var_w.append(p_next)
    return [math.ceil(p * max_iter) for p in var_w]


@functools.cache
def apgd_class() -> type:
    import_art()
    from art.estimators.classification import PyTorchClassifier

    from robustcnn.attacks.art import starts_module

    AutoProjectedGradientDescent = starts_module(ART_APGD_MODULE).AutoProjectedGradientDescent

    class LeanApgd(AutoProjectedGradientDescent):
        def is_lean(self, mask=None) -> bool:
            estimator = self.estimator
            return (
                isinstance(estimator, PyTorchClassifier)
                and mask is None
                and not any(name in estimator.__dict__ for name in ("loss_gradient", "compute_loss", "predict"))
                and not estimator.preprocessing_operations
                and not estimator.is_rnn
                and estimator.clip_values is not None
                and self.norm in (np.inf, "inf", 2)
                and np.ndim(self.eps) == 0
            )

        def generate(self, x: np.ndarray, y: np.ndarray | None = None, **kwargs) -> np.ndarray:
            """ART's generate; `true_labels` (n,): stop each example at its first misclassified iterate."""
            true_labels = kwargs.pop("true_labels", None)
            if y is None or not self.is_lean(kwargs.get("mask")):
                return super().generate(x, y, **kwargs)
            return _generate(self, x, y, true_labels)

    return LeanApgd


def _generate(attack, x: np.ndarray, y: np.ndarray, true_labels: np.ndarray | None) -> np.ndarray:
    """ART's `generate` (restarts, random starts, batches) around the lean loop (`_batch`)."""
    import importlib

    import_art()
    from art.config import ART_NUMPY_DTYPE
    from art.utils import check_and_transform_label_format, projection

    random_sphere = importlib.import_module(ART_APGD_MODULE).random_sphere  # looked up now: per-example starts
    estimator = attack.estimator
    y = check_and_transform_label_format(y, nb_classes=estimator.nb_classes)
    x_adv = x.astype(ART_NUMPY_DTYPE)
    for _ in range(max(1, attack.nb_random_init)):
        y_pred = estimator.predict(x_adv)
        if attack.targeted:
            sample_is_robust = np.argmax(y_pred, axis=1) != np.argmax(y, axis=1)
        else:
            sample_is_robust = np.argmax(y_pred, axis=1) == np.argmax(y, axis=1)
        if np.sum(sample_is_robust) == 0:
            break
        rows = np.flatnonzero(sample_is_robust)
        x_robust, y_robust, x_init = x_adv[sample_is_robust], y[sample_is_robust], x[sample_is_robust]
        n, m = x_robust.shape[0], np.prod(x_robust.shape[1:]).item()
        x_robust = x_robust + random_sphere(n, m, attack.eps, attack.norm).reshape(x_robust.shape).astype(
            ART_NUMPY_DTYPE
        )
        clip_min, clip_max = estimator.clip_values
        x_robust = np.clip(x_robust, clip_min, clip_max)
        x_robust = x_init + projection(x_robust - x_init, attack.eps, attack.norm)
        for start in range(0, n, attack.batch_size):
            part = slice(start, start + attack.batch_size)
            labels = None if true_labels is None else true_labels[rows[part]]
            x_k, replace = _batch(attack, x_robust[part], x_init[part], y_robust[part], labels)
            x_robust[part][replace] = x_k[replace]  # a found iterate is misclassified: the next restart skips it
        x_adv[sample_is_robust] = x_robust
    return x_adv


def _batch(attack, x_k: np.ndarray, x_init: np.ndarray, y: np.ndarray, true_labels: np.ndarray | None):
    """ART's iterations over one batch: (the final points, or each example's first iterate misclassified for its
    `true_labels`; which of them ART keeps: misclassified, or for a targeted attack classified as the target)."""
    estimator = attack.estimator
    device = estimator._device
    loop = _Loop(attack, torch.from_numpy(x_init).to(device), torch.from_numpy(y).to(device))
    watch = None if true_labels is None else torch.from_numpy(np.asarray(true_labels)).to(device)
    state = loop.run(torch.tensor(x_k, device=device), watch)  # a copy: the loop writes into its points
    return state.x.cpu().numpy(), state.keep.cpu().numpy()


@dataclass
class _Final:
    x: torch.Tensor  # (n, C, H, W) the last point of each example, or its first misclassified iterate
    keep: torch.Tensor  # (n,) bool: ART copies this row into its result
    found: torch.Tensor  # (n,) bool: a misclassified iterate was found


class _Loop:
    """The iterations of one batch, ART's variables by ART's names where it helps (x_k, x_k_m_1, f_max, eta)."""

    def __init__(self, attack, x_init: torch.Tensor, y: torch.Tensor):
        self.attack, self.estimator = attack, attack.estimator
        self.x_init = x_init
        self.batch = len(x_init)  # the rows ART's loss averages over
        self.labels = self.estimator.reduce_labels(y)  # what ART's loss takes: class indices (CE) or one-hot (DLR)
        self.target = y.argmax(1)  # ART's `np.argmax(y_batch, axis=1)`
        self.inf = attack.norm in (np.inf, "inf")
        self.eps = float(attack.eps)
        self.low, self.high = (float(v) for v in self.estimator.clip_values)
        self.modules = list(self.estimator.model.modules())  # eval mode is checked at every pass

    # --- passes through the model --------------------------------------------------------------------
    def evaluate(self, x: torch.Tensor, rows: torch.Tensor, gradient: bool) -> Pass:
        """Loss (reduction none), its gradient with ART's mean reduction, and predictions of rows `rows` at x."""
        loss_function = self.estimator._loss
        if any(module.training for module in self.modules):
            self.estimator.model.eval()
        labels = self.labels[rows]
        with torch.set_grad_enabled(gradient):
            x_in = x.detach().requires_grad_(gradient)
            logits = self.estimator._model(x_in)[-1]
            loss = per_example_loss(loss_function, logits, labels)
            grad = None
            if gradient and loss.requires_grad:
                # ART's loss is the mean over its whole batch (`batch` rows, however many are left here): its backward
                # hands each example 1 / batch, in float32, as this does, so each example's gradient keeps its bits
                share = torch.ones(len(loss), dtype=loss.dtype, device=loss.device).div_(self.batch)
                grad = torch.autograd.grad(loss, x_in, grad_outputs=share, allow_unused=True)[0]
            if gradient and grad is None:
                grad = torch.zeros_like(x)  # an output that ignores x: a zero gradient
        return Pass(loss.detach(), grad, logits.detach().argmax(1))

    # --- ART's arithmetic, on tensors --------------------------------------------------------------
    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        """ART's step direction: sign(g) (NaN kept, as numpy's sign), or g / (||g||_2 + tol)."""
        if self.attack.targeted:
            grad = grad.neg()
        if self.inf:
            return torch.where(grad.isnan(), grad, grad.sign())
        return grad / (_gradient_l2(grad) + TOLERANCE)

    def project(self, delta: torch.Tensor) -> torch.Tensor:
        """ART's numpy `projection` (float64) of x - x_init onto the ball, in place: the same float32 results."""
        if self.inf:
            bound = float(np.float32(self.eps))  # float32(eps): ART's float64 min(|v|, eps) rounds to it
            return delta.clamp_(-bound, bound)  # NaN stays NaN, as in ART
        size = _flat_l2(delta).double()  # (m, 1, 1, 1) float32 norms, as numpy's, then float64 as ART's factor
        factor = torch.where(size != 0, torch.clamp(self.eps / size, max=1.0), torch.zeros_like(size))
        return (delta.double() * factor).to(delta.dtype)

    def in_ball(self, x: torch.Tensor, x_init: torch.Tensor) -> torch.Tensor:
        """x_init + projection(clip(x) - x_init), in place: how ART writes each new point."""
        return self.project(x.clamp_(self.low, self.high).sub_(x_init)).add_(x_init)

    # --- the loop ------------------------------------------------------------------------------------
    def run(self, x_k: torch.Tensor, watch: torch.Tensor | None) -> _Final:
        attack, n = self.attack, len(x_k)
        device = x_k.device
        rows = torch.arange(n, device=device)  # the rows still attacked (all, unless some were found broken)
        final = _Final(x_k.clone(), torch.zeros(n, dtype=torch.bool, device=device), torch.zeros_like(rows, dtype=bool))
        marks = checkpoints(attack.max_iter)
        eta = torch.full((n,) + (1,) * (x_k.dim() - 1), attack.eps_step, dtype=torch.float32, device=device)
        count = torch.zeros(n, dtype=torch.float64, device=device)

        first = self.evaluate(x_k, rows, gradient=True)
        if watch is not None and self._found(x_k, first.predicted, rows, watch, final).all():
            return final
        z = self.direction(first.grad).mul_(eta).add_(x_k)
        x_1 = self.in_ball(z, self.x_init)
        one = self.evaluate(x_1, rows, gradient=attack.max_iter > 1)
        eta_w, f_max_w = eta.clone(), first.loss.clone()
        f_max, x_max, x_max_m_1 = first.loss.clone(), x_k.clone(), self.x_init.clone()
        g_max, p_max = first.grad, first.predicted.clone()
        better = one.loss >= first.loss
        f_max[better], x_max[better], count[better] = one.loss[better], x_1[better], count[better] + 1
        p_max[better] = one.predicted[better]
        if one.grad is not None:
            g_max = torch.where(_rows(better, g_max), one.grad, g_max)
        x_k_m_1, x_k, g_k, p_k = x_k, x_1, one.grad, one.predicted
        state = _State(rows, self.x_init, eta, count, eta_w, f_max_w, f_max, x_max, x_max_m_1, g_max, p_max)
        if watch is not None:
            self._found(x_k, p_k, rows, watch, final)
            if bool(final.found.all()):
                return final
            state, x_k, x_k_m_1, g_k, p_k = self._shrink(state, final, x_k, x_k_m_1, g_k, p_k)

        for k_iter in range(1, attack.max_iter):
            z = self.in_ball(self.direction(g_k).mul_(state.eta).add_(x_k), state.x_init)
            x_next = self.in_ball(
                z.sub_(x_k).mul_(ALPHA).add_(x_k).add_(x_k.sub(x_k_m_1).mul_(1 - ALPHA)), state.x_init
            )
            step = self.evaluate(x_next, state.rows, gradient=k_iter < attack.max_iter - 1)
            wrong = None if watch is None else self._found(x_next, step.predicted, state.rows, watch, final)
            if bool((step.loss == 0.0).all()):
                x_k, p_k = x_next, step.predicted
                break
            better = step.loss < state.f_max if attack.targeted else step.loss > state.f_max
            state.count[better] += 1
            state.x_max[better], state.x_max_m_1[better] = x_next[better], x_k[better]
            state.f_max[better], state.p_max[better] = step.loss[better], step.predicted[better]
            if step.grad is not None:
                state.g_max = torch.where(_rows(better, state.g_max), step.grad, state.g_max)
            x_k_m_1, x_k, g_k, p_k = x_k, x_next, step.grad, step.predicted
            if k_iter in marks:
                last = marks[marks.index(k_iter) - 1]
                condition = (state.count < RHO * (k_iter - last)) | (
                    (state.eta_w == state.eta).flatten() & (state.f_max_w == state.f_max)
                )
                state.eta[condition] /= 2
                x_k[condition], x_k_m_1[condition] = state.x_max[condition], state.x_max_m_1[condition]
                p_k[condition] = state.p_max[condition]
                if g_k is not None:
                    g_k = torch.where(_rows(condition, g_k), state.g_max, g_k)
                state.count.zero_()
                state.eta_w, state.f_max_w = state.eta.clone(), state.f_max.clone()
            if wrong is not None and wrong.any():  # examples with a misclassified iterate leave the batch
                if bool(final.found.all()):
                    return final
                state, x_k, x_k_m_1, g_k, p_k = self._shrink(state, final, x_k, x_k_m_1, g_k, p_k)
        self._finish(x_k, p_k, state.rows, final)
        return final

    def _shrink(self, state: _State, final: _Final, *carried):
        """The state (and `carried` tensors) without the examples found broken, but never fewer than MIN_ROWS
        rows (or the batch's own size, if smaller): found ones stay on as passengers, their results ignored, so
        every pass runs at a batch size whose per-example results do not depend on the batch (see MIN_ROWS)."""
        alive = ~final.found[state.rows]
        short = min(MIN_ROWS, len(final.found)) - int(alive.sum())
        if short > 0:
            alive[torch.nonzero(~alive).flatten()[:short]] = True
        return state.keep(alive, *carried) if not alive.all() else (state, *carried)

    def _found(self, x: torch.Tensor, predicted: torch.Tensor, rows: torch.Tensor, watch, final: _Final):
        """(m,) bool: rows whose point x is misclassified for its true label, recorded as their result."""
        wrong = predicted != watch[rows]
        new = wrong & ~final.found[rows]  # the first misclassified iterate of each example is kept
        if new.any():
            hit = rows[new]
            final.x[hit], final.found[hit], final.keep[hit] = x[new], True, True
        return wrong

    def _finish(self, x_k: torch.Tensor, predicted: torch.Tensor, rows: torch.Tensor, final: _Final) -> None:
        """ART keeps the final point where it is misclassified (targeted: classified as the target)."""
        hit = predicted == self.target[rows] if self.attack.targeted else predicted != self.target[rows]
        hit &= ~final.found[rows]  # a passenger keeps its first misclassified iterate
        final.x[rows[hit]], final.keep[rows[hit]] = x_k[hit], True


def per_example_loss(loss_function, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(m,) ART's APGD loss of each example (its loss object with reduction "none"), the DLR loss without its
    Python loop over examples (`dlr`)."""
    kind = type(loss_function).__name__  # ART defines both classes inside AutoProjectedGradientDescent.__init__
    if kind == "DifferenceLogitsRatioPyTorch":
        return dlr(logits, labels)
    if kind == "CrossEntropyLossTorch":
        return loss_function.ce_loss(logits, labels)
    reduction, loss_function.reduction = loss_function.reduction, "none"
    try:
        return loss_function(logits, labels)
    finally:
        loss_function.reduction = reduction


def dlr(logits: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
    """ART's difference-of-logits ratio -(z_y - z_i) / (z_pi1 - z_pi3), z_i the largest logit other than y's, for
    every row at once: the same values and gradients, bit for bit, as ART's loop over rows with its (m, m) gathers
    (tests/test_lean_attacks.py), whose backward adds only zeros besides each row's own term."""
    i_y_true = torch.argmax(y_true.float(), dim=1)
    order = torch.argsort(logits, dim=1)
    top = order[:, -1]
    i_z_i = torch.where(top != i_y_true, top, order[:, -2])
    z_1, z_3, z_i, z_y = (logits.gather(1, index[:, None])[:, 0] for index in (top, order[:, -3], i_z_i, i_y_true))
    return (-(z_y - z_i) / (z_1 - z_3)).float()


@dataclass
class _State:
    """What APGD keeps per example between iterations (ART's attributes), for the rows still attacked."""

    rows: torch.Tensor  # (m,) batch row of each
    x_init: torch.Tensor  # (m, C, H, W) the original images
    eta: torch.Tensor  # (m, 1, ...) float32 step sizes
    count: torch.Tensor  # (m,) float64 improving iterations since the last checkpoint
    eta_w: torch.Tensor  # step sizes at the last checkpoint
    f_max_w: torch.Tensor  # best losses at the last checkpoint
    f_max: torch.Tensor  # (m,) best loss so far
    x_max: torch.Tensor  # the best point
    x_max_m_1: torch.Tensor  # the point before it
    g_max: torch.Tensor  # the loss gradient at the best point (APGD moves back to it at checkpoints)
    p_max: torch.Tensor  # the predicted class at the best point

    def keep(self, alive: torch.Tensor, *carried):
        """The state and `carried` tensors (None stays None) for the rows where `alive`."""
        names = ("rows", "x_init", "eta", "count", "eta_w", "f_max_w", "f_max", "x_max", "x_max_m_1", "g_max", "p_max")
        kept = _State(*(getattr(self, name)[alive] for name in names))
        return (kept, *(None if value is None else value[alive] for value in carried))


def _rows(flags: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(m,) flags shaped to broadcast over tensors like `like` (m, C, H, W)."""
    return flags.reshape((len(flags),) + (1,) * (like.dim() - 1))


def _gradient_l2(grad: torch.Tensor) -> torch.Tensor:
    """(m, 1, ...) float32 L2 norm per row as ART's APGD computes it: numpy's sum over the image axes on the CPU (the
    same bits), torch's sum elsewhere (the last bit can differ)."""
    if grad.device.type != "cpu":
        return grad.square().sum(tuple(range(1, grad.dim())), keepdim=True).sqrt()
    values = grad.detach().numpy()
    return torch.from_numpy(np.sqrt(np.sum(np.square(values), axis=tuple(range(1, values.ndim)), keepdims=True)))


def _flat_l2(values: torch.Tensor) -> torch.Tensor:
    """(m, 1, ...) float32 L2 norm per row as ART's `projection` computes it (`np.linalg.norm` of the flat rows)."""
    shape = (len(values),) + (1,) * (values.dim() - 1)
    if values.device.type != "cpu":
        return torch.linalg.norm(values.flatten(1), dim=1).reshape(shape)
    flat = values.detach().numpy().reshape(len(values), -1)
    return torch.from_numpy(np.linalg.norm(flat, ord=2, axis=1, keepdims=True)).reshape(shape)
