"""The standard benchmark datasets. They need their files under --data-dir, or --download (internet).

CIFAR-10 is read from the *binary* release, not the Python one, because the Python release is a pickle
and we never unpickle files. SVHN is a MATLAB file read with scipy. MNIST and Fashion-MNIST are read here
from the raw IDX files (torchvision only downloads them: its dataset classes would open old pickles).
Every reader refuses what a cast would change silently: NaN or float pixels, labels out of range.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from robustcnn.data.base import DATASETS, Augment, DataOptions, DatasetInfo, Source, Split
from robustcnn.data.offline import DIGIT_NAMES
from robustcnn.errors import UsageError
from robustcnn.threat import Norm, ThreatModel

_SMALL_RECIPE = {"epochs": 10, "batch_size": 128, "optimizer": "adam", "lr": 1e-3, "eps_warmup": 2}
_CIFAR_RECIPE = {"epochs": 100, "batch_size": 128, "optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4}


def _missing(name: str, where: Path, what: str) -> UsageError:
    return UsageError(
        f"dataset {name!r} not found in {where} (expected {what}); "
        f"run again with --download (needs internet) or copy the files there, or pick --data-dir"
    )


def _download_failed(name: str, where: Path, error: Exception) -> UsageError:
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return UsageError(
        f"could not download dataset {name!r} into {where}: {reason}; "
        "check the internet connection, or copy the files there by hand"
    )


class _TorchvisionIdx(Source):
    """MNIST-format IDX files, read here (torchvision only downloads them); subclasses name the torchvision class.

    Reading the raw files ourselves means torchvision's legacy `processed/*.pt` pickles are never opened.
    """

    INFO: DatasetInfo

    def info(self, options: DataOptions) -> DatasetInfo:
        return self.INFO

    def torchvision_class(self):
        raise NotImplementedError

    def load(self, split: Split, options: DataOptions) -> tuple[torch.Tensor, torch.Tensor]:
        cls = self.torchvision_class()
        folder = Path(options.data_dir) / cls.__name__ / "raw"
        prefix = "train" if split is Split.TRAIN else "t10k"
        images, labels = folder / f"{prefix}-images-idx3-ubyte", folder / f"{prefix}-labels-idx1-ubyte"
        if options.download and not (images.is_file() and labels.is_file()):
            self._download(cls, folder)
        if not (images.is_file() and labels.is_file()):
            raise _missing(self.INFO.name, folder, "the four *-ubyte files")
        x, y = _read_idx(images, 3), _read_idx(labels, 1)  # (N, 28, 28), (N,) uint8
        if x.shape[1:] != self.INFO.shape[1:] or len(x) != len(y) or (len(y) and y.max() > 9):
            raise UsageError(
                f"{folder}: {images.name} holds images of shape {x.shape} and {labels.name} {len(y)} labels "
                f"up to {y.max() if len(y) else None}; expected N 28x28 images and N labels in 0..9"
            )
        return torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64))  # (N, 1, 28, 28) uint8

    def _download(self, cls, folder: Path) -> None:
        """torchvision's mirrors and checksums, without its dataset class (which would open legacy pickles)."""
        from torchvision.datasets.utils import download_and_extract_archive

        for filename, md5 in cls.resources:
            for i, mirror in enumerate(cls.mirrors):
                try:
                    download_and_extract_archive(f"{mirror}{filename}", str(folder), filename=filename, md5=md5)
                    break
                except (OSError, RuntimeError) as error:  # URLError is an OSError; a bad checksum a RuntimeError
                    if i == len(cls.mirrors) - 1:
                        raise _download_failed(self.INFO.name, folder, error) from None


def _read_idx(path: Path, dims: int) -> np.ndarray:
    """MNIST's IDX format: two zero bytes, a type byte (0x08 = uint8), the number of dimensions, big-endian
    int32 sizes, then the data. Checked byte by byte, so a truncated or foreign file is a clear error."""
    data = path.read_bytes()
    header = 4 + 4 * dims
    if len(data) < header or data[:2] != b"\0\0" or data[3] != dims:
        raise UsageError(
            f"{path} is not an IDX file with {dims} dimension(s) (it starts {data[:4].hex() or 'empty'}); "
            "expected MNIST's *-ubyte format: delete it and run again with --download"
        )
    if data[2] != 0x08:
        raise UsageError(
            f"{path}: IDX data type 0x{data[2]:02x} is not allowed; MNIST-format files hold uint8 data (0x08)"
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    if len(data) - header != math.prod(shape):
        raise UsageError(
            f"{path} holds {len(data) - header} bytes of data but its header says {shape}; it is truncated "
            "or corrupt: delete it and run again with --download"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


@DATASETS.register("mnist")
class Mnist(_TorchvisionIdx):
    INFO = DatasetInfo(
        name="mnist",
        shape=(1, 28, 28),
        class_names=DIGIT_NAMES,
        mean=(0.1307,),
        std=(0.3081,),
        threat_model=ThreatModel(Norm.LINF, 0.3),  # Madry et al. 2018
        l2_eps=2.0,
        train_defaults=_SMALL_RECIPE,
    )

    def torchvision_class(self):
        from torchvision.datasets import MNIST

        return MNIST


@DATASETS.register("fashion-mnist")
class FashionMnist(_TorchvisionIdx):
    INFO = DatasetInfo(
        name="fashion-mnist",
        shape=(1, 28, 28),
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),  # fmt: skip
        mean=(0.2860,),
        std=(0.3530,),
        threat_model=ThreatModel(Norm.LINF, 0.1),  # the common Fashion-MNIST budget
        l2_eps=1.5,
        train_defaults=_SMALL_RECIPE,
    )

    def torchvision_class(self):
        from torchvision.datasets import FashionMNIST

        return FashionMNIST


@DATASETS.register("cifar10")
class Cifar10(Source):
    URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
    MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
    FOLDER = "cifar-10-batches-bin"
    RECORD = 1 + 3 * 32 * 32  # one label byte, then the image as (3, 32, 32) uint8
    INFO = DatasetInfo(
        name="cifar10",
        shape=(3, 32, 32),
        class_names=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        threat_model=ThreatModel(Norm.LINF, 8 / 255),  # RobustBench Linf
        augment=Augment.CROP_FLIP,
        train_defaults=_CIFAR_RECIPE,
    )

    def info(self, options: DataOptions) -> DatasetInfo:
        return self.INFO

    def files(self, split: Split) -> list[str]:
        return [f"data_batch_{i}.bin" for i in range(1, 6)] if split is Split.TRAIN else ["test_batch.bin"]

    def load(self, split: Split, options: DataOptions) -> tuple[torch.Tensor, torch.Tensor]:
        folder = Path(options.data_dir) / self.FOLDER
        paths = [folder / name for name in self.files(split)]
        if options.download and not all(p.is_file() for p in paths):
            from torchvision.datasets.utils import download_and_extract_archive

            try:
                download_and_extract_archive(self.URL, download_root=str(options.data_dir), md5=self.MD5)
            except (OSError, RuntimeError) as error:
                raise _download_failed("cifar10", folder, error) from None
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise _missing("cifar10", folder, f"the binary release's {', '.join(missing)}")
        records = np.concatenate([self._records(p) for p in paths])
        x = torch.from_numpy(records[:, 1:].reshape(-1, 3, 32, 32).copy())
        return x, torch.from_numpy(records[:, 0].astype(np.int64))

    def _records(self, path: Path) -> np.ndarray:
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size == 0 or raw.size % self.RECORD:
            raise UsageError(f"{path} is not a CIFAR-10 binary batch (size {raw.size} is not a multiple of 3073)")
        records = raw.reshape(-1, self.RECORD)
        if records[:, 0].max() > 9:
            raise UsageError(f"{path} has labels above 9; it is not a CIFAR-10 binary batch")
        return records


@DATASETS.register("svhn")
class Svhn(Source):
    URLS = {
        Split.TRAIN: ("http://ufldl.stanford.edu/housenumbers/train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
        Split.TEST: ("http://ufldl.stanford.edu/housenumbers/test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3"),
    }
    INFO = DatasetInfo(
        name="svhn",
        shape=(3, 32, 32),
        class_names=DIGIT_NAMES,
        mean=(0.4377, 0.4438, 0.4728),
        std=(0.1980, 0.2010, 0.1970),
        threat_model=ThreatModel(Norm.LINF, 8 / 255),
        augment=Augment.CROP,  # no flips: a mirrored digit is another symbol
        train_defaults={**_CIFAR_RECIPE, "epochs": 30, "lr": 0.01},  # AT on SVHN diverges at lr 0.1
    )

    def info(self, options: DataOptions) -> DatasetInfo:
        return self.INFO

    def load(self, split: Split, options: DataOptions) -> tuple[torch.Tensor, torch.Tensor]:
        url, md5 = self.URLS[split]
        folder = Path(options.data_dir) / "svhn"
        path = folder / Path(url).name
        if options.download and not path.is_file():
            from torchvision.datasets.utils import download_url

            try:
                download_url(url, root=str(folder), md5=md5)
            except (OSError, RuntimeError) as error:
                raise _download_failed("svhn", folder, error) from None
        if not path.is_file():
            raise _missing("svhn", folder, path.name)
        return self._read(path)

    def _read(self, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
        from scipy.io import loadmat

        try:
            mat = loadmat(path)
            x, y = np.asarray(mat["X"]), np.asarray(mat["y"])  # (32, 32, 3, N) uint8, (N, 1) with 10 meaning 0
        except (ValueError, KeyError, OSError, TypeError) as error:
            raise UsageError(f"{path} is not an SVHN .mat file ({error})") from None
        if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or y.size != x.shape[-1]:
            raise UsageError(
                f"{path}: X has shape {x.shape} and y {y.shape}; expected X (32, 32, 3, N) and y (N, 1) as in SVHN"
            )
        _check_whole_numbers(path, "label", y, 0, 10)  # 10 (or 0) is the digit 0
        _check_whole_numbers(path, "pixel value", x, 0, 255)
        images = np.ascontiguousarray(x.transpose(3, 2, 0, 1), dtype=np.uint8)  # (N, 3, 32, 32)
        return torch.from_numpy(images), torch.from_numpy(y.reshape(-1).astype(np.int64) % 10)


def _check_whole_numbers(path: Path, what: str, values: np.ndarray, low: int, high: int) -> None:
    """Refuses what a cast to integers would silently change: NaN, inf, fractions, values out of range."""
    if values.dtype == np.uint8 and low == 0 and high >= 255:
        return
    if not (np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)):
        raise UsageError(f"{path}: {what}s have type {values.dtype}; expected whole numbers in {low}..{high}")
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(values) & (values >= low) & (values <= high) & (values == np.round(values))
    if not ok.all():
        raise UsageError(
            f"{path}: {what} {values[~ok].flat[0].item()!r} is not allowed; expected whole numbers in {low}..{high}"
        )
