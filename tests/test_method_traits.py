"""Training methods own their traits (robustcnn/method_traits.py): every METHODS entry declares them, the config's
defaults and the training guard follow them, run.json records them, and the report judges a run by the recorded
traits, never by its method's name. Runs written before run.json recorded traits are judged as they were."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from report_fixtures import make_results, set_accuracy

import robustcnn
from robustcnn.data import dataset_info
from robustcnn.errors import UsageError
from robustcnn.method_traits import LEGACY, STANDARD, MethodTraits, read_traits
from robustcnn.report import checks
from robustcnn.report.checks import Status
from robustcnn.report.load import normalize_results
from robustcnn.train.config import METHODS, AdvMethod, TrainConfig, resolve
from robustcnn.train.methods import Method, PgdTraining, TradesTraining
from robustcnn.train.validate import Validator

ONE_STEP = {"adversarial": True, "guarded": True, "single_step": True, "attack_steps": 1}  # as run.json writes them
MULTI_STEP = {"adversarial": True, "guarded": True, "single_step": False, "attack_steps": 10}
TRAINED = {"norm": "inf", "eps": 0.3}


def test_every_registered_method_declares_its_traits():
    assert set(METHODS.names()) == {STANDARD} | {m.value for m in AdvMethod}  # every --adv-method can be built
    for name in METHODS.names():
        method = METHODS.get(name)
        assert isinstance(vars(method).get("traits"), MethodTraits), f"{name} inherits its traits, declare them"


def test_old_runs_read_the_traits_their_methods_have_now():
    """LEGACY stands in for run.json's traits in runs written before them: it must say what the classes say."""
    assert set(LEGACY) == set(METHODS.names())
    for name, traits in LEGACY.items():
        assert METHODS.get(name).traits == traits, name
        assert read_traits(name) == traits and read_traits(name, traits.to_dict()) == traits
    assert read_traits("") is None and read_traits("from-a-newer-version") is None


def test_traits_round_trip_and_reject_what_they_do_not_know():
    traits = MethodTraits(adversarial=True, guarded=True, single_step=True, attack_steps=1, attack_lr_per_eps=0.5)
    assert MethodTraits.from_dict(json.loads(json.dumps(traits.to_dict()))) == traits
    assert MethodTraits.from_dict({}) == MethodTraits()  # a missing field takes its default
    with pytest.raises(ValueError, match="unknown field 'one_step'"):
        MethodTraits.from_dict({"one_step": True})
    with pytest.raises(ValueError, match=r"method_traits.guarded 'yes' is not a bool"):
        MethodTraits.from_dict({"guarded": "yes"})
    with pytest.raises(ValueError, match="must be an object"):
        MethodTraits.from_dict(["single_step"])
    with pytest.raises(ValueError, match="single-step method takes attack_steps 1, not 10"):
        MethodTraits(single_step=True)


# the config's defaults -----------------------------------------------------------------------------------


def resolved(**options) -> TrainConfig:
    return resolve(TrainConfig.from_dict({"adv": True, **options}), dataset_info("mnist5k"))


def test_the_default_steps_are_what_they_were():
    eps = 0.3  # mnist5k's
    for method, steps, lr in [("pgd", 10, 2.5 * eps / 10), ("fgsm-rs", 1, 1.25 * eps), ("n-fgsm", 1, eps)]:
        config = resolved(adv_method=method)
        assert (config.attack_steps, config.attack_lr) == (steps, pytest.approx(lr)), method
    assert resolved(adv_method="gaussian").sigma == 0.25 and resolved(adv_method="pgd").sigma is None
    assert resolved(adv_method="fgsm-rs", adv=False).attack_steps == 1  # --adv-method's, even without --adv


def test_the_defaults_come_from_the_registry_entry(monkeypatch):
    one_step = MethodTraits(adversarial=True, guarded=True, single_step=True, attack_steps=1, attack_lr_per_eps=0.5)
    monkeypatch.setattr(TradesTraining, "traits", one_step)
    config = resolved(adv_method="trades", eps=0.2)
    assert (config.attack_steps, config.attack_lr) == (1, pytest.approx(0.1))
    with pytest.raises(UsageError, match="--attack-steps 3 does not fit trades, which takes exactly 1"):
        resolved(adv_method="trades", attack_steps=3)


# training: run.json records the traits the loop went by ------------------------------------------------------

TINY = {"dataset": "mnist5k", "train_size": 128, "val_size": 64, "batch_size": 64, "epochs": 2, "eps_warmup": 0}


def script(monkeypatch, own: float) -> None:
    """Validation says: FGSM 50%, PGD-10 45% and the method's own attack `own`, every epoch."""

    def scripted(self):
        return {"val_acc": 0.95, "val_fgsm_acc": 0.50, "val_pgd_acc": 0.45, "val_train_attack_acc": own}

    monkeypatch.setattr(Validator, "__call__", scripted)


def test_run_json_records_the_method_and_its_traits(tmp_path):
    run = robustcnn.train(**{**TINY, "epochs": 1}, out=str(tmp_path / "standard"))
    assert run.meta["method"] == STANDARD and run.meta["method_traits"] == LEGACY[STANDARD].to_dict()


def test_the_loop_goes_by_the_traits_of_the_registry_entry(tmp_path, monkeypatch):
    """A registry entry whose traits say single-step: its own attack counts as single-step in the guard (the
    50-point gap to PGD-10 stops the run), and run.json says so: the traits come from the entry, not the name."""
    one_step = MethodTraits(adversarial=True, guarded=True, single_step=True, attack_steps=1, attack_lr_per_eps=0.5)
    monkeypatch.setattr(PgdTraining, "traits", one_step)
    script(monkeypatch, own=0.95)
    run = robustcnn.train(**TINY, adv=True, adv_method="pgd", out=str(tmp_path / "one-step"))
    meta = run.meta
    assert meta["method"] == "pgd" and meta["method_traits"] == one_step.to_dict()
    assert meta["config"]["attack_steps"] == 1 and meta["config"]["attack_lr"] == pytest.approx(0.5 * 0.3)
    assert meta["status"] == "not-robust" and "catastrophic overfitting at epoch 2" in meta["message"]
    assert "--adv-method pgd --attack-steps 2" in meta["message"]  # the advice for single-step methods
    # the report reads the same verdict from the recorded traits, and pgd's own traits would have passed it
    log = meta["metrics"]
    assert checks.catastrophic_overfitting(log, "m", "pgd", 2, 0, meta["method_traits"]).status is Status.FAIL
    assert checks.catastrophic_overfitting(log, "m", "pgd", 2, 0).status is Status.PASS


class UniformNoise(Method):
    """A new training method as a user adds one: this class and its registry entry, nothing else."""

    traits = MethodTraits(adversarial=False, guarded=False)

    def loss(self, x, y, eps):
        noisy = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
        return super().loss(noisy, y, eps)


def test_a_new_method_is_a_class_and_a_registry_entry(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS._entries, "uniform-noise", UniformNoise)  # as @METHODS.register would, undone after
    calls = []
    monkeypatch.setattr(UniformNoise, "loss", lambda self, x, y, eps: calls.append(eps) or Method.loss(self, x, y, eps))
    run = robustcnn.train(**{**TINY, "epochs": 1}, adv=True, adv_method="uniform-noise", out=str(tmp_path / "new"))
    meta = run.meta
    assert calls and meta["method"] == "uniform-noise" and meta["method_traits"] == UniformNoise.traits.to_dict()
    assert meta["status"] == "finished" and meta["best_epoch"] == 1  # not guarded: best by clean accuracy, no verdict


def test_an_unknown_method_names_the_registered_ones():
    with pytest.raises(UsageError, match=r"--adv-method 'no-such' is not allowed: choose one of: fgsm-rs, gaussian"):
        resolve(TrainConfig(adv=True, adv_method="no-such"), dataset_info("mnist5k"))


def test_the_same_run_with_multi_step_traits_finishes(tmp_path, monkeypatch):
    script(monkeypatch, own=0.95)  # the same numbers: the own attack is no single step, so no gap
    run = robustcnn.train(**TINY, adv=True, adv_method="pgd", out=str(tmp_path / "pgd"))
    assert run.meta["status"] == "finished" and run.meta["method_traits"] == LEGACY["pgd"].to_dict()


# the report: traits from the manifest (run.json's), the name only for runs older than them -----------------------

LOG = [
    {"epoch": e, "eps": 0.3, "val_fgsm_acc": 0.50, "val_train_attack_acc": 0.95, "val_pgd_acc": 0.45}
    for e in range(1, 4)
]  # FGSM and PGD-10 close, the training attack far above both: overfitted only if that attack is single-step


def test_the_overfitting_check_goes_by_the_recorded_traits():
    judge = checks.catastrophic_overfitting
    assert judge(LOG, "m", "my-method", 3, 0, ONE_STEP).status is Status.FAIL  # a name no table knows
    assert judge(LOG, "m", "my-method", 3, 0).status is Status.PASS  # unknown name, no traits: not single-step
    assert judge(LOG, "m", "fgsm-rs", 3, 0, MULTI_STEP).status is Status.PASS  # the name says one step: not asked
    assert judge(LOG, "m", "pgd", 3, 0, {"guarded": False}).status is Status.SKIP
    assert judge(LOG, "m", "standard", 3, 0, ONE_STEP).status is Status.FAIL  # the name says skip: not asked


def gap_frame() -> pd.DataFrame:
    """PGD far above APGD-CE at the training eps (masking of the trained-against attack), FGSM not."""
    frame = make_results(("adv",), ("fgsm", "pgd", "apgd-ce", "square"), (0.0, 0.1, 0.2, 0.3), n=500)
    frame = set_accuracy(set_accuracy(frame, "adv", "fgsm", 0.3, 0.62), "adv", "pgd", 0.3, 0.80)
    return normalize_results(set_accuracy(frame, "adv", "apgd-ce", 0.3, 0.35))


def test_the_gap_check_goes_by_the_recorded_traits():
    gap = checks.trained_attack_gap
    frame = gap_frame()
    assert gap(frame, "adv", "pgd", TRAINED).status is Status.FAIL  # an old pgd run: the PGD side is judged
    assert gap(frame, "adv", "pgd", TRAINED, None, ONE_STEP).status is Status.PASS  # single-step: FGSM side only
    assert gap(frame, "adv", "pgd", TRAINED, None, {}).status is Status.SKIP  # recorded as not adversarial
    assert gap(frame, "adv", "standard", TRAINED, None, MULTI_STEP).status is Status.FAIL


def test_the_smoothing_check_goes_by_the_recorded_traits():
    rows = pd.DataFrame(
        [{"model": "m", "kind": "smoothed", "params": json.dumps({"sigma": 0.25}), "eps": 0.0, "accuracy": 0.9}]
    )
    noise = {"gaussian_noise": True}
    assert checks.smoothing_noise_trained(rows, "m", "my-noise", 0.25, noise).status is Status.PASS
    assert checks.smoothing_noise_trained(rows, "m", "gaussian", 0.25, {}).status is Status.WARN
    assert checks.smoothing_noise_trained(rows, "m", "gaussian", 0.25).status is Status.PASS  # an old run


def statuses(entry: dict) -> dict[str, Status]:
    frame = gap_frame()
    found = checks.run_checks(frame, {"adv": {"trained_against": TRAINED, "training_metrics": LOG, **entry}})
    return {c.name: c.status for c in found if c.name in ("catastrophic-overfitting", "trained-attack-gap")}


def test_the_report_reads_the_traits_from_the_manifest_entry():
    """The sweep copies run.json's method_traits into the manifest; run_checks passes them on."""
    assert statuses({"method": "my-method", "method_traits": ONE_STEP}) == {
        "catastrophic-overfitting": Status.WARN,  # the attacked epoch is unknown here: warn, not fail
        "trained-attack-gap": Status.PASS,
    }
    assert statuses({"method": "fgsm-rs", "method_traits": MULTI_STEP}) == {
        "catastrophic-overfitting": Status.PASS,
        "trained-attack-gap": Status.FAIL,
    }


@pytest.mark.parametrize("method", sorted(LEGACY))
def test_an_old_run_without_traits_is_judged_as_before(method):
    """A manifest entry (or run.json) from before traits were recorded: judged by its method's name, exactly as a
    run recording that method's traits."""
    assert statuses({"method": method}) == statuses({"method": method, "method_traits": LEGACY[method].to_dict()})


def test_old_runs_keep_their_verdicts():
    assert statuses({"method": "fgsm-rs"}) == {
        "catastrophic-overfitting": Status.WARN,
        "trained-attack-gap": Status.PASS,
    }
    assert statuses({"method": "pgd"}) == {"catastrophic-overfitting": Status.PASS, "trained-attack-gap": Status.FAIL}
    assert statuses({"method": "gaussian"}) == {
        "catastrophic-overfitting": Status.SKIP,
        "trained-attack-gap": Status.SKIP,
    }


def test_unreadable_traits_are_a_warning_not_a_crash():
    found = statuses({"method": "pgd", "method_traits": {"single_step": "yes"}})
    assert found == {"catastrophic-overfitting": Status.WARN, "trained-attack-gap": Status.WARN}
    (check,) = [
        c
        for c in checks.run_checks(gap_frame(), {"adv": {"method": "pgd", "method_traits": {"single_step": "yes"}}})
        if c.name == "trained-attack-gap"
    ]
    assert "ValueError: method_traits.single_step 'yes' is not a bool" in check.message
