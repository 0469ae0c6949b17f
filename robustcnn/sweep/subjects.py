"""The models a sweep attacks, each with its test subset and ART wrapper, checked before any attack runs.

A model is a run directory written by `robustcnn.train`, or anything `robustcnn.Model` describes (a
builder, torchvision / timm by name, a .pt2 or .onnx file, an nn.Module). Both end up as a `Subject`
whose module takes [0, 1] pixels and returns logits; only the card (what the rows and the manifest say
about the model) differs.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from robustcnn.attacks import Target
from robustcnn.attacks.art import art_classifier
from robustcnn.attacks.base import Findings
from robustcnn.cell_file import subset_hash
from robustcnn.console import say
from robustcnn.data import DatasetInfo, FolderOptions, ImageSet, dataset_info, load_dataset, split_labels
from robustcnn.devices import fast_layout
from robustcnn.errors import UsageError
from robustcnn.fileio import sha256_file
from robustcnn.models.external import (
    SPEC_FORMS,
    Model,
    build_external,
    declared_normalization,
    declared_transform,
    loader_for,
    parse_spec,
)
from robustcnn.results import RUN, Check, ModelEntry, Status
from robustcnn.runs import Run, load_run
from robustcnn.sweep.config import SweepConfig
from robustcnn.sweep.model_checks import model_checks, require_fit

IN_MODEL = "in-model"  # the preprocessing column of robustcnn's own models: they normalise inside


@dataclass(frozen=True)
class Card:
    """What the results and the manifest say about a model, whatever its origin."""

    sha256: str  # of the weights attacked: the checkpoint file of a run, the loaded parameters otherwise
    key: str  # what cached cells are keyed on: the weights and everything else that changes the outputs
    arch: str  # architecture name, or the spec of a model from elsewhere
    method: str  # training method when robustcnn trained the model, else ""
    preprocessing: str  # results.csv's column: "in-model", or what was applied (e.g. "imagenet range=0-255")
    entry: ModelEntry  # what the manifest says about it (the sweep adds its own fields: runner.py)
    run: Run | None = None


@dataclass
class Subject:
    id: str  # unique name in this sweep
    card: Card
    model: nn.Module  # eval mode, on the sweep's device: [0, 1] pixels in, logits out
    info: DatasetInfo  # the dataset evaluated on
    data: ImageSet  # the n test images
    subset: np.ndarray  # their indices in the test split
    target: Target
    checks: list[Check] = field(default_factory=list)  # said about the model before any attack: the model checks

    @property
    def sha256(self) -> str:
        return self.card.sha256

    @property
    def subset_hash(self) -> str:
        return subset_hash(self.subset)


def default_batch_size(device: torch.device) -> int:
    """A fixed batch for timing the same work on any device (the benchmarks): the CPU's (kept in cache), 1024 on a
    GPU. A sweep chooses its own per model (--batch-size auto: robustcnn/sweep/batching.py)."""
    from robustcnn.sweep.batching import CPU_BATCH

    return 1024 if device.type == "cuda" else CPU_BATCH


def as_model(item: Any) -> Model:
    """What `sweep` accepts in its list: a Model, an nn.Module, a Run, or a path / spec (with @key=value)."""
    if isinstance(item, Model):
        return item
    if isinstance(item, (nn.Module, Run)):
        return Model(item)
    return parse_spec(str(item))


def models_from_command_line(specs: list[str], flags: dict[str, Any]) -> list[Model]:
    """Each MODEL with the per-model flags that fit it: run directories take only --name and --weights best|last
    (given to the config instead); builders, torchvision, timm, .pt2 and .onnx take the rest."""
    flags = {("model_args" if k == "model_arg" else k): v for k, v in flags.items()}
    models = []
    for text in specs:
        bare = parse_spec(text)
        fitting = {k: v for k, v in flags.items() if k == "name"} if is_run(bare) else flags
        models.append(parse_spec(text, fitting))
    if "weights" in flags and all(is_run(m) for m in models):
        raise UsageError(
            f"--weights {flags['weights']!r} is not allowed: choose one of: best, last (a weights file is for "
            "builder, torchvision and timm models)"
        )
    return models


def is_run(model: Model) -> bool:
    if isinstance(model.source, Run):
        return True
    if isinstance(model.source, nn.Module):
        return False
    try:
        loader_for(str(model.source))
    except UsageError:
        return True  # not a spec of any other kind: a run directory, or an error naming every form
    return False


def unique_ids(models: list) -> list[str]:
    """Given names, else run directory names (with their parent when two share a name), else the spec."""
    models = [as_model(m) for m in models]
    paths = [_run_path(m) if is_run(m) else None for m in models]
    names = [p.name or str(p) if p is not None else _default_name(m) for m, p in zip(models, paths, strict=True)]
    ids = []
    for model, path, name in zip(models, paths, names, strict=True):
        clash = path is not None and names.count(name) > 1
        ids.append(model.name or (f"{path.parent.name}/{path.name}" if clash else name))
    duplicate = next((i for i in ids if ids.count(i) > 1), None)
    if duplicate:
        raise UsageError(f"two models are called {duplicate!r}; name them apart with @name=... (or Model(name=...))")
    return ids


def _run_path(model: Model) -> Path:
    return model.source.path if isinstance(model.source, Run) else Path(str(model.source))


def _default_name(model: Model) -> str:
    if isinstance(model.source, nn.Module):
        return type(model.source).__name__
    return Path(str(model.source)).name


def test_subset(size: int, n: int, seed: int, dataset: str, ordered: bool = False) -> np.ndarray:
    """Positions of the n test images attacked: a seeded random choice, or the first n when the order is the
    user's (an image folder's --subset file)."""
    if n > size:
        raise UsageError(f"--n {n} is larger than the {size} test images of {dataset}; use --n {size} or less")
    if ordered:
        return np.arange(n)
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
    return order[:n].numpy()


def load_subjects(
    models: list, config: SweepConfig, n_default: int | None, device: torch.device, draws: int = 1
) -> list[Subject]:
    """The models, each with its test images, model checks and ART wrapper; `draws`: the suite's passes that judge a
    model found random at test time (a deterministic one gets one)."""
    if not models:
        raise UsageError(f"no models given; pass one or more models: {SPEC_FORMS}")
    models = [as_model(m) for m in models]
    ids = unique_ids(models)
    batch_size = config.batch_size  # images per batch, or "auto": chosen per model (`attack_target`)
    subjects = []
    for model, name in zip(models, ids, strict=True):
        subject = _subject(model, name, config, n_default, device, batch_size, draws)
        for note in subject.card.entry.notes:
            say(f"{name}: {note}")
        subjects.append(subject)
    return subjects


def _subject(
    model: Model, name: str, config: SweepConfig, n_default, device, batch_size: int | str, draws: int
) -> Subject:
    if is_run(model):
        card, module, info = _from_run(model, name, config)
    else:
        dataset = model.dataset or config.dataset
        if dataset is None:
            spec = f" ({model.spec})" if model.spec != name else ""
            raise UsageError(f"model {name!r}{spec} does not say which data it takes: pass --dataset NAME")
        folder, transform_note = _folder_options(model, dataset, config)
        model, normalize_note = _declared_normalization(model)
        info = dataset_info(dataset, config.data_dir, config.download, folder)
        card, module = _from_elsewhere(model, name, info, config.download)
        declared = [note for note in (transform_note, normalize_note) if note]  # said once the model is built
        card = replace(card, entry=replace(card.entry, notes=[*declared, *card.entry.notes]))
    dataset = info.name
    size = len(split_labels(dataset, "test", config.data_dir, config.download, info.folder))  # no image decoded
    n = config.n or n_default or min(size, 1000)
    subset = test_subset(size, n, config.seed, dataset, ordered=info.folder.subset is not None)
    data = load_dataset(dataset, "test", config.data_dir, config.download, info.folder, subset)  # decodes these only
    module = for_attacks(module, device)
    probe = data.images(slice(0, 64)).to(device)  # (<=64, C, H, W) in [0, 1]
    require_fit(module, probe, info, name)
    checks, findings = model_checks(module, probe, data.y[:64].to(device))
    card, verified = _verify(card, module, probe)
    judged = Judging(findings, draws if findings.random else 1)
    target = attack_target(module, info, device, batch_size, len(data), judged)
    return Subject(name, card, module, info, data, subset, target, checks + verified)


def _folder_options(model: Model, dataset: str, config: SweepConfig) -> tuple[FolderOptions, str | None]:
    """--resize/--crop as given; without them, for an image folder, the eval transform the model's pretrained weights
    declare (torchvision's weights enum, timm's pretrained config), with a note saying so."""
    folder = config.folder
    if folder.resize is not None or folder.crop is not None or not dataset.startswith("imagefolder:"):
        return folder, None
    declared = declared_transform(model)
    if declared is None:
        return folder, None
    interpolation = folder.interpolation or declared.interpolation  # a given --interpolation wins
    folder = replace(folder, resize=declared.resize, crop=declared.crop, interpolation=interpolation)
    return folder, f"using the eval transform its weights declare: {folder.transform.describe()}"


def _declared_normalization(model: Model) -> tuple[Model, str | None]:
    """Without --normalize, a model whose pretrained weights declare a mean and std gets them (their transform
    normalises after the crop), with a note saying so; --normalize, also none, is the user's word and wins."""
    declared = None if model.normalize is not None else declared_normalization(model)
    if declared is None:
        return model, None
    note = f"normalising as its weights declare (mean,std {declared}); --normalize overrides it"
    return replace(model, normalize=declared), note


def for_attacks(module: nn.Module, device: torch.device) -> nn.Module:
    """The module on `device`, in eval mode, in the fast layout, weights frozen (attacks take input gradients only)."""
    return fast_layout(module.to(device).eval(), device).requires_grad_(False)


@dataclass(frozen=True)
class Judging:
    """What the model checks found, and how many passes judge a prediction (`Target.findings`, `Target.draws`)."""

    findings: Findings = Findings()
    draws: int = 1


def attack_target(
    module: nn.Module,
    info: DatasetInfo,
    device: torch.device,
    batch_size: int | str | None,
    n: int,
    judged: Judging = Judging(),
) -> Target:
    """What attacks run against: ART's wrapper over the module placed by `for_attacks`, with its batch size: as
    given, or for "auto" (None too) chosen for this model on this device (robustcnn/sweep/batching.py); n: images."""
    from robustcnn.sweep.batching import choose_batch_size

    size, choice = choose_batch_size(batch_size, module, info.shape, device, n)
    classifier = art_classifier(module, info.shape, info.num_classes, device)
    return Target(classifier, module, device, size, info.num_classes, choice, judged.findings, judged.draws)


def _from_run(model: Model, name: str, config: SweepConfig) -> tuple[Card, nn.Module, DatasetInfo]:
    inapplicable = sorted(set(model.given()) - {"name", "dataset", "weights"})
    if inapplicable:
        raise UsageError(
            f"run directory {name!r} normalises inside its model: {', '.join(inapplicable)} is for other models only"
        )
    run = model.source if isinstance(model.source, Run) else _load_run(str(model.source))
    which = model.weights or config.weights
    if which not in ("best", "last"):
        raise UsageError(f"run directory {name!r} takes --weights best or last, not {which!r}")
    dataset = model.dataset or config.dataset or run.meta["config"]["dataset"]
    info = dataset_info(dataset, config.data_dir, config.download, config.folder)
    _require_same_shape(name, run.dataset, info, dataset)
    module = run.model(which)  # before the hash: a missing or corrupt checkpoint is one clear error
    sha256 = sha256_file(run.weights_path(which))
    meta = run.meta
    entry = ModelEntry(
        id=name,
        kind=RUN,
        path=str(run.path),
        repeat_spec=Model(str(run.path), name=model.name, weights=which, dataset=model.dataset).to_spec(),
        weights=which,
        epoch=run.weights_epoch(which),
        sha256=sha256,
        trained_on=meta["dataset"]["name"],
        arch=meta["model"]["arch"],
        method=meta.get("method", ""),
        method_traits=meta.get("method_traits"),  # what the report judges it by; None: a run older than them
        trained_against=meta.get("threat_model"),
        training_metrics=meta.get("metrics", []),
        training_final=meta.get("final", {}),
        training_status=meta.get("status", ""),  # not-robust / stopped-early: the guard's verdict, shown
        eps_warmup=meta.get("config", {}).get("eps_warmup"),  # which logged epochs trained at full eps
        noise_sigma=meta.get("config", {}).get("sigma"),  # Gaussian noise training: what smoothing should use
    )
    card = Card(sha256, sha256, meta["model"]["arch"], meta.get("method", ""), IN_MODEL, entry, run)
    return card, module, info


def _load_run(path: str) -> Run:
    if not Path(path).exists():
        raise UsageError(f"run directory {path!r} does not exist; a model is {SPEC_FORMS}")
    if Path(path).is_file():
        raise UsageError(f"{path!r} is a file, not a run directory; a model is {SPEC_FORMS}")
    return load_run(path)


def _from_elsewhere(model: Model, name: str, info: DatasetInfo, download: bool) -> tuple[Card, nn.Module]:
    channels = info.shape[0]
    external = build_external(model, channels, info.num_classes, info.mean, info.std, download)
    key = hashlib.sha256(json.dumps(external.identity, sort_keys=True, default=str).encode()).hexdigest()
    preprocessing = external.module.preprocessing.describe()
    entry = ModelEntry(
        id=name, **external.entry, path=model.spec, sha256=external.weights_sha256, arch=external.arch, method=""
    )
    card = Card(external.weights_sha256, key, external.arch, "", preprocessing, entry)
    return card, external.module


def _verify(card: Card, module: nn.Module, probe: torch.Tensor) -> tuple[Card, list[Check]]:
    """Checks that need the data: an ONNX conversion against onnxruntime (its gap goes into the card's entry); a
    module handed over in train mode."""
    checks = []
    if card.entry.kind == "onnx":
        from robustcnn.models.external.onnx import check_against_onnxruntime

        gap = check_against_onnxruntime(Path(card.entry.spec), module.net, module.prepare(probe))
        card = replace(card, entry=replace(card.entry, onnxruntime_max_difference=gap))
        message = (
            "onnxruntime is not installed: the conversion was not compared"
            if gap is None
            else (f"converted module matches onnxruntime (max logit difference {gap:.2g})")
        )
        checks.append(Check.of("onnx-conversion", Status.PASS if gap is not None else Status.WARN, message))
    if card.entry.was_training:
        checks.append(_train_mode_check(module, probe))
    return card, checks


def _train_mode_check(module: nn.Module, probe: torch.Tensor) -> Check:
    """A module handed over in train mode is evaluated in eval mode; warn when train mode would have
    changed its outputs (dropout on, BatchNorm on batch statistics), seen on a copy (train-mode BatchNorm
    would move the statistics)."""
    trained = copy.deepcopy(module).train()
    with torch.no_grad():
        gap = (trained(probe) - trained(probe)).abs().max().item()
    batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())
    done = "evaluated in eval mode, as attacks must be"
    if gap <= 1e-5 and not batchnorm:
        return Check.of(
            "eval-mode", Status.PASS, f"handed over in train mode, {done}; train mode changes nothing in it"
        )
    what = (
        f"identical calls differ by up to {gap:.3g} there (dropout)"
        if gap > 1e-5
        else "BatchNorm uses batch statistics there"
    )
    message = f"handed over in train mode ({what}); {done}: your own evaluation needs model.eval() too"
    return Check.of("eval-mode", Status.WARN, message)


def _require_same_shape(name: str, model_info: DatasetInfo, info: DatasetInfo, dataset: str) -> None:
    if (info.shape, info.num_classes) != (model_info.shape, model_info.num_classes):
        raise UsageError(
            f"model {name!r} takes {_describe(model_info)} but dataset {dataset!r} has {_describe(info)}; "
            "pick a dataset of the same shape with --dataset"
        )


def _describe(info: DatasetInfo) -> str:
    channels, height, width = info.shape
    return f"{channels}x{height}x{width} images in {info.num_classes} classes"
