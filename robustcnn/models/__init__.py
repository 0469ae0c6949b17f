"""Models by name. Add one by writing a builder decorated with `@MODELS.register("name")`."""

from __future__ import annotations

from robustcnn.models import ibpcnn, lenet5, resnet, smallcnn, wrn  # noqa: F401  (registers the models)
from robustcnn.models.base import MODELS, ModelConfig, Normalized, create_model

__all__ = ["MODELS", "ModelConfig", "Normalized", "create_model", "model_names"]


def model_names() -> list[str]:
    return MODELS.names()
