"""The contract between sweep and report (robustcnn/results.py) and the attack kinds the sweep runs by.

tests/data/sweep-95e8f70 is a sweep written by robustcnn at commit 95e8f70 (a run directory trained with PGD and
a builder model from elsewhere; fgsm and pgd with probes, deepfool, a patch and randomized smoothing), with the
checks.json and summary.md its report wrote then: a manifest of that version must read back field for field, and
its report must say the same.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import robustcnn.report
from robustcnn.attacks import ATTACKS
from robustcnn.report.load import KINDS
from robustcnn.results import RUN, Check, Manifest, ModelEntry, RowKind, Status
from robustcnn.sweep.kinds import KINDS as ATTACK_KINDS

OLD_SWEEP = Path(__file__).parent / "data" / "sweep-95e8f70"
ADDED = {"method_traits", "subset"}  # model-entry fields this version writes that the old sweep did not
ADDED_CHECKS = {"adaptive"}  # checks this version's report runs that the old one did not: they skip on the old sweep


def test_a_manifest_written_by_the_previous_version_reads_back_field_for_field():
    raw = json.loads((OLD_SWEEP / "manifest.json").read_text())
    manifest = Manifest.from_json(raw)
    assert [(e.id, e.kind) for e in manifest.models] == [("adv", RUN), ("ext", "python")]
    assert not manifest.extra and not any(e.extra for e in manifest.models)  # every key is a typed field
    again = manifest.to_json()
    assert {k: v for k, v in again.items() if k != "models"} == {k: v for k, v in raw.items() if k != "models"}
    assert list(again) == list(raw)
    for written, read in zip(raw["models"], again["models"], strict=True):
        assert set(read) - set(written) <= ADDED
        assert {k: read[k] for k in written} == written
        assert [k for k in read if k in written] == list(written)  # same order


def test_the_report_of_an_old_sweep_says_what_it_said_then(tmp_path):
    out = shutil.copytree(OLD_SWEEP, tmp_path / "sweep")
    written = robustcnn.report.write_report(out)
    now, then = json.loads((out / "checks.json").read_text()), json.loads((OLD_SWEEP / "checks.json").read_text())
    added = [c for c in now["checks"] if c["name"] in ADDED_CHECKS]
    assert {c["status"] for c in added} == {"skip"}  # nothing in the old sweep for them to judge
    now["checks"] = [c for c in now["checks"] if c["name"] not in ADDED_CHECKS]
    now["counts"]["skip"] -= len(added)
    assert now == then
    skips = f"{then['counts']['skip']} skip ("
    said = (OLD_SWEEP / "summary.md").read_text().replace(skips, f"{then['counts']['skip'] + len(added)} skip (")
    assert (out / "summary.md").read_text() == said
    assert {c.name for c in written.checks} >= {"logits", "deterministic", "gradients"}  # the sweep's model checks


def test_typed_entries_read_what_the_checks_need():
    entry = Manifest.from_json(json.loads((OLD_SWEEP / "manifest.json").read_text())).entry("adv")
    assert entry.method == "pgd" and entry.weights == "best" and isinstance(entry.epoch, int)
    assert entry.num_classes == 10 and entry.image_size == 28 * 28
    assert entry.headline is not None and entry.headline.reference_eps == {"inf": 0.3, "2": 2.0}
    assert entry.training_metrics and entry.trained_against == {"norm": "inf", "eps": 0.3}
    assert [c.name for c in entry.model_checks] == ["logits", "deterministic", "gradients"]
    assert all(c.model == "adv" and c.status is Status.PASS for c in entry.model_checks)


def test_odd_values_take_their_defaults_and_older_forms_are_read():
    odd = {"id": 7, "epoch": "3", "class_names": "0123", "training_metrics": [1, 2], "threat_model": "Linf 0.3",
           "dataset": {"name": "mnist", "shape": [1, 28, 28]}, "model_checks": ["x", {"status": "maybe"}]}  # fmt: skip
    entry = ModelEntry.from_json(odd)
    assert (entry.id, entry.epoch, entry.class_names, entry.training_metrics, entry.threat_model) == (
        "7",
        None,
        None,
        None,
        None,
    )
    assert (entry.dataset, entry.image_size) == ("mnist", 784)  # the dataset as an object: an older form
    (check,) = entry.model_checks
    assert check.status is Status.WARN and "unknown status 'maybe'" in check.message
    assert check.link == "docs/checks.md#model-check"
    manifest = Manifest.from_json({"suite": "a name", "command": ["python", "a b"], "models": {"m": {"n": 5}}, "n": 3})
    assert manifest.suite == {"name": "a name"} and manifest.command == "python 'a b'"
    assert [(e.id, e.n) for e in manifest.models] == [("m", 5)] and manifest.extra == {"n": 3}
    assert Manifest.from_json([1, 2]) == Manifest(format="")


def test_a_check_reads_back_as_it_was_written():
    check = Check.of("gradients", Status.FAIL, "all-zero input gradients", "m")
    assert check.link == "docs/checks.md#gradients"
    assert Check.from_dict(check.to_dict(with_model=False), "m") == check
    assert check.to_dict()["model"] == "m" and "model" not in check.to_dict(with_model=False)


def test_the_old_sweep_wrote_row_kinds_of_this_version():
    import csv

    with open(OLD_SWEEP / "results.csv", newline="") as f:
        kinds = {row["kind"] for row in csv.DictReader(f)}
    assert kinds == {"clean", "attack", "worst-case", "probe", "smoothed"} and kinds <= set(KINDS)
    assert {RowKind(kind) for kind in kinds} == set(RowKind) - {RowKind.CERTIFIED}


def test_every_attack_names_a_registered_kind_and_every_kind_has_an_attack():
    used = {ATTACKS.get(name).kind for name in ATTACKS.names()}
    assert used == set(ATTACK_KINDS.names())
    for name in ATTACK_KINDS.names():
        assert ATTACK_KINDS.get(name).name == name


@pytest.mark.parametrize(
    ("kind", "per_eps", "in_worst_case", "has_eps", "row_kind"),
    [
        ("bounded", True, True, True, RowKind.ATTACK),
        ("minimal", False, True, True, RowKind.ATTACK),
        ("patch", False, False, False, RowKind.ATTACK),
        ("certified", True, False, True, RowKind.CERTIFIED),
        ("smoothed", False, False, True, RowKind.SMOOTHED),
    ],
)
def test_each_kind_says_how_the_sweep_runs_it(kind, per_eps, in_worst_case, has_eps, row_kind):
    found = ATTACK_KINDS.get(kind)
    assert (found.per_eps, found.in_worst_case, found.has_eps, found.row_kind) == (
        per_eps, in_worst_case, has_eps, row_kind
    )  # fmt: skip


def test_probes_and_the_gallery_are_for_white_box_bounded_attacks():
    from robustcnn.sweep.suite import load_suite

    suite = {spec.name: spec for spec in load_suite("autoattack-grade").attacks}  # apgd-ce, apgd-t, square
    probed = {name for name, spec in suite.items() if spec.kind.gets_probes(spec)}
    assert probed == {name for name, spec in suite.items() if spec.kind.in_gallery(spec)} == {"apgd-ce", "apgd-t"}
    grid = (0.1, 0.2, 0.3)
    assert suite["apgd-ce"].kind.cell_count(suite["apgd-ce"], grid, probe=50) == 4  # one per eps, and the probe
    assert suite["apgd-ce"].kind.cell_count(suite["apgd-ce"], grid, probe=0) == 3
    assert suite["square"].kind.cell_count(suite["square"], grid, probe=50) == 3  # black-box: no probe
