"""Every dataset loader, on the offline data or on small files made here in the real on-disk formats."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_cifar_binary, make_idx_dataset, make_image_folder, make_svhn_mat

from robustcnn.data import dataset_info, dataset_names, load_dataset
from robustcnn.errors import UsageError


def test_registry_lists_every_dataset():
    assert dataset_names() == ["cifar10", "digits", "fashion-mnist", "imagefolder", "mnist", "mnist5k", "npz", "svhn"]


def test_mnist5k_is_a_stratified_disjoint_4000_1000_split():
    train, test = load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")
    assert (len(train), len(test)) == (4000, 1000)
    assert test.y.bincount().tolist() == [100] * 10
    assert train.y.bincount().tolist() == [400] * 10
    assert train.x.dtype == torch.uint8 and train.x.shape[1:] == (1, 28, 28)
    train_rows = {bytes(row) for row in train.x.flatten(1).numpy()}
    assert not any(bytes(row) in train_rows for row in test.x.flatten(1).numpy())
    assert len(set(test.y[:50].tolist())) > 5, "the first test images must not all be one class"


def _labels() -> list[np.ndarray]:
    """mnist5k's (sorted by class), the digits', random and unbalanced ones, ones whose remainders tie."""
    from sklearn.datasets import load_digits

    from robustcnn.data.offline import _mnist5k_arrays

    rng = np.random.default_rng(0)
    unbalanced, tied = np.repeat(np.arange(5), [3, 40, 17, 2, 91]), np.repeat([4, 9, 1], 11)
    return [
        _mnist5k_arrays()[1],
        load_digits().target,
        rng.integers(0, 7, 503),
        unbalanced,
        tied,
        rng.integers(0, 3, 60),
    ]


@pytest.mark.parametrize("test_size", [1000, 360, 0.2, 0.25, 9, 0.5])
def test_stratified_split_is_scikit_learns(test_size):
    """robustcnn writes out scikit-learn's stratified train_test_split (its import costs the sweep's start-up): the
    same train and test indices, in the same order, for the same seed."""
    from sklearn.model_selection import train_test_split

    from robustcnn.data.base import stratified_split

    checked = 0
    for y in _labels():
        n_test = test_size if isinstance(test_size, int) else int(np.ceil(test_size * len(y)))
        classes = len(np.unique(y))
        if not classes <= n_test <= len(y) - classes:
            continue
        for seed in (0, 1, 7):
            theirs = train_test_split(np.arange(len(y)), test_size=test_size, stratify=y, random_state=seed)
            ours = stratified_split(y, test_size, seed)
            assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True)), (test_size, seed, len(y))
            checked += 1
    assert checked >= 6


def test_images_are_floats_in_unit_range_and_batches_cover_the_set():
    test = load_dataset("mnist5k", "test")
    x = test.images()
    assert x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1 and x.max() > 0.9
    seen = torch.cat([y for _, y in test.batches(300)])
    assert torch.equal(seen, test.y)


def test_digits_has_8x8_images_rescaled_to_0_255():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert (len(train), len(test)) == (1437, 360)
    assert train.info.shape == (1, 8, 8) and int(train.x.max()) == 255


def test_each_dataset_carries_shape_classes_and_threat_model():
    mnist, cifar = dataset_info("mnist5k"), dataset_info("cifar10")
    assert mnist.threat_model.eps == pytest.approx(0.3) and mnist.num_classes == 10
    assert cifar.threat_model.eps == pytest.approx(8 / 255) and cifar.shape == (3, 32, 32)
    assert dataset_info("fashion-mnist").class_names[9] == "Ankle boot"


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_idx_datasets_load_from_torchvision_layout(tmp_path, name, folder):
    make_idx_dataset(tmp_path, folder, n_train=30, n_test=20)
    train = load_dataset(name, "train", data_dir=tmp_path)
    test = load_dataset(name, "test", data_dir=tmp_path)
    assert (len(train), len(test)) == (30, 20)
    assert train.x.shape == (30, 1, 28, 28) and test.y.tolist() == [i % 10 for i in range(20)]


def test_cifar10_reads_the_binary_release(tmp_path):
    make_cifar_binary(tmp_path, per_file=7)
    train, test = load_dataset("cifar10", "train", tmp_path), load_dataset("cifar10", "test", tmp_path)
    assert (len(train), len(test)) == (35, 7)
    raw = np.fromfile(tmp_path / "cifar-10-batches-bin" / "test_batch.bin", np.uint8).reshape(7, 3073)
    assert torch.equal(test.x[3], torch.from_numpy(raw[3, 1:].reshape(3, 32, 32)))
    assert test.y.tolist() == raw[:, 0].tolist()


def test_cifar10_rejects_a_truncated_batch(tmp_path):
    make_cifar_binary(tmp_path, per_file=3)
    path = tmp_path / "cifar-10-batches-bin" / "test_batch.bin"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(UsageError, match="not a CIFAR-10 binary batch"):
        load_dataset("cifar10", "test", tmp_path)


def test_svhn_reads_mat_files_and_maps_label_10_to_digit_0(tmp_path):
    make_svhn_mat(tmp_path, n=12)
    test = load_dataset("svhn", "test", tmp_path)
    assert test.x.shape == (12, 3, 32, 32)
    assert test.y.tolist() == [(i % 10 + 1) % 10 for i in range(12)]


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10", "svhn"])
def test_missing_files_say_how_to_get_them(tmp_path, name):
    with pytest.raises(UsageError, match="--download"):
        load_dataset(name, "test", data_dir=tmp_path / "empty")


def test_failed_download_is_one_clear_error(tmp_path, monkeypatch):
    import urllib.error

    import torchvision.datasets.utils as tv_utils

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    with pytest.raises(UsageError, match="could not download dataset 'cifar10'"):
        load_dataset("cifar10", "test", data_dir=tmp_path, download=True)


def test_imagefolder_with_train_and_test_folders(tmp_path):
    make_image_folder(tmp_path, per_class=4, size=(12, 10))
    train = load_dataset(f"imagefolder:{tmp_path}", "train")
    assert train.info.shape == (3, 10, 12) and train.info.class_names == ("cat", "dog")
    assert len(train) == 8 and train.y.tolist() == [0] * 4 + [1] * 4


def test_imagefolder_without_split_is_split_80_20(tmp_path):
    make_image_folder(tmp_path, per_class=10, mode="L", split=False)
    train, test = (load_dataset(f"imagefolder:{tmp_path}", s) for s in ("train", "test"))
    assert (len(train), len(test)) == (16, 4) and train.info.shape[0] == 1


@pytest.mark.parametrize(
    ("problem", "message"),
    [("empty", "no images found"), ("sizes", "same size"), ("modes", "greyscale"), ("missing", "not a directory")],
)
def test_imagefolder_problems_are_clear_errors(tmp_path, problem, message):
    from PIL import Image

    root = tmp_path / "images"
    if problem == "empty":
        (root / "a").mkdir(parents=True)
        (root / "b").mkdir()
    elif problem == "sizes":
        make_image_folder(root, per_class=3, split=False)
        Image.new("RGB", (20, 20)).save(root / "cat" / "big.png")
    elif problem == "modes":
        make_image_folder(root, per_class=3, split=False)
        Image.new("L", (12, 10)).save(root / "dog" / "grey.png")
    with pytest.raises(UsageError, match=message):
        load_dataset(f"imagefolder:{root}", "train")


def test_unknown_dataset_lists_the_valid_names():
    with pytest.raises(UsageError, match="unknown dataset 'imagenet'; choose one of: cifar10, digits"):
        load_dataset("imagenet")
