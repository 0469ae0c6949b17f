"""ImageNet-style evaluation of an image folder: the eval transform (bit for bit torchvision's), the ImageNet
class index of WordNet-id folders, class maps, a flat folder with a labels file, a subset file in its order,
decoding only what is evaluated, the transform pretrained weights declare, and every bad input as one line."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_cli

import robustcnn
from robustcnn.data import (
    DatasetInfo,
    FolderOptions,
    Interpolation,
    dataset_info,
    imagefolder,
    load_dataset,
    split_labels,
)
from robustcnn.data.imagefolder import decode
from robustcnn.errors import UsageError

WNIDS = ("n01440764", "n01443537", "n15075141")  # ImageNet-1k indices 0, 1 and 999 (tench, goldfish, toilet tissue)
SIZES = [(300, 400), (427, 500), (260, 260), (350, 300)]  # (H, W) cut from the 427x640 photographs
FGSM_SUITE = '[[attack]]\nname = "fgsm"\ntype = "fgsm"\nnorm = "inf"\neps = [0.004, 0.016]\n'
TINY_NET = """
import torch
from torch import nn


def build():
    torch.manual_seed(0)  # the same weights every time: cells are keyed on them
    # torchvision-style: any 3-channel size in, 1000 logits out
    pool = nn.AdaptiveAvgPool2d(2)
    return nn.Sequential(nn.Conv2d(3, 4, 8, stride=8), nn.ReLU(), pool, nn.Flatten(), nn.Linear(16, 1000))
"""


def photos() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return load_sample_images().images  # two 427x640 RGB photographs, shipped with scikit-learn


def imagenet_folder(root: Path, wnids=WNIDS, per_class: int = 2) -> Path:
    """wnid/ILSVRC2012_val_*.JPEG cut at mixed sizes from the photographs."""
    from PIL import Image

    pictures, k = photos(), 0
    for wnid in wnids:
        (root / wnid).mkdir(parents=True)
        for _ in range(per_class):
            height, width = SIZES[k % len(SIZES)]
            picture = pictures[k % 2][k * 7 : k * 7 + height, k * 11 : k * 11 + width]
            k += 1
            Image.fromarray(picture).save(root / wnid / f"ILSVRC2012_val_{k:08d}.JPEG", quality=90)
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return imagenet_folder(tmp_path_factory.mktemp("imagenet") / "val")


def torchvision_eval(files: list[Path], weights_transforms) -> torch.Tensor:
    """What torchvision's ImageFolder loader and the weights' transforms() give: normalised floats (N, 3, H, W)."""
    from PIL import Image

    return torch.stack([weights_transforms(Image.open(path).convert("RGB")) for path in files])


def normalised(x: torch.Tensor, mean, std) -> torch.Tensor:
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


# --- the transform ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("weights", ["IMAGENET1K_V2", "IMAGENET1K_V1"])  # resize 232 and 256, both crop 224
def test_pixels_are_torchvisions_eval_transform_bit_for_bit(folder, weights):
    from torchvision.models import ResNet50_Weights

    preset = ResNet50_Weights[weights].transforms()
    options = FolderOptions(resize=preset.resize_size[0], crop=preset.crop_size[0])
    data = load_dataset(f"imagefolder:{folder}", "test", folder=options)
    theirs = torchvision_eval(sorted(folder.rglob("*.JPEG")), preset)  # the listing's order: class, then file
    assert data.x.dtype == torch.uint8 and data.x.shape == (6, 3, 224, 224)
    assert torch.allclose(normalised(data.images(), preset.mean, preset.std), theirs, atol=1e-6, rtol=0)


def test_timm_eval_transform_bit_for_bit_with_bicubic(folder):
    timm = pytest.importorskip("timm")
    from robustcnn.models.external import declared_transform

    declared = declared_transform(robustcnn.Model("timm:resnet50", model_args={"pretrained": True}))
    config = timm.data.resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg("resnet50").to_dict())
    assert (declared.resize, declared.crop, declared.interpolation) == (235, 224, Interpolation.BICUBIC)
    options = FolderOptions(declared.resize, declared.crop, declared.interpolation)
    data = load_dataset(f"imagefolder:{folder}", "test", folder=options)
    theirs = torchvision_eval(sorted(folder.rglob("*.JPEG")), timm.data.create_transform(**config))
    assert torch.allclose(normalised(data.images(), config["mean"], config["std"]), theirs, atol=1e-6, rtol=0)


def test_pretrained_weights_bring_their_normalisation_unless_normalize_is_given():
    """torchvision's and timm's weights declare the mean and std their transform normalises with; a model without
    --normalize gets them (one stderr line), while any --normalize, none included, is kept as given."""
    timm = pytest.importorskip("timm")
    import torchvision

    from robustcnn.models.external import declared_normalization
    from robustcnn.sweep.subjects import _declared_normalization

    preset = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.transforms()
    resnet = robustcnn.Model("torchvision:resnet50", model_args={"weights": "IMAGENET1K_V2"})
    assert declared_normalization(resnet) == ",".join(f"{v:g}" for v in (*preset.mean, *preset.std))
    config = timm.data.resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg("inception_v3").to_dict())
    inception = robustcnn.Model("timm:inception_v3", model_args={"pretrained": True})
    assert declared_normalization(inception) == ",".join(f"{v:g}" for v in (*config["mean"], *config["std"]))
    assert config["mean"] != preset.mean  # (0.5, 0.5, 0.5): not ImageNet's, which a guess would have used
    assert declared_normalization(robustcnn.Model("torchvision:resnet50")) is None  # random weights declare nothing
    normalised, note = _declared_normalization(resnet)
    assert normalised.normalize == declared_normalization(resnet) and note.startswith("normalising as its weights")
    for given in ("none", "imagenet"):
        assert _declared_normalization(replace(resnet, normalize=given)) == (replace(resnet, normalize=given), None)


def test_greyscale_and_palette_images_become_rgb_as_torchvisions_loader_makes_them(tmp_path):
    from PIL import Image

    root = imagenet_folder(tmp_path / "val", per_class=1)
    picture = photos()[1][:300, :280]
    Image.fromarray(picture).convert("L").save(root / WNIDS[0] / "grey.png")
    Image.fromarray(picture).convert("P").save(root / WNIDS[1] / "palette.png")
    data = load_dataset(f"imagefolder:{root}", "test", folder=FolderOptions(resize=64, crop=56))
    assert data.x.shape == (5, 3, 56, 56)
    from torchvision.transforms import functional as F

    rgb = Image.open(root / WNIDS[0] / "grey.png").convert("RGB")
    expected = F.pil_to_tensor(F.center_crop(F.resize(rgb, [64]), [56]))
    grey = sorted((root / WNIDS[0]).iterdir()).index(root / WNIDS[0] / "grey.png")
    assert torch.equal(data.x[grey], expected) and torch.equal(data.x[grey][0], data.x[grey][2])


def test_resize_alone_needs_one_aspect_ratio_and_no_options_keeps_the_one_size_rule(folder):
    with pytest.raises(UsageError, match=r"after resize 64 bilinear but .* images of other shapes need --crop N"):
        dataset_info(f"imagefolder:{folder}", folder=FolderOptions(resize=64))
    with pytest.raises(UsageError, match="all images must have the same size .* give --resize N --crop N"):
        dataset_info(f"imagefolder:{folder}")


# --- class mapping and which split is the test set ---------------------------------------------------------------
def test_wordnet_folders_get_imagenet_indices_and_are_a_test_only_evaluation_set(folder):
    info = dataset_info(f"imagefolder:{folder.parent}", folder=FolderOptions(resize=64, crop=56))  # PATH/val found
    labels = split_labels(f"imagefolder:{folder.parent}", "test", folder=FolderOptions(resize=64, crop=56))
    assert labels.tolist() == [0, 0, 1, 1, 999, 999] and info.num_classes == 1000
    assert info.class_names[0] == "tench" and info.class_names[999] == "toilet tissue"
    assert not info.has_train and info.mean == imagefolder.IMAGENET_MEAN and info.std == imagefolder.IMAGENET_STD
    shipped = (Path(imagefolder.__file__).parent / "imagenet_wnids.txt").read_text().split()
    assert len(shipped) == 1000 and shipped == sorted(set(shipped)) and shipped[999] == "n15075141"
    with pytest.raises(UsageError, match="labelled evaluation set .* has no train split"):
        load_dataset(f"imagefolder:{folder}", "train", folder=FolderOptions(resize=64, crop=56))


def test_plain_train_and_val_folders_stay_trainable(tmp_path):
    from conftest import make_image_folder

    make_image_folder(tmp_path / "a", per_class=3)
    root = tmp_path / "b"
    shutil.copytree(tmp_path / "a" / "train", root / "train")
    shutil.copytree(tmp_path / "a" / "test", root / "val")
    info = dataset_info(f"imagefolder:{root}")
    assert info.has_train and info.class_names == ("cat", "dog") and info.variant == ""
    assert split_labels(f"imagefolder:{root}", "test").tolist() == [0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize("kind", ["text", "json", "timm synsets"])
def test_class_map_files(tmp_path, kind):
    from conftest import make_image_folder

    if kind == "timm synsets":  # read as it is: its line numbers are the ImageNet indices
        root = imagenet_folder(tmp_path / "images", per_class=1)
        class_map = Path(imagefolder.__file__).parent / "imagenet_wnids.txt"
        expected, classes = [0, 1, 999], 1000
    else:
        root = make_image_folder(tmp_path / "images", per_class=2, split=False)
        class_map = tmp_path / f"map.{kind}"
        if kind == "text":
            class_map.write_text("dog a good dog\ncat the cat\nbird\n")
            expected, classes = [1, 1, 0, 0], 3
        else:
            class_map.write_text(json.dumps({"dog": 2, "cat": 7}))
            expected, classes = [7, 7, 2, 2], 8
    options = FolderOptions(class_map=str(class_map), **({"resize": 64, "crop": 56} if kind == "timm synsets" else {}))
    info = dataset_info(f"imagefolder:{root}", folder=options)
    assert split_labels(f"imagefolder:{root}", folder=options).tolist() == expected
    assert info.num_classes == classes and not info.has_train and "class map sha256" in info.variant
    if kind == "text":
        assert info.class_names == ("a good dog", "the cat", "bird")


def test_flat_folder_with_imagenets_solution_csv(tmp_path):
    from PIL import Image

    root = tmp_path / "flat"
    root.mkdir()
    for k, (height, width) in enumerate(SIZES):
        Image.fromarray(photos()[k % 2][:height, :width]).save(root / f"ILSVRC2012_val_{k:08d}.JPEG")
    labels = tmp_path / "LOC_val_solution.csv"
    labels.write_text(
        "ImageId,PredictionString\n"
        "ILSVRC2012_val_00000002,n15075141 12 40 200 300 n15075141 1 2 3 4\n"
        "ILSVRC2012_val_00000000,n01443537 1 2 3 4\n"
        "ILSVRC2012_val_00000003.JPEG,5\n"  # a name with its extension, an index label
        "ILSVRC2012_val_00000001,n01440764 7 7 9 9\n"
    )
    options = FolderOptions(resize=64, crop=56, labels=str(labels))
    data = load_dataset(f"imagefolder:{root}", folder=options)
    assert data.y.tolist() == [1, 0, 999, 5] and data.info.num_classes == 1000 and not data.info.has_train
    spaced = tmp_path / "labels.txt"
    spaced.write_text("\n".join(f"ILSVRC2012_val_{k:08d} {k}" for k in range(4)) + "\n")
    assert split_labels(f"imagefolder:{root}", folder=replace(options, labels=str(spaced))).tolist() == [0, 1, 2, 3]


def test_subset_file_keeps_its_order_and_only_those_images_are_decoded(folder, tmp_path, monkeypatch):
    files = sorted(folder.rglob("*.JPEG"))
    subset = tmp_path / "subset.txt"
    subset.write_text(f"{files[5].relative_to(folder).as_posix()}\n{files[0].name}\n\n{files[3].name}\n")
    options = FolderOptions(resize=64, crop=56, subset=str(subset))
    assert split_labels(f"imagefolder:{folder}", folder=options).tolist() == [999, 0, 1]
    decoded = []
    pixels = decode._pixels
    monkeypatch.setattr(decode, "_pixels", lambda path, *rest: decoded.append(path) or pixels(path, *rest))
    data = load_dataset(f"imagefolder:{folder}", folder=options, subset=[2, 0])
    assert data.y.tolist() == [1, 999] and decoded == [files[3], files[5]]  # the ImageNet map: no mean/std sample


def test_evaluation_set_mean_std_from_a_sample_and_names_in_the_variant(tmp_path):
    from conftest import make_image_folder

    root = make_image_folder(tmp_path / "images", per_class=3, split=False)
    (tmp_path / "map.txt").write_text("cat\ndog\n")
    options = FolderOptions(resize=12, crop=8, class_map=str(tmp_path / "map.txt"))
    info = dataset_info(f"imagefolder:{root}", folder=options)
    everything = load_dataset(f"imagefolder:{root}", folder=options).images()  # 6 images: the sample is all of them
    assert np.allclose(info.mean, everything.mean(dim=(0, 2, 3)).tolist(), atol=1e-6)
    assert info.variant.startswith("resize 12 bilinear, crop 8; class map sha256 ")
    back = DatasetInfo.from_dict(json.loads(json.dumps(info.to_dict())))
    assert back == replace(info, train_defaults={})  # (train_defaults are not in to_dict: a run saves its config)
    plain = dataset_info(f"imagefolder:{root}")
    assert "folder" not in plain.to_dict()
    assert DatasetInfo.from_dict(plain.to_dict()) == replace(plain, train_defaults={})


# --- bad input: one line each, before anything is decoded for an attack -------------------------------------------
def bad_case(case: str, root: Path, tmp: Path) -> FolderOptions:
    """Breaks the folder (or the options) as `case` says; returns the options to read it with."""
    options = FolderOptions(resize=64, crop=56)
    files = sorted(root.rglob("*.JPEG"))
    if case == "undecodable":
        files[1].write_bytes(files[1].read_bytes()[:600])  # header intact, pixels cut off
    elif case == "resize-below-crop":
        options = FolderOptions(resize=200, crop=224)
    elif case == "smaller-than-crop":
        options = FolderOptions(crop=280)
    elif case == "outside-imagenet":
        shutil.copytree(root / WNIDS[0], root / "n09999999")
    elif case == "outside-class-map":
        (tmp / "map.txt").write_text(f"{WNIDS[0]}\n{WNIDS[1]}\n")
        options = replace(options, class_map=str(tmp / "map.txt"))
    elif case == "class-map-duplicate-index":
        (tmp / "map.json").write_text(json.dumps({WNIDS[0]: 0, WNIDS[1]: 0, WNIDS[2]: 1}))
        options = replace(options, class_map=str(tmp / "map.json"))
    elif case == "class-map-negative-index":
        (tmp / "map.json").write_text(json.dumps({WNIDS[0]: -1, WNIDS[1]: 0, WNIDS[2]: 1}))
        options = replace(options, class_map=str(tmp / "map.json"))
    elif case == "class-map-too-big":
        (tmp / "map.txt").write_bytes(b"n01440764\n" * ((imagefolder.MAX_LIST_BYTES // 10) + 1))
        options = replace(options, class_map=str(tmp / "map.txt"))
    elif case == "subset-missing":
        (tmp / "subset.txt").write_text(f"{files[0].name}\nILSVRC2012_val_99999999.JPEG\n")
        options = replace(options, subset=str(tmp / "subset.txt"))
    elif case in ("labels-missing-images", "labels-missing-names"):
        flat = tmp / "flat"
        flat.mkdir()
        for path in files[:3]:
            shutil.copy(path, flat / path.name)
        names = [p.stem for p in files[:2]] if case == "labels-missing-images" else [p.stem for p in files]
        (tmp / "labels.csv").write_text("".join(f"{name},{WNIDS[0]}\n" for name in names))
        return replace(options, labels=str(tmp / "labels.csv"))
    return options


BAD = {  # case: what the one line says
    "undecodable": "cannot read image .*ILSVRC2012_val_00000002.JPEG",
    "resize-below-crop": "--resize 200 is smaller than --crop 224",
    "smaller-than-crop": r"ILSVRC2012_val_00000003.JPEG is 260x260, smaller than --crop 280; give --resize 280",
    "outside-imagenet": "class folder 'n09999999' .* is not one of the 1000 ImageNet-1k classes",
    "outside-class-map": "class folder 'n15075141' .* is not in the class map .*map.txt",
    "class-map-duplicate-index": "index 0 is given to both 'n01440764' and 'n01443537'",
    "class-map-negative-index": "'n01440764' has index -1; indices are whole numbers",
    "class-map-too-big": "map.txt is larger than 16 MiB",
    "subset-missing": "subset.txt line 2: 'ILSVRC2012_val_99999999.JPEG' matches no test image",
    "labels-missing-images": "1 image.* in .*flat have no label in .*labels.csv; the first: ILSVRC2012_val_00000003",
    "labels-missing-names": "3 name.* in labels file .*labels.csv match no image in .*flat; the first: 'ILSVRC2012_v",
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_clear_line(tmp_path, case):
    root = imagenet_folder(tmp_path / "val")
    options = bad_case(case, root, tmp_path)
    where = tmp_path / "flat" if options.labels else root
    with pytest.raises(UsageError, match=BAD[case]) as caught:
        load_dataset(f"imagefolder:{where}", folder=options)
    assert "\n" not in str(caught.value)


def test_a_decoding_error_in_a_worker_is_the_same_one_line(tmp_path):
    from PIL import Image

    root = tmp_path / "many"
    (root / WNIDS[0]).mkdir(parents=True)
    for k in range(decode.PARALLEL_FROM + 2):
        Image.new("RGB", (40, 30), (k, 0, 0)).save(root / WNIDS[0] / f"{k:03d}.jpg")
    broken = root / WNIDS[0] / "050.jpg"
    broken.write_bytes(broken.read_bytes()[:200])
    with pytest.raises(UsageError, match=r"^cannot read image .*050.jpg: [^\n]*$"):
        load_dataset(f"imagefolder:{root}", folder=FolderOptions(resize=32, crop=24))


def test_folder_options_apply_to_image_folders_only():
    with pytest.raises(UsageError, match="--resize, --crop apply to imagefolder:PATH data only"):
        dataset_info("mnist5k", folder=FolderOptions(resize=32, crop=28))


# --- the sweep -------------------------------------------------------------------------------------------------
def test_weights_declare_the_transform_when_none_is_given(folder):
    from robustcnn.sweep.config import SweepConfig
    from robustcnn.sweep.subjects import _folder_options

    model = robustcnn.Model("torchvision:resnet50", model_args={"weights": "IMAGENET1K_V1"})
    dataset = f"imagefolder:{folder}"
    options, note = _folder_options(model, dataset, SweepConfig(out="x"))
    assert options.transform.describe() == "resize 256 bilinear, crop 224"
    assert note == "using the eval transform its weights declare: resize 256 bilinear, crop 224"  # on stderr, built
    given = SweepConfig(out="x", resize=64, crop=56)
    assert _folder_options(model, dataset, given) == (given.folder, None)  # the user's own wins
    assert _folder_options(robustcnn.Model("torchvision:resnet50"), dataset, SweepConfig(out="x"))[0].resize is None


def test_sweep_through_the_command_line(folder, tmp_path):
    (tmp_path / "tiny.py").write_text(TINY_NET)
    (tmp_path / "suite.toml").write_text(FGSM_SUITE)
    files = sorted(folder.rglob("*.JPEG"))
    (tmp_path / "subset.txt").write_text("\n".join(p.name for p in files[::-1]) + "\n")  # reversed: order is the file's
    common = ["--dataset", f"imagefolder:{folder}", "--suite", "suite.toml", "--n", "6", "--normalize", "imagenet",
              "--resize", "232", "--crop", "224", "--subset", "subset.txt", "--no-report"]  # fmt: skip
    done = run_cli("robustcnn.sweep", "tiny.py:build", *common, "--out", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    results = pd.read_csv(tmp_path / "out" / "results.csv")
    assert {"clean", "fgsm"} <= set(results["attack"]) and (results["n"] == 6).all()
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["models"][0]["shape"] == [3, 224, 224] and manifest["models"][0]["n"] == 6

    bad = run_cli("robustcnn.sweep", "tiny.py:build", *common, "--crop", "300", "--out", "bad", cwd=tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "--resize 232 is smaller than --crop 300" in bad.stderr and not (tmp_path / "bad").exists()


def test_the_subset_files_order_is_the_order_attacked(folder, tmp_path):
    from robustcnn.sweep.config import SweepConfig
    from robustcnn.sweep.subjects import load_subjects

    (tmp_path / "tiny.py").write_text(TINY_NET)
    files = sorted(folder.rglob("*.JPEG"))
    (tmp_path / "subset.txt").write_text("\n".join(p.name for p in [files[4], files[0], files[2], files[5]]))
    config = SweepConfig(out=str(tmp_path / "o"), dataset=f"imagefolder:{folder}", resize=64, crop=56, n=3,
                         subset=str(tmp_path / "subset.txt"), seed=5)  # fmt: skip
    model = robustcnn.Model(f"{tmp_path / 'tiny.py'}:build", normalize="imagenet")
    (subject,) = load_subjects([model], config, None, torch.device("cpu"))
    assert subject.data.y.tolist() == [999, 0, 1] and subject.subset.tolist() == [0, 1, 2]


def test_a_changed_transform_never_reuses_cells(folder, tmp_path):
    (tmp_path / "tiny.py").write_text(TINY_NET)
    (tmp_path / "suite.toml").write_text(FGSM_SUITE)
    model = robustcnn.Model(f"{tmp_path / 'tiny.py'}:build", normalize="imagenet")
    common = dict(dataset=f"imagefolder:{folder}", suite=str(tmp_path / "suite.toml"), n=4, out=str(tmp_path / "o"),
                  report=False, device="cpu")  # fmt: skip
    robustcnn.sweep([model], resize=64, crop=56, **common)
    first = set((tmp_path / "o" / "cells").glob("*.npz"))
    robustcnn.sweep([model], resize=64, crop=56, **common)
    assert set((tmp_path / "o" / "cells").glob("*.npz")) == first  # the same transform: resumed
    robustcnn.sweep([model], resize=64, crop=48, **common)
    assert len(set((tmp_path / "o" / "cells").glob("*.npz")) - first) == len(first)  # another crop: new cells
