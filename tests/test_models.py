"""Every registered model builds for every kind of input and keeps normalisation inside."""

from __future__ import annotations

import pytest
import torch

from robustcnn.data import dataset_info
from robustcnn.errors import UsageError
from robustcnn.models import ModelConfig, create_model, model_names

SHAPES = {"mnist5k": (1, 28, 28), "digits": (1, 8, 8), "cifar10": (3, 32, 32)}


def test_registry_lists_every_architecture():
    assert model_names() == ["ibpcnn", "lenet5", "resnet18", "smallcnn", "wrn-28-10"]


@pytest.mark.parametrize("arch", ["smallcnn", "lenet5", "ibpcnn", "resnet18", "wrn-28-10"])
@pytest.mark.parametrize("dataset", sorted(SHAPES))
def test_every_model_adapts_to_channels_size_and_classes(arch, dataset):
    info = dataset_info(dataset)
    model = create_model(ModelConfig.for_dataset(arch, info)).eval()
    with torch.no_grad():
        logits = model(torch.rand(2, *SHAPES[dataset]))
    assert logits.shape == (2, info.num_classes) and torch.isfinite(logits).all()


def test_odd_sizes_and_class_counts_work():
    config = ModelConfig("smallcnn", 3, 20, 36, 7, (0.5,) * 3, (0.25,) * 3)
    assert create_model(config)(torch.rand(3, 3, 20, 36)).shape == (3, 7)


def test_normalisation_lives_inside_the_model():
    config = ModelConfig("smallcnn", 1, 28, 28, 10, (0.1307,), (0.3081,))
    model = create_model(config).eval()
    x = torch.rand(4, 1, 28, 28)  # pixels in [0, 1]
    by_hand = model.net((x - 0.1307) / 0.3081)
    assert torch.allclose(model(x), by_hand)


def test_too_small_images_are_refused_with_the_minimum():
    with pytest.raises(UsageError, match="at least 8x8"):
        create_model(ModelConfig("resnet18", 1, 6, 6, 10, (0.5,), (0.5,)))


def test_amp_forward_runs_in_bf16_and_returns_float32_logits():
    config = ModelConfig("smallcnn", 1, 28, 28, 10, (0.5,), (0.5,))
    model = create_model(config).eval()
    seen = []
    model.net[0][0].register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    model(torch.rand(2, 1, 28, 28))
    model.amp_dtype = torch.bfloat16
    logits = model(torch.rand(2, 1, 28, 28))
    assert seen == [torch.float32, torch.bfloat16]  # the first convolution ran under autocast only when asked
    assert logits.dtype == torch.float32


def test_unknown_architecture_lists_the_valid_ones():
    with pytest.raises(UsageError, match="unknown architecture 'vgg'; choose one of: ibpcnn, lenet5, resnet18"):
        create_model(ModelConfig("vgg", 1, 28, 28, 10, (0.5,), (0.5,)))
