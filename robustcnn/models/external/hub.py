"""`torchvision:NAME` and `timm:NAME`: architectures by name, built with the dataset's number of classes.

Pretrained weights are asked for the libraries' own way (`--model-arg weights=IMAGENET1K_V1` for
torchvision, `--model-arg pretrained=true` for timm) and only ever fetched with --download (torchvision's
may come from its local cache without it). A weights file (--weights) is loaded on top, as for any builder.
"""

from __future__ import annotations

import difflib
from pathlib import Path

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


def _pretrained(models, name: str, wanted: str, download: bool):
    """torchvision's weights enum member; without --download its file must already be in torch's hub cache."""
    import torch

    catalogue = models.get_model_weights(name)
    options = [w.name for w in catalogue]
    if str(wanted).upper() == "DEFAULT":
        weights = catalogue.DEFAULT
    elif wanted in options:
        weights = catalogue[wanted]
    else:
        raise UsageError(f"torchvision:{name} has no weights {wanted!r}; choose one of: DEFAULT, {', '.join(options)}")
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
