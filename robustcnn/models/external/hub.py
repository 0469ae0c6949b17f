"""`torchvision:NAME` and `timm:NAME`: architectures by name, built with the dataset's number of classes.

Pretrained weights are asked for the libraries' own way (`--model-arg weights=IMAGENET1K_V1` for
torchvision, `--model-arg pretrained=true` for timm) and only ever fetched with --download (torchvision's
may come from its local cache without it). A weights file (--weights) is loaded on top, as for any builder.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path

from robustcnn.data.base import EvalTransform, Interpolation
from robustcnn.errors import UsageError, last_line
from robustcnn.models.external import LOADERS, Built, Loader, missing_extra
from robustcnn.models.external.model import Model


def _unknown(kind: str, name: str, names: list[str], listing: str) -> UsageError:
    close = difflib.get_close_matches(name, names, n=5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return UsageError(f"unknown {kind} model {name!r}{hint} ({listing} lists them)")


@LOADERS.register("torchvision")
class Torchvision(Loader):
    @classmethod
    def matches(cls, spec: str) -> bool:
        return spec.startswith("torchvision:")

    def build(self, model: Model, num_classes: int, download: bool) -> Built:
        import torchvision.models as models

        name = str(model.source).partition(":")[2]
        names = models.list_models(module=models)  # the image classifiers only
        if name not in names:
            raise _unknown("torchvision", name, names, "torchvision.models.list_models()")
        arguments = dict(model.model_args)
        if arguments.get("weights") is not None:
            arguments["weights"] = _pretrained(models, name, arguments["weights"], download)
        else:
            arguments.setdefault("num_classes", num_classes)
        try:
            net = models.get_model(name, **arguments)
        except Exception as error:
            raise UsageError(f"torchvision:{name} with {model.model_args} failed: {last_line(error)}") from None
        return Built(net, f"torchvision:{name}")

    def declared_transform(self, model: Model) -> EvalTransform | None:
        """resize_size, crop_size and interpolation of `weights.transforms()` (ImageClassification): metadata of the
        enum member, so nothing is downloaded."""
        preset = self._preset(model)
        resize, crop = getattr(preset, "resize_size", None), getattr(preset, "crop_size", None)
        if not resize or not crop or len(resize) != 1 or len(crop) != 1:
            return None
        return EvalTransform(resize[0], crop[0], Interpolation.parse(preset.interpolation.value))

    def declared_normalization(self, model: Model) -> str | None:
        preset = self._preset(model)
        mean, std = getattr(preset, "mean", None), getattr(preset, "std", None)
        return normalize_value(mean, std) if mean and std else None

    def _preset(self, model: Model):
        """`weights.transforms()` of the weights the spec names (an ImageClassification), or None."""
        import torchvision.models as models

        name, wanted = str(model.source).partition(":")[2], model.model_args.get("weights")
        if wanted is None or name not in models.list_models(module=models):
            return None
        try:
            return _weights_member(models, name, wanted).transforms()
        except UsageError:
            return None  # build() says what is wrong with the name


def normalize_value(mean, std) -> str:
    """--normalize MEAN,STD for per-channel lists, as `parse_normalize` spells it."""
    return ",".join(f"{float(v):g}" for v in (*mean, *std))


def _weights_member(models, name: str, wanted: str):
    """torchvision's weights enum member named `wanted` (or DEFAULT) of model `name`."""
    catalogue = models.get_model_weights(name)
    options = [w.name for w in catalogue]
    if str(wanted).upper() == "DEFAULT":
        return catalogue.DEFAULT
    if wanted in options:
        return catalogue[wanted]
    raise UsageError(f"torchvision:{name} has no weights {wanted!r}; choose one of: DEFAULT, {', '.join(options)}")


def _pretrained(models, name: str, wanted: str, download: bool):
    """torchvision's weights enum member; without --download its file must already be in torch's hub cache."""
    import torch

    weights = _weights_member(models, name, wanted)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not download and not cached.is_file():
        raise UsageError(
            f"torchvision:{name} weights {weights.name} are not in the cache ({cached}); add --download to fetch them"
        )
    return weights


@LOADERS.register("timm")
class Timm(Loader):
    @classmethod
    def matches(cls, spec: str) -> bool:
        return spec.startswith("timm:")

    def build(self, model: Model, num_classes: int, download: bool) -> Built:
        try:
            import timm
        except ImportError as error:
            raise missing_extra(str(model.source), "timm", error) from None
        name = str(model.source).partition(":")[2]
        if not timm.is_model(name):
            raise _unknown("timm", name, timm.list_models(), "timm.list_models()")
        arguments = {"num_classes": num_classes, **model.model_args}
        if arguments.get("pretrained") and not download:
            # timm fetches from the Hugging Face hub or a URL and cannot be told to stay offline after import
            raise UsageError(
                f"timm:{name} pretrained weights need --download (the local cache is used when it has them)"
            )
        try:
            net = timm.create_model(name, **arguments)
        except Exception as error:
            raise UsageError(f"timm:{name} with {model.model_args} failed: {last_line(error)}") from None
        return Built(net, f"timm:{name}")

    def declared_transform(self, model: Model) -> EvalTransform | None:
        """timm's eval transform of the pretrained config (no download): centre crop input_size, after resizing the
        shorter side to floor(input_size / crop_pct), as timm.data.create_transform does."""
        config = self._data_config(model)
        if config is None:
            return None
        _, height, width = config["input_size"]
        if height != width or config.get("crop_mode", "center") != "center":
            return None  # not a square centre crop: not a transform --resize / --crop can say
        try:
            interpolation = Interpolation.parse(config["interpolation"])
        except ValueError:
            return None
        return EvalTransform(math.floor(height / config["crop_pct"]), height, interpolation)

    def declared_normalization(self, model: Model) -> str | None:
        config = self._data_config(model)
        return normalize_value(config["mean"], config["std"]) if config else None

    def _data_config(self, model: Model) -> dict | None:
        """timm's resolved data config of the pretrained weights the spec asks for (no download), or None."""
        if not model.model_args.get("pretrained"):
            return None
        try:
            from timm.data import resolve_data_config
            from timm.models import get_pretrained_cfg
        except ImportError:
            return None  # build() names the missing extra
        cfg = get_pretrained_cfg(str(model.source).partition(":")[2])
        return None if cfg is None else resolve_data_config(pretrained_cfg=cfg.to_dict())
