"""Adaptive attacks (robustcnn/attacks/adaptive.py): BPDA and EOT inside an attack's gradient, chosen per model from
the model checks, and random models judged by a majority of passes."""

from __future__ import annotations

import json

import adaptive_models as models
import numpy as np
import pytest
import torch
from torch import nn

from robustcnn.attacks import ATTACKS, Target
from robustcnn.attacks.adaptive import RoundingStraightThrough, find_module, straight_through
from robustcnn.attacks.art import art_classifier
from robustcnn.attacks.base import Findings
from robustcnn.errors import UsageError
from robustcnn.results import Technique
from robustcnn.sweep.model_checks import model_checks
from robustcnn.threat import Norm

CPU = torch.device("cpu")


def target(model: nn.Module, classes: int = 10, shape=(1, 8, 8), **judged) -> Target:
    return Target(art_classifier(model, shape, classes, CPU), model, CPU, 32, classes, None, **judged)


def params(name: str, **values):
    return ATTACKS.get(name).parse_params(values, "")


# --- BPDA ---------------------------------------------------------------------------------------------------------
ROUNDING_CALLS = {
    "torch.round": lambda x: torch.round(x * 4) / 4,
    "Tensor.floor": lambda x: (x * 4).floor() / 4,
    "torch.ceil": lambda x: torch.ceil(x * 4) / 4,
    "Tensor.trunc": lambda x: (x * 4).trunc() / 4,
    "torch.sign": lambda x: torch.sign(x - 0.5),
    "aten.round": lambda x: torch.ops.aten.round.default(x * 4) / 4,
    "uint8 cast": lambda x: (x * 255).to(torch.uint8).float() / 255,
    "long()": lambda x: (x * 4).long() / 4,
}


@pytest.mark.parametrize("call", ROUNDING_CALLS.values(), ids=ROUNDING_CALLS.keys())
def test_rounding_passes_the_gradient_straight_through_and_keeps_its_values(call):
    x = torch.rand(3, 5)
    expected = call(x)
    leaf = x.clone().requires_grad_(True)
    with RoundingStraightThrough():
        out = call(leaf)
    (gradient,) = torch.autograd.grad(out.sum(), leaf)
    assert torch.equal(out.detach(), expected.to(out.dtype))  # the forward pass is the model's own, bit for bit
    assert (gradient != 0).all()  # without BPDA: zero (round) or no gradient at all (a cast)
    leaf = x.clone().requires_grad_(True)
    plain = call(leaf)
    if plain.requires_grad:
        assert (torch.autograd.grad(plain.sum(), leaf)[0] == 0).all()


def test_rounding_in_an_exported_graph_passes_the_gradient_straight_through():
    """A .pt2 model's graph calls aten ops (aten.to.dtype for a cast, then checks the cast's dtype)."""

    class Stored(nn.Module):  # stores the image as uint8, then quantises it
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

        def forward(self, x):
            return self.net(torch.round((x * 255).to(torch.uint8).float() / 255 * 3) / 3)

    torch.manual_seed(0)
    model = Stored().eval()
    graph = torch.export.export(model, (torch.rand(2, 1, 8, 8),)).module()
    x = torch.rand(2, 1, 8, 8, requires_grad=True)
    with RoundingStraightThrough():
        out = graph(x)
    (gradient,) = torch.autograd.grad(out[:, 0].sum(), x)
    assert torch.equal(out, model(x)) and (gradient != 0).all()


def test_rounding_mode_leaves_other_calls_and_values_without_gradient_alone():
    x = torch.rand(4)
    with RoundingStraightThrough():
        assert torch.round(x).requires_grad is False  # no gradient wanted: nothing changes
        assert (x * 255).to(torch.uint8).dtype == torch.uint8
        moved = x.clone().requires_grad_(True).to(torch.float64)
    assert moved.dtype == torch.float64


class Quantise(nn.Module):
    def forward(self, x):
        return torch.round(x * 3) / 3


class Quantised(nn.Module):
    def __init__(self):
        super().__init__()
        self.quantise = Quantise()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x):
        return self.net(self.quantise(x))


def test_a_named_module_gets_the_identity_as_its_backward():
    torch.manual_seed(0)
    model = Quantised()
    x = torch.rand(2, 1, 8, 8, requires_grad=True)
    with straight_through(model, "quantise"):
        out = model(x)
        (gradient,) = torch.autograd.grad(out[:, 0].sum(), x)
    assert torch.equal(out, model(x))
    expected = model.net[1].weight[0].reshape(1, 1, 8, 8).expand_as(x)  # linear after the identity
    torch.testing.assert_close(gradient, expected)
    assert not model.quantise._forward_hooks  # removed after the block


def test_a_module_path_that_is_not_there_is_one_line_naming_the_submodules():
    with pytest.raises(UsageError, match=r"bpda = 'quantiser' names no submodule.*quantise, net"):
        find_module(Quantised(), "quantiser")


def test_a_module_that_changes_the_shape_cannot_have_the_identity_as_backward():
    model = Quantised()
    shapes = r"bpda = 'net.0'.*\(2, 1, 8, 8\) -> \(2, 64\)"
    with pytest.raises(UsageError, match=shapes), straight_through(model, "net.0"):
        model(torch.rand(2, 1, 8, 8, requires_grad=True))


# --- EOT and what each model gets -----------------------------------------------------------------------------------
class Counting(nn.Module):
    """A linear model that adds noise to its input (random at test time) and counts its forward passes."""

    def __init__(self, noise: float):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        self.noise, self.calls = noise, 0

    def forward(self, x):
        self.calls += 1
        return self.net(x + self.noise * torch.randn_like(x))


def test_eot_averages_over_k_passes_only_on_a_model_found_random():
    torch.manual_seed(0)
    model = Counting(noise=0.5).requires_grad_(False)
    x, y = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32), np.arange(4)
    for random, passes in ((True, 6), (False, 1)):
        attack_target = target(model, findings=Findings(random=random))
        attack = ATTACKS.get("pgd")("pgd", Norm.LINF, params("pgd", steps=3, eot=6, any_iterate=False), attack_target)
        estimator = attack.art_attack(0.1).estimator
        model.calls = 0
        estimator.loss_gradient(torch.from_numpy(x), torch.from_numpy(np.eye(10, dtype=np.float32)[y]))
        assert model.calls == passes
        assert (estimator is attack_target.classifier) == (passes == 1)  # the shared classifier is never changed


def test_adapt_applies_what_the_model_checks_call_for_and_says_why():
    attack = ATTACKS.get("apgd-ce")
    asked = params("apgd-ce", eot=20, bpda="auto")
    plain, done = attack.adapt("a", asked, target(nn.Flatten()))
    assert (plain.eot, plain.bpda, plain.any_iterate, done) == (1, "off", True, ())
    assert attack.describe_params(plain) == attack.describe_params(params("apgd-ce"))  # the plain attack's cells
    random, done = attack.adapt("a", asked, target(nn.Flatten(), findings=Findings(random=True)))
    assert (random.eot, random.any_iterate) == (20, False)
    assert {(d.technique, d.setting) for d in done} == {(Technique.EOT, "20"), (Technique.ITERATES, "off")}
    masked, done = attack.adapt("a", asked, target(nn.Flatten(), findings=Findings(masked=True)))
    assert masked.bpda == "rounding" and [(d.technique, d.setting) for d in done] == [(Technique.BPDA, "rounding")]


@pytest.mark.parametrize("name", ["apgd-dlr", "apgd-t"])
def test_dlr_on_two_classes_falls_back_to_cross_entropy_and_says_so(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2)).requires_grad_(False)
    two = target(model, classes=2)
    adapted, done = ATTACKS.get(name).adapt(name, params(name, steps=3), two)
    assert adapted.loss == "ce" and done[0].technique is Technique.LOSS and "needs at least 3" in done[0].reason
    assert ATTACKS.get(name).describe_params(adapted)["loss"] == "ce"
    x = np.random.default_rng(0).random((6, 1, 8, 8), dtype=np.float32)
    x_adv = ATTACKS.get(name)(name, Norm.LINF, adapted, two).generate(x, np.arange(6) % 2, 0.1)
    assert np.abs(x_adv - x).max() <= 0.1 + 1e-6


def test_a_random_model_is_correct_where_a_strict_majority_of_passes_is():
    torch.manual_seed(0)

    class Coin(nn.Module):  # class 0 or 1 with probability 1/2 each, whatever the input
        def forward(self, x):
            return torch.randn(len(x), 2)

    coin = target(Coin(), classes=2, draws=9)
    votes = np.array([[0, 0, 1], [0, 1, 1], [1, 1, 1], [0, 0, 0]])  # (4 draws, 3 examples)
    assert coin.majority(votes, np.array([0, 0, 0])).tolist() == [True, False, False]  # 2 of 4 is a tie: wrong
    y = np.zeros(400, dtype=np.int64)
    correct = coin.correct(np.zeros((400, 1, 8, 8), dtype=np.float32), y)
    assert 0.35 < correct.mean() < 0.65  # a fair coin wins a majority of 9 half the time, not always


class Detached(nn.Module):
    """Masking that is no rounding op (a detached input): only a named module could help."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x):
        return self.net(x.detach() * 1.0)


@pytest.mark.parametrize("name", ["fgsm", "pgd", "apgd-ce"])
def test_an_output_that_ignores_the_input_for_autograd_gets_a_zero_gradient_not_a_crash(name):
    torch.manual_seed(0)
    model = Detached().requires_grad_(False)
    x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    attack = ATTACKS.get(name)(name, Norm.LINF, params(name), target(model))
    x_adv = attack.generate(x, np.arange(4), 0.1)
    assert np.abs(x_adv - x).max() <= 0.1 + 1e-6  # ran: a masked model reports its (fooled) number


def test_model_checks_find_randomness_and_masking_and_whether_rounding_explains_it():
    torch.manual_seed(0)
    x, y = torch.rand(16, 1, 8, 8), torch.arange(16) % 10
    checks, findings = model_checks(Quantised(), x, y)
    assert findings == Findings(random=False, masked=True, rounding_restores=True)
    assert [c.name for c in checks] == ["logits", "deterministic", "gradients", "gradients-bpda"]

    assert model_checks(Detached(), x, y)[1] == Findings(masked=True, rounding_restores=False)
    assert model_checks(Counting(noise=0.5), x, y)[1] == Findings(random=True)


# --- end to end: defences that fool plain PGD, against independent adaptive attacks (tests/adaptive_models.py) --------
def suite_file(folder, text: str):
    path = folder / "suite.toml"
    path.write_text(text)
    return str(path)


def pgd_entry(name: str, **options) -> str:
    lines = [f'name = "{name}"', 'type = "pgd"', 'norm = "inf"', f"eps = [{models.EPS}]", f"steps = {models.STEPS}"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in options.items()]
    return "[[attack]]\n" + "\n".join(lines) + "\n"


def sweep(model: nn.Module, name: str, suite: str, out) -> tuple[dict[str, float], object]:
    """The model's accuracy per attack (in %), and the manifest entry."""
    import robustcnn
    from robustcnn.results import Manifest

    results = robustcnn.sweep([robustcnn.Model(model, name=name)], dataset="digits", suite=suite, n=360, out=str(out))
    rows = results[results["kind"].isin(["clean", "attack"])]
    accuracy = dict(zip(rows["attack"], 100 * rows["accuracy"], strict=True))
    manifest = Manifest.from_json(json.loads((out / "manifest.json").read_text()))
    return accuracy, manifest.entry(name)


@pytest.fixture(scope="module")
def digits():
    return models.digits_split()[2:]  # the 360 test images the sweeps attack


def test_bpda_breaks_input_quantisation_as_an_independent_bpda_pgd_does(tmp_path, digits):
    model = models.quantised_model()
    suite = suite_file(tmp_path, pgd_entry("pgd") + pgd_entry("pgd-bpda", bpda="auto"))
    accuracy, entry = sweep(model, "quantised", suite, tmp_path / "out")
    torch.manual_seed(1)
    independent = models.accuracy(
        model, models.bpda_pgd(model, *digits, models.EPS, models.STEPS, models.STEP_SIZE), digits[1]
    )
    assert (
        accuracy["pgd"] > accuracy["pgd-bpda"] + 50
    )  # zero gradients: plain PGD reports a robustness that is not there
    assert abs(accuracy["pgd-bpda"] - independent) <= 5
    assert {(a.attack, a.technique, a.setting) for a in entry.adaptations} == {("pgd-bpda", Technique.BPDA, "rounding")}
    assert {c.name: c.status.value for c in entry.model_checks}["gradients-bpda"] == "pass"


def test_eot_breaks_a_random_model_as_an_independent_eot_pgd_does(tmp_path, digits):
    model = models.noisy_model()
    text = f"draws = {models.DRAWS}\n" + pgd_entry("pgd") + pgd_entry("pgd-eot", eot=models.EOT)
    accuracy, entry = sweep(model, "noisy", suite_file(tmp_path, text), tmp_path / "out")
    torch.manual_seed(1)
    x_adv = models.eot_pgd(model, *digits, models.EPS, models.STEPS, models.STEP_SIZE, models.EOT)
    independent = models.accuracy(model, x_adv, digits[1], draws=models.DRAWS)
    clean = models.accuracy(model, digits[0], digits[1], draws=models.DRAWS)
    assert abs(accuracy["clean"] - clean) <= 3  # judged alike: a majority of DRAWS passes, never one
    assert accuracy["pgd"] > accuracy["pgd-eot"] + 20  # one draw's gradient is mostly noise
    assert abs(accuracy["pgd-eot"] - independent) <= 5
    assert entry.draws == models.DRAWS
    techniques = {(a.attack, a.technique) for a in entry.adaptations}
    assert techniques == {("pgd-eot", Technique.EOT), ("pgd", Technique.ITERATES), ("pgd-eot", Technique.ITERATES)}


def test_an_undefended_model_gets_the_same_numbers_with_and_without_adaptive_options(tmp_path):
    model = models.trained_net()
    plain = suite_file(tmp_path, pgd_entry("pgd"))
    (tmp_path / "adaptive").mkdir()
    adaptive = suite_file(tmp_path / "adaptive", "draws = 9\n" + pgd_entry("pgd", eot=8, bpda="auto"))
    import robustcnn

    one = robustcnn.sweep(
        [robustcnn.Model(model, name="net")], dataset="digits", suite=plain, n=200, out=str(tmp_path / "a")
    )
    two = robustcnn.sweep(
        [robustcnn.Model(model, name="net")], dataset="digits", suite=adaptive, n=200, out=str(tmp_path / "b")
    )
    columns = ["attack", "eps", "n_correct", "params", "cell"]
    assert one[columns].equals(two[columns])  # the same cells: nothing adapted, nothing judged twice


@pytest.mark.slow
def test_the_adaptive_suite_is_within_5_points_of_independent_adaptive_attacks():
    """The issue's bar, with the shipped suite on every test image (about 2.5 minutes on 2 CPU cores)."""
    from benchmarks.adaptive import accuracy_rows

    rows = accuracy_rows(360)
    gaps = [row for row in rows if row.target]
    assert len(gaps) == 2 and all(row.status == "PASS" for row in gaps), [(row.figure, row.note) for row in gaps]
    overstated = [row.value for row in rows if not row.target]
    assert min(overstated) > 15  # plain PGD-40 is fooled by both defences
