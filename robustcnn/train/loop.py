"""The training loop, readable top to bottom: `train()` prepares, `_fit()` runs epochs, `_epoch()` runs batches."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from robustcnn import overfitting as guard
from robustcnn.config import to_dict
from robustcnn.console import progress, say
from robustcnn.data import Augment, DatasetInfo, ImageSet, dataset_info, load_dataset
from robustcnn.data.base import stratified_split
from robustcnn.devices import fast_layout, resolve_device
from robustcnn.errors import RunFailed, UsageError
from robustcnn.fileio import command_line, git_sha, library_versions, machine, remove_stale_temps
from robustcnn.models import ModelConfig, Normalized, create_model
from robustcnn.runs import FORMAT, METRICS_FILE, RUN_FILE, STATE_FILE, Run, load_run
from robustcnn.tracking import Outcome
from robustcnn.tracking.training import TrainingLog, require
from robustcnn.train import checkpoint, distributed
from robustcnn.train.checkpoint import Progress
from robustcnn.train.config import RUN_OPTIONS, AdvMethod, Amp, Optimizer, TrainConfig, resolve
from robustcnn.train.distributed import RANK_SEED_STRIDE, Group, weights_digest
from robustcnn.train.methods import build_method
from robustcnn.train.schedule import learning_rate, warm_eps
from robustcnn.train.validate import Validator

CHECK_EVERY = 10  # steps between finiteness checks of the loss (each check syncs with the device)


def train(config: TrainConfig | None = None, *, resume: str | Path | None = None, **overrides: Any) -> Run:
    """Trains a model and returns its `Run`. `train(dataset="mnist5k", adv=True, out="runs/x")`.

    With `resume=DIR` it continues a saved run; only run options (device, amp, data_dir) may change.
    Under torchrun every process calls it and they train one model together (robustcnn/train/distributed.py).
    """
    if resume is not None:
        run_dir, config = _resume_config(Path(resume), overrides)
    else:
        config = TrainConfig.from_dict(overrides) if config is None else config.replace(**overrides)
    info = dataset_info(config.dataset, config.data_dir, config.download)
    config = resolve(config, info)
    require(config.track)  # a tracker's library that is not installed: one line before any work
    model_config = ModelConfig.for_dataset(config.arch, info)
    model = create_model(model_config)  # fails fast on an unknown arch or an image size it cannot take
    with distributed.session(resolve_device(config.device)) as group:
        group.check_batch(config.batch_size)
        if resume is None:
            run_dir = Path(config.out or _default_out(config))
            group.on_main(checkpoint.prepare_fresh, run_dir, config.overwrite)  # rank 0 writes every file
        else:
            group.on_main(remove_stale_temps, run_dir)
        trainer = _Trainer(config, info, model_config, model, group.device, run_dir, group)
        return trainer.run(resumed=resume is not None)


def _default_out(config: TrainConfig) -> str:
    dataset = config.dataset.split(":")[0]
    return f"runs/{dataset}-{config.arch}-{config.method_name}"


def _resume_config(run_dir: Path, overrides: dict[str, Any]) -> tuple[Path, TrainConfig]:
    meta = load_run(run_dir).meta
    changeable = [o for o in RUN_OPTIONS if o not in ("out", "overwrite")]
    changed = sorted(set(overrides) - set(changeable))
    if changed:
        flags = ", ".join("--" + o.replace("_", "-") for o in changeable)
        raise UsageError(
            f"--{changed[0].replace('_', '-')} cannot change on --resume: a resumed run keeps its saved "
            f"configuration (only {flags} may); start a new run with --out instead"
        )
    config = TrainConfig.from_dict(meta["config"], where=f"{run_dir}/run.json: ")
    changes = {k: v for k, v in overrides.items() if k in changeable}
    if "track" in changes:
        changes.setdefault("track_uri", None)  # the saved --track-uri belonged to the saved --track
    return run_dir, _apply(config, changes)


def _apply(config: TrainConfig, changes: dict[str, Any]) -> TrainConfig:
    parsed = TrainConfig.from_dict(changes)
    return config.replace(**{k: getattr(parsed, k) for k in changes})


def seed_everything(seed: int) -> None:
    """Seeds every generator an epoch touches (ART draws its random starts from numpy's global one)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def split_train_val(train: ImageSet, config: TrainConfig) -> tuple[ImageSet, ImageSet]:
    if config.val_size >= len(train):
        raise UsageError(f"--val-size {config.val_size} leaves no training images (the train split has {len(train)})")
    what = f"--val-size {config.val_size}"
    rest, val = stratified_split(train.y.numpy(), config.val_size, seed=config.seed, what=what)
    if config.train_size is not None:
        if config.train_size > len(rest):
            raise UsageError(
                f"--train-size {config.train_size} is larger than the {len(rest)} training images available"
            )
        if config.train_size < len(rest):
            dropped = len(rest) - config.train_size
            what = f"--train-size {config.train_size}"
            rest = rest[stratified_split(train.y[rest].numpy(), dropped, seed=config.seed, what=what)[0]]
    return train.subset(rest), train.subset(val)


def augment(
    x: torch.Tensor, kind: Augment, generator: torch.Generator, batch: int | None = None, part: slice = slice(None)
) -> torch.Tensor:
    """Random 4-pixel crop (and flip) on a batch; x is (N, C, H, W).

    Under torchrun x is this process's `part` of a global batch of `batch` images: every process draws for the
    whole batch from the same generator and keeps its part, so an image is cropped alike at any world size.
    """
    if kind is Augment.NONE:
        return x
    n, _, height, width = x.shape
    batch = n if batch is None else batch
    padded = F.pad(x, (4, 4, 4, 4))
    rows, cols = torch.randint(0, 9, (2, batch), generator=generator)[:, part].tolist()
    crops = [padded[i, :, r : r + height, c : c + width] for i, (r, c) in enumerate(zip(rows, cols, strict=True))]
    x = torch.stack(crops)
    if kind is Augment.CROP_FLIP:
        flip = (torch.rand(batch, generator=generator) < 0.5)[part]
        x[flip] = x[flip].flip(3)
    return x


@dataclass
class _Trainer:
    config: TrainConfig
    info: DatasetInfo
    model_config: ModelConfig
    model: Normalized
    device: torch.device
    run_dir: Path
    group: Group  # the processes training together: one without torchrun
    log: TrainingLog = field(default_factory=TrainingLog)  # --track: rank 0's tracker, else a no-op

    def run(self, resumed: bool) -> Run:
        config = self.config
        seed_everything(config.seed)
        self.model = create_model(self.model_config)  # re-created after seeding: same init for the same seed
        self._place_model()
        self.model = self.group.sync_batchnorm(self.model, config.sync_bn)
        train_set, val_set = split_train_val(
            load_dataset(config.dataset, "train", config.data_dir, config.download), config
        )
        self.optimizer = self._optimizer()
        progress_state = Progress()
        if resumed and (self.run_dir / STATE_FILE).is_file():  # no state file: killed during the first epoch
            progress_state = checkpoint.load_state(self.run_dir, self.model, self.optimizer)  # on every rank
        if progress_state.epochs_done >= config.epochs:
            say(f"{self.run_dir}: already trained for {config.epochs} epochs; nothing to do")
            return load_run(self.run_dir)
        train_model = self.group.wrap(self.model)
        self.method = build_method(self.model, config, self.info, self.device, train_model)
        self.validator = Validator(self.model, val_set, config, self.device, self.method, self.group)
        self.meta = self._meta(resumed)
        if config.track is not None:  # rank 0 tracks for the job; one that cannot start stops every rank here
            self.group.on_main(self._open_log, progress_state)
        self._write(progress_state, "running", "")
        start = progress_state.epochs_done
        say(
            f"{'resuming' if resumed else 'training'} {config.arch} on {config.dataset} "
            f"({self.meta['method']}, {len(train_set)} train / {len(val_set)} val images) on {self._where()} "
            f"from epoch {start + 1} of {config.epochs} -> {self.run_dir}"
        )
        try:
            if progress_state.stopped_early:  # more epochs would train on from the overfitted weights
                say(f"{self.run_dir}: training had stopped on purpose ({progress_state.stopped_early})")
            else:
                self._fit(train_set, progress_state)
        except KeyboardInterrupt:
            self._write(
                progress_state,
                "interrupted",
                f"interrupted; resume with: {distributed.launch_command()} --resume {self.run_dir}",
            )
            self._close_log(Outcome.KILLED)
            raise
        except RunFailed as error:
            self._write(progress_state, "failed", str(error))
            self._close_log(Outcome.FAILED)
            raise
        return self._final(progress_state)

    def _open_log(self, state: Progress) -> None:
        """--track's tracked run, starting with the epochs a resumed run already has."""
        self.log = TrainingLog.connect(self.config.track, self.config.track_uri, self.run_dir, self.meta, state.history)

    def _close_log(self, outcome: Outcome) -> None:
        """After run.json's last write: the tracker copies it and metrics.csv."""
        self.log.finish(outcome, [self.run_dir / RUN_FILE, self.run_dir / METRICS_FILE], self.meta)

    def _where(self) -> str:
        if not self.group.active:
            return str(self.device)
        share = self.config.batch_size // self.group.world_size
        return f"{self.group.world_size} processes ({self.group.backend}, {share} images each per step)"

    def _place_model(self) -> None:
        amp = self.config.amp
        self.model = fast_layout(self.model, self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        wants_amp = amp is Amp.ON or (amp is Amp.AUTO and self.device.type == "cuda")
        if wants_amp and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            say("AMP off: this GPU has no bfloat16 support")
            wants_amp = False
        self.model.amp_dtype = torch.bfloat16 if wants_amp else None
        self.model.to(self.device)

    def _optimizer(self) -> torch.optim.Optimizer:
        config = self.config
        if config.optimizer is Optimizer.SGD:
            return torch.optim.SGD(
                self.model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
            )
        return torch.optim.Adam(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    def _meta(self, resumed: bool) -> dict[str, Any]:
        previous = load_run(self.run_dir).meta if resumed else {}
        config = self.config
        return {
            "format": FORMAT,
            "status": "running",
            "message": "",
            "created": previous.get("created", _now()),
            "updated": _now(),
            "method": config.method_name,
            "method_traits": self.method.traits.to_dict(),  # what the guard, the sweep and the report go by
            "threat_model": {"norm": config.constraint.value, "eps": config.eps},  # trained against / validated at
            "dataset": self.info.to_dict(),
            "model": self.model_config.to_dict(),
            "config": to_dict(config),
            "seed": config.seed,
            "device": str(self.device),  # rank 0's under torchrun
            "distributed": self.group.describe(config.batch_size),
            "commands": previous.get("commands", []) + [command_line()],
            "versions": library_versions(),
            "git_sha": git_sha(),
            "machine": machine(),
        }

    def _fit(self, train_set: ImageSet, state: Progress) -> None:
        config = self.config
        steps_per_epoch = self.group.steps_per_epoch(len(train_set), config.batch_size)
        total_steps = config.epochs * steps_per_epoch
        for epoch in range(state.epochs_done, config.epochs):
            # per-epoch seeds make resume exact; per-rank ones give each rank's images their own random starts
            seed_everything(config.seed * 100_003 + epoch + RANK_SEED_STRIDE * self.group.rank)
            started = time.perf_counter()
            row = self._epoch(train_set, state, epoch, steps_per_epoch, total_steps)
            row.update(self.validator())
            row["seconds"] = round(time.perf_counter() - started, 3)
            row = self.group.broadcast(row)  # rank 0's row everywhere: the same best-epoch and stop decisions
            self._end_epoch(state, row)
            if state.stopped_early:
                break

    def _epoch(self, train_set: ImageSet, state: Progress, epoch: int, steps_per_epoch: int, total_steps: int) -> dict:
        config = self.config
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        warmup_steps = config.eps_warmup * steps_per_epoch
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        seen, lr, eps = 0, config.lr, config.eps
        bar = progress(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch")
        for index, batch, part in self.group.batches(len(train_set), config.batch_size, generator):
            x = augment(train_set.images(index), self.info.augment, generator, batch, part).to(self.device)
            y = train_set.y[index].to(self.device)  # (n,): this process's share of the global batch
            lr = learning_rate(config.schedule, config.lr, state.step, total_steps)
            eps = warm_eps(config.eps, state.step, warmup_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            loss, logits = self.method.loss(x, y, eps)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            state.step += 1
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            if state.step % CHECK_EVERY == 0:
                self._check(loss_sum, epoch, lr)
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}")
            bar.update()
        bar.close()
        self._check(loss_sum, epoch, lr)
        loss_total, correct_total, seen_total = self.group.sum(
            torch.tensor([loss_sum.item(), correct.item(), seen], dtype=torch.float64)
        ).tolist()  # over every process: the logged numbers are the global batch's
        return {
            "epoch": epoch + 1,
            "lr": lr,
            "eps": eps if config.adv else 0.0,
            "train_loss": loss_total / seen_total,
            "train_acc": correct_total / seen_total,
        }

    def _check(self, loss_sum: torch.Tensor, epoch: int, lr: float) -> None:
        """Stops every process at the same step: on a signal any of them got, or a non-finite loss on any."""
        value, stop = self.group.should_stop(loss_sum)
        if stop:
            raise KeyboardInterrupt
        if not math.isfinite(value):
            kept = (
                f"the last good checkpoint (epoch {epoch}) is kept in"
                if epoch
                else "no epoch finished, no checkpoint in"
            )
            raise RunFailed(
                f"training stopped: the loss became {value} in epoch {epoch + 1} (lr {lr:.3g}); "
                f"{kept} {self.run_dir}; lower --lr and train again"
            )

    def _end_epoch(self, state: Progress, row: dict[str, Any]) -> None:
        """Saves in an order that is safe to kill at any point: best, then last, then resume state."""
        epoch = row["epoch"]
        verdict = self._judge(state, row)
        score = row[self._score_column()]
        improved = (verdict.sound, score) > (state.best_sound, state.best_score)  # a sound epoch beats any other
        if improved:
            state.best_epoch, state.best_score, state.best_sound = epoch, score, verdict.sound
        state.history.append(row)
        state.epochs_done = epoch
        if verdict.overfitted:
            state.stopped_early = f"{verdict.what} at epoch {epoch}: {verdict.problem}"
        if self.group.is_main:  # rank 0 writes for all: every rank holds the same weights and progress
            if improved:
                checkpoint.save_weights(self.run_dir, "best", self.model, epoch)
            checkpoint.save_weights(self.run_dir, "last", self.model, epoch)
            checkpoint.save_state(self.run_dir, self.model, self.optimizer, state)
            checkpoint.write_metrics(self.run_dir, state.history)
        self._write(state, "running", "")
        self.log.epoch(row)
        say(
            f"epoch {epoch}/{self.config.epochs}  loss {row['train_loss']:.4f}  train_acc {row['train_acc']:.3f}  "
            f"val_acc {row['val_acc']:.3f}  val_fgsm {row['val_fgsm_acc']:.3f}  val_pgd {row['val_pgd_acc']:.3f}  "
            f"lr {row['lr']:.2e}  {row['seconds']:.1f}s{'  *best' if improved else ''}"
        )
        if verdict.overfitted:
            say(f"{state.stopped_early}; stopped")

    def _guarded(self) -> bool:
        """Adversarial and certified training must become robust to PGD; noise training need not."""
        return self.method.traits.guarded

    def _score_column(self) -> str:
        """What picks the best epoch: PGD accuracy when guarded, noisy accuracy for noise training, else clean."""
        if self._guarded():
            return "val_pgd_acc"
        return "val_train_attack_acc" if self._noise_training() else "val_acc"

    def _noise_training(self) -> bool:
        return self.config.adv and self.method.traits.gaussian_noise

    def _judge(self, state: Progress, row: dict[str, Any]) -> guard.Verdict:
        """The guard's verdict on this epoch, given every epoch before it."""
        if not self._guarded():
            return guard.Verdict(True, False, "")
        log = [r for r in state.history if r["epoch"] < row["epoch"]] + [row]
        return guard.judge_log(
            log,
            [r["epoch"] > self.config.eps_warmup for r in log],
            floor_acc=guard.floor(self.info.num_classes),
            one_step_training=self.method.traits.single_step,
        )[-1]

    def _outcome(self, state: Progress) -> tuple[str, str]:
        """(status, message) of a run that ran its epochs or stopped on overfitting."""
        best = state.history[state.best_epoch - 1] if state.best_epoch else None
        advice = self._advice(overfitted=bool(state.stopped_early))
        if self._guarded() and best is not None and not state.best_sound:
            found = state.stopped_early or self._judge(state, best).problem
            return "not-robust", (
                f"no epoch became robust ({found}); best.safetensors holds epoch {state.best_epoch} "
                f"(val PGD-10 {best['val_pgd_acc']:.1%}), which PGD breaks; {advice}"
            )
        if state.stopped_early:
            return "stopped-early", (
                f"{state.stopped_early}; stopped, best.safetensors keeps epoch {state.best_epoch} "
                f"(val PGD-10 {best['val_pgd_acc']:.1%}); for a model that does not overfit {advice}"
            )
        return "finished", ""

    def _advice(self, overfitted: bool) -> str:
        method = self.config.adv_method
        if overfitted and self.method.traits.single_step:
            two_steps = f"--adv-method pgd --attack-steps 2 --attack-lr {2 / 3 * self.config.eps:.3g}"
            other = " (or --adv-method n-fgsm)" if method == AdvMethod.FGSM_RS else ""
            return f"train with two attack steps: {two_steps}{other}; docs/training.md"
        if overfitted:
            return "train with more --attack-steps or a smaller --attack-lr"
        return "train longer (--epochs), with a longer --eps-warmup, a wider --arch or a smaller --eps"

    def _final(self, state: Progress) -> Run:
        """Rank 0 tests the kept epoch and writes the outcome; the others wait for its run.json contents."""
        self.meta["distributed"]["weights_sha256_by_rank"] = self.group.gather(weights_digest(self.model))
        if not self.group.is_main:
            return Run(self.run_dir, self.group.broadcast(None))
        run = self._test_and_close(state)
        self.group.broadcast(run.meta)
        return run

    def _test_and_close(self, state: Progress) -> Run:
        best = load_run(self.run_dir).model("best", self.device)
        test = load_dataset(self.config.dataset, "test", self.config.data_dir, self.config.download)
        with torch.no_grad():
            correct = sum((best(x).argmax(1) == y).sum().item() for x, y in test.batches(512, device=self.device))
        final = {"best_epoch": state.best_epoch, "test_acc": correct / len(test), "test_n": len(test)}
        if self.config.adv:  # robustness before any sweep: the kept epoch's held-out PGD-10 accuracy
            final["val_pgd_acc"] = state.history[state.best_epoch - 1]["val_pgd_acc"]
        if self._noise_training():  # its accuracy under the noise it trained on
            final["val_noise_acc"] = state.history[state.best_epoch - 1]["val_train_attack_acc"]
        self.meta["final"] = final
        status, message = self._outcome(state)
        self._write(state, status, message)
        self._close_log(Outcome.FINISHED)
        robust = f", val PGD-10 accuracy {final['val_pgd_acc']:.4f}" if self.config.adv else ""
        if "val_noise_acc" in final:
            robust += f", val accuracy under its noise {final['val_noise_acc']:.4f}"
        say(
            f"done: best epoch {state.best_epoch}, clean test accuracy {final['test_acc']:.4f}{robust} "
            f"-> {self.run_dir}"
        )
        if message:
            say(f"{status}: {message}")
        return load_run(self.run_dir)

    def _write(self, state: Progress, status: str, message: str) -> None:
        self.meta.update(
            status=status,
            message=message,
            updated=_now(),
            epochs_done=state.epochs_done,
            best_epoch=state.best_epoch,
            metrics=state.history,
        )
        if self.group.is_main:
            checkpoint.write_run(self.run_dir, self.meta)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
