"""The lean APGD and Square loops against ART's own classes: the same results, bit for bit, from the same seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robustcnn.attacks.art import art_classifier


class Centered(torch.nn.Module):
    """Pixels centred and scaled: a random net then predicts every class, not one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 0.5) * 4


def small_net(seed: int = 0, classes: int = 10) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        Centered(), torch.nn.Conv2d(1, 6, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
        torch.nn.Linear(6 * 5 * 5, 32), torch.nn.ReLU(), torch.nn.Linear(32, classes),
    ).eval().requires_grad_(False)  # fmt: skip


def images(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, 12, 12), dtype=np.float32), rng.integers(0, 10, n)


def classifier(net: torch.nn.Module):
    return art_classifier(net, (1, 12, 12), 10, torch.device("cpu"))


def both_apgd(settings: dict, x: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from art.attacks.evasion import AutoProjectedGradientDescent

    from robustcnn.attacks.lean_apgd import apgd_class

    results = []
    for cls in (apgd_class(), AutoProjectedGradientDescent):
        np.random.seed(seed)
        results.append(cls(classifier(small_net()), verbose=False, **settings).generate(x, y))
    return results[0], results[1]


@pytest.mark.parametrize("loss_type", ["cross_entropy", "difference_logits_ratio"])
@pytest.mark.parametrize("norm, eps", [(np.inf, 0.1), (2, 0.8)])
@pytest.mark.parametrize("targeted", [False, True])
def test_lean_apgd_is_arts_bit_for_bit(loss_type, norm, eps, targeted):
    """Several batches, two restarts, step halvings at ART's checkpoints: every output bit as ART's."""
    x, y = images(40)
    labels = (y + 1) % 10 if targeted else y
    settings = {"norm": norm, "eps": eps, "eps_step": 2 * eps, "max_iter": 14, "targeted": targeted,
                "nb_random_init": 2, "batch_size": 16, "loss_type": loss_type}  # fmt: skip
    ours, arts = both_apgd(settings, x, labels)
    assert not np.array_equal(arts, x)  # the attack moved
    assert np.array_equal(ours, arts)


def test_lean_apgd_keeps_the_first_misclassified_iterate_and_only_its_own_rows_change():
    """Given the true labels, each example stops at its first misclassified iterate (returned in the ball); the
    examples no iterate broke get exactly ART's result."""
    from robustcnn.attacks.lean_apgd import apgd_class

    x, _ = images(40)
    net = small_net()
    with torch.no_grad():
        y = net(torch.from_numpy(x)).argmax(1).numpy()  # labels the model gets right
    settings = {"norm": np.inf, "eps": 0.03, "eps_step": 0.06, "max_iter": 14, "batch_size": 16, "verbose": False}
    np.random.seed(0)
    plain = apgd_class()(classifier(net), **settings).generate(x, y)
    np.random.seed(0)
    watched = apgd_class()(classifier(net), **settings).generate(x, y, true_labels=y)
    with torch.no_grad():
        plain_wrong = net(torch.from_numpy(plain)).argmax(1).numpy() != y
        watched_wrong = net(torch.from_numpy(watched)).argmax(1).numpy() != y
    assert 0 < watched_wrong.sum() < len(y)  # some broken, some not: a real test
    assert (watched_wrong >= plain_wrong).all()  # every example ART's result breaks is broken
    assert np.abs(watched - x).max() <= 0.03 + 1e-6 and watched.min() >= 0 and watched.max() <= 1
    unbroken = ~watched_wrong
    assert np.array_equal(watched[unbroken], plain[unbroken])


def test_dlr_is_arts_loss_and_gradient_bit_for_bit():
    from art.attacks.evasion import AutoProjectedGradientDescent

    from robustcnn.attacks.lean_apgd import dlr

    attack = AutoProjectedGradientDescent(classifier(small_net()), loss_type="difference_logits_ratio", verbose=False)
    arts_loss = attack.estimator._loss
    arts_loss.reduction = "none"
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 10, generator=generator)
    logits[:8] = logits[:8].round()  # ties between logits
    y = torch.nn.functional.one_hot(torch.randint(0, 10, (64,), generator=generator), 10).float()
    y[:16] = torch.nn.functional.one_hot(logits[:16].argmax(1), 10).float()  # rows whose top class is y
    mine, theirs = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    ours, arts = dlr(mine, y), arts_loss(theirs, y)
    assert same(ours, arts) and ours.isnan().any()  # 0 / 0 where logits tie
    ours.mean().backward(), arts.mean().backward()
    assert same(mine.grad, theirs.grad)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal, NaN where the other is NaN."""
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


@pytest.mark.parametrize("norm, eps, n", [(np.inf, 0.05, 40), (2, 0.5, 40), (np.inf, 0.05, 9)])
def test_lean_square_is_arts_bit_for_bit(norm, eps, n):
    """Same seed, same squares, same result as ART's SquareAttack: restarts, several batches of the model's passes,
    and batches too small for the logits to be kept (n = 9)."""
    import random

    from art.attacks.evasion import SquareAttack

    from robustcnn.attacks.lean_square import square_class

    x, y = images(n)
    net = small_net()
    with torch.no_grad():
        y = net(torch.from_numpy(x)).argmax(1).numpy()
    results = []
    for cls in (square_class(), SquareAttack):
        np.random.seed(0), random.seed(0)
        attack = cls(classifier(net), norm=norm, eps=eps, max_iter=60, nb_restarts=2, batch_size=16, verbose=False)
        results.append(attack.generate(x, y))
    ours, arts = results
    with torch.no_grad():
        fooled = net(torch.from_numpy(arts)).argmax(1).numpy() != y
    assert 0 < fooled.sum() < len(y)  # some fooled, some not: the test compares real work
    assert np.array_equal(ours, arts)
