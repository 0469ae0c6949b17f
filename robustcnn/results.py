"""The sweep's output format: the contract between `sweep` (writes) and `report` (reads). No torch here.

A sweep output directory holds:

    results.csv        tidy table, one row per (model, attack, eps-or-scale); columns are `COLUMNS` below
    manifest.json      `Manifest`: provenance (command, suite, seed, versions, git sha, machine, device, times)
                       and per model a `ModelEntry` (path, sha256, dataset, arch, method, method_traits,
                       threat_model, class_names, training_metrics (the run's per-epoch rows), model_checks, ...)
    cells/             one JSON row + one packed per-example correctness array per finished cell (resume state)
    gallery/<model>.npz    a few examples for the report: x, x_adv (k, C, H, W) float32 in [0, 1], y, pred,
                           pred_adv (k,) int64, and 0-d arrays attack (str) and eps (float)
    patches/<model>__<attack>.png    the optimised adversarial patch, when the suite has one
                       (ids in file names pass through `file_stem`: `gallery_file`, `patch_file`)
    report.html, summary.md, checks.json    written by the report

Each row has a kind (`RowKind` below: clean, attack, worst-case, probe, certified, smoothed).
In a cascade suite each attack's rows count what it and every earlier attack of its norm left correct.

Text cells of results.csv that a spreadsheet would run as a formula (starting with = + - @, a tab or a
carriage return: OWASP's list) are written with a leading ' (`csv_text`); `csv_value` reads them back.
Numbers are never touched, so -0.5 stays a number.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

EPS_TOLERANCE = 1e-9  # eps are compared with this slack (grids come from fractions such as 1/3 x 0.3)
RESULTS_FILE = "results.csv"
MANIFEST_FILE = "manifest.json"
CHECKS_FILE = "checks.json"
REPORT_FILE = "report.html"
SUMMARY_FILE = "summary.md"
COMPARISONS_FILE = "comparisons.csv"  # the report's paired comparisons of the sweep's models, every row compared

COLUMNS = [
    "model",  # model id: the run directory name, the spec or the given name, unique within the sweep
    "checkpoint_sha256",  # hash of the weights attacked: the run's checkpoint file, else the loaded tensors
    "dataset",  # dataset name
    "arch",  # architecture name, or the spec of a model from elsewhere (e.g. "torchvision:resnet18")
    "train_method",  # training method (standard, pgd, ...; its traits: manifest's method_traits); "" if from elsewhere
    "preprocessing",  # "in-model" (robustcnn's models normalise inside), else what the sweep applied, e.g. "imagenet"
    "kind",  # what the row is: a `RowKind` value (clean, attack, worst-case, probe, certified, smoothed)
    "attack",  # entry name in the suite (e.g. "pgd-linf"); "clean", "worst-case" (Linf) or "worst-case-l2"
    "attack_type",  # registry name of the attack (fgsm, pgd, apgd-ce, apgd-dlr, square, cw-l2, deepfool, patch)
    "box",  # white | black | none: black-box attacks use only the model's outputs
    "params",  # the attack's parameters as compact JSON (steps, restarts, step size, ...)
    "norm",  # inf | 2 | "" (patch, clean)
    "eps",  # radius in [0, 1] pixel units (0 for clean; empty for patch rows)
    "scale",  # patch side as a fraction of the image (patch rows only)
    "n",  # examples evaluated
    "n_correct",  # examples still classified correctly under the attack
    "accuracy",  # n_correct / n
    "ci_low",  # Wilson 95% interval of accuracy
    "ci_high",
    "target_success",  # patch only: fraction of examples classified as the patch's target class
    "seconds",  # wall time of the cell
    "suite",  # suite name
    "seed",  # sweep seed
    "cell",  # cache key: hash of model, attack config, eps, data subset, seed and mode
]


class RowKind(str, Enum):
    """What a row of results.csv is (its "kind" column)."""

    CLEAN = "clean"  # no attack; eps 0
    ATTACK = "attack"  # one attack at one eps or patch scale
    WORST_CASE = "worst-case"  # per model, norm and eps: an example counts as robust only if no attack of that norm
    # broke it at any eps up to this one (balls nest); the attack column says "worst-case" (Linf) or "worst-case-l2"
    PROBE = "probe"  # a few examples (the first `probe` of the subset) attacked afresh at every eps by each
    # white-box bounded attack, clean-correct or not, and their clean row: the checks read them, the headline does not
    CERTIFIED = "certified"  # a bound (ibp, crown) at one eps: the examples whose prediction is proven correct over
    # the whole eps ball, a lower bound on robust accuracy; never part of the worst case
    SMOOTHED = "smoothed"  # randomized smoothing at one L2 radius (the eps column): the images the *smoothed*
    # classifier, not the model, classifies correctly with a certified radius at least that large; never compared
    # with attacks


@dataclass(frozen=True)
class HeadlineEps:
    """Which eps the headline reports for one model, decided once by the sweep (manifest, per model).

    The report reads it and never guesses: `reference_eps` per norm is the suite's `reference_eps`, else the
    dataset's threat model eps for its norm (its L2 eps for L2); `attack_eps` is, per attack and per worst
    case, the grid eps closest to its norm's reference.
    """

    reference_eps: dict[str, float]  # norm ("inf", "2") -> eps in [0, 1] pixel units
    attack_eps: dict[str, float]  # attack name, or "worst-case" / "worst-case-l2" -> the eps its column reads

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {"reference_eps": dict(self.reference_eps), "headline_eps": dict(self.attack_eps)}

    @classmethod
    def from_entry(cls, entry: dict[str, Any]) -> HeadlineEps | None:
        """From a manifest model entry; None for sweeps made before the sweep decided it."""
        reference, at = entry.get("reference_eps"), entry.get("headline_eps")
        if not isinstance(reference, dict) or not isinstance(at, dict):
            return None
        try:
            return cls({str(k): float(v) for k, v in reference.items()}, {str(k): float(v) for k, v in at.items()})
        except (TypeError, ValueError):
            return None


CHECKS_DOCS = "docs/checks.md"  # every check, of the model or of the results, has a section there under its name


class Status(str, Enum):
    """A check's verdict."""

    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"  # not applicable to this sweep (e.g. no black-box attack in the suite)

    @classmethod
    def parse(cls, value: object) -> Status | None:
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            return None


@dataclass(frozen=True)
class Check:
    """One check's verdict on one model: the sweep's checks of the model itself (manifest.json's `model_checks`)
    and the report's checks of the results (checks.json) alike."""

    name: str  # the check's id, also its anchor in docs/checks.md
    status: Status  # pass | warn | fail | skip
    message: str  # one line naming the numbers behind the status
    link: str  # where the check and what to do about it are explained
    model: str | None = None  # the model it judged; None for the whole sweep (or not yet said)

    @classmethod
    def of(cls, name: str, status: Status, message: str, model: str | None = None) -> Check:
        """A check explained under its own name in docs/checks.md."""
        return cls(name, status, message, f"{CHECKS_DOCS}#{name}", model)

    def to_dict(self, with_model: bool = True) -> dict[str, Any]:
        """As checks.json holds it; without `model` as a model entry's `model_checks` does (the entry says whose)."""
        data = {"name": self.name, "status": self.status.value, "message": self.message, "link": self.link}
        return {**data, "model": self.model} if with_model else data

    @classmethod
    def from_dict(cls, item: Any, model: str | None) -> Check | None:
        """A model check as a manifest holds it; None for an item that is not an object. An unknown status is a
        warning that says so, a missing link points to the check's section."""
        if not isinstance(item, Mapping):
            return None
        status, message = Status.parse(item.get("status")), str(item.get("message", ""))
        if status is None:
            status, message = Status.WARN, f"{message} (unknown status {item.get('status')!r})"
        name = str(item.get("name", "model-check"))
        return cls(name, status, message, str(item.get("link") or f"{CHECKS_DOCS}#{name}"), model)


class Technique(str, Enum):
    """How an attack was adapted to one model's defence (`Adaptation.technique`)."""

    EOT = "eot"  # gradient averaged over `setting` forward and backward passes of a model random at test time
    BPDA = "bpda"  # gradient passed straight through what masks it: `setting` "rounding" (the ops) or a module path
    LOSS = "loss"  # a loss the model cannot take, replaced: `setting` the loss used ("ce" for DLR with < 3 classes)
    ITERATES = "iterates"  # AutoAttack's every-iterate rule, `setting` "off": one pass of a random model proves nothing


@dataclass(frozen=True)
class Adaptation:
    """One change the sweep made to one attack for one model, and why (manifest, `ModelEntry.adaptations`)."""

    attack: str  # the suite's attack name
    technique: Technique
    setting: str  # "20" (EOT passes), "rounding" or a module path (BPDA), "ce" (loss), "off" (iterates)
    reason: str  # one line: what about the model called for it (a model check's finding, its number of classes)

    def to_dict(self) -> dict[str, str]:
        technique = self.technique.value
        return {"attack": self.attack, "technique": technique, "setting": self.setting, "reason": self.reason}

    @classmethod
    def from_dict(cls, item: Any) -> Adaptation | None:
        """As a manifest holds it; None for anything that is not one (an unknown technique included)."""
        if not isinstance(item, Mapping):
            return None
        try:
            technique = Technique(str(item.get("technique")))
        except ValueError:
            return None
        return cls(_text(item.get("attack")), technique, _text(item.get("setting")), _text(item.get("reason")))


RUN = "run"  # ModelEntry.kind of a model robustcnn trained (a run directory); others name their loader
RUN_FIELDS = ("kind", "path", "repeat_spec", "weights", "epoch", "sha256", "trained_on", "arch", "method",
              "method_traits", "trained_against", "training_metrics", "training_final", "training_status",
              "eps_warmup", "noise_sigma")  # fmt: skip
ELSEWHERE_FIELDS = ("kind", "spec", "repeat_spec", "options", "weights_file", "weights_sha256", "source_sha256",
                    "preprocessing", "was_training", "notes", "path", "sha256", "arch", "method", "trained_on",
                    "trained_against")  # fmt: skip
ONNX_FIELDS = ("onnxruntime_max_difference",)  # what a model from an .onnx file adds
SWEEP_FIELDS = ("preprocessing_label", "dataset", "threat_model", "class_names", "shape", "n", "subset", "grids")
BATCH_FIELDS = ("batch_size", "batch_choice", "batch_backoffs")  # written by sweeps that record their batches
ADAPTIVE_FIELDS = ("draws", "adaptations")  # written by sweeps that judge random models and adapt attacks


@dataclass(frozen=True)
class ModelEntry:
    """What manifest.json says about one model (`Manifest.models`): built by the sweep, read by the report.

    Which fields a model has depends on where it came from (`kind`): a run directory writes run.json's (RUN_FIELDS),
    a model from elsewhere its loader's (ELSEWHERE_FIELDS); then every model gets the sweep's (SWEEP_FIELDS, the
    headline eps and the model checks). `from_json` reads any manifest a sweep wrote, older ones included: a field
    missing or of the wrong type takes its default, and keys it does not know are kept in `extra`.
    """

    id: str  # unique in the sweep: the rows' model column
    kind: str = ""  # RUN, else the loader of a model from elsewhere (python, torchvision, timm, pt2, onnx, module)
    path: str = ""  # the run directory, or the model's spec
    sha256: str = ""  # of the weights attacked: the checkpoint file of a run, the loaded tensors otherwise
    arch: str = ""  # architecture name, or the spec of a model from elsewhere
    method: str = ""  # training method when robustcnn trained it, else ""
    trained_on: str | None = None  # the dataset a run trained on; None for models from elsewhere
    trained_against: dict[str, Any] | None = None  # a run's threat model {"norm", "eps"}; None from elsewhere
    repeat_spec: str | None = None  # the MODEL argument that loads it again; None for a Python object
    # a run's, from its run.json
    weights: str | None = None  # which checkpoint: best or last
    epoch: int | None = None  # the epoch of those weights
    method_traits: Any = None  # as run.json recorded them (robustcnn/method_traits.py reads them); None: older run
    training_metrics: list[dict[str, Any]] | None = None  # the run's per-epoch rows
    training_final: dict[str, Any] = field(default_factory=dict)  # the run's final numbers (test accuracy, ...)
    training_status: str = ""  # finished, or the training guard's verdict (not-robust, stopped-early)
    eps_warmup: int | None = None  # epochs before training reached full eps
    noise_sigma: float | None = None  # --sigma of Gaussian noise training: what smoothing should use
    # a model from elsewhere's, from its loader
    spec: str = ""  # as given on the command line (or "module" for a Python object)
    options: dict[str, Any] = field(default_factory=dict)  # the per-model options given (weights, normalize, ...)
    weights_file: str | None = None  # --weights FILE
    weights_sha256: str = ""  # of the parameters and buffers in the network
    source_sha256: str | None = None  # of the builder's source file
    preprocessing: dict[str, Any] = field(default_factory=dict)  # what the sweep applies before the model
    was_training: bool = False  # a module handed over in train mode (evaluated in eval mode)
    notes: list[str] = field(default_factory=list)  # what its loader said while building it
    onnxruntime_max_difference: float | None = None  # .onnx only: largest logit gap to onnxruntime; None: not run
    # the sweep's
    preprocessing_label: str = ""  # results.csv's preprocessing column
    dataset: str = ""  # the dataset evaluated on
    threat_model: dict[str, Any] | None = None  # that dataset's {"norm", "eps"}
    class_names: tuple[str, ...] | None = None
    shape: tuple[int, ...] | None = None  # one image: (C, H, W)
    n: int | None = None  # test images attacked
    subset: str = ""  # hash of their indices in the test split: models with the same dataset and subset saw the same
    # images, so their per-example results pair up (compare); "" for sweeps made before it was recorded
    grids: dict[str, list[float]] = field(default_factory=dict)  # attack name -> its eps (or scales) grid
    headline: HeadlineEps | None = None  # which eps the headline reads; None for sweeps made before it was decided
    model_checks: tuple[Check, ...] | None = None  # the sweep's checks of the model; None until they ran
    batch_size: int | None = None  # images per batch the model ended with (after any halving); None: older sweeps
    batch_choice: dict[str, Any] | None = None  # how its first batch size was chosen: {"requested": N or "auto", ...}
    batch_backoffs: tuple[dict[str, Any], ...] = ()  # each halving when out of GPU memory: {"from", "to", "where"}
    draws: int | None = None  # forward passes that judge each prediction: 1 for a deterministic model; a model random
    # at test time is correct on an image when a majority of `draws` passes are (the suite's `draws`); None: older sweep
    adaptations: tuple[Adaptation, ...] = ()  # what the sweep changed in each attack for this model, and why
    extra: dict[str, Any] = field(default_factory=dict)  # keys of an older manifest that this version does not know

    @property
    def num_classes(self) -> int | None:
        return len(self.class_names) if self.class_names is not None else None

    @property
    def image_size(self) -> int | None:
        """Pixels of one image, C x H x W."""
        return math.prod(self.shape) if self.shape else None

    @property
    def attacked_epoch(self) -> int | None:
        """The epoch whose weights the sweep attacked, when the manifest tells: `epoch`, or weights "last".

        With weights "best" (robust validation accuracy's best epoch) a collapsed epoch is never attacked."""
        if self.epoch is not None:
            return self.epoch
        log = self.training_metrics
        if self.weights == "last" and log:
            epoch = log[-1].get("epoch")
            return epoch if isinstance(epoch, int) else None
        return None

    def to_json(self) -> dict[str, Any]:
        """The entry as manifest.json holds it: its origin's fields, then the sweep's, then what it did not know."""
        origin = RUN_FIELDS if self.kind == RUN else ELSEWHERE_FIELDS + (ONNX_FIELDS if self.kind == "onnx" else ())
        data = {"id": self.id, **{name: _plain(getattr(self, name)) for name in origin + SWEEP_FIELDS}}
        if self.headline is not None:
            data.update(self.headline.to_dict())
        if self.model_checks is not None:
            data["model_checks"] = [check.to_dict(with_model=False) for check in self.model_checks]
        if self.batch_size is not None:  # an older manifest reads back without them
            data.update({name: _plain(getattr(self, name)) for name in BATCH_FIELDS})
        if self.draws is not None:
            data.update(draws=self.draws, adaptations=[adaptation.to_dict() for adaptation in self.adaptations])
        return {**data, **self.extra}

    @classmethod
    def from_json(cls, data: Any, id: str = "") -> ModelEntry:
        """From a manifest's model entry (any version); `id` where the entry has none."""
        data = data if isinstance(data, Mapping) else {}
        model = str(data.get("id", id))
        dataset = data.get("dataset")
        if isinstance(dataset, Mapping):  # older sweeps: {"name", "shape", ...}
            dataset, shape = dataset.get("name"), dataset.get("shape")
        else:
            shape = data.get("shape")
        checks = data.get("model_checks")
        known = {"id", *RUN_FIELDS, *ELSEWHERE_FIELDS, *ONNX_FIELDS, *SWEEP_FIELDS, *BATCH_FIELDS, *ADAPTIVE_FIELDS,
                 "reference_eps", "headline_eps", "model_checks"}  # fmt: skip
        return cls(
            id=model,
            kind=_text(data.get("kind")),
            path=_text(data.get("path")),
            sha256=_text(data.get("sha256")),
            arch=_text(data.get("arch")),
            method=_text(data.get("method")),
            trained_on=_optional(data.get("trained_on"), str),
            trained_against=_optional(data.get("trained_against"), dict),
            repeat_spec=_optional(data.get("repeat_spec"), str),
            weights=_optional(data.get("weights"), str),
            epoch=_whole(data.get("epoch")),
            method_traits=data.get("method_traits"),
            training_metrics=_log(data.get("training_metrics")),
            training_final=_optional(data.get("training_final"), dict) or {},
            training_status=_text(data.get("training_status")),
            eps_warmup=_whole(data.get("eps_warmup")),
            noise_sigma=_number(data.get("noise_sigma")),
            spec=_text(data.get("spec")),
            options=_optional(data.get("options"), dict) or {},
            weights_file=_optional(data.get("weights_file"), str),
            weights_sha256=_text(data.get("weights_sha256")),
            source_sha256=_optional(data.get("source_sha256"), str),
            preprocessing=_optional(data.get("preprocessing"), dict) or {},
            was_training=data.get("was_training") is True,
            notes=[str(note) for note in notes] if isinstance(notes := data.get("notes"), list) else [],
            onnxruntime_max_difference=_number(data.get("onnxruntime_max_difference")),
            preprocessing_label=_text(data.get("preprocessing_label")),
            dataset=_text(dataset),
            threat_model=_optional(data.get("threat_model"), dict),
            class_names=tuple(str(c) for c in names) if isinstance(names := data.get("class_names"), list) else None,
            shape=_shape(shape),
            n=_whole(data.get("n")),
            subset=_text(data.get("subset")),
            grids=_optional(data.get("grids"), dict) or {},
            headline=HeadlineEps.from_entry(data),
            model_checks=_checks(checks, model) if isinstance(checks, list) else None,
            batch_size=_whole(data.get("batch_size")),
            batch_choice=_optional(data.get("batch_choice"), dict),
            batch_backoffs=_backoffs(data.get("batch_backoffs")),
            draws=draws if (draws := _whole(data.get("draws"))) is not None and draws > 0 else None,
            adaptations=_adaptations(data.get("adaptations")),
            extra={key: value for key, value in data.items() if key not in known},
        )


MANIFEST_FORMAT = "robustcnn-sweep/1"  # manifest.json's "format"; readers accept any "robustcnn-sweep/" version
LATE_FIELDS = ("ray_tasks", "finished", "seconds")  # written once known (None: not yet, or not a Ray sweep)


@dataclass
class Manifest:
    """manifest.json: the sweep's provenance and one `ModelEntry` per model.

    The sweep builds it before the first cell and rewrites it as it goes (status, message, model checks, Ray
    tasks, finish time); the report reads it with `from_json`, which takes any manifest a sweep wrote: a field
    missing or of the wrong type takes its default, and keys this version does not write are kept in `extra`.
    """

    format: str = MANIFEST_FORMAT
    status: str = ""  # running, finished, partial (a shard ahead of the others), interrupted or failed
    message: str = ""  # what to do about a status other than finished
    command: str = ""  # the command line that ran the sweep
    config: dict[str, Any] = field(default_factory=dict)  # the resolved SweepConfig
    suite: dict[str, Any] = field(default_factory=dict)  # the suite: name, path, description, n, reference_eps, text
    seed: int | None = None
    mode: str = ""  # nested or naive
    device: str = ""
    batch_size: int | str | None = None  # examples per ART call (a sentence for Ray tasks that choose their own)
    shard: str | None = None  # --shard I/N
    versions: dict[str, str] = field(default_factory=dict)  # library versions
    git_sha: str | None = None
    machine: dict[str, Any] = field(default_factory=dict)  # platform, processor, CPUs, ...
    started: str = ""  # ISO time, UTC
    repeat: str | None = None  # the command that runs this sweep again; None when a model was a Python object
    models: list[ModelEntry] = field(default_factory=list)
    ray_tasks: list[dict[str, Any]] | None = None  # where each Ray task ran (Ray sweeps only)
    finished: str | None = None  # ISO time, UTC, of the last write
    seconds: float | None = None  # wall time until then
    extra: dict[str, Any] = field(default_factory=dict)  # keys of an older manifest that this version does not know

    def entry(self, model: str) -> ModelEntry:
        return next(entry for entry in self.models if entry.id == model)

    def replace_entry(self, entry: ModelEntry) -> None:
        self.models = [entry if old.id == entry.id else old for old in self.models]

    def to_json(self) -> dict[str, Any]:
        data = {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.name not in ("models", "extra")}
        data["models"] = [entry.to_json() for entry in self.models]
        for name in LATE_FIELDS:  # after the models, as they come
            value = data.pop(name)
            if value is not None:
                data[name] = value
        return {**data, **self.extra}

    @classmethod
    def from_json(cls, data: Any) -> Manifest:
        data = data if isinstance(data, Mapping) else {}
        command, suite, models = data.get("command"), data.get("suite"), data.get("models")
        if isinstance(models, Mapping):  # an older form: entries by id
            models = [{"id": key, **value} if isinstance(value, Mapping) else value for key, value in models.items()]
        known = {f.name for f in fields(cls)}
        return cls(
            format=_text(data.get("format")),
            status=_text(data.get("status")),
            message=_text(data.get("message")),
            command=shlex.join(map(str, command)) if isinstance(command, list) else _text(command),
            config=_optional(data.get("config"), dict) or {},
            suite={"name": suite} if isinstance(suite, str) else _optional(suite, dict) or {},
            seed=_whole(data.get("seed")),
            mode=_text(data.get("mode")),
            device=_text(data.get("device")),
            batch_size=_optional(data.get("batch_size"), (int, str)),
            shard=_optional(data.get("shard"), str),
            versions=_optional(data.get("versions"), dict) or {},
            git_sha=_optional(data.get("git_sha"), str),
            machine=_optional(data.get("machine"), dict) or {},
            started=_text(data.get("started")),
            repeat=_optional(data.get("repeat"), str),
            models=[ModelEntry.from_json(entry) for entry in models] if isinstance(models, list) else [],
            ray_tasks=_optional(data.get("ray_tasks"), list),
            finished=_optional(data.get("finished"), str),
            seconds=_number(data.get("seconds")),
            extra={key: value for key, value in data.items() if key not in known - {"extra"}},
        )


def _plain(value: Any) -> Any:
    """A field's value as JSON holds it (tuples as lists)."""
    return list(value) if isinstance(value, tuple) else value


def _text(value: Any) -> str:
    return "" if value is None else value if isinstance(value, str) else str(value)


def _optional(value: Any, kind: type | tuple[type, ...]) -> Any:
    return value if isinstance(value, kind) and not isinstance(value, bool) else None


def _backoffs(value: Any) -> tuple[dict[str, Any], ...]:
    """A manifest's batch_backoffs: the well-formed ones ({"from": int, "to": int, "where": str})."""
    items = value if isinstance(value, list) else []
    return tuple(
        {"from": item["from"], "to": item["to"], "where": _text(item.get("where"))}
        for item in items
        if isinstance(item, Mapping) and _whole(item.get("from")) is not None and _whole(item.get("to")) is not None
    )


def _adaptations(value: Any) -> tuple[Adaptation, ...]:
    items = value if isinstance(value, list) else []
    return tuple(adaptation for item in items if (adaptation := Adaptation.from_dict(item)) is not None)


def _whole(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value: Any) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _log(value: Any) -> list[dict[str, Any]] | None:
    """A training log: a list of per-epoch objects; anything else is no log."""
    return value if isinstance(value, list) and all(isinstance(row, Mapping) for row in value) else None


def _shape(value: Any) -> tuple[int, ...] | None:
    if (
        isinstance(value, list)
        and value
        and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in value)
    ):
        return tuple(value)
    return None


def _checks(items: list[Any], model: str) -> tuple[Check, ...]:
    return tuple(check for item in items if (check := Check.from_dict(item, model)) is not None)


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion: honest at 0%, 100% and small n, unlike p +- z*se."""
    if n <= 0:
        return (math.nan, math.nan)
    p = correct / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


CHANCE_MARGIN = 0.1  # clean accuracy below chance + 10% of the way to 100% is "at chance level"


def chance_level(num_classes: int) -> tuple[float, float]:
    """(chance, the accuracy below which a model counts as at chance: wrong preprocessing or labels, usually)."""
    chance = 1 / num_classes
    return chance, chance + CHANCE_MARGIN * (1 - chance)


_PLAIN_STEM = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")  # an id kept as its own file name
_HASH_END = re.compile(r"-[0-9a-f]{8}$")  # what `file_stem` appends to any other id


def file_stem(name: str) -> str:
    """How a model or attack id becomes part of a file name in gallery/ and patches/ (ids may hold '/', spaces, '<').

    An id that is already a plain file name (lowercase ASCII letters, digits and "._-", starting with a letter
    or digit, no "__", at most 64 characters) is kept. Any other id keeps its safe characters and gets 8 hex
    digits of its hash: 'a/b' -> 'a_b-<hash>' while 'a_b' stays 'a_b', and 'Std' never meets 'std' on a disk
    that ignores case. So two ids never share a file, and no id can name a path outside the sweep directory.
    """
    if _PLAIN_STEM.fullmatch(name) and "__" not in name and not _HASH_END.search(name):
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    safe = re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9._-]+", "_", name)).strip("._-")[:48].rstrip("._-")
    return f"{safe}-{digest}" if safe else f"id-{digest}"


def gallery_file(model: str) -> str:
    """The gallery of a model, relative to the sweep directory (the sweep writes it, the report reads it)."""
    return f"gallery/{file_stem(model)}.npz"


def examples_file(model: str) -> str:
    """Which test images a model was evaluated on, in the order of its cells' flags (index, label, and file name for
    an image folder), relative to the sweep directory: the sweep writes it, export and compare read it."""
    return f"examples/{file_stem(model)}.npz"


def patch_file(model: str, attack: str) -> str:
    """The optimised patch of a model's patch attack, relative to the sweep directory. Neither stem holds "__"
    nor does an attack's start with "_", so the pair is read back from the name in one way only."""
    return f"patches/{file_stem(model)}__{file_stem(attack)}.png"


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what makes a spreadsheet run a cell (OWASP CSV injection)


def csv_text(value: str) -> str:
    """A text cell as results.csv holds it: one a spreadsheet would run gets a leading ' (shown as text). A value
    already starting with ' before such a character gets one more, so `csv_value` gives back exactly `value`."""
    return "'" + value if value.lstrip("'").startswith(FORMULA_START) else value


def params_object(text: str) -> dict[str, Any]:
    """results.csv's params cell as the object the sweep wrote; {} for one edited into anything else."""
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def csv_value(text: str) -> str:
    """The value of a text cell `csv_text` wrote."""
    return text[1:] if text.startswith("'") and text.lstrip("'").startswith(FORMULA_START) else text


def results_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    """results.csv's text for results rows (`COLUMNS`), as pandas' `to_csv` writes them: a number as Python writes
    it (repr: shortest round-trip), NaN and None as an empty cell, text cells through `csv_text`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows([_csv_cell(row[column]) for column in COLUMNS] for row in rows)
    return buffer.getvalue()


def _csv_cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, str):
        return csv_text(value)
    return repr(float(value)) if isinstance(value, float) else value


def results_path(out: str | Path) -> Path:
    return Path(out) / RESULTS_FILE
