"""One matrix of bad input across `train`, `sweep` and `report`.

Every case builds its own files, runs the command through `run_main` exactly as `python -m` does, and
checks the contract: exit code 2 (1 for a failed gate), one line naming the bad value and what is allowed,
no traceback, files written earlier byte-for-byte intact, and no code ever run from a hostile pickle. A few
cases also run as real subprocesses, to prove the real path prints no traceback either.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import Payload, make_idx_dataset, make_image_folder
from report_fixtures import make_sweep_dir
from user_models import save_like_a_training_script, user_state_dict, write_nets

import robustcnn
from robustcnn.cli import run_main
from robustcnn.report import __main__ as report_cli
from robustcnn.sweep import __main__ as sweep_cli
from robustcnn.train import __main__ as train_cli

TOOLS = {"train": train_cli.main, "sweep": sweep_cli.main, "report": report_cli.main}
FGSM_SUITE = '[[attack]]\nname = "fgsm"\ntype = "fgsm"\nnorm = "inf"\neps = [0.1]\n'
EVIL_NAME = "<img src=x onerror=alert(1)>"


@dataclass(frozen=True)
class Case:
    id: str
    tool: str  # train | sweep | report
    setup: Callable[[Env], list[str]]  # makes the files, returns argv
    words: tuple[str, ...]  # each must appear in stderr: the bad value and what is allowed
    code: int = 2
    check: Callable[[Env, str], None] | None = None  # more assertions, for cases that succeed
    real: bool = False  # run it as a subprocess as well


class Env:
    """A case's scratch space: copies of trained runs, output folders with earlier results, hostile files."""

    def __init__(self, tmp: Path, runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch):
        self.tmp, self.runs, self.monkeypatch = tmp, runs, monkeypatch
        self.marker = tmp / "MARKER-code-from-a-file-ran"
        self.fresh = tmp / "new-out"  # a --out that does not exist yet
        self.watched: list[Path] = []

    def watch(self, path: Path) -> Path:
        self.watched.append(path)
        return path

    def snapshot(self) -> dict[str, bytes]:
        return {str(p): p.read_bytes() for root in self.watched for p in sorted(root.rglob("*")) if p.is_file()}

    def run(self, which: str = "std", name: str = "run") -> Path:
        return self.watch(Path(shutil.copytree(self.runs[which], self.tmp / name)))

    def edit_run_json(self, run: Path, edit: Callable[[dict], object]) -> None:
        meta = json.loads((run / "run.json").read_text())
        edit(meta)
        (run / "run.json").write_text(json.dumps(meta))

    def suite(self, text: str | bytes = FGSM_SUITE) -> str:
        path = self.tmp / "suite.toml"
        path.write_text(text) if isinstance(text, str) else path.write_bytes(text)
        return str(path)

    def sweep_out(self) -> Path:
        out = self.tmp / "sweep-out"
        (out / "cells").mkdir(parents=True)
        (out / "results.csv").write_text("earlier results\n")
        (out / "manifest.json").write_text('{"format": "robustcnn-sweep/1", "earlier": true}\n')  # a sweep's
        (out / "cells" / "0123456789abcdef01234567.npz").write_bytes(b"an earlier cell")
        return self.watch(out)

    def sweep(self, *extra: str, run: Path | None = None, suite: str | None = None, out: str | None = None) -> list:
        run, suite, out = run or self.run(), suite or self.suite(), out or str(self.sweep_out())
        return [str(run), "--suite", suite, "--out", out, "--n", "20", *extra]

    def train(self, *argv: str) -> list[str]:
        """argv plus small settings for what it does not set (so a missed check would not train for long)."""
        small = {"--epochs": "1", "--train-size": "128", "--val-size": "32", "--out": str(self.fresh)}
        return [*argv, *(item for flag, value in small.items() if flag not in argv for item in (flag, value))]

    def resume(self, state: bytes | Path) -> list[str]:
        run = self.run()
        target = run / "resume.safetensors"
        target.write_bytes(state.read_bytes() if isinstance(state, Path) else state)
        return ["--resume", str(run)]

    def payload(self) -> bytes:
        return pickle.dumps(Payload(self.marker))

    def hostile_npz(self, path: Path) -> None:
        """A real .npz whose array is a pickle carrying code (np.load would run it with allow_pickle=True)."""
        np.savez(path, x=np.array([Payload(self.marker)], dtype=object))

    def full_disk(self) -> None:
        """Every text write under this case's folder fails as on a full disk (as root, chmod cannot stop writes)."""
        original = Path.write_text

        def write_text(path: Path, *args, **kwargs):
            if str(path).startswith(str(self.tmp)):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            return original(path, *args, **kwargs)

        self.monkeypatch.setattr(Path, "write_text", write_text)


# --- setups that need a few lines -------------------------------------------------------------------------
def weights(env: Env, data: bytes | None = None, source: str | None = None, name: str = "best") -> list[str]:
    """A sweep of a run whose best.safetensors is missing (None, None), replaced by bytes, or from another run."""
    run = env.run()
    path = run / f"{name}.safetensors"
    if source:
        shutil.copy(env.runs[source] / path.name, path)
    elif data is None:
        path.unlink()
    else:
        path.write_bytes(data)
    return env.sweep(run=run)


def truncated(env: Env) -> bytes:
    return (env.runs["std"] / "best.safetensors").read_bytes()[:300]


def nan_weights(env: Env) -> list[str]:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    run = env.run()
    path = run / "best.safetensors"
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(path)
    tensors["net.0.0.weight"].view(-1)[0] = float("nan")
    save_file(tensors, str(path), metadata=metadata)
    return env.sweep(run=run)


def image_folder(env: Env, problem: str) -> list[str]:
    from PIL import Image

    root = env.tmp / "images"
    if problem == "empty":
        (root / "cat").mkdir(parents=True)
        (root / "dog").mkdir()
        return env.train("--dataset", f"imagefolder:{root}")
    make_image_folder(root, per_class=5, size=(12, 10), split=False)
    if problem == "sizes":
        Image.new("RGB", (20, 20)).save(root / "cat" / "big.png")
    elif problem == "modes":
        Image.new("L", (12, 10)).save(root / "dog" / "grey.png")
    elif problem == "nan":
        pixels = np.full((10, 12), 0.5, dtype=np.float32)
        pixels[3, 4] = np.nan
        Image.fromarray(pixels, "F").save(root / "dog" / "float.tiff")
    elif problem == "lonely":
        (root / "bird").mkdir()
        shutil.copy(root / "cat" / "0.png", root / "bird" / "0.png")
    return env.train("--dataset", f"imagefolder:{root}")


def svhn_nan(env: Env) -> list[str]:
    from scipy.io import savemat

    folder = env.tmp / "data" / "svhn"
    folder.mkdir(parents=True)
    for split in ("train", "test"):
        x = np.random.default_rng(0).integers(0, 256, (32, 32, 3, 40)).astype(np.float64)
        x[5, 6, 1, 7] = np.nan  # a float .mat used to be cast to uint8 silently
        savemat(folder / f"{split}_32x32.mat", {"X": x, "y": (np.arange(40) % 10 + 1).reshape(-1, 1)})
    return env.train("--dataset", "svhn", "--data-dir", str(env.tmp / "data"))


def idx_float(env: Env) -> list[str]:
    make_idx_dataset(env.tmp / "data", "MNIST")
    raw = env.tmp / "data" / "MNIST" / "raw" / "train-images-idx3-ubyte"
    pixels = np.full((40, 28, 28), np.nan, dtype=">f4")
    raw.write_bytes(bytes([0, 0, 0x0D, 3]) + np.array([40, 28, 28], ">i4").tobytes() + pixels.tobytes())
    return env.train("--dataset", "mnist", "--data-dir", str(env.tmp / "data"))


def mnist_legacy_pickle(env: Env) -> list[str]:
    """torchvision's MNIST class would open processed/*.pt (pickles); our reader never looks there."""
    make_idx_dataset(env.tmp / "data", "MNIST")
    processed = env.tmp / "data" / "MNIST" / "processed"
    processed.mkdir()
    for name in ("training.pt", "test.pt"):
        (processed / name).write_bytes(env.payload())
    data = str(env.tmp / "data")
    return ["--dataset", "mnist", "--data-dir", data, "--val-size", "5", "--epochs", "1", "--out", str(env.fresh)]


def full_disk_resume(env: Env) -> list[str]:
    run = env.run()
    env.edit_run_json(run, lambda meta: meta["config"].update(epochs=meta["config"]["epochs"] + 1))
    env.full_disk()
    return ["--resume", str(run)]


def full_disk_sweep(env: Env) -> list[str]:
    argv = env.sweep()
    env.full_disk()
    return argv


def report_dir(env: Env, edit: Callable[[Path], object] | None = None, full: bool = False) -> list[str]:
    out = make_sweep_dir(env.tmp / "report", attacks=("fgsm", "pgd"))
    robustcnn.report(out)  # an earlier report that bad input must not replace
    if edit:
        edit(out)
    env.watch(out)
    if full:
        env.full_disk()
    return [str(out)]


def edit_csv(column: str, value: str) -> Callable[[Path], None]:
    def edit(out: Path) -> None:
        import pandas as pd

        frame = pd.read_csv(out / "results.csv", dtype=str, keep_default_na=False)
        frame.loc[1, column] = value
        frame.to_csv(out / "results.csv", index=False)

    return edit


def hostile_cells(env: Env) -> list[str]:
    run, suite, out = env.run(), env.suite(), env.tmp / "cells-out"
    robustcnn.sweep([run], suite=suite, n=20, out=str(out), report=False)
    for cell in (out / "cells").glob("*.npz"):
        env.hostile_npz(cell)
    return [str(run), "--suite", suite, "--out", str(out), "--n", "20", "--no-report"]


def cells_recomputed(env: Env, err: str) -> None:
    assert "is not a readable cell" in err
    for cell in (env.tmp / "cells-out" / "cells").glob("*.npz"):
        with np.load(cell, allow_pickle=False) as data:  # replaced by a good cell
            assert "rows" in data.files


def hostile_gallery(env: Env) -> list[str]:
    return report_dir(env, lambda out: env.hostile_npz(out / "gallery" / "std.npz"))


def gallery_refused(env: Env, err: str) -> None:
    html = (env.tmp / "report" / "report.html").read_text()
    assert "Gallery std.npz is unreadable" in html


def evil_name(env: Env) -> list[str]:
    run, out = env.run(name=EVIL_NAME), env.tmp / "evil-sweep"
    robustcnn.sweep([run], suite=env.suite(), n=20, out=str(out), report=False)
    return [str(out)]


def name_shown_as_text(env: Env, err: str) -> None:
    html = (env.tmp / "evil-sweep" / "report.html").read_text()
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "Gallery not in this sweep" not in html  # the gallery file of an odd name is found


def edited_suite(env: Env, old: str, new: str) -> list[str]:
    assert old in FGSM_SUITE
    return env.sweep(suite=env.suite(FGSM_SUITE.replace(old, new)))


def deep_toml(env: Env) -> list[str]:
    return env.sweep(suite=env.suite("a = " + "[" * 5000 + "]" * 5000 + "\n"))


def user_files(env: Env) -> Path:
    """The user's folder: nets.py (plain PyTorch) and the std run's weights saved by their own script."""
    folder = env.tmp / "user"
    write_nets(folder)
    save_like_a_training_script(user_state_dict(env.runs["std"]), folder / "smallcnn.pt")
    return folder


def foreign(env: Env, spec: str, *extra: str, dataset: str | None = "mnist5k") -> list[str]:
    """A sweep of a model from elsewhere into a fresh --out (which must stay empty); `{user}` is its folder."""
    spec = spec.format(user=user_files(env))
    data = ["--dataset", dataset] if dataset else []
    return [spec, *data, "--suite", env.suite(), "--out", str(env.fresh), "--n", "20", *extra]


def weights_file(env: Env, content: Callable[[Path], object], spec: str = "{user}/nets.py:smallcnn") -> list[str]:
    path = env.tmp / "weights.pt"
    content(path)
    return foreign(env, spec, "--weights", str(path))


def exported(env: Env, train_mode: bool = False, hostile: bool = False) -> list[str]:
    """A torch.export archive: exported in train mode, or with its weights replaced by a pickle carrying code."""
    import zipfile

    import torch

    if train_mode:
        sys.path.insert(0, str(user_files(env)))
        import nets  # the user's model with BatchNorm: in train mode its graph uses batch statistics

        sys.path.pop(0)
        model = nets.with_batchnorm().train()
    else:
        model = robustcnn.load_model(env.runs["std"])
    path = env.tmp / "model.pt2"
    torch.export.save(torch.export.export(model, (torch.rand(2, 1, 28, 28),)), path)
    if hostile:
        original = env.tmp / "original.pt2"
        path.rename(original)
        with zipfile.ZipFile(original) as source, zipfile.ZipFile(path, "w") as target:
            for item in source.infolist():
                data = source.read(item)
                if item.filename.endswith("model_weights_config.json"):
                    config = json.loads(data)
                    for entry in config["config"].values():
                        entry["use_pickle"] = True
                    data = json.dumps(config).encode()
                elif "/data/weights/weight_" in item.filename:
                    data = env.payload()
                target.writestr(item, data)
    return foreign(env, str(path))


def onnx_file(env: Env, content: bytes) -> list[str]:
    path = env.tmp / "model.onnx"
    path.write_bytes(content)
    return foreign(env, str(path))


def npz_data(env: Env, **arrays: np.ndarray) -> list[str]:
    path = env.tmp / "mine.npz"
    np.savez(path, **arrays)
    return foreign(env, "{user}/nets.py:smallcnn", dataset=f"npz:{path}")


def missing_extra(env: Env, module: str, spec: str) -> list[str]:
    if spec.endswith(".onnx"):
        spec = str(env.tmp / spec)
        Path(spec).write_bytes(b"an onnx file")  # never read: the missing import is found first
    env.monkeypatch.setitem(sys.modules, module, None)  # as if the optional extra had not been installed
    return foreign(env, spec)


def uncached_torchvision_weights(env: Env) -> list[str]:
    env.monkeypatch.setenv("TORCH_HOME", str(env.tmp / "torch-home"))  # an empty cache
    return foreign(env, "torchvision:resnet18@model-arg=weights=IMAGENET1K_V1")


DIGITS28 = np.random.default_rng(4).integers(0, 256, (30, 28, 28), dtype=np.uint8)


CASES = [
    # train: names and numbers on the command line
    Case("train-unknown-dataset", "train", lambda e: e.train("--dataset", "imagenet"),
         ("unknown dataset 'imagenet'", "choose one of: cifar10, digits")),
    Case("train-unknown-arch", "train", lambda e: e.train("--arch", "vgg16"),
         ("unknown architecture 'vgg16'", "choose one of: ibpcnn, lenet5")),
    Case("train-unknown-norm", "train", lambda e: e.train("--constraint", "l3"),
         ("unknown norm 'l3'", "choose one of: inf (Linf), 2 (L2)")),
    Case("train-eps-negative", "train", lambda e: e.train("--eps", "-0.1"),
         ("--eps -0.1 is not allowed", "finite number >= 0")),
    Case("train-eps-above-1", "train", lambda e: e.train("--eps", "1.5"), ("--eps 1.5 is outside [0, 1]",)),
    Case("train-eps-in-0-255-units", "train", lambda e: e.train("--eps", "8"),
         ("--eps 8 is outside [0, 1]", "did you mean 8/255 = 0.0314?"), real=True),
    Case("train-eps-nan", "train", lambda e: e.train("--eps", "nan"), ("--eps 'nan' is not a number", "8/255")),
    Case("train-lr-inf", "train", lambda e: e.train("--lr", "inf"), ("--lr 'inf' is not allowed", "finite number > 0")),
    Case("train-epochs-fraction", "train", lambda e: e.train("--epochs", "1.5"),
         ("--epochs '1.5' is not allowed", "whole number > 0")),
    Case("train-val-size-below-classes", "train", lambda e: e.train("--val-size", "5", "--train-size", "3000"),
         ("--val-size 5", "10 classes", "at least 10 images")),
    # train: checkpoints to resume from
    Case("train-resume-empty", "train", lambda e: e.resume(b""), ("resume.safetensors is not a readable", "corrupt")),
    Case("train-resume-truncated", "train", lambda e: e.resume(truncated(e)), ("is not a readable safetensors file",)),
    Case("train-resume-random-bytes", "train", lambda e: e.resume(np.random.default_rng(0).bytes(5000)),
         ("is not a readable safetensors file",)),
    Case("train-resume-pickle", "train", lambda e: e.resume(e.payload()), ("is not a readable safetensors file",)),
    Case("train-resume-other-arch", "train", lambda e: e.resume(e.runs["lenet"] / "resume.safetensors"),
         ("does not match the model", "another architecture")),
    Case("train-resume-other-dataset", "train", lambda e: e.resume(e.runs["digits"] / "resume.safetensors"),
         ("does not match the model", "another dataset")),
    # train: data
    Case("train-imagefolder-empty", "train", lambda e: image_folder(e, "empty"), ("no images found", "<class>/*.png")),
    Case("train-imagefolder-sizes", "train", lambda e: image_folder(e, "sizes"), ("is 20x20 colour but", "same size")),
    Case("train-imagefolder-grey-and-colour", "train", lambda e: image_folder(e, "modes"),
         ("grey.png is 12x10 greyscale but", "same size and colour mode")),
    Case("train-imagefolder-nan-pixel", "train", lambda e: image_folder(e, "nan"),
         ("float.tiff has pixel value nan", "finite values in 0..255")),
    Case("train-imagefolder-one-image-class", "train", lambda e: image_folder(e, "lonely"),
         ("class 'bird' has only 1 image", "at least 2 images in every class")),
    Case("train-svhn-nan-pixels", "train", svhn_nan, ("train_32x32.mat: pixel value nan", "whole numbers in 0..255")),
    Case("train-mnist-float-idx", "train", idx_float, ("IDX data type 0x0d is not allowed", "uint8 data (0x08)")),
    Case("train-mnist-legacy-pickle-ignored", "train", mnist_legacy_pickle, ("--val-size 5", "40 images")),
    # train: where the run goes
    Case("train-out-under-a-file", "train", lambda e: e.train("--out", str(Path(e.suite()) / "run")),
         ("cannot write to --out", "Not a directory")),
    Case("train-out-under-proc", "train", lambda e: e.train("--out", "/proc/robustcnn-test/run"),
         ("cannot write to --out '/proc/robustcnn-test/run'",)),
    Case("train-disk-full", "train", full_disk_resume, ("cannot write", "run.json", "No space left on device")),
    # sweep: suites and options
    Case("sweep-unknown-suite", "sweep", lambda e: e.sweep(suite="fast"), ("unknown suite 'fast'", "choose one of")),
    Case("sweep-unknown-attack", "sweep", lambda e: edited_suite(e, 'type = "fgsm"', 'type = "jsma"'),
         ("unknown attack 'jsma'", "choose one of: apgd-ce")),
    Case("sweep-toml-eps-nan", "sweep", lambda e: edited_suite(e, "[0.1]", "[nan]"),
         ("eps value nan is not allowed", "must be >= 0")),
    Case("sweep-toml-eps-in-0-255-units", "sweep", lambda e: edited_suite(e, "[0.1]", "[8]"),
         ("eps 8 is outside [0, 1]", "did you mean 8/255")),
    Case("sweep-toml-steps-inf", "sweep", lambda e: edited_suite(e, 'type = "fgsm"', 'type = "pgd"\nsteps = inf'),
         ("--steps inf is not allowed", "whole number > 0")),
    Case("sweep-toml-nested-too-deep", "sweep", deep_toml, ("not valid TOML", "nested too deeply"), real=True),
    Case("sweep-toml-random-bytes", "sweep", lambda e: e.sweep(suite=e.suite(np.random.default_rng(1).bytes(3000))),
         ("not valid TOML",)),
    Case("sweep-toml-huge", "sweep", lambda e: e.sweep(suite=e.suite("# " + "x" * 2_000_000 + "\n" + FGSM_SUITE)),
         ("too large for a suite", "the limit is 1048576 bytes")),
    Case("sweep-n-zero", "sweep", lambda e: e.sweep("--n", "0"), ("--n '0' is not allowed", "whole number > 0")),
    Case("sweep-gate-eps-nan", "sweep", lambda e: e.sweep("--fail-under", "fgsm@nan=1"),
         ("--fail-under 'fgsm@nan=1' eps 'nan' is not a number", "8/255")),
    Case("sweep-gate-not-met", "sweep",
         lambda e: e.sweep("--no-report", "--fail-under", "clean=0.999", out=str(e.tmp / "gate-out")),
         ("gate not met", "clean accuracy", "< 0.999"), code=1),
    # sweep: checkpoints and run directories
    Case("sweep-checkpoint-missing", "sweep", lambda e: weights(e), ("best.safetensors does not exist", "--resume")),
    Case("sweep-checkpoint-empty", "sweep", lambda e: weights(e, b""), ("is not a readable safetensors file",)),
    Case("sweep-checkpoint-truncated", "sweep", lambda e: weights(e, truncated(e)), ("truncated or corrupt",)),
    Case("sweep-checkpoint-random-bytes", "sweep", lambda e: weights(e, np.random.default_rng(2).bytes(4096)),
         ("is not a readable safetensors file",)),
    Case("sweep-checkpoint-pickle", "sweep", lambda e: weights(e, e.payload()), ("is not a readable safetensors file",),
         real=True),
    Case("sweep-checkpoint-other-arch", "sweep", lambda e: weights(e, source="lenet"),
         ("does not match the model", "another architecture")),
    Case("sweep-checkpoint-other-dataset", "sweep", lambda e: weights(e, source="digits"),
         ("does not match the model", "another dataset")),
    Case("sweep-checkpoint-nan-weights", "sweep", nan_weights,
         ("NaN or infinite weights (in net.0.0.weight)", "--weights best or last")),
    Case("sweep-run-json-damaged", "sweep", lambda e: e.sweep(run=_damaged_run(e)), ("run.json is damaged", "'model'")),
    Case("sweep-cell-file-pickle", "sweep", hostile_cells, (), code=0, check=cells_recomputed),
    # sweep: models from elsewhere (their own code, weights, exports) and their own data
    Case("sweep-model-unknown-form", "sweep", lambda e: foreign(e, "mystery-model"),
         ("run directory 'mystery-model' does not exist", "FILE.py:BUILDER", "torchvision:NAME", "FILE.onnx")),
    Case("sweep-model-file-missing", "sweep", lambda e: foreign(e, "{user}/nope.py:build"),
         ("model file", "nope.py' does not exist")),
    Case("sweep-builder-missing", "sweep", lambda e: foreign(e, "{user}/nets.py:resnet"),
         ("nets.py has no 'resnet'", "callables in it:", "smallcnn"), real=True),
    Case("sweep-builder-not-callable", "sweep", lambda e: foreign(e, "{user}/nets.py:WIDTH"),
         ("'WIDTH' is a int, not a callable returning an nn.Module",)),
    Case("sweep-builder-raises", "sweep", lambda e: foreign(e, "{user}/nets.py:broken"),
         ("builder", "nets.py:broken raised ValueError: width must be positive, got -1")),
    Case("sweep-builder-returns-no-module", "sweep", lambda e: foreign(e, "{user}/nets.py:not_a_module"),
         ("returned a str, not a torch.nn.Module",)),
    Case("sweep-builder-syntax-error", "sweep", lambda e: foreign(e, "{user}/broken_syntax.py:build"),
         ("cannot import", "broken_syntax.py: SyntaxError")),
    Case("sweep-module-not-installed", "sweep", lambda e: foreign(e, "no_such_package.nets:build"),
         ("cannot import module 'no_such_package.nets'", "is it installed, or on PYTHONPATH?")),
    Case("sweep-model-arg-not-key-value", "sweep", lambda e: foreign(e, "{user}/nets.py:smallcnn", "--model-arg", "7"),
         ("--model-arg", "expected KEY=VALUE",)),
    Case("sweep-spec-unknown-key", "sweep", lambda e: foreign(e, "{user}/nets.py:smallcnn@colour=red"),
         ("'colour=red' is not KEY=VALUE with KEY one of: name, dataset, weights, model-arg",)),
    Case("sweep-weights-wrong-shape", "sweep",
         lambda e: foreign(e, "{user}/nets.py:smallcnn@model-arg=width=8@weights={user}/smallcnn.pt"),
         ("does not match the model: 0.0.weight has shape (16, 1, 3, 3), expected (8, 1, 3, 3)",)),
    Case("sweep-weights-other-architecture", "sweep",
         lambda e: foreign(e, "{user}/nets.py:with_batchnorm@weights={user}/smallcnn.pt"),
         ("does not match the model: weights", "missing", "unexpected")),
    Case("sweep-weights-whole-pickled-model", "sweep",
         lambda e: weights_file(e, lambda p: __import__("torch").save(__import__("torch").nn.Linear(2, 2), p)),
         ("cannot be loaded with torch.load(weights_only=True)", "was not unpickled", "model.state_dict()")),
    Case("sweep-weights-hostile-pickle", "sweep", lambda e: weights_file(e, lambda p: p.write_bytes(e.payload())),
         ("cannot be loaded with torch.load(weights_only=True)",), real=True),
    Case("sweep-weights-not-a-state-dict", "sweep",
         lambda e: weights_file(e, lambda p: __import__("torch").save({"epoch": 3, "lr": 0.1}, p)),
         ("holds a dict with keys epoch, lr, not a state dict of tensors",)),
    Case("sweep-weights-file-missing", "sweep", lambda e: foreign(e, "{user}/nets.py:smallcnn", "--weights", "nope.pt"),
         ("weights file 'nope.pt' does not exist",)),
    Case("sweep-weights-best-for-a-builder", "sweep", lambda e: foreign(e, "{user}/nets.py:smallcnn@weights=best"),
         ("--weights best chooses a run directory's checkpoint",)),
    Case("sweep-weights-file-for-a-run", "sweep", lambda e: e.sweep("--weights", "w.pt"),
         ("--weights 'w.pt' is not allowed: choose one of: best, last",)),
    Case("sweep-model-input-channels", "sweep", lambda e: foreign(e, "{user}/nets.py:smallcnn@model-arg=channels=3"),
         ("fails on 1x28x28 images of dataset 'mnist5k'", "RuntimeError")),
    Case("sweep-model-input-size", "sweep", lambda e: foreign(e, "{user}/nets.py:smallcnn@model-arg=side=32"),
         ("fails on 1x28x28 images", "image size")),
    Case("sweep-model-output-count", "sweep", lambda e: foreign(e, "{user}/nets.py:smallcnn@model-arg=classes=7"),
         ("returns 7 outputs per image but dataset 'mnist5k' has 10 classes",)),
    Case("sweep-model-nan-logits", "sweep", lambda e: foreign(e, "{user}/nets.py:NotANumber"),
         ("returns NaN or infinite logits",)),
    Case("sweep-model-tuple-output", "sweep", lambda e: foreign(e, "{user}/nets.py:two_heads"),
         ("returns a tuple of 2 outputs; pass --output-index (0..1)",)),
    Case("sweep-model-output-key-missing", "sweep",
         lambda e: foreign(e, "{user}/nets.py:two_heads@model-arg=as_dict=true@output-key=scores"),
         ("returns a dict with keys features, logits; --output-key 'scores' is not one of them",)),
    Case("sweep-model-no-dataset", "sweep", lambda e: foreign(e, "{user}/nets.py:smallcnn", dataset=None),
         ("does not say which data it takes: pass --dataset NAME",)),
    Case("sweep-normalize-unknown", "sweep", lambda e: foreign(e, "{user}/nets.py:smallcnn", "--normalize", "caffe"),
         ("--normalize 'caffe' is not allowed", "none, dataset, imagenet or MEAN,STD")),
    Case("sweep-normalize-channels", "sweep", lambda e: foreign(e, "{user}/nets.py:smallcnn@normalize=imagenet"),
         ("--normalize imagenet has 3 channel(s) but the images have 1",)),
    Case("sweep-input-range-unknown", "sweep", lambda e: foreign(e, "{user}/nets.py:smallcnn@input-range=0-65535"),
         ("--input-range '0-65535' is not allowed", "0-1, 0-255")),
    Case("sweep-torchvision-unknown", "sweep", lambda e: foreign(e, "torchvision:resnet19"),
         ("unknown torchvision model 'resnet19'", "did you mean resnet18")),
    Case("sweep-torchvision-weights-not-cached", "sweep", uncached_torchvision_weights,
         ("torchvision:resnet18 weights IMAGENET1K_V1 are not in the cache", "add --download")),
    Case("sweep-timm-extra-missing", "sweep", lambda e: missing_extra(e, "timm", "timm:resnet18"),
         ("needs the optional extra 'timm'", "pip install 'robustcnn[timm]'")),
    Case("sweep-onnx-extra-missing", "sweep", lambda e: missing_extra(e, "onnx2torch", "model.onnx"),
         ("needs the optional extra 'onnx'", "pip install 'robustcnn[onnx]'")),
    Case("sweep-onnx-random-bytes", "sweep", lambda e: onnx_file(e, np.random.default_rng(5).bytes(2000)),
         ("cannot convert", "model.onnx to PyTorch (onnx2torch)")),
    Case("sweep-pt2-train-mode", "sweep", lambda e: exported(e, train_mode=True),
         ("model.pt2 was exported in train mode", "export it after model.eval()")),
    Case("sweep-pt2-hostile-pickle", "sweep", lambda e: exported(e, hostile=True), ("model.pt2 holds pickled",)),
    Case("sweep-pt2-random-bytes", "sweep",
         lambda e: foreign(e, str(e.tmp / "x.pt2")) if (e.tmp / "x.pt2").write_bytes(b"not an archive") else [],
         ("cannot load", "x.pt2 as a torch.export archive")),
    Case("sweep-npz-missing-key", "sweep", lambda e: npz_data(e, x_test=DIGITS28),
         ("missing", "y_test")),
    Case("sweep-npz-label-out-of-range", "sweep",
         lambda e: npz_data(e, x_test=DIGITS28, y_test=np.arange(30) % 12, class_names=np.array(list("0123456789"))),
         ("label 10", "0..9")),
    Case("sweep-npz-hostile-pickle", "sweep",
         lambda e: npz_data(e, x_test=np.array([Payload(e.marker)], dtype=object), y_test=np.zeros(1)),
         ("x_test",)),
    # sweep: where the results go
    Case("sweep-out-under-a-file", "sweep", lambda e: e.sweep(out=str(Path(e.suite()) / "o")),
         ("cannot write to --out", "Not a directory")),
    Case("sweep-out-under-proc", "sweep", lambda e: e.sweep(out="/proc/robustcnn-test/o"),
         ("cannot write to --out '/proc/robustcnn-test/o'",)),
    Case("sweep-disk-full", "sweep", full_disk_sweep, ("cannot write", "manifest.json", "No space left on device")),
    # report
    Case("report-missing-directory", "report", lambda e: [str(e.tmp / "nope")], ("does not exist", "--out")),
    Case("report-eps-inf", "report", lambda e: report_dir(e, edit_csv("eps", "inf")),
         ("row 3: eps inf is not allowed", "finite number >= 0"), real=True),
    Case("report-accuracy-above-1", "report", lambda e: report_dir(e, edit_csv("accuracy", "7")),
         ("row 3: accuracy 7.0 is not allowed", "a number in [0, 1]")),
    Case("report-manifest-random-bytes", "report",
         lambda e: report_dir(e, lambda out: (out / "manifest.json").write_bytes(np.random.default_rng(3).bytes(500))),
         ("manifest.json is not valid JSON",)),
    Case("report-gallery-pickle", "report", hostile_gallery, (), code=0, check=gallery_refused),
    Case("report-run-name-with-html", "report", evil_name, (), code=0, check=name_shown_as_text),
    Case("report-disk-full", "report", lambda e: report_dir(e, full=True),
         ("cannot write", "report.html: No space left on device")),
]  # fmt: skip


def _damaged_run(env: Env) -> Path:
    run = env.run()
    env.edit_run_json(run, lambda meta: meta.pop("model"))
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Quick runs: a SmallCNN and a LeNet on mnist5k, and a SmallCNN on digits (the wrong shapes for the others)."""
    root = tmp_path_factory.mktemp("matrix-runs")
    quick = {"train_size": 256, "val_size": 32, "batch_size": 64, "epochs": 1}
    std = robustcnn.train(dataset="mnist5k", **quick, out=str(root / "std"))
    lenet = robustcnn.train(dataset="mnist5k", arch="lenet5", **quick, out=str(root / "lenet"))
    digits = robustcnn.train(dataset="digits", **quick, out=str(root / "digits"))
    return {"std": std.path, "lenet": lenet.path, "digits": digits.path}


def check_outcome(case: Case, env: Env, code: int, err: str, before: dict[str, bytes]) -> None:
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert code == case.code, err
    assert not env.marker.exists(), "code from a pickle ran"
    for words in case.words:
        assert words in err, (words, err)
    if case.code == 2:
        assert len(lines) == 1 and lines[0].startswith(f"robustcnn.{case.tool}: error: "), err
    if case.code == 1:
        assert [line for line in lines if line.startswith("robustcnn.")] == [lines[-1]], err
        assert lines[-1].startswith(f"robustcnn.{case.tool}: failed: "), err
    if case.code != 0:
        assert env.snapshot() == before, "files written earlier were changed, deleted or added to"
        assert not env.fresh.exists() or not any(p.is_file() for p in env.fresh.rglob("*"))
    if case.check:
        case.check(env, err)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(case, runs, tmp_path, monkeypatch, capsys):
    env = Env(tmp_path, runs, monkeypatch)
    argv = case.setup(env)
    before = env.snapshot()
    capsys.readouterr()  # what the setup printed
    code = run_main(TOOLS[case.tool], argv, name=f"robustcnn.{case.tool}")
    err = capsys.readouterr().err
    monkeypatch.undo()  # the full-disk patch, before the checks read files
    check_outcome(case, env, code, err, before)


@pytest.mark.parametrize("case", [c for c in CASES if c.real], ids=lambda c: c.id)
def test_bad_input_on_the_real_command_line(case, runs, tmp_path, monkeypatch):
    env = Env(tmp_path, runs, monkeypatch)
    argv = case.setup(env)
    before = env.snapshot()
    done = subprocess.run(
        [sys.executable, "-m", f"robustcnn.{case.tool}", *argv],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    check_outcome(case, env, done.returncode, done.stderr, before)


def test_the_matrix_is_broad():
    assert len(CASES) >= 20 and {c.tool for c in CASES} == {"train", "sweep", "report"}
    assert len({c.id for c in CASES}) == len(CASES)


def test_the_pickle_payload_really_runs_code(tmp_path, monkeypatch):
    """Without this, 'the marker never appears' would prove nothing."""
    env = Env(tmp_path, {}, monkeypatch)
    pickle.loads(env.payload())
    assert env.marker.exists()
    env.marker.unlink()
    env.hostile_npz(tmp_path / "x.npz")
    with np.load(tmp_path / "x.npz", allow_pickle=True) as data:
        data["x"]
    assert env.marker.exists()
