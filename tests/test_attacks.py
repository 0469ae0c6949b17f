"""Every registered attack runs through ART on a tiny model and respects its threat model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import robustcnn
from robustcnn.attacks import ATTACKS, MinimalAttack, PatchAttack, Target, attack_names
from robustcnn.attacks.art import art_classifier
from robustcnn.threat import Norm

FAST_PARAMS = {
    "pgd": {"steps": 5},
    "apgd-ce": {"steps": 5},
    "apgd-dlr": {"steps": 5},
    "apgd-t": {"steps": 5, "targets": 3},
    "square": {"queries": 30},
    "deepfool": {"steps": 10},
    "patch": {"iterations": 3, "train_images": 16},
}


@pytest.fixture(scope="module")
def setting(tiny_runs):
    standard, _ = tiny_runs
    model = standard.model().requires_grad_(False)
    test = robustcnn.load_dataset("mnist5k", "test").subset(range(24))
    classifier = art_classifier(model, (1, 28, 28), 10, torch.device("cpu"))
    target = Target(classifier, model, torch.device("cpu"), 16, 10)
    return model, target, test.images().numpy(), test.y.numpy()


def build(name: str, norm: Norm | None, target: Target):
    cls = ATTACKS.get(name)
    params = cls.parse_params(FAST_PARAMS.get(name, {}), "")
    return cls(name, norm, params, target)


def predict(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).argmax(1).numpy()


def test_registry_has_the_documented_attacks():
    attacks = ["apgd-ce", "apgd-dlr", "apgd-t", "cw-l2", "deepfool", "fgsm", "patch", "pgd", "square"]
    certificates = ["crown", "ibp", "smoothing"]  # suite entries that prove (kinds certified, smoothed), not attacks
    assert attack_names() == sorted(attacks + certificates)


BOUNDED = [
    (name, norm) for name in ("fgsm", "pgd", "apgd-ce", "apgd-dlr", "apgd-t", "square") for norm in (Norm.LINF, Norm.L2)
]


@pytest.mark.parametrize(("name", "norm"), BOUNDED, ids=[f"{n}-{m.label}" for n, m in BOUNDED])
def test_bounded_attacks_stay_in_the_ball_and_the_pixel_range(setting, name, norm):
    model, target, x, y = setting
    eps = 0.2 if norm is Norm.LINF else 1.5
    x_adv = build(name, norm, target).generate(x, y, eps)
    assert x_adv.shape == x.shape and x_adv.dtype == np.float32
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    delta = (x_adv - x).reshape(len(x), -1)
    size = np.abs(delta).max(1) if norm is Norm.LINF else np.linalg.norm(delta, axis=1)
    assert (size <= eps * (1 + 1e-4) + 1e-6).all()
    fooled = (predict(model, x_adv) != y).mean()
    assert fooled > (predict(model, x) != y).mean(), f"{name} fooled no extra example of a standard model"


@pytest.mark.parametrize("name", ["cw-l2", "deepfool"])
def test_minimal_attacks_find_small_l2_perturbations(setting, name):
    model, target, x, y = setting
    attack = build(name, Norm.L2, target)
    assert isinstance(attack, MinimalAttack)
    x_adv = attack.generate(x, y)
    assert x_adv.shape == x.shape and x_adv.min() >= 0 and x_adv.max() <= 1
    fooled = predict(model, x_adv) != y
    assert fooled.mean() > 0.3
    distances = np.linalg.norm((x_adv - x).reshape(len(x), -1), axis=1)[fooled]
    assert np.median(distances) < 5  # MNIST L2 norms are ~9: a real attack needs far less


def test_patch_is_trained_then_applied_at_a_scale(setting):
    model, target, x, y = setting
    attack = build("patch", None, target)
    assert isinstance(attack, PatchAttack)
    patch = attack.train_patch(x[:16], y[:16], (0.2, 0.4))
    assert patch.shape == (1, 28, 28) and patch.min() >= 0 and patch.max() <= 1
    patched = attack.apply(x, 0.4, patch, (0.2, 0.4))
    assert patched.shape == x.shape
    changed = (np.abs(patched - x).reshape(len(x), -1) > 1e-6).mean(1)
    assert (changed > 0.02).all() and (changed < 0.5).all()  # a patch covers part of each image, not all


def test_attacks_use_the_true_labels_not_the_predictions(setting):
    """ART attacks predicted labels when y is missing (label leaking); ours always pass y."""
    model, target, x, y = setting
    wrong = (y + 1) % 10
    attack = build("fgsm", Norm.LINF, target)
    with_true, with_wrong = attack.generate(x, y, 0.1), attack.generate(x, wrong, 0.1)
    assert not np.allclose(with_true, with_wrong)


class Bump(torch.nn.Module):
    """One pixel, two classes: class 1 wins only for x in (0.5, 0.7). Sign-gradient steps of 0.2 from x = 0.45
    land on 0.65 (misclassified) and back on 0.45 (correct), again and again: only earlier iterates break it."""

    def forward(self, x):
        bump = 1 - 100 * (x.flatten(1) - 0.6) ** 2  # (N, 1)
        return torch.cat([torch.zeros_like(bump), bump], dim=1)


@pytest.mark.parametrize("any_iterate", [True, False])
def test_any_iterate_in_the_ball_breaks_an_example_the_last_iterate_misses(any_iterate):
    model = Bump()
    target = Target(art_classifier(model, (1, 1, 1), 2, torch.device("cpu")), model, torch.device("cpu"), 8, 2)
    params = ATTACKS.get("pgd").parse_params(
        {"steps": 4, "step_size": 0.4, "random_start": False, "any_iterate": any_iterate}, ""
    )
    x, y = np.full((3, 1, 1, 1), 0.45, dtype=np.float32), np.zeros(3, dtype=np.int64)
    x_adv = ATTACKS.get("pgd")("pgd", Norm.LINF, params, target).generate(x, y, 0.5)
    expected = 0.65 if any_iterate else 0.45  # iterates 0.45, 0.65, 0.45, 0.65; ART returns 0.45
    np.testing.assert_allclose(x_adv.ravel(), expected, atol=1e-6)
    assert (predict(model, x_adv) != y).all() == any_iterate


@pytest.mark.parametrize("name", ["pgd", "apgd-ce", "apgd-t"])
def test_recorded_iterates_are_adversarial_and_in_the_ball(setting, name):
    """On a real model: every example an earlier iterate broke is returned as an adversarial example in the
    ball and the pixel range, and counting every iterate never leaves more examples correct."""
    from robustcnn.attacks.art import IterateRecorder

    model, target, x, y = setting
    eps = 0.1
    attack = build(name, Norm.LINF, target)
    torch.manual_seed(0)
    with IterateRecorder(model, x, y, eps, Norm.LINF.art) as recorder:
        last = attack.run(x, y, eps)
    assert recorder.found, "no iterate broke any example: the test would prove nothing"
    for index, point in recorder.found.items():
        point = point.reshape(x.shape[1:]).numpy()
        assert np.abs(point - x[index]).max() <= eps + 1e-6 and point.min() >= 0 and point.max() <= 1
        assert predict(model, point[None])[0] != y[index]
    recorded = recorder.apply(last)
    assert (predict(model, recorded) == y).sum() <= (predict(model, last) == y).sum()


@pytest.mark.parametrize("norm_p", ["inf", 2])
def test_pgd_projection_is_arts_bit_for_bit(norm_p):
    """robustcnn's PGD projects with a leaner function than ART's float64 one: the same bits must come out,
    at radii that are not float32 numbers and at points exactly on (and one float32 beyond) the ball's edge."""
    from art.attacks.evasion import ProjectedGradientDescentPyTorch

    from robustcnn.attacks.art import pgd_class

    generator = torch.Generator().manual_seed(0)
    for eps in (0.1, 0.3 / 3, 0.05, 0.4, 0.5, 1.5, 3.0, 0.0):
        for scale in (0.3, 1.0, 4.0):
            values = (torch.rand(32, 1, 8, 8, generator=generator) - 0.5) * 2 * scale * max(eps, 0.1)
            values[0] = 0
            edge = np.float32(eps)
            values[1, 0, 0, :4] = torch.tensor([edge, -edge, np.nextafter(edge, np.float32(1)), eps])
            ours = pgd_class()._projection(values, eps, norm_p)
            arts = ProjectedGradientDescentPyTorch._projection(values, eps, norm_p)
            assert ours.dtype == arts.dtype and torch.equal(ours, arts), (eps, scale, norm_p)


def _gradients(generator: torch.Generator, shape: tuple[int, ...]) -> list[torch.Tensor]:
    """A plain gradient, and one with a NaN, an all-zero example and infinities (ART's special cases)."""
    odd = torch.randn(shape, generator=generator)
    odd[0, 0, 0, 0] = float("nan")
    odd[1] = 0
    odd[2, 0, 0, 1], odd[3, 0, 1, 1] = float("inf"), -float("inf")
    return [torch.randn(shape, generator=generator), odd]


@pytest.mark.parametrize("norm", [np.inf, 2])
@pytest.mark.parametrize("targeted", [False, True])
def test_pgd_step_is_arts_bit_for_bit(norm, targeted):
    """robustcnn's PGD step leaves out ART's redundant passes over the batch: it must return ART's bits, also
    where a gradient has NaN, zero or infinite entries."""
    from art.attacks.evasion import ProjectedGradientDescentPyTorch

    from robustcnn.attacks.art import pgd_class

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    classifier = art_classifier(net, (1, 8, 8), 10, torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    shape = (16, 1, 8, 8)
    for eps, step in ((0.3, 0.3 * 2.5 / 40), (0.1 / 3, 0.01), (1.5, 0.09)):
        settings = {"norm": norm, "eps": eps, "eps_step": step, "max_iter": 3, "targeted": targeted, "verbose": False}
        ours, arts = pgd_class()(classifier, **settings), ProjectedGradientDescentPyTorch(classifier, **settings)
        x_init = torch.rand(shape, generator=generator)
        x = (x_init + (torch.rand(shape, generator=generator) - 0.5) * eps).clamp(0, 1)
        y = torch.nn.functional.one_hot(torch.randint(0, 10, (16,), generator=generator), 10).float()
        for gradient in _gradients(generator, shape):
            classifier.loss_gradient = lambda x, y, gradient=gradient, **_: gradient.clone()
            mine = ours._compute_pytorch(x, x_init, y, None, eps, step, False, None)
            theirs = arts._compute_pytorch(x, x_init, y, None, eps, step, False, None)
            assert torch.equal(mine.isnan(), theirs.isnan())
            assert torch.equal(mine.nan_to_num(), theirs.nan_to_num()), (norm, targeted, eps)


def test_lean_loss_gradient_is_arts(setting):
    """The classifier's lean input gradient (tensors in, as ART's PyTorch attacks call it) is ART's, bit for bit."""
    from art.estimators.classification import PyTorchClassifier

    model, target, x, y = setting
    arts = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10,
                             clip_values=(0.0, 1.0), preprocessing=None)  # fmt: skip
    x_t = torch.from_numpy(x)
    one_hot = torch.nn.functional.one_hot(torch.from_numpy(y), 10).float()
    assert type(target.classifier) is not PyTorchClassifier  # the lean subclass is what attacks get
    assert torch.equal(target.classifier.loss_gradient(x_t, one_hot), arts.loss_gradient(x_t, one_hot))
    assert np.array_equal(target.classifier.loss_gradient(x, one_hot.numpy()), arts.loss_gradient(x, one_hot.numpy()))
