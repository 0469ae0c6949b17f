"""Batches: numbers that do not depend on the batch size, halving on running out of GPU memory, --batch-size auto.

All on a CPU: running out of memory is injected (a model that raises torch.OutOfMemoryError above K images).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import run_cli
from torch import nn

import robustcnn
from robustcnn.attacks import ATTACKS, Target
from robustcnn.attacks.art import Starts, art_classifier
from robustcnn.data import ImageSet
from robustcnn.data.base import DatasetInfo, Split
from robustcnn.models.base import ModelConfig, create_model
from robustcnn.sweep import batching, cells
from robustcnn.sweep.batching import Batches
from robustcnn.threat import Norm, ThreatModel

SHAPE = (3, 32, 32)
INFO = DatasetInfo("random", SHAPE, tuple("abcdefghij"), (0.5,) * 3, (0.25,) * 3, ThreatModel(Norm.LINF, 8 / 255))


class Tight(nn.Module):
    """The model, out of memory for batches of more than `limit` images (as a GPU would be), except `spared`."""

    def __init__(self, net: nn.Module, limit: int, spared: int = 0):
        super().__init__()
        self.net, self.limit, self.spared = net, limit, spared

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) > self.limit and len(x) != self.spared:
            raise torch.OutOfMemoryError(f"injected: {len(x)} images > {self.limit}")
        return self.net(x)


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    config = ModelConfig("smallcnn", 3, 32, 32, 10, (0.5,) * 3, (0.25,) * 3)
    return create_model(config).eval().requires_grad_(False)


def images(n: int) -> ImageSet:
    """n random uint8 images, labelled as `tiny_cnn` classifies them (so attacks have something to break)."""
    x = torch.randint(0, 256, (n, *SHAPE), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    with torch.no_grad():
        y = tiny_cnn()(x.float() / 255).argmax(1)
    return ImageSet(INFO, Split.TEST, x, y)


def target(model: nn.Module, batch_size: int) -> Target:
    return Target(art_classifier(model, SHAPE, 10, torch.device("cpu")), model, torch.device("cpu"), batch_size, 10)


def attack(name: str, model: nn.Module, batch_size: int, **params):
    cls = ATTACKS.get(name)
    return cls(name, Norm.LINF, cls.Params(**params), target(model, batch_size))


@pytest.mark.parametrize(("name", "params"), [("pgd", {"steps": 3, "restarts": 2}), ("apgd-ce", {"steps": 3})])
def test_flags_do_not_depend_on_the_batch_size(name, params):
    model, data = tiny_cnn(), images(150)
    flags = {}
    for size in (1024, 64):
        torch.manual_seed(7)  # the cell's seed, as ChainRunner.cell sets it
        examples = cells.Examples(data, Batches(size))
        todo = np.arange(150) % 5 != 0  # survivors: a gap in the indices, so batches of ids are not ranges
        flags[size] = cells.bounded(attack(name, model, size, **params), target(model, size), examples, todo, 1 / 255)
    np.testing.assert_array_equal(flags[1024], flags[64])
    assert 10 < flags[64].sum() < 110  # the attack broke some, not all: the comparison can fail


@pytest.mark.parametrize("name", ["apgd-ce", "apgd-t"])
def test_a_probe_with_misclassified_examples_draws_starts_per_example(name):
    """A probe attacks every example, also those misclassified at the start, which ART's APGD leaves out of its
    random starts: robustcnn must know which rows it started (it once raised here, on every APGD probe)."""
    model, data = tiny_cnn(), images(60)
    wrong = ImageSet(INFO, Split.TEST, data.x, torch.where(torch.arange(60) % 4 == 0, (data.y + 1) % 10, data.y))
    flags = {}
    for size in (1024, 16):
        torch.manual_seed(7)
        flags[size] = cells.probe(
            attack(name, model, size, steps=2), target(model, size), cells.Examples(wrong, Batches(size)), (1 / 255,)
        )
    np.testing.assert_array_equal(flags[1024], flags[16])
    assert not flags[16][0, ::4].any()  # misclassified from the start


def test_pgd_x_adv_is_the_same_bits_in_any_batch():
    model, data = tiny_cnn(), images(100)
    x, y, ids = data.images().numpy(), data.y.numpy(), np.arange(100)
    pgd = attack("pgd", model, 128, steps=2, restarts=2)
    whole = pgd.generate(x, y, 1 / 255, starts=Starts(3, ids))
    parts = [
        pgd.generate(x[i : i + 32], y[i : i + 32], 1 / 255, starts=Starts(3, ids[i : i + 32])) for i in (0, 32, 64, 96)
    ]
    delta = np.abs(whole - np.concatenate(parts))
    # conv numerics on a CPU may round differently by batch size; the random starts must not differ at all
    assert delta.max() <= 1e-6, delta.max()
    assert not np.array_equal(whole, pgd.generate(x, y, 1 / 255, starts=Starts(4, ids)))  # the seed matters


def test_random_starts_follow_arts_distribution_per_example():
    starts = Starts(0, np.arange(3))
    box = np.stack([starts.draw(i, 5000, 0.1, np.inf) for i in range(3)])
    assert np.abs(box).max() <= 0.1 and abs(box.std() - 0.1 / np.sqrt(3)) < 0.003  # uniform in the box
    again = Starts(0, np.arange(3))
    assert np.array_equal(again.draw(1, 5000, 0.1, np.inf), box[1])  # example 1's first draw, whoever drew before
    ball = np.stack([starts.draw(i, 3072, 0.5, 2.0) for i in range(200)])
    assert np.linalg.norm(ball, axis=1).max() <= 0.5 + 1e-9


def test_out_of_memory_halves_the_batch_and_gives_the_flags_of_that_batch_size():
    net, data = tiny_cnn(), images(120)
    todo = np.ones(120, dtype=bool)
    torch.manual_seed(7)
    reference = cells.bounded(attack("pgd", net, 16, steps=2), target(net, 16), cells.Examples(data, Batches(16)),
                              todo, 1 / 255)  # fmt: skip
    tight = Tight(net, 16)
    batches = Batches(64, "tight")
    torch.manual_seed(7)
    flags = cells.bounded(attack("pgd", tight, 64, steps=2), target(tight, 64), cells.Examples(data, batches), todo,
                          1 / 255)  # fmt: skip
    np.testing.assert_array_equal(flags, reference)
    assert batches.size == 16
    assert [(b["from"], b["to"]) for b in batches.backoffs] == [(64, 32), (32, 16)]
    assert batches.backoffs[0]["where"].startswith("pgd eps=")


def test_out_of_memory_with_one_image_is_one_line():
    tight, data = Tight(tiny_cnn(), 0), images(4)
    with pytest.raises(robustcnn.errors.RunFailed, match="batch of 1 image in clean"):
        cells.clean(target(tight, 4), cells.Examples(data, Batches(4, "tight")))


def test_a_sweep_records_its_backoffs_in_the_manifest(tmp_path, capsys):
    data = tmp_path / "mine.npz"
    source = images(40)
    np.savez(data, x_test=source.x.permute(0, 2, 3, 1).numpy(), y_test=source.y.numpy())
    suite = tmp_path / "suite.toml"
    suite.write_text('[[attack]]\nname = "pgd"\ntype = "pgd"\nnorm = "inf"\neps = [0.01]\nsteps = 2\n')
    # the model's checks before any batch run on all 40 images at once (spared): the batches run out of memory
    common = {"dataset": f"npz:{data}", "suite": str(suite), "n": 40, "report": False, "probe": 0, "gallery": 0}
    tight = robustcnn.sweep([robustcnn.Model(Tight(tiny_cnn(), 8, spared=40), name="m")], batch_size=32,
                            out=str(tmp_path / "a"), **common)  # fmt: skip
    assert capsys.readouterr().err.count("out of GPU memory") == 1  # said once per model
    entry = json.loads((tmp_path / "a" / "manifest.json").read_text())["models"][0]
    assert entry["batch_size"] == 8 and entry["batch_choice"] == {"requested": 32}
    assert [(b["from"], b["to"]) for b in entry["batch_backoffs"]] == [(32, 16), (16, 8)]
    assert entry["batch_backoffs"][0]["where"] == "clean"
    plain = robustcnn.sweep([robustcnn.Model(tiny_cnn(), name="m")], batch_size=8, out=str(tmp_path / "b"), **common)
    cols = ["attack", "eps", "n_correct"]
    assert tight[cols].equals(plain[cols])


@pytest.mark.parametrize(("limit", "n", "expected"), [(100, 1000, 64 // 2), (5000, 1000, 1000), (20, 1000, 16 // 2),
                                                      (1, 1000, 1), (300, 200, 200)])  # fmt: skip
def test_auto_finds_the_largest_batch_that_fits_and_halves_it(limit, n, expected):
    model = Tight(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), limit)
    assert batching.measure_batch_size(model, (3, 2, 2), torch.device("cpu"), n) == expected


def test_auto_on_a_model_that_fits_nothing_is_one_line():
    model = Tight(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), 0)
    with pytest.raises(robustcnn.errors.RunFailed, match="does not fit"):
        batching.measure_batch_size(model, (3, 2, 2), torch.device("cpu"), 100)


def test_auto_on_a_cpu_is_the_cpu_default():
    size, choice = batching.choose_batch_size("auto", tiny_cnn(), SHAPE, torch.device("cpu"), 1000)
    assert size == batching.CPU_BATCH and choice["requested"] == "auto"


def test_a_bad_batch_size_is_one_line_and_exit_2():
    result = run_cli("robustcnn.sweep", "runs/none", "--batch-size", "big")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "choose a positive integer or auto" in lines[0], result.stderr


@pytest.mark.parametrize("value", ["0", "-3", "1.5", "", True])
def test_every_bad_batch_size_is_refused_by_the_rule_the_command_line_uses(value):
    from robustcnn.errors import UsageError
    from robustcnn.sweep.config import SweepConfig

    with pytest.raises(UsageError, match="choose a positive integer or auto"):
        SweepConfig.from_dict({"batch_size": value})
