"""Randomized smoothing: Cohen et al.'s certificate through ART, Gaussian-noise training, its report and check."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import beta, norm
from torch import nn

import robustcnn
from robustcnn.attacks import ATTACKS, Target
from robustcnn.attacks.art import art_classifier
from robustcnn.attacks.smoothing import smoothing_flags
from robustcnn.errors import UsageError
from robustcnn.report.checks import Status, smoothing_noise_trained
from robustcnn.threat import Norm


class _Constant(nn.Module):
    """Predicts class 0 whatever the input: every noise sample votes 0, so the certificate is known exactly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(len(x), 10, device=x.device)
        logits[:, 0] = 1.0
        return logits + 0.0 * x.flatten(1)[:, :1]


def _smoothing(model: nn.Module, **params):
    classifier = art_classifier(model, (1, 28, 28), 10, torch.device("cpu"))
    target = Target(classifier, model, torch.device("cpu"), 64, 10)
    kind = ATTACKS.get("smoothing")
    return kind("smoothing", Norm.L2, kind.parse_params(params, ""), target)


def test_the_certificate_is_cohens_radius_with_the_suites_settings():
    """All n samples vote for the class: p_lower is the Clopper-Pearson bound alpha^(1/n), radius sigma Phi^-1 of it."""
    x = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    y = np.array([0, 0, 3, 0])
    sigma, samples, alpha = 0.5, 200, 0.01
    smoothing = _smoothing(_Constant(), sigma=sigma, samples=samples, selection=10, alpha=alpha)
    prediction, radius = smoothing.certify(x, y)
    expected = sigma * norm.ppf(beta.ppf(alpha, samples, 1))  # one-sided lower bound at level 1 - alpha
    assert np.array_equal(prediction, [0, 0, 0, 0])
    assert np.allclose(radius, expected, rtol=1e-9)
    flags = smoothing_flags(prediction, radius, y, (0.0, expected * 0.99, expected * 1.01))
    assert flags.tolist() == [[True, True, False, True], [True, True, False, True], [False] * 4]


def test_abstentions_count_as_wrong_at_every_radius():
    flags = smoothing_flags(np.array([-1, 2, 2]), np.array([0.0, 0.3, 0.0]), np.array([1, 2, 2]), (0.0, 0.2, 0.4))
    assert flags.tolist() == [[False, True, True], [False, True, False], [False, False, False]]


def test_sigma_belongs_to_gaussian_training():
    with pytest.raises(UsageError, match=r"--sigma 0.5 applies to --adv-method gaussian only, not pgd"):
        robustcnn.train(dataset="digits", adv=True, sigma=0.5, epochs=1)


def test_noise_training_makes_the_smoothed_classifier_accurate_and_the_report_says_what_it_certifies(
    tiny_runs, tmp_path
):  # fmt: skip
    """A model trained on the noise gets far more certified images than the same network trained clean, in a
    sweep whose smoothing rows stay out of the attack checks and get their own report section and check."""
    standard, _ = tiny_runs
    noisy = robustcnn.train(
        dataset="mnist5k", train_size=1024, val_size=64, epochs=4, adv=True, adv_method="gaussian", sigma=0.5,
        out=str(tmp_path / "noisy"),
    )  # fmt: skip
    suite = tmp_path / "smooth.toml"
    suite.write_text(
        'description = "t"\n'
        '[[attack]]\nname = "pgd-l2"\ntype = "pgd"\nnorm = "2"\neps = [0.5]\nsteps = 5\n'
        '[[attack]]\nname = "smoothing"\ntype = "smoothing"\nnorm = "2"\neps = [0.0, 0.25, 0.5]\nsigma = 0.5\n'
        "samples = 200\nselection = 20\n"
    )
    out = tmp_path / "out"
    results = robustcnn.sweep([str(noisy.path), str(standard.path)], suite=str(suite), n=40, out=str(out))
    smoothed = results[results.kind == "smoothed"].pivot(index="eps", columns="model", values="accuracy")
    assert smoothed["noisy"].iloc[1] > smoothed["std"].iloc[1] + 0.2, smoothed
    assert (np.diff(smoothed.to_numpy(), axis=0) <= 0).all()  # a radius certified holds below it
    worst = results[results.kind == "worst-case"]
    assert {a for p in worst.params for a in json.loads(p)["attacks"]} == {"pgd-l2"}  # smoothing is no attack
    checks = {(c["model"], c["name"]): c["status"] for c in json.loads((out / "checks.json").read_text())["checks"]}
    assert checks[("noisy", "smoothing-noise-trained")] == "pass"
    assert checks[("std", "smoothing-noise-trained")] == "warn"
    html = (out / "report.html").read_text()
    assert 'id="smoothing"' in html and "<b>not the model</b>" in html


def test_the_noise_check_names_a_sigma_mismatch():
    rows = pd.DataFrame(
        [{"model": "m", "kind": "smoothed", "params": json.dumps({"sigma": 0.25}), "eps": 0.0, "accuracy": 0.9}]
    )
    assert smoothing_noise_trained(rows, "m", "gaussian", 0.25).status is Status.PASS
    mismatch = smoothing_noise_trained(rows, "m", "gaussian", 0.5)
    assert mismatch.status is Status.WARN and "sigma 0.25, but the model trained at --sigma 0.5" in mismatch.message
    assert smoothing_noise_trained(rows, "m", "", None).status is Status.WARN
    assert smoothing_noise_trained(rows.assign(kind="attack"), "m", "gaussian", 0.25).status is Status.SKIP


def test_smoothing_is_an_l2_certificate_with_a_failure_probability_below_one_half():
    with pytest.raises(UsageError, match="norm 'inf' is not supported by this attack; allowed: 2"):
        ATTACKS.get("smoothing").check_norm(Norm.LINF, "")
    with pytest.raises(UsageError, match=r"alpha.*expected a probability in \(0, 0.5\), e.g. 0.001, got 0.5"):
        ATTACKS.get("smoothing").parse_params({"alpha": 0.5}, "")
