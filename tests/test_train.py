"""Training end to end on tiny runs: outputs, robustness direction, exact resume, NaN stop, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import SMALL_RUN
from safetensors.torch import load_file

import robustcnn
from robustcnn.cli import run_main
from robustcnn.errors import RunFailed, UsageError
from robustcnn.train import __main__ as train_cli
from robustcnn.train import loop
from robustcnn.train.methods import Method

TINY = {"dataset": "mnist5k", "train_size": 384, "val_size": 64, "batch_size": 64, "epochs": 2, "eps_warmup": 0}


def pgd_accuracy(model, n=200, eps=0.3, steps=20):
    from art.attacks.evasion import ProjectedGradientDescentPyTorch

    from robustcnn.attacks.art import art_classifier

    test = robustcnn.load_dataset("mnist5k", "test").subset(range(n))
    classifier = art_classifier(model, (1, 28, 28), 10, torch.device("cpu"))
    attack = ProjectedGradientDescentPyTorch(
        classifier, eps=eps, eps_step=2.5 * eps / steps, max_iter=steps, batch_size=n, verbose=False
    )
    x_adv = torch.from_numpy(attack.generate(test.images().numpy(), test.y.numpy()))
    with torch.no_grad():
        return (model(x_adv).argmax(1) == test.y).float().mean().item()


def test_standard_run_writes_a_complete_run_directory(tmp_path):
    run = robustcnn.train(**TINY, out=str(tmp_path / "std"))
    files = {p.name for p in run.path.iterdir()}
    assert {"run.json", "best.safetensors", "last.safetensors", "resume.safetensors", "metrics.csv"} <= files
    meta = json.loads((run.path / "run.json").read_text())
    assert meta["status"] == "finished" and meta["epochs_done"] == 2 and len(meta["metrics"]) == 2
    assert meta["dataset"]["shape"] == [1, 28, 28] and meta["model"]["arch"] == "smallcnn"
    assert meta["config"]["lr"] > 0 and meta["config"]["eps"] == pytest.approx(0.3)  # resolved, no Nones
    assert meta["versions"]["torch"] and meta["seed"] == 0
    assert (run.path / "metrics.csv").read_text().count("\n") == 3
    model = robustcnn.load_model(run.path)
    assert not model.training
    test = robustcnn.load_dataset("mnist5k", "test")
    with torch.no_grad():
        accuracy = (model(test.images()).argmax(1) == test.y).float().mean().item()
    assert accuracy == pytest.approx(meta["final"]["test_acc"])
    assert accuracy > 0.6  # 384 images, 2 epochs: well above the 10% of chance
    convs = [p for p in model.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)  # the sweep's layout
    default = robustcnn.load_model(run.path, channels_last=False)
    assert all(p.is_contiguous() for p in default.parameters())  # for safetensors' save_file
    with torch.no_grad():
        torch.testing.assert_close(model(test.images()[:64]), default(test.images()[:64]), rtol=1e-4, atol=1e-5)


SMALL = SMALL_RUN


@pytest.fixture(scope="module")
def standard_pgd(tiny_runs):
    """PGD-20 accuracy (eps 0.2) of a standard model trained like the adversarial ones below."""
    standard, _ = tiny_runs
    return pgd_accuracy(standard.model(), eps=0.2), standard


def test_pgd_training_is_more_robust_than_standard(standard_pgd, tiny_runs):
    std_pgd, standard = standard_pgd
    adversarial = tiny_runs[1]
    adv_pgd = pgd_accuracy(adversarial.model(), eps=0.2)
    assert adv_pgd > std_pgd + 0.3, (std_pgd, adv_pgd)
    assert adversarial.meta["metrics"][-1]["val_pgd_acc"] > standard.meta["metrics"][-1]["val_pgd_acc"]


FAST_RECIPE = {"attack_steps": 2, "attack_lr": 2 / 3 * 0.2}  # the README's fast line, scaled to eps 0.2


@pytest.mark.parametrize(("method", "extra"), [("pgd", FAST_RECIPE), ("trades", {})])
def test_fast_and_trades_training_are_more_robust_than_standard(tmp_path, standard_pgd, method, extra):
    std_pgd, _ = standard_pgd
    run = robustcnn.train(**SMALL, adv=True, adv_method=method, eps=0.2, **extra, out=str(tmp_path / method))
    assert run.meta["method"] == method and run.meta["status"] in {"finished", "stopped-early"}
    adv_pgd = pgd_accuracy(run.model(), eps=0.2)
    assert adv_pgd > std_pgd + 0.2, (std_pgd, adv_pgd)


def _interrupt_after(monkeypatch, epochs: int):
    original = loop._Trainer._end_epoch

    def end_epoch(self, state, row):
        original(self, state, row)
        if state.epochs_done >= epochs:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop._Trainer, "_end_epoch", end_epoch)


def test_resume_continues_exactly_where_training_stopped(tmp_path, monkeypatch):
    settings = {**TINY, "epochs": 3, "adv": True, "attack_steps": 3}
    whole = robustcnn.train(**settings, out=str(tmp_path / "whole"))
    _interrupt_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        robustcnn.train(**settings, out=str(tmp_path / "split"))
    meta = json.loads((tmp_path / "split" / "run.json").read_text())
    assert meta["status"] == "interrupted" and meta["epochs_done"] == 1 and "--resume" in meta["message"]
    monkeypatch.undo()
    resumed = robustcnn.train(resume=tmp_path / "split")
    for which in ("last", "best"):
        a, b = load_file(whole.weights_path(which)), load_file(resumed.weights_path(which))
        assert all(torch.equal(a[k], b[k]) for k in a), which
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(resumed.meta["metrics"]) == strip(whole.meta["metrics"])
    assert resumed.meta["final"] == whole.meta["final"]


def test_same_seed_gives_same_weights(tmp_path):
    one = {**TINY, "epochs": 1}
    a = robustcnn.train(**one, out=str(tmp_path / "a"))
    b = robustcnn.train(**one, out=str(tmp_path / "b"))
    c = robustcnn.train(**one, seed=1, out=str(tmp_path / "c"))
    wa, wb, wc = (load_file(r.weights_path("last")) for r in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    original = Method.loss
    calls = {"n": 0}

    def exploding(self, x, y, eps):
        calls["n"] += 1
        loss, logits = original(self, x, y, eps)
        return (loss * float("nan"), logits) if calls["n"] > 6 else (loss, logits)  # 6 steps = 1 epoch

    monkeypatch.setattr(Method, "loss", exploding)
    out = tmp_path / "nan"
    with pytest.raises(RunFailed, match="loss became nan in epoch 2"):
        robustcnn.train(**TINY, out=str(out))
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "failed" and meta["epochs_done"] == 1
    last = load_file(out / "last.safetensors")
    assert all(torch.isfinite(t).all() for t in last.values())
    monkeypatch.setattr(Method, "loss", original)
    code = run_main(train_cli.main, ["--resume", str(out)])  # a failed run can be resumed after fixing
    assert code == 0


def test_cli_reports_a_non_finite_loss_with_exit_1(tmp_path, capsys):
    argv = ["--train-size", "128", "--val-size", "32", "--epochs", "1", "--optimizer", "sgd", "--lr", "1e12"]
    code = run_main(train_cli.main, [*argv, "--out", str(tmp_path / "boom")], name="robustcnn.train")
    err = capsys.readouterr().err
    assert code == 1 and "loss became" in err and "Traceback" not in err


BAD_INPUTS = [
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'; choose one of"),
    (["--arch", "vgg16"], "unknown architecture 'vgg16'; choose one of"),
    (
        ["--adv", "--adv-method", "free"],
        "--adv-method 'free' is not allowed: choose one of: fgsm-rs, gaussian, ibp, n-fgsm, pgd, trades",
    ),
    (["--eps", "-0.1"], "eps -0.1 is not allowed"),
    (["--eps", "8"], "did you mean 8/255"),
    (["--eps", "1.5"], "outside [0, 1]"),
    (["--eps", "abc"], "not a number"),
    (["--constraint", "l3"], "unknown norm 'l3'"),
    (["--adv", "--adv-method", "n-fgsm", "--constraint", "2", "--eps", "2"], "n-fgsm is defined for --constraint inf"),
    (["--adv", "--adv-method", "n-fgsm", "--attack-steps", "3"], "--attack-steps 3 does not fit n-fgsm"),
    (["--epochs", "0"], "--epochs '0' is not allowed"),
    (["--lr", "-1"], "--lr '-1' is not allowed"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--dataset", "cifar10", "--data-dir", "/nonexistent"], "run again with --download"),
    (["--train-size", "999999"], "--train-size 999999 is larger than"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_INPUTS)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    extra = [] if "--epochs" in argv else ["--epochs", "1"]
    code = run_main(train_cli.main, [*argv, *extra, "--out", str(out)], name="robustcnn.train")
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_non_empty_out_is_refused_and_left_untouched(tmp_path, capsys):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code = run_main(train_cli.main, ["--out", str(out)], name="robustcnn.train")
    assert code == 2 and "already holds files" in capsys.readouterr().err
    code = run_main(train_cli.main, ["--out", str(out), "--overwrite"], name="robustcnn.train")
    assert code == 2 and "not a robustcnn run directory" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me" and len(list(out.iterdir())) == 1


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    return robustcnn.train(**{**TINY, "epochs": 1}, out=str(tmp_path_factory.mktemp("runs") / "done"))


def test_resume_problems_are_clear_errors(tmp_path, capsys, finished_run):
    import shutil

    def resume_error(path, *extra):
        code = run_main(train_cli.main, ["--resume", str(path), *extra], name="robustcnn.train")
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        return err

    assert "does not exist" in resume_error(tmp_path / "nope")
    assert "cannot change on --resume" in resume_error(finished_run.path, "--lr", "0.1")

    broken = tmp_path / "broken"
    shutil.copytree(finished_run.path, broken)
    meta = json.loads((broken / "run.json").read_text())
    meta["status"], meta["config"]["epochs"] = "interrupted", 2
    (broken / "run.json").write_text(json.dumps(meta))
    state = broken / "resume.safetensors"
    before = state.read_bytes()
    state.write_bytes(before[: len(before) // 2])
    assert "truncated or corrupt" in resume_error(broken)

    other = robustcnn.train(**{**TINY, "epochs": 1}, arch="lenet5", out=str(tmp_path / "lenet"))
    capsys.readouterr()
    shutil.copy(other.path / "resume.safetensors", state)
    assert "another architecture" in resume_error(broken)


def test_unknown_python_api_option_is_refused():
    with pytest.raises(UsageError, match="unknown option 'epoch'"):
        robustcnn.train(epoch=3)
