"""`TrainConfig`: every training choice in one frozen object, with units. None means "from the dataset"."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum
from typing import Any

from robustcnn.config import BOOL, COUNT, FLOAT, INT, enum_parser, from_mapping, non_negative_float, option
from robustcnn.data import DatasetInfo
from robustcnn.errors import UsageError
from robustcnn.method_traits import STANDARD, MethodTraits
from robustcnn.registry import Registry
from robustcnn.threat import Norm, check_eps, parse_eps
from robustcnn.tracking import parse_track, parse_uri

# Training methods by name: "standard" and each AdvMethod. robustcnn/train/methods.py registers the classes; each
# declares its `traits` (MethodTraits), which pick the defaults below and go into run.json.
METHODS: Registry[Any] = Registry("training method")


class AdvMethod(str, Enum):
    PGD = "pgd"  # Madry et al. 2018: train on PGD examples
    FGSM_RS = "fgsm-rs"  # Wong et al. 2020: one step from a random start, ~k times cheaper than PGD-k
    TRADES = "trades"  # Zhang et al. 2019: clean CE + beta * KL(clean || adversarial)
    N_FGSM = "n-fgsm"  # de Jorge et al. 2022: one step of eps from x + noise in [-2 eps, 2 eps], no projection
    IBP = "ibp"  # Gowal et al. 2018: certified training on interval bounds (no attack)
    GAUSSIAN = "gaussian"  # Cohen et al. 2019: Gaussian noise, for randomized smoothing (no attack)


DEFAULT_SIGMA = 0.25


class Optimizer(str, Enum):
    SGD = "sgd"
    ADAM = "adam"


class Schedule(str, Enum):
    COSINE = "cosine"  # peak lr decaying to 0 over all steps
    ONECYCLE = "onecycle"  # 0 -> peak at 40% of steps -> 0 (Wong et al.'s fast AT schedule)
    CONSTANT = "constant"


class Amp(str, Enum):
    AUTO = "auto"  # bf16 autocast on CUDA GPUs that support it, off elsewhere
    ON = "on"
    OFF = "off"


def _eps(value: object) -> float:
    return parse_eps(value, "--eps")


def _method_name(value: object) -> str:
    """A METHODS name as a plain string (the registry is open: a new method is a class and an entry), checked
    against the registry by `resolve`, once robustcnn/train/methods.py has registered its classes."""
    name = str(value.value if isinstance(value, Enum) else value).strip().lower()
    if not name or name == STANDARD:
        raise ValueError(f"name an adversarial training method (without --adv, training is {STANDARD})")
    return name


@dataclass(frozen=True)
class TrainConfig:
    dataset: str = option("mnist5k", "dataset name, or imagefolder:PATH")
    arch: str = option("smallcnn", "model architecture")
    out: str | None = option(None, "run directory to create (weights, run.json, metrics.csv)")
    epochs: int | None = option(None, "passes over the training set; default: the dataset's recipe", INT)
    batch_size: int | None = option(
        None, "examples per optimiser step, over all processes under torchrun; default: the dataset's recipe", INT
    )
    sync_bn: bool = option(
        False, "under torchrun on GPUs: BatchNorm statistics over the global batch, not each process's share", BOOL
    )
    optimizer: Optimizer | None = option(None, "sgd or adam; default: the dataset's recipe", enum_parser(Optimizer))
    lr: float | None = option(None, "peak learning rate; default: the dataset's recipe", FLOAT)
    momentum: float = option(0.9, "SGD momentum", non_negative_float)
    weight_decay: float | None = option(None, "L2 penalty; default 5e-4 for sgd, 0 for adam", non_negative_float)
    schedule: Schedule = option(Schedule.COSINE, "learning-rate schedule over steps", enum_parser(Schedule))
    adv: bool = option(False, "train adversarially (PGD unless --adv-method says otherwise)", BOOL)
    adv_method: str = option(
        AdvMethod.PGD.value, "pgd, trades, fgsm-rs, n-fgsm, ibp, gaussian or any method in METHODS", _method_name
    )
    eps: float | None = option(
        None, "attack radius in [0,1] pixel units, e.g. 0.3 or 8/255; default: the dataset's", _eps
    )
    constraint: Norm | None = option(None, "attack norm: inf or 2; default: the dataset's", Norm.parse)
    attack_steps: int | None = option(
        None, "attack iterations per batch; default 10 (pgd, trades), 1 (fgsm-rs, n-fgsm)", INT
    )
    attack_lr: float | None = option(
        None, "attack step in pixel units; default 2.5*eps/steps, 1.25*eps for fgsm-rs, eps for n-fgsm", FLOAT
    )
    sigma: float | None = option(
        None, f"noise standard deviation for --adv-method gaussian, pixels in [0,1]; default {DEFAULT_SIGMA}", FLOAT
    )
    beta: float = option(6.0, "TRADES weight of the robustness term (Zhang et al. use 6)", FLOAT)
    eps_warmup: int | None = option(None, "epochs over which eps ramps up from 0; default: the dataset's recipe", COUNT)
    val_size: int = option(256, "training images held out for best-epoch choice and the overfitting guard", INT)
    train_size: int | None = option(None, "train on only this many images (stratified; for quick runs)", INT)
    seed: int = option(0, "seed for initialisation, shuffling and attack starts", COUNT)
    device: str = option("auto", "auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    amp: Amp = option(Amp.AUTO, "mixed precision: auto (bf16 on CUDA), on, off", enum_parser(Amp))
    data_dir: str | None = option(None, "where downloadable datasets live; default ~/.cache/robustcnn/data")
    download: bool = option(False, "download the dataset if its files are missing (needs internet)", BOOL)
    overwrite: bool = option(False, "replace an existing run directory", BOOL)
    track: str | None = option(
        None,
        "copy the config, each epoch's metrics and run.json to a tracker: mlflow (pip install 'robustcnn[mlflow]') "
        "or tensorboard (curves; 'robustcnn[tensorboard]'); none: off, e.g. on --resume",
        parse_track,
    )
    track_uri: str | None = option(
        None,
        "mlflow: a tracking server (http://host:5000) or a folder, default ./mlruns; tensorboard: a folder that gets "
        "a subfolder per run, default RUN_DIR/tensorboard",
        parse_uri,
    )

    @classmethod
    def from_dict(cls, data: dict, where: str = "") -> TrainConfig:
        return from_mapping(cls, data, where)

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    @property
    def method_name(self) -> str:
        """The METHODS entry this trains with: --adv-method with --adv, else standard training."""
        return self.adv_method if self.adv else STANDARD


def method_traits(name: str) -> MethodTraits:
    """The traits the training method registered as `name` declares."""
    return METHODS.get(name).traits


# Run options: they change where and how fast a run goes (and where its numbers are copied), not what it computes,
# so resume may change them.
RUN_OPTIONS = ("out", "device", "amp", "data_dir", "download", "overwrite", "track", "track_uri")


def resolve(config: TrainConfig, info: DatasetInfo) -> TrainConfig:
    """Fills every None from the dataset's recipe and threat model, then checks the combination."""
    recipe = TrainConfig.from_dict(dict(info.train_defaults), where=f"dataset {info.name!r} recipe: ")
    pick = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    for name, value in pick.items():
        if value is None:
            pick[name] = getattr(recipe, name)
    pick["optimizer"] = pick["optimizer"] or Optimizer.ADAM
    pick["epochs"] = pick["epochs"] or 10
    pick["batch_size"] = pick["batch_size"] or 128
    pick["lr"] = pick["lr"] or 1e-3
    pick["eps_warmup"] = pick["eps_warmup"] or 0
    if pick["weight_decay"] is None:
        pick["weight_decay"] = 5e-4 if pick["optimizer"] is Optimizer.SGD else 0.0
    pick["constraint"] = pick["constraint"] or info.threat_model.norm
    if pick["eps"] is None:
        pick["eps"] = info.threat_model.eps if pick["constraint"] is info.threat_model.norm else None
        if pick["eps"] is None:
            raise UsageError(
                f"--constraint {pick['constraint'].value} needs --eps: the dataset's default is for another norm"
            )
    check_eps(pick["eps"], pick["constraint"], "--eps")
    method = pick["adv_method"]
    if method not in METHODS.names():
        allowed = ", ".join(name for name in METHODS.names() if name != STANDARD)
        raise UsageError(f"--adv-method {method!r} is not allowed: choose one of: {allowed}")
    traits = method_traits(method)  # --adv-method's even without --adv, as the defaults always were
    if traits.gaussian_noise:
        pick["sigma"] = pick["sigma"] or DEFAULT_SIGMA
    elif pick["sigma"] is not None:
        raise UsageError(f"--sigma {pick['sigma']:g} applies to --adv-method gaussian only, not {method}")
    pick["attack_steps"] = pick["attack_steps"] or traits.attack_steps
    if traits.single_step and pick["attack_steps"] != 1:
        raise UsageError(f"--attack-steps {pick['attack_steps']} does not fit {method}, which takes exactly 1 step")
    if method == AdvMethod.N_FGSM and pick["adv"] and pick["constraint"] is not Norm.LINF:
        raise UsageError(f"--adv-method n-fgsm is defined for --constraint inf, not {pick['constraint'].value}")
    if pick["attack_lr"] is None:
        pick["attack_lr"] = traits.attack_lr(pick["eps"], pick["attack_steps"])
    if pick["eps_warmup"] >= pick["epochs"] and pick["adv"]:
        raise UsageError(f"--eps-warmup {pick['eps_warmup']} must be below --epochs {pick['epochs']}")
    if pick["track_uri"] and not pick["track"]:
        raise UsageError(f"--track-uri {pick['track_uri']} applies with --track only (mlflow or tensorboard)")
    return TrainConfig(**pick)
