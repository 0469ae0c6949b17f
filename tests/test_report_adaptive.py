"""The `adaptive` check, the headline's "not adaptive" marker and the Adaptive evaluation section, on hand-made
results and manifest entries: a defence the model checks found (randomness, masked gradients) must meet an attack
adapted to it (EOT, BPDA), or the model's robust numbers are upper bounds and every view of the headline says so."""

from __future__ import annotations

import json

import pytest
from report_fixtures import make_manifest, make_results, make_sweep_dir

import robustcnn.report
from robustcnn.report import checks
from robustcnn.report.load import load_sweep, normalize_results
from robustcnn.report.tables import headline, markdown_table, text_table
from robustcnn.results import Adaptation, ModelEntry, Status, Technique

ATTACKS = ("fgsm", "pgd", "apgd-ce", "square")
RANDOM = {"deterministic": "fail", "gradients": "pass"}
MASKED = {"deterministic": "pass", "gradients": "fail"}
HEALTHY = {"deterministic": "pass", "gradients": "pass"}


def model_checks(**statuses: str) -> list[dict[str, str]]:
    """A manifest's `model_checks`: one entry per check name (gradients_bpda= for gradients-bpda)."""
    return [
        {"name": name.replace("_", "-"), "status": status, "message": f"{name} {status}"}
        for name, status in statuses.items()
    ]


def adapted(attack: str, technique: str, setting: str) -> dict[str, str]:
    return {"attack": attack, "technique": technique, "setting": setting, "reason": f"{technique} for {attack}"}


def entry(model: str, found: dict[str, str] | None, adaptations=(), draws: int | None = None) -> ModelEntry:
    data = {"id": model, "class_names": [str(d) for d in range(10)], "adaptations": list(adaptations)}
    data |= {"model_checks": model_checks(**found)} if found is not None else {}
    return ModelEntry.from_json(data | ({"draws": draws} if draws is not None else {}))


RESULTS = normalize_results(make_results(("std", "adv"), ATTACKS))


def adaptive(model_entry: ModelEntry) -> checks.Check:
    return checks.adaptive_attacks(RESULTS, "adv", model_entry)


CASES = {
    "random without EOT": (RANDOM, [adapted("pgd", "iterates", "off")], 9, Status.FAIL),
    "random with EOT": (RANDOM, [adapted("apgd-ce", "eot", "20"), adapted("pgd", "eot", "20")], 9, Status.PASS),
    "random with EOT over one pass": (RANDOM, [adapted("pgd", "eot", "1")], 9, Status.FAIL),
    "masked, rounding BPDA, gradients-bpda pass": (
        MASKED | {"gradients_bpda": "pass"}, [adapted("pgd", "bpda", "rounding")], 1, Status.PASS),
    "masked, rounding BPDA, gradients-bpda fail": (
        MASKED | {"gradients_bpda": "fail"}, [adapted("pgd", "bpda", "rounding")], 1, Status.FAIL),
    "masked, module BPDA": (
        MASKED | {"gradients_bpda": "fail"}, [adapted("apgd-ce", "bpda", "preprocess.quantise")], 1, Status.PASS),
    "masked without BPDA": (MASKED | {"gradients_bpda": "pass"}, [], 1, Status.FAIL),
    "random and masked, only EOT": (
        {"deterministic": "fail", "gradients": "fail"}, [adapted("pgd", "eot", "20")], 9, Status.FAIL),
    "deterministic": (HEALTHY, [], 1, Status.SKIP),
    "no model checks": (None, [], None, Status.SKIP),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_adaptive_check(case):
    found, adaptations, draws, expected = CASES[case]
    check = adaptive(entry("adv", found, adaptations, draws))
    assert check.status is expected, check.message
    assert check.name == "adaptive" and check.link == "docs/checks.md#adaptive" and check.model == "adv"


def test_a_failure_names_the_defence_and_what_to_do():
    check = adaptive(entry("adv", RANDOM, [], 9))
    assert check.message.startswith("randomness found (deterministic: fail) and no adaptive attack ran")
    assert "upper bound that a stronger attack may lower" in check.message
    assert "run --suite adaptive, or add eot = K / bpda = ..." in check.message
    assert "\n" not in check.message


def test_rounding_that_did_not_restore_the_gradients_asks_for_the_module():
    check = adaptive(entry("adv", MASKED | {"gradients_bpda": "fail"}, [adapted("pgd", "bpda", "rounding")]))
    assert "masked gradients found (gradients: fail)" in check.message
    assert "rounding ops in pgd did not restore the gradients (gradients-bpda: fail)" in check.message
    assert 'bpda = "MODULE.PATH"' in check.message


def test_a_pass_names_what_ran_and_the_judging_rule():
    adaptations = [adapted("apgd-ce", "eot", "20"), adapted("pgd", "eot", "20"), adapted("pgd", "iterates", "off")]
    check = adaptive(entry("adv", RANDOM, adaptations, 9))
    assert check.message == (
        "randomness (deterministic: fail) met EOT 20 in apgd-ce, pgd; "
        "a prediction counts when a majority of 9 draws are right"
    )


def test_only_attacks_with_rows_count():
    """An adaptation the manifest records for an attack the results lack (a shard not yet run) vouches for nothing."""
    check = adaptive(entry("adv", RANDOM, [adapted("apgd-t", "eot", "20")], 9))
    assert check.status is Status.FAIL


def test_manifest_entries_round_trip_draws_and_adaptations(tmp_path):
    original = entry("adv", RANDOM, [adapted("pgd", "eot", "20"), adapted("pgd", "bpda", "net.quantise")], 9)
    assert original.draws == 9
    assert original.adaptations[1] == Adaptation("pgd", Technique.BPDA, "net.quantise", "bpda for pgd")
    again = ModelEntry.from_json(json.loads(json.dumps(original.to_json())))
    assert (again.draws, again.adaptations, again.model_checks) == (9, original.adaptations, original.model_checks)
    older = ModelEntry.from_json({"id": "old", "adaptations": [{"technique": "magic"}, "x"]})
    assert (older.draws, older.adaptations) == (None, ())


def random_pair() -> dict[str, ModelEntry]:
    """std is random and met no EOT attack; adv is random and did."""
    return {
        "std": entry("std", RANDOM, [adapted("pgd", "iterates", "off")], 9),
        "adv": entry("adv", RANDOM, [adapted("pgd", "eot", "20"), adapted("apgd-ce", "eot", "20")], 9),
    }


def test_headline_marks_the_model_without_an_adaptive_attack_only():
    table = headline(RESULTS, random_pair(), None)
    assert table.caveats == {"std": "randomness found and no EOT attack ran"}
    text = text_table(table).splitlines()
    assert text[2].startswith("std [not adaptive] ") and text[3].startswith("adv ") and "not adaptive" not in text[3]
    assert text[-1] == (
        "not adaptive: std: randomness found and no EOT attack ran: "
        "these robust numbers are upper bounds a stronger attack may lower"
    )
    markdown = markdown_table(table).splitlines()
    assert markdown[2].startswith("| std *(not adaptive)* |") and markdown[3].startswith("| adv |")


def test_headline_without_found_defences_has_no_marker():
    table = headline(RESULTS, {"std": entry("std", HEALTHY), "adv": entry("adv", None)}, None)
    assert table.caveats == {} and "not adaptive" not in text_table(table) + markdown_table(table)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A sweep folder made by hand: std random and not adapted, adv random and met by EOT, judged over 9 draws."""
    manifest = make_manifest(["std", "adv"], metrics=False)
    for item, model_entry in zip(manifest["models"], random_pair().values(), strict=True):
        item.update({k: v for k, v in model_entry.to_json().items() if k in ("model_checks", "draws", "adaptations")})
    out = make_sweep_dir(
        tmp_path_factory.mktemp("adaptive") / "sweep", attacks=ATTACKS, training=False, gallery=False,
        patch_images=False, manifest={"models": manifest["models"]},
    )  # fmt: skip
    robustcnn.report(out)
    return out


def test_the_loaded_sweep_keeps_draws_and_adaptations(sweep):
    models = load_sweep(sweep).models
    assert models["adv"].draws == 9 and [a.technique for a in models["adv"].adaptations] == [Technique.EOT] * 2


def test_summary_marks_the_model_and_lists_the_adaptations(sweep):
    summary = (sweep / "summary.md").read_text(encoding="utf-8")
    assert "| std *(not adaptive)* |" in summary and "| adv *(not adaptive)*" not in summary
    note = "*not adaptive: std: randomness found and no EOT attack ran: these robust numbers are upper bounds"
    assert note in summary
    assert "- **FAIL** adaptive (std): randomness found (deterministic: fail)" in summary
    assert "- **FAIL** deterministic (std)" in summary  # the check that found it stays in view
    adaptive_part = summary.split("### Adaptive evaluation", 1)[1]
    assert "- **adv**: randomness (deterministic: fail) met EOT 20 in pgd, apgd-ce" in adaptive_part
    assert "correct when a majority of 9 forward passes are" in adaptive_part
    assert "  - pgd: eot 20 (eot for pgd)" in adaptive_part


def test_html_marks_the_model_and_has_the_adaptive_section(sweep):
    html = (sweep / "report.html").read_text(encoding="utf-8")
    headline_part = html.split('<section id="headline">', 1)[1].split("</section>", 1)[0]
    marker = '<span class="caveat" title="randomness found and no EOT attack ran">not adaptive</span>'
    assert f"std {marker}" in headline_part
    assert headline_part.count('<span class="caveat" title=') == 1  # std only, not adv
    assert "<b>std</b>: randomness found and no EOT attack ran." in headline_part
    problems = html.split('<table class="checks problems">', 1)[1].split("</table>", 1)[0]
    assert 'href="#about-adaptive"' in problems and ">deterministic</span>" in problems
    section = html.split('<section id="adaptive">', 1)[1].split("</section>", 1)[0]
    assert '<td>apgd-ce</td><td>eot</td><td class="mono">20</td><td>eot for apgd-ce</td>' in section
    assert "Judging: correct when a majority of 9 forward passes are." in section
    assert '<a href="#adaptive">Adaptive evaluation</a>' in html
    checks_json = json.loads((sweep / "checks.json").read_text(encoding="utf-8"))["checks"]
    assert {(c["model"], c["status"]) for c in checks_json if c["name"] == "adaptive"} == {
        ("std", "fail"),
        ("adv", "pass"),
    }


def test_the_section_is_left_out_when_nothing_was_adapted(tmp_path):
    out = make_sweep_dir(tmp_path / "plain", attacks=("fgsm", "pgd"), training=False, gallery=False)
    robustcnn.report(out)
    html, summary = (out / "report.html").read_text(encoding="utf-8"), (out / "summary.md").read_text(encoding="utf-8")
    assert '<section id="adaptive">' not in html and "Adaptive evaluation" not in summary
    assert "not adaptive" not in summary and 'class="caveat"' not in html
