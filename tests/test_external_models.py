"""Models trained elsewhere: a user's builder with weights, torchvision / timm by name, torch.export, ONNX,
an nn.Module from Python, and the user's own test data, swept and reported like robustcnn's own runs."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT, make_cifar_binary, run_cli
from user_models import save_like_a_training_script, user_state_dict, write_nets

import robustcnn
from robustcnn.errors import UsageError
from robustcnn.models.external.weights import state_sha256

RANDOM_START_SUITE = """
[[attack]]
name = "fgsm"
type = "fgsm"
norm = "inf"
eps = [0.1, 0.3]
[[attack]]
name = "pgd-linf"
type = "pgd"
norm = "inf"
eps = [0.1, 0.3]
steps = 5
"""  # PGD starts at a random point in the ball (the default)
DETERMINISTIC_SUITE = RANDOM_START_SUITE.replace("steps = 5", "steps = 5\nrandom_start = false")
NUMBERS = ["kind", "attack", "eps", "n", "n_correct", "accuracy", "ci_low", "ci_high"]  # not ids, hashes or times


@pytest.fixture(scope="module")
def user(tiny_runs, tmp_path_factory):
    """A folder as a user leaves it: nets.py, the weights their script saved, a suite; and the run they match."""
    folder = tmp_path_factory.mktemp("user")
    write_nets(folder)
    run = tiny_runs[1].path  # the PGD-trained tiny smallcnn
    state = user_state_dict(run)
    save_like_a_training_script(state, folder / "smallcnn.pt")
    from safetensors.torch import save_file

    save_file(state, str(folder / "smallcnn.safetensors"))
    (folder / "suite.toml").write_text(RANDOM_START_SUITE)
    return folder, run


def numbers(frame: pd.DataFrame, model: str) -> pd.DataFrame:
    return frame[frame["model"] == model][NUMBERS].reset_index(drop=True)


def test_builder_and_run_directory_in_one_command_give_identical_rows(user, tmp_path):
    """The README's first example, as a user types it: their builder and weights beside a robustcnn run."""
    folder, run = user
    out = tmp_path / "out"
    done = run_cli(
        "robustcnn.sweep", str(run), "nets.py:smallcnn@weights=smallcnn.pt@normalize=dataset@name=mine",
        "--dataset", "mnist5k", "--suite", "suite.toml", "--n", "60", "--out", str(out), cwd=folder,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = pd.read_csv(out / "results.csv")
    assert set(results["model"]) == {run.name, "mine"}
    pd.testing.assert_frame_equal(numbers(results, run.name), numbers(results, "mine"))
    mine = results[results["model"] == "mine"].iloc[0]
    assert mine["arch"] == "nets.py:smallcnn" and mine["preprocessing"] == "dataset"
    assert results[results["model"] == run.name]["preprocessing"].iloc[0] == "in-model"
    html = (out / "report.html").read_text()
    assert "mine" in html and run.name in html  # one report for both


def test_the_same_weights_any_way_give_identical_rows(user, tmp_path):
    """Safetensors or a wrapped DDP .pt, normalised by us or inside the model: the same numbers."""
    folder, run = user
    suite = str(folder / "suite.toml")
    sys.path.insert(0, str(folder))
    try:
        import nets
    finally:
        sys.path.remove(str(folder))
    inside = nets.Normalised()
    inside.body.load_state_dict(user_state_dict(run))
    models = [
        robustcnn.Model(run, name="run"),
        robustcnn.Model(
            f"{folder}/nets.py:smallcnn", name="pt", weights=str(folder / "smallcnn.pt"), normalize="dataset"
        ),
        robustcnn.Model(
            f"{folder}/nets.py:smallcnn",
            name="st",
            weights=str(folder / "smallcnn.safetensors"),
            normalize="0.1307,0.3081",
        ),
        robustcnn.Model(inside, name="inside", dataset="mnist5k"),
    ]
    results = robustcnn.sweep(models, suite=suite, dataset="mnist5k", n=60, out=str(tmp_path / "out"), report=False)
    for name in ("pt", "st", "inside"):
        pd.testing.assert_frame_equal(numbers(results, "run"), numbers(results, name))
    hashes = results.groupby("model")["checkpoint_sha256"].first()
    assert hashes["pt"] == hashes["st"]  # the hash is of the weights loaded, not of the file they came in


def test_a_module_from_python_is_left_as_it_was(user, tmp_path):
    folder, run = user
    sys.path.insert(0, str(folder))
    try:
        import nets
    finally:
        sys.path.remove(str(folder))
    module = nets.with_batchnorm()
    module.train()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    results = robustcnn.sweep(
        robustcnn.Model(module, name="bn", dataset="mnist5k"), suite=str(folder / "suite.toml"), n=30,
        out=str(tmp_path / "out"), report=False,
    )  # fmt: skip
    assert module.training and all(p.requires_grad for p in module.parameters())
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert module[0][0].weight.is_contiguous()  # not turned channels-last behind the user's back
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    entry = manifest["models"][0]
    assert {c["name"]: c["status"] for c in entry["model_checks"]}["eval-mode"] == "warn"
    assert entry["was_training"] is True and manifest["repeat"] is None  # a Python object has no command line
    assert set(results["kind"]) == {"clean", "attack", "worst-case", "probe"}


def test_batchnorm_statistics_do_not_change_during_a_sweep(user, tmp_path):
    from robustcnn.sweep.config import SweepConfig
    from robustcnn.sweep.runner import Sweep, plan_grids
    from robustcnn.sweep.subjects import load_subjects
    from robustcnn.sweep.suite import load_suite

    folder, _ = user
    config = SweepConfig(suite=str(folder / "suite.toml"), n=30, out=str(tmp_path), dataset="mnist5k", gallery=2)
    suite = load_suite(config.suite)
    (subject,) = load_subjects([f"{folder}/nets.py:with_batchnorm"], config, None, torch.device("cpu"))
    bn = subject.model.net[0][1]
    assert isinstance(bn, torch.nn.BatchNorm2d)
    bn.running_mean.uniform_(-0.1, 0.1)  # statistics a training would leave; the attacks must not move them
    before = {k: v.clone() for k, v in subject.model.state_dict().items()}
    Sweep(config, suite, [subject], tmp_path, plan_grids([subject], suite)).run()
    after = subject.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_tuple_and_dict_outputs_need_to_say_which_is_the_logits(user, tmp_path):
    folder, _ = user
    suite = str(folder / "suite.toml")
    with pytest.raises(UsageError, match=r"returns a tuple of 2 outputs; pass --output-index \(0..1\)"):
        robustcnn.sweep([f"{folder}/nets.py:two_heads"], suite=suite, dataset="mnist5k", n=10)
    with pytest.raises(UsageError, match="returns a dict with keys features, logits; pass --output-key"):
        robustcnn.sweep([f"{folder}/nets.py:two_heads@model-arg=as_dict=true"], suite=suite, dataset="mnist5k", n=10)
    heads = tmp_path / "heads.pt"  # the same weights under the two-headed module's names
    torch.save({f"body.{k}": v for k, v in user_state_dict(user[1]).items()}, heads)
    specs = [
        f"{folder}/nets.py:smallcnn@weights={folder / 'smallcnn.pt'}@name=plain",
        robustcnn.Model(f"{folder}/nets.py:two_heads", name="tuple", weights=str(heads), output_index=0),
        robustcnn.Model(
            f"{folder}/nets.py:two_heads",
            name="dict",
            weights=str(heads),
            output_key="logits",
            model_args={"as_dict": 1},
        ),
    ]
    results = robustcnn.sweep(specs, suite=suite, dataset="mnist5k", n=30, report=False)
    pd.testing.assert_frame_equal(numbers(results, "plain"), numbers(results, "tuple"))
    pd.testing.assert_frame_equal(numbers(results, "plain"), numbers(results, "dict"))


@pytest.mark.slow  # 26 s of subprocesses: make test-all; resuming is tested in-process in test_sweep.py
def test_resume_reuses_cells_and_the_manifest_repeats_the_sweep(user, tmp_path):
    folder, _ = user
    spec = "nets.py:smallcnn@weights=smallcnn.safetensors@normalize=dataset"
    common = ["--dataset", "mnist5k", "--suite", "suite.toml", "--n", "40", "--no-report"]
    first = run_cli("robustcnn.sweep", spec, *common, "--out", str(tmp_path / "a"), cwd=folder)
    assert first.returncode == 0, first.stderr
    cells = sorted((tmp_path / "a" / "cells").glob("*.npz"))
    stamps = [p.stat().st_mtime_ns for p in cells]
    again = run_cli("robustcnn.sweep", spec, *common, "--out", str(tmp_path / "a"), cwd=folder)
    assert again.returncode == 0, again.stderr
    assert [p.stat().st_mtime_ns for p in cells] == stamps  # every cell reused, none recomputed
    assert sorted((tmp_path / "a" / "cells").glob("*.npz")) == cells

    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    entry = manifest["models"][0]
    assert entry["kind"] == "python" and entry["options"]["normalize"] == "dataset"
    assert entry["weights_sha256"] == entry["sha256"] and len(entry["source_sha256"]) == 64
    assert entry["preprocessing"] == {"normalize": "dataset", "input_range": "0-1", "mean": [0.1307], "std": [0.3081]}
    words = shlex.split(manifest["repeat"])
    words[words.index("--out") + 1] = str(tmp_path / "b")
    repeated = run_cli(*words[2:], cwd=folder)  # from manifest.json alone
    assert repeated.returncode == 0, repeated.stderr
    a, b = (pd.read_csv(tmp_path / d / "results.csv") for d in ("a", "b"))
    pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"))

    other = run_cli(
        "robustcnn.sweep", spec.replace("normalize=dataset", "normalize=none"), *common, "--out", str(tmp_path / "a"),
        cwd=folder,
    )  # fmt: skip
    assert other.returncode == 0, other.stderr
    assert len(list((tmp_path / "a" / "cells").glob("*.npz"))) == 2 * len(cells)  # other preprocessing: other cells


def test_torchvision_resnet18_on_the_users_own_32x32_images(tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = tmp_path / "mine.npz"
    np.savez(data, x_test=rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8), y_test=np.arange(24) % 10)
    suite = tmp_path / "suite.toml"
    suite.write_text(DETERMINISTIC_SUITE.replace("steps = 5", "steps = 2"))
    model = robustcnn.Model("torchvision:resnet18", normalize="imagenet")
    results = robustcnn.sweep([model], dataset=f"npz:{data}", suite=str(suite), n=12, out=str(tmp_path / "o"))
    err = capsys.readouterr().err
    assert "read as NHWC uint8" in err
    assert set(results["arch"]) == {"torchvision:resnet18"} and set(results["preprocessing"]) == {"imagenet"}
    assert (results["n"] == 12).all() and (tmp_path / "o" / "report.html").is_file()
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["models"][0]["preprocessing"]["mean"] == [0.485, 0.456, 0.406]


def test_timm_by_name_and_its_missing_extra(tmp_path, monkeypatch):
    from robustcnn.models.external import build_external

    pytest.importorskip("timm")
    built = build_external(robustcnn.Model("timm:test_resnet"), 3, 7, (0.5,) * 3, (0.25,) * 3)
    assert built.module(torch.rand(2, 3, 32, 32)).shape == (2, 7) and built.arch == "timm:test_resnet"
    with pytest.raises(UsageError, match=r"unknown timm model 'resnet_18'; did you mean"):
        build_external(robustcnn.Model("timm:resnet_18"), 3, 7, (0.5,) * 3, (0.25,) * 3)
    with pytest.raises(UsageError, match="need --download"):
        build_external(
            robustcnn.Model("timm:test_resnet", model_args={"pretrained": True}), 3, 7, (0.5,) * 3, (0.25,) * 3
        )
    monkeypatch.setitem(sys.modules, "timm", None)  # as if `pip install 'robustcnn[timm]'` had not been run
    with pytest.raises(UsageError, match=r"needs the optional extra 'timm'.*pip install 'robustcnn\[timm\]'"):
        build_external(robustcnn.Model("timm:test_resnet"), 3, 7, (0.5,) * 3, (0.25,) * 3)


def test_torch_export_round_trip(tiny_runs, tmp_path, capsys):
    run = tiny_runs[1].path
    model = robustcnn.load_model(run)
    example = torch.rand(4, 1, 28, 28)
    dynamic = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(dynamic, tmp_path / "dynamic.pt2")
    torch.export.save(torch.export.export(model, (example,)), tmp_path / "fixed.pt2")  # batch size 4 only
    specs = [str(run), f"{tmp_path}/dynamic.pt2", f"{tmp_path}/fixed.pt2"]
    suite = tmp_path / "suite.toml"
    suite.write_text(RANDOM_START_SUITE)
    results = robustcnn.sweep(specs, dataset="mnist5k", suite=str(suite), n=30, report=False)
    assert "fixed.pt2 was exported with a fixed batch size of 4" in capsys.readouterr().err
    for name in ("dynamic.pt2", "fixed.pt2"):
        pd.testing.assert_frame_equal(numbers(results, run.name), numbers(results, name))


def test_onnx_round_trip_matches_the_module_swept_directly(tiny_runs, tmp_path):
    pytest.importorskip("onnx2torch")
    run = tiny_runs[0].path
    model = robustcnn.load_model(run)
    x = torch.rand(2, 1, 28, 28)
    torch.onnx.export(model, (x,), tmp_path / "m.onnx", dynamo=False, dynamic_axes={"x": {0: "n"}}, input_names=["x"])
    torch.onnx.export(model, (x[:1],), tmp_path / "one.onnx", dynamo=False)  # a fixed batch of 1
    suite = tmp_path / "suite.toml"
    suite.write_text(RANDOM_START_SUITE)
    models = [robustcnn.Model(model, name="direct"), f"{tmp_path}/m.onnx", f"{tmp_path}/one.onnx"]
    results = robustcnn.sweep(models, dataset="mnist5k", suite=str(suite), n=40, out=str(tmp_path / "o"))
    for name in ("m.onnx", "one.onnx"):
        mine, direct = numbers(results, name), numbers(results, "direct")
        np.testing.assert_allclose(mine["accuracy"], direct["accuracy"], atol=1 / 40)  # float tolerance: <= 1 image
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    onnx_entry = next(m for m in manifest["models"] if m["id"] == "m.onnx")
    assert onnx_entry["onnxruntime_max_difference"] < 1e-4
    assert {c["name"]: c["status"] for c in onnx_entry["model_checks"]}["onnx-conversion"] == "pass"


def test_an_onnx_conversion_that_disagrees_with_onnxruntime_is_refused(tiny_runs, tmp_path, monkeypatch):
    onnx2torch = pytest.importorskip("onnx2torch")
    model = robustcnn.load_model(tiny_runs[0].path)
    torch.onnx.export(model, (torch.rand(2, 1, 28, 28),), tmp_path / "m.onnx", dynamo=False)
    convert = onnx2torch.convert

    def off_by_a_little(graph):
        net = convert(graph)
        last = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.bias.data += 0.05  # a conversion bug's size: every logit shifted
        return net

    monkeypatch.setattr(onnx2torch, "convert", off_by_a_little)
    with pytest.raises(UsageError, match=r"disagrees with onnxruntime \(max logit difference 0.05"):
        robustcnn.sweep([f"{tmp_path}/m.onnx"], dataset="mnist5k", suite="quick", n=10)


def test_the_users_npz_test_data_gives_the_numbers_of_the_same_images(tiny_runs, tmp_path):
    """mnist5k's test split saved as the user's npz (NHWC, float 0..1): the same rows as --dataset mnist5k."""
    test = robustcnn.load_dataset("mnist5k", "test")
    data = tmp_path / "mnist-test.npz"
    np.savez(data, x_test=test.images().numpy().transpose(0, 2, 3, 1), y_test=test.y.numpy())
    suite = tmp_path / "suite.toml"
    suite.write_text(DETERMINISTIC_SUITE)  # no random start: the datasets' names (and so the seeds) differ
    run = tiny_runs[1].path
    ours = robustcnn.sweep([run], suite=str(suite), n=50, report=False)
    theirs = robustcnn.sweep([run], dataset=f"npz:{data}", suite=str(suite), n=50, report=False)
    pd.testing.assert_frame_equal(numbers(ours, run.name), numbers(theirs, run.name))


def test_a_patch_on_test_only_data_trains_on_the_images_it_is_not_judged_on(tiny_runs, tmp_path):
    test = robustcnn.load_dataset("mnist5k", "test")
    data = tmp_path / "mine.npz"
    np.savez(data, x_test=test.x[:80].numpy(), y_test=test.y[:80].numpy())
    suite = tmp_path / "suite.toml"
    suite.write_text('[[attack]]\nname = "patch"\ntype = "patch"\nscales = [0.3]\niterations = 5\ntrain_images = 20\n')
    results = robustcnn.sweep([tiny_runs[0].path], dataset=f"npz:{data}", suite=str(suite), n=50, report=False)
    assert results[results["attack"] == "patch"]["n"].item() == 50
    with pytest.raises(UsageError, match="no training images and --n takes every test image"):
        robustcnn.sweep([tiny_runs[0].path], dataset=f"npz:{data}", suite=str(suite), n=80, report=False)


def test_state_hash_covers_every_tensor():
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    first = state_sha256(net)
    net[1].running_mean[0] += 1e-6
    assert state_sha256(net) != first


def test_cli_help_names_every_kind_of_model():
    done = run_cli("robustcnn.sweep", "--help")
    for words in ("FILE.py:BUILDER", "torchvision:NAME", "timm:NAME", "FILE.pt2", "FILE.onnx", "--normalize"):
        assert words in done.stdout, words


def readme_commands() -> list[list[str]]:
    """The sweep commands of the README's "Evaluate your own model" section, as words."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Evaluate your own model", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1].replace("\\\n", " ")
    return [shlex.split(line) for line in block.splitlines() if line.startswith("python -m robustcnn.sweep")]


def test_the_readme_examples_run_as_written(tiny_runs, tmp_path):
    """examples/own_model.py trains a CNN in plain PyTorch; then each README command, with a small --n and suite,
    the demo run replaced by a tiny run, and CIFAR-10 read from fake files instead of downloaded."""
    out = tmp_path / "examples-out"
    script = ROOT / "examples" / "own_model.py"
    trained = subprocess.run(
        [sys.executable, str(script), "--epochs", "1", "--train-size", "2000", "--out", str(out)],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    suite = tmp_path / "suite.toml"
    suite.write_text(DETERMINISTIC_SUITE.replace("steps = 5", "steps = 2"))
    make_cifar_binary(tmp_path / "data")
    commands = readme_commands()
    assert len(commands) == 3
    for i, words in enumerate(commands):
        words = [w.replace("examples/out", str(out)).replace("runs/demo-adv", str(tiny_runs[1].path)) for w in words]
        words = [w for w in words if w != "--download"] + ["--data-dir", str(tmp_path / "data")]
        words[words.index("--out") + 1] = str(tmp_path / f"report-{i}")
        words += [] if "--n" in words else ["--n", "40"]
        words[words.index("--n") + 1] = "10" if "cifar10" in words else "40"  # the fake CIFAR-10 has 10 test images
        done = run_cli(*words[2:], "--suite", str(suite), "--no-report", cwd=ROOT)
        assert done.returncode == 0, (words, done.stderr)
        results = pd.read_csv(tmp_path / f"report-{i}" / "results.csv")
        assert (results["kind"] == "clean").sum() == len(set(results["model"])) >= 1
    own = pd.read_csv(tmp_path / "report-0" / "results.csv")
    assert own[own["kind"] == "clean"]["accuracy"].item() > 0.8  # one epoch on 2000 digits: clearly learned
