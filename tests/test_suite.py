"""Suite files: every shipped suite parses, and every kind of mistake is one clear error."""

from __future__ import annotations

import pytest

from robustcnn.data import dataset_info
from robustcnn.errors import UsageError
from robustcnn.sweep.suite import find_suite, load_suite, suite_names

GOOD_ENTRY = 'name = "pgd"\ntype = "pgd"\nnorm = "inf"\neps = [0.1, 0.3]\nsteps = 10\n'


def write_suite(tmp_path, body: str):
    path = tmp_path / "my-suite.toml"
    path.write_text(body)
    return path


def test_every_shipped_suite_loads_and_resolves_for_mnist_and_cifar():
    assert {"quick", "standard", "autoattack-grade", "madry-mnist", "cifar10-linf"} <= set(suite_names())
    for name in suite_names():
        suite = load_suite(name)
        assert suite.description and suite.attacks
        for info in (dataset_info("mnist5k"), dataset_info("cifar10")):
            for spec in suite.attacks:
                grid = spec.grid(info)
                assert list(grid) == sorted(grid) and all(g > 0 or spec.kind.name == "smoothed" for g in grid)
                # radius 0 of a smoothing entry: the smoothed classifier's own accuracy (Cohen et al.'s first point)


def test_eps_fraction_scales_with_the_dataset():
    spec = next(a for a in load_suite("quick").attacks if a.name == "pgd-linf")
    assert spec.grid(dataset_info("mnist5k"))[3] == pytest.approx(0.3)
    assert spec.grid(dataset_info("cifar10"))[3] == pytest.approx(8 / 255)


def test_fractions_like_8_over_255_are_accepted(tmp_path):
    path = write_suite(tmp_path, '[[attack]]\nname = "f"\ntype = "fgsm"\nnorm = "inf"\neps = ["8/255", 0.1]\n')
    assert load_suite(path).attacks[0].eps == pytest.approx((8 / 255, 0.1))


def test_a_path_is_used_as_is_and_names_are_found_in_attacks_folder(tmp_path):
    path = write_suite(tmp_path, f"[[attack]]\n{GOOD_ENTRY}")
    assert find_suite(str(path)) == path
    assert find_suite("quick").name == "quick.toml"


BAD_SUITES = [
    ("[[attack]]\n" + GOOD_ENTRY + "stpes = 3\n", "unknown option 'stpes'"),
    (
        '[[attack]]\nname = "x"\ntype = "jsma"\nnorm = "inf"\neps = [0.1]\n',
        "unknown attack 'jsma'; choose one of: apgd-ce",
    ),
    ('[[attack]]\nname = "x"\ntype = "pgd"\nnorm = "l3"\neps = [0.1]\n', "unknown norm 'l3'"),
    ('[[attack]]\nname = "x"\ntype = "pgd"\nnorm = "inf"\neps = [0.1, 8]\n', "did you mean 8/255"),
    ('[[attack]]\nname = "x"\ntype = "pgd"\nnorm = "inf"\neps = [-0.1]\n', "must be >= 0"),
    ('[[attack]]\nname = "x"\ntype = "pgd"\nnorm = "inf"\n', "give exactly one of 'eps'"),
    ('[[attack]]\nname = "x"\nnorm = "inf"\neps = [0.1]\n', "missing field 'type'"),
    ('[[attack]]\ntype = "pgd"\nnorm = "inf"\neps = [0.1]\n', "missing field 'name'"),
    ('[[attack]]\nname = "x"\ntype = "pgd"\neps = [0.1]\n', "missing field 'norm'"),
    ('[[attack]]\nname = "x"\ntype = "pgd"\nnorm = "inf"\neps = [0.1]\nsteps = 0\n', "--steps 0 is not allowed"),
    (
        '[[attack]]\nname = "x"\ntype = "pgd"\nnorm = "inf"\neps = [0.1]\nsteps = "many"\n',
        "--steps 'many' is not allowed",
    ),
    ('[[attack]]\nname = "x"\ntype = "cw-l2"\nnorm = "inf"\neps = [0.1]\n', "norm 'inf' is not supported"),
    ('[[attack]]\nname = "p"\ntype = "patch"\nscales = [0.2, 1.5]\n', "scale 1.5 is not allowed"),
    ('[[attack]]\nname = "p"\ntype = "patch"\nnorm = "inf"\nscales = [0.2]\n', "does not apply to the patch"),
    ("[[attack]]\n" + GOOD_ENTRY + "[[attack]]\n" + GOOD_ENTRY, "attack name 'pgd' is used twice"),
    ("colour = 'red'\n[[attack]]\n" + GOOD_ENTRY, "unknown key 'colour'; allowed: description"),
    ("n = 0\n[[attack]]\n" + GOOD_ENTRY, "n = 0 is not allowed"),
    ("description = 'nothing'\n", "needs at least one [[attack]]"),
    ("[[attack]\nname =", "not valid TOML"),
]


@pytest.mark.parametrize(("body", "message"), BAD_SUITES)
def test_bad_suites_are_one_clear_error_naming_the_file(tmp_path, body, message):
    path = write_suite(tmp_path, body)
    with pytest.raises(UsageError) as error:
        load_suite(path)
    text = str(error.value)
    assert message in text and str(path) in text and "\n" not in text


def test_unknown_suite_name_lists_the_valid_ones():
    with pytest.raises(
        UsageError, match="unknown suite 'fast'; choose one of: adaptive, autoattack-grade, certified, cifar10-linf"
    ):
        load_suite("fast")


def test_eps_fraction_that_lands_outside_0_1_fails_when_resolved(tmp_path):
    path = write_suite(tmp_path, '[[attack]]\nname = "x"\ntype = "fgsm"\nnorm = "inf"\neps_fraction = [4]\n')
    spec = load_suite(path).attacks[0]
    with pytest.raises(UsageError, match="outside"):
        spec.grid(dataset_info("mnist5k"))


@pytest.mark.parametrize("cascade", [True, False])
def test_a_cascade_runs_black_box_attacks_after_every_white_box_one(tmp_path, cascade):
    """Square listed first in a cascade still attacks only what the gradient attacks left: the plan puts it last;
    without a cascade the file's order stands."""
    entries = [("square", "square"), ("pgd", "pgd"), ("fgsm", "fgsm")]
    body = f"cascade = {str(cascade).lower()}\n" + "".join(
        f'[[attack]]\nname = "{name}"\ntype = "{kind}"\nnorm = "inf"\neps = [0.1]\n' for name, kind in entries
    )
    names = [spec.name for spec in load_suite(write_suite(tmp_path, body)).attacks]
    assert names == (["pgd", "fgsm", "square"] if cascade else ["square", "pgd", "fgsm"])
