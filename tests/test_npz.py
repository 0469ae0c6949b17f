"""`npz:PATH`: a user's own arrays, read as a user would, through load_dataset and dataset_info."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from robustcnn.data import DatasetInfo, ImageSet, Split, dataset_info, dataset_names, load_dataset
from robustcnn.errors import UsageError


def pixels(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def labels(n: int, k: int = 3) -> np.ndarray:
    return np.arange(n) % k


def write(tmp_path: Path, name: str = "data.npz", **arrays: np.ndarray) -> str:
    """Saves the arrays and returns the dataset name for them."""
    np.savez(tmp_path / name, **arrays)
    return f"npz:{tmp_path / name}"


def test_npz_is_a_registered_dataset():
    assert "npz" in dataset_names()


def test_uint8_nhwc_colour_is_moved_to_channels_first(tmp_path):
    x = pixels((6, 8, 10, 3))
    test = load_dataset(write(tmp_path, x_test=x, y_test=labels(6)))
    assert test.info.shape == (3, 8, 10) and test.x.dtype == torch.uint8
    assert torch.equal(test.x, torch.from_numpy(x.transpose(0, 3, 1, 2)))
    assert test.y.tolist() == labels(6).tolist()


def test_uint8_nchw_is_kept(tmp_path):
    x = pixels((6, 3, 8, 10))
    test = load_dataset(write(tmp_path, x_test=x, y_test=labels(6)))
    assert test.info.shape == (3, 8, 10) and torch.equal(test.x, torch.from_numpy(x))


def test_greyscale_n_h_w_gets_a_channel_axis(tmp_path):
    x = pixels((6, 8, 10))
    test = load_dataset(write(tmp_path, x_test=x, y_test=labels(6)))
    assert test.info.shape == (1, 8, 10) and torch.equal(test.x[:, 0], torch.from_numpy(x))


def test_float32_images_are_kept_exactly_not_rounded_to_8_bits(tmp_path):
    x = np.random.default_rng(0).random((6, 8, 8, 3), dtype=np.float32)
    x[0, 0, 0] = (0.0, 1.0, 0.5 / 255)  # the ends of the range and a value that 8 bits would lose
    test = load_dataset(write(tmp_path, x_test=x, y_test=labels(6)))
    assert test.x.dtype == torch.float32
    assert torch.equal(test.images(), torch.from_numpy(x.transpose(0, 3, 1, 2)))


def test_float64_images_become_float32_and_say_so(tmp_path, capsys):
    x = np.random.default_rng(0).random((6, 3, 8, 8))
    test = load_dataset(write(tmp_path, x_test=x, y_test=labels(6)))
    assert test.x.dtype == torch.float32
    assert torch.allclose(test.images(), torch.from_numpy(x).float(), rtol=0, atol=1e-7)
    assert "float64, stored as float32" in capsys.readouterr().err


def test_float_images_are_copied_so_callers_cannot_change_the_data(tmp_path):
    x = np.random.default_rng(0).random((6, 1, 8, 8), dtype=np.float32)
    test = load_dataset(write(tmp_path, x_test=x, y_test=labels(6)))
    test.images().zero_()
    test.images(slice(0, 2)).zero_()
    assert torch.equal(test.x, torch.from_numpy(x))


def test_image_set_takes_uint8_or_float32_only():
    info = DatasetInfo("t", (1, 2, 2), ("a", "b"), (0.5,), (0.5,), dataset_info("digits").threat_model)
    y = torch.zeros(3, dtype=torch.long)
    ImageSet(info, Split.TEST, torch.zeros(3, 1, 2, 2), y)
    with pytest.raises(ValueError, match="float64"):
        ImageSet(info, Split.TEST, torch.zeros(3, 1, 2, 2, dtype=torch.float64), y)


def test_the_layout_is_announced_once_on_stderr(tmp_path, capsys):
    name = write(
        tmp_path, x_test=pixels((6, 8, 8, 3)), y_test=labels(6), x_train=pixels((9, 8, 8, 3)), y_train=labels(9)
    )
    dataset_info(name)
    load_dataset(name, "test")
    load_dataset(name, "train")
    err = capsys.readouterr().err
    assert "x_test (6, 8, 8, 3) read as NHWC uint8" in err
    assert err.count("read as") == 2, "one line naming x_test and x_train, written once"
    assert len(err.strip().splitlines()) == 1


def test_an_ambiguous_shape_asks_for_a_layout_suffix(tmp_path):
    name = write(tmp_path, x_test=pixels((6, 3, 8, 3)), y_test=labels(6))
    with pytest.raises(UsageError, match=re.escape("(6, 3, 8, 3)") + ".*#nchw or #nhwc"):
        load_dataset(name)


@pytest.mark.parametrize(("suffix", "shape", "axes"), [("#nhwc", (3, 3, 8), (0, 3, 1, 2)), ("#NCHW", (3, 8, 3), None)])
def test_the_layout_suffix_forces_the_layout(tmp_path, capsys, suffix, shape, axes):
    x = pixels((6, 3, 8, 3))
    name = write(tmp_path, x_test=x, y_test=labels(6)) + suffix
    test = load_dataset(name)
    assert test.info.shape == shape
    assert torch.equal(test.x, torch.from_numpy(x.transpose(axes) if axes else x))
    assert f"read as {suffix[1:].upper()} ({suffix.lower()})" in capsys.readouterr().err
    assert test.info.name.endswith(suffix.lower()), "the name must load the same data again"
    assert torch.equal(load_dataset(test.info.name).x, test.x)


def test_a_mistyped_layout_suffix_is_named(tmp_path):
    name = write(tmp_path, x_test=pixels((6, 8, 8, 3)), y_test=labels(6))
    with pytest.raises(UsageError, match="'#nwhc'.*#nchw or #nhwc"):
        dataset_info(name + "#nwhc")


def _bad(**changes: np.ndarray | None) -> dict[str, np.ndarray]:
    arrays = {"x_test": pixels((6, 8, 8)), "y_test": labels(6)}
    arrays.update(changes)
    return {key: value for key, value in arrays.items() if value is not None}


def _float_with(value: float) -> np.ndarray:
    x = np.full((6, 8, 8), 0.5, dtype=np.float32)
    x[2, 3, 4] = value
    return x


BAD_ARRAYS = {
    "above 1": (_bad(x_test=_float_with(1.5)), r"value 1\.5 at index \(2, 3, 4\).*uint8 0\.\.255 or float"),
    "NaN": (_bad(x_test=_float_with(np.nan)), r"value nan at index \(2, 3, 4\)"),
    "inf": (_bad(x_test=_float_with(np.inf)), r"value inf at index \(2, 3, 4\)"),
    "negative": (_bad(x_test=_float_with(-0.25)), r"value -0\.25 at index"),
    "int64 pixels": (_bad(x_test=pixels((6, 8, 8)).astype(np.int64)), "dtype int64.*uint8 0..255 or float"),
    "bool pixels": (_bad(x_test=np.ones((6, 8, 8), dtype=bool)), "dtype bool"),
    "5-D images": (_bad(x_test=pixels((6, 1, 8, 8, 1))), re.escape("(6, 1, 8, 8, 1)")),
    "4 channels": (_bad(x_test=pixels((6, 8, 8, 4))), re.escape("(6, 8, 8, 4)") + ".*greyscale or colour"),
    "no images": (_bad(x_test=pixels((0, 8, 8)), y_test=labels(0)), "x_test holds no images"),
    "label count": (_bad(y_test=labels(5)), "5 labels but x_test has 6 images"),
    "2-D labels": (_bad(y_test=labels(6)[:, None]), re.escape("(6, 1)") + ".*1-D"),
    "negative label": (_bad(y_test=np.array([0, 1, -1, 2, 0, 1])), "label -1.*>= 0"),
    "label beyond class_names": (
        _bad(class_names=np.array(["a", "b", "c"]), y_test=np.array([0, 1, 3, 2, 0, 1])),
        r"label 3.*0\.\.2",
    ),
    "fractional label": (_bad(y_test=np.array([0, 1, 1.5, 2, 0, 1])), r"label 1\.5.*whole numbers"),
    "string labels": (_bad(y_test=np.array(["a"] * 6)), "y_test has dtype <U1"),
    "one class": (_bad(y_test=np.zeros(6, dtype=int)), "1 class.*at least 2"),
    "class_names not strings": (_bad(class_names=np.arange(3)), "class_names has dtype int64"),
    "train shape": (
        _bad(x_train=pixels((4, 9, 9)), y_train=labels(4)),
        re.escape("(1, 9, 9)") + ".*" + re.escape("(1, 8, 8)"),
    ),
    "train labels": (_bad(x_train=pixels((4, 8, 8)), y_train=labels(3)), "3 labels but x_train has 4 images"),
    "x_train alone": (_bad(x_train=pixels((4, 8, 8))), "missing y_train"),
    "no y_test": (_bad(y_test=None), "has keys x_test: missing y_test.*required: x_test, y_test"),
    "unknown key": (_bad(class_name=np.array(["a", "b", "c"])), "unknown class_name"),
}


@pytest.mark.parametrize("case", BAD_ARRAYS)
def test_bad_arrays_are_usage_errors_naming_the_value(tmp_path, case):
    arrays, message = BAD_ARRAYS[case]
    with pytest.raises(UsageError, match=message):
        load_dataset(write(tmp_path, **arrays))


def test_a_pickled_object_array_is_refused_not_unpickled(tmp_path):
    x = np.empty(6, dtype=object)
    x[:] = [pixels((8, 8))] * 6
    with pytest.raises(UsageError, match="x_test is an object array"):
        load_dataset(write(tmp_path, x_test=x, y_test=labels(6)))


def test_files_that_are_not_npz_archives_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        dataset_info(f"npz:{tmp_path / 'missing.npz'}")
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(UsageError, match="is not an .npz file"):
        dataset_info(f"npz:{tmp_path / 'text.npz'}")
    np.save(tmp_path / "one.npy", pixels((6, 8, 8)))
    with pytest.raises(UsageError, match="single .npy array"):
        dataset_info(f"npz:{tmp_path / 'one.npy'}")
    with pytest.raises(UsageError, match="needs a path"):
        dataset_info("npz")


def test_whole_number_float_labels_are_accepted(tmp_path):
    test = load_dataset(write(tmp_path, x_test=pixels((6, 8, 8)), y_test=labels(6).astype(np.float32)))
    assert test.y.dtype == torch.int64 and test.y.tolist() == labels(6).tolist()


def test_without_x_train_there_is_no_train_split(tmp_path):
    name = write(tmp_path, x_test=pixels((6, 8, 8)), y_test=labels(6))
    info = dataset_info(name)
    assert info.has_train is False
    assert DatasetInfo.from_dict(info.to_dict()).has_train is False
    with pytest.raises(UsageError, match="no x_train/y_train"):
        load_dataset(name, "train")


def test_with_x_train_both_splits_load(tmp_path):
    name = write(tmp_path, x_test=pixels((6, 8, 8)), y_test=labels(6), x_train=pixels((9, 8, 8), 1), y_train=labels(9))
    assert dataset_info(name).has_train is True
    assert (len(load_dataset(name, "train")), len(load_dataset(name, "test"))) == (9, 6)


def test_runs_saved_before_has_train_read_as_having_a_train_split():
    old = dataset_info("digits").to_dict()
    del old["has_train"]
    assert DatasetInfo.from_dict(old).has_train is True


def test_class_names_are_used_and_set_the_class_count(tmp_path):
    names = np.array(["cat", "dog", "bird", "fish"])
    info = dataset_info(write(tmp_path, x_test=pixels((6, 8, 8)), y_test=labels(6, 2), class_names=names))
    assert info.class_names == ("cat", "dog", "bird", "fish") and info.num_classes == 4


def test_without_class_names_the_largest_label_of_either_split_sets_the_count(tmp_path):
    name = write(
        tmp_path, x_test=pixels((6, 8, 8)), y_test=labels(6, 2), x_train=pixels((9, 8, 8)), y_train=labels(9, 5)
    )
    assert dataset_info(name).class_names == ("0", "1", "2", "3", "4")


def test_mean_and_std_come_from_x_train_when_present(tmp_path):
    x_test, x_train = pixels((6, 4, 4, 3), 0), pixels((9, 4, 4, 3), 1) // 2
    x_train[..., 2] = 7  # a constant channel: its std is clamped, not 0
    info = dataset_info(write(tmp_path, x_test=x_test, y_test=labels(6), x_train=x_train, y_train=labels(9)))
    channels = x_train.transpose(3, 0, 1, 2).reshape(3, -1) / 255  # (C, N*H*W) in [0, 1]
    assert info.mean == pytest.approx(channels.mean(axis=1).tolist(), abs=1e-6)
    assert info.std[:2] == pytest.approx(channels[:2].std(axis=1, ddof=1).tolist(), abs=1e-6)
    assert info.std[2] == pytest.approx(1e-3)


def test_mean_and_std_come_from_x_test_without_x_train(tmp_path):
    x = np.random.default_rng(0).random((6, 1, 4, 4), dtype=np.float32)
    info = dataset_info(write(tmp_path, x_test=x, y_test=labels(6)))
    assert info.mean == pytest.approx([x.mean()], abs=1e-6)
    assert info.std == pytest.approx([x.std(ddof=1)], abs=1e-6)


def test_an_edited_file_is_read_again(tmp_path):
    name = write(tmp_path, x_test=pixels((6, 8, 8)), y_test=labels(6))
    assert dataset_info(name).shape == (1, 8, 8)
    write(tmp_path, x_test=pixels((6, 3, 5, 5)), y_test=labels(6))
    assert dataset_info(name).shape == (3, 5, 5)
