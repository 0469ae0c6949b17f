"""Every sanity check fires on a model or attack broken on purpose, in a default (nested) sweep, and passes on
a healthy one. Nesting makes curves non-increasing and robust <= clean by construction; the probe rows are
what let those checks see a failing attack or a random model at all."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import robustcnn

SUITE = """
[[attack]]
name = "fgsm"
type = "fgsm"
norm = "inf"
eps = [0.1, 0.3, 0.5]
[[attack]]
name = "pgd"
type = "pgd"
norm = "inf"
eps = [0.1, 0.3, 0.5]
steps = 10
[[attack]]
name = "pgd-weak"
type = "pgd"
norm = "inf"
eps = [0.1, 0.3, 0.5]
steps = 5
step_size = 0.02
[[attack]]
name = "square"
type = "square"
norm = "inf"
eps = [0.3]
queries = 150
"""
HEALTHY_SUITE = SUITE.split('[[attack]]\nname = "pgd-weak"')[0] + SUITE.split("step_size = 0.02\n")[1]


class Broken(nn.Module):
    """A trained model, broken in one way a real evaluation meets."""

    def __init__(self, net: nn.Module, how: str):
        super().__init__()
        self.net, self.how = net, how

    def forward(self, x):
        if self.how == "noise":  # a randomised defence: random at test time
            return self.net((x + 0.5 * torch.randn_like(x)).clamp(0, 1))
        if self.how == "masked":  # rounding the input: every input gradient is zero
            return self.net(torch.round(x))
        if self.how == "dropout":  # dropout that ignores eval mode
            return F.dropout(self.net(x), 0.5, training=True)
        if self.how == "softmax":  # probabilities, not logits
            return self.net(x).softmax(1)
        if self.how == "test-set-keyed":  # wrong on the test images as stored (k/255), right on anything else
            on_grid = ((x * 255 - (x * 255).round()).abs() < 1e-4).flatten(1).all(1)  # (N,)
            logits = self.net(x)
            return torch.where(on_grid[:, None], -logits, logits)
        return self.net(x)


@pytest.fixture(scope="module")
def swept(tiny_runs, tmp_path_factory):
    """checks.json of a default sweep per broken model (and the healthy one, without the weak PGD)."""
    folder = tmp_path_factory.mktemp("checks-fire")
    suites = {name: folder / f"{name}.toml" for name in ("broken", "healthy")}
    suites["broken"].write_text(SUITE)
    suites["healthy"].write_text(HEALTHY_SUITE)
    found = {}
    for how in ("healthy", "wrong-step", "noise", "masked", "dropout", "softmax", "test-set-keyed"):
        model = Broken(robustcnn.load_model(tiny_runs[0].path), how).eval()  # "wrong-step": healthy, broken suite
        out = folder / how
        suite = suites["healthy" if how == "healthy" else "broken"]
        robustcnn.sweep(robustcnn.Model(model, name=how), dataset="mnist5k", suite=str(suite), n=50, out=str(out))
        checks = json.loads((out / "checks.json").read_text())["checks"]
        found[how] = {c["name"]: c for c in checks}
    return found


def status(swept, how: str, name: str) -> str:
    return swept[how][name]["status"]


def test_a_healthy_model_passes_every_check(swept):
    statuses = {name: c["status"] for name, c in swept["healthy"].items()}
    assert set(statuses.values()) <= {"pass", "skip"}, statuses
    skipped = {"steps-restarts", "catastrophic-overfitting", "certified-le-attacked", "smoothing-noise-trained",
               "adaptive"}  # fmt: skip
    # certified, smoothing: no ibp, crown or smoothing entry; adaptive: the model checks found no defence
    assert {k for k, v in statuses.items() if v == "skip"} <= skipped


@pytest.mark.parametrize(
    ("how", "name", "fires"),
    [
        ("noise", "deterministic", {"fail"}),
        ("dropout", "deterministic", {"fail"}),
        # a random model, a masked one: no attack adapted to them ran (once, the dropout model's probe curve rose by
        # chance and monotone-eps caught it; the check that always does is this one)
        ("dropout", "adaptive", {"fail"}),
        ("noise", "adaptive", {"fail"}),
        ("masked", "adaptive", {"fail"}),
        ("test-set-keyed", "robust-le-clean", {"fail"}),  # probe rows above the clean row of the same images
        ("masked", "gradients", {"fail"}),
        ("masked", "large-eps", {"fail"}),  # probe at eps 0.5: the attack is not working
        ("masked", "black-box-vs-white-box", {"warn", "fail"}),  # Square beats the gradient attacks
        ("softmax", "logits", {"warn"}),
        # PGD with a step of 0.02 eps moves 0.1 eps in its 5 steps: weaker than FGSM, and than PGD-10
        ("wrong-step", "iterative-vs-single-step", {"warn", "fail"}),
        ("wrong-step", "steps-restarts", {"warn", "fail"}),
        ("noise", "iterative-vs-single-step", {"warn", "fail"}),
        ("test-set-keyed", "clean-accuracy", {"warn"}),
    ],
)
def test_each_check_fires_on_its_broken_case(swept, how, name, fires):
    assert status(swept, how, name) in fires, swept[how][name]["message"]
