"""Per-epoch robustness check on the held-out images: clean, FGSM, the training attack and PGD-10, via ART.

Under torchrun each process checks its share of the images and the correct counts are summed over processes.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from robustcnn.art_setup import import_art
from robustcnn.attacks.art import art_classifier, from_numpy, frozen, lazy_success_rate, to_numpy
from robustcnn.data import ImageSet
from robustcnn.train.config import AdvMethod, TrainConfig
from robustcnn.train.distributed import Group
from robustcnn.train.methods import Method

PGD_STEPS = 10  # enough to expose catastrophic overfitting, cheap on a few hundred images


class Validator:
    def __init__(
        self,
        model: nn.Module,
        val: ImageSet,
        config: TrainConfig,
        device: torch.device,
        method: Method,
        group: Group | None = None,
    ):
        import_art()
        from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescentPyTorch

        self.model, self.device, self.method, self.eps = model, device, method, config.eps
        self.group = group or Group(device)
        self.own_is_pgd = _trains_on_validation_pgd(config)  # then PGD-10's accuracy is the own attack's too
        self.n = len(val)
        part = self.group.share(len(val))
        self.x, self.y = val.images(part), val.y[part]  # (n, C, H, W) in [0, 1], (n,): this process's share
        classifier = art_classifier(model, val.info.shape, val.info.num_classes, device)
        norm, eps, batch = config.constraint.art, config.eps, max(config.batch_size, 256)
        self.fgsm = FastGradientMethod(classifier, norm=norm, eps=eps, eps_step=eps, batch_size=batch)
        self.pgd = ProjectedGradientDescentPyTorch(
            classifier, norm=norm, eps=eps, eps_step=2.5 * eps / PGD_STEPS, max_iter=PGD_STEPS,
            num_random_init=1, batch_size=batch, verbose=False,
        )  # fmt: skip

    def correct(self, x: torch.Tensor) -> torch.Tensor:
        """How many of this process's images `x` the model classifies right (a 0-d int64 tensor on the CPU)."""
        self.model.eval()
        with torch.no_grad():
            predictions = self.model(x.to(self.device)).argmax(1).cpu()
        return (predictions == self.y).sum()

    def __call__(self) -> dict[str, float]:
        x, y = to_numpy(self.x), self.y.numpy()
        with frozen(self.model), lazy_success_rate():  # skips ART's 2 log-only forward passes per call
            x_fgsm, x_pgd = self.fgsm.generate(x, y), self.pgd.generate(x, y)
        correct = {
            "val_acc": self.correct(self.x),
            "val_fgsm_acc": self.correct(from_numpy(x_fgsm, "cpu")),
            "val_pgd_acc": self.correct(from_numpy(x_pgd, "cpu")),
        }
        if not self.own_is_pgd:
            x_own = self.method.validation_examples(self.x.to(self.device), self.y.to(self.device), self.eps)
            if x_own is not None:  # the method's own attack at full eps: what a collapse still resists
                correct["val_train_attack_acc"] = self.correct(x_own)
        totals = self.group.sum(torch.stack(list(correct.values())))
        # float32 count / n: bit for bit the float32 mean of the 0/1 hits that one process always reported
        row = {name: (total.float() / self.n).item() for name, total in zip(correct, totals, strict=True)}
        if self.own_is_pgd:
            row["val_train_attack_acc"] = row["val_pgd_acc"]
        return row


def _trains_on_validation_pgd(config: TrainConfig) -> bool:
    """PGD-AT with the validation's own PGD-10 settings (the default): no second run of the same attack."""
    same_step = math.isclose(config.attack_lr, 2.5 * config.eps / PGD_STEPS)
    return config.adv and config.adv_method == AdvMethod.PGD and config.attack_steps == PGD_STEPS and same_step
